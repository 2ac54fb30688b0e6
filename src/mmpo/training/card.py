"""Model cards: every saved model directory gets a README.md with YAML metadata, as the Hugging Face Hub expects.

The metadata (read back with ``huggingface_hub.ModelCard.load``) carries the Hub's own keys (``base_model``,
``datasets``, ``library_name``, ``pipeline_tag``, ``tags``) and an ``mmpo`` block: the method, loss, gamma
(and beta for a policy), the held-out metrics and the command that made the model. The body says how to load
and use it, and holds the run's full config.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import sys
from pathlib import Path
from typing import Any

import yaml

from mmpo.models.embedded import EMBEDDED_NAMES

EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


def invoking_command() -> str:
    """The command line that is running: ``mmpo rm ...`` when started as the mmpo CLI, else the Python call."""
    argv = list(sys.argv) or ["python"]
    if os.path.basename(argv[0]) == "mmpo" or argv[0].endswith(os.path.join("mmpo", "cli", "main.py")):
        return shlex.join(["mmpo", *argv[1:]])
    return shlex.join(["python", *argv])


def _hub_id(name: Any) -> str | None:
    """``name`` as a Hub repository id, or None for local paths and mappings."""
    if not isinstance(name, str):
        return None
    if name in EMBEDDED_NAMES:
        return EMBEDDED_HUB_ID
    if name.count("/") == 1 and not os.path.exists(name) and not name.startswith((".", "/", "~")):
        return name
    return None


def _numbers(results: dict[str, Any]) -> dict[str, float | int]:
    return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in results.items() if isinstance(v, (int, float))}


def card_metadata(config: Any, kind: str, results: dict[str, Any], command: str) -> dict[str, Any]:
    """The card's YAML metadata for a run of ``kind`` (``reward_model`` or ``policy``)."""
    base = _hub_id(config.model)
    datasets = [d for d in (_hub_id(config.data),) if d]
    mmpo: dict[str, Any] = {
        "method": "MMPO reward model" if kind == "reward_model" else "MMPO policy (DPO family)",
        "loss": config.loss,
        "gamma": config.gamma,
    }
    if hasattr(config, "beta"):
        mmpo["beta"] = config.beta
    mmpo.update({
        "base_model": str(config.model),
        "data": config.data if isinstance(config.data, (str, dict, list)) else str(config.data),
        "eval_data": config.eval_data if isinstance(config.eval_data, (str, dict, list)) or config.eval_data is None else str(config.eval_data),
        "held_out": _numbers(results),
        "command": command,
    })
    meta: dict[str, Any] = {"library_name": "transformers"}
    if base:
        meta["base_model"] = base
    if datasets:
        meta["datasets"] = datasets
    meta["pipeline_tag"] = "text-classification" if kind == "reward_model" else "text-generation"
    meta["tags"] = list(dict.fromkeys(["mmpo", "reward-model" if kind == "reward_model" else "dpo", str(config.loss)]))
    meta["mmpo"] = mmpo
    return meta


_LOSS_LINE = {
    "reward_model": "a reward model: a one-output head on the backbone, `r(x, y)` read at the last token",
    "policy": "a policy: a causal LM whose implicit reward is `beta * (log pi(y|x) - log pi_ref(y|x))`",
}


def _loading_lines(config: Any, kind: str, loader: str, name: str) -> list[str]:
    """The card's two lines that load the saved model and its tokenizer. A reward model saved as its LoRA adapter
    (``merge_lora: false``) is built on its base by transformers (peft installed), which needs the one-output head
    and the pad token the run used."""
    tokenizer = f'tokenizer = AutoTokenizer.from_pretrained("{name}")'
    if kind == "reward_model" and getattr(config, "lora_r", 0) > 0 and not getattr(config, "merge_lora", True):
        return [tokenizer, f'model = {loader}.from_pretrained("{name}", num_labels=1, pad_token_id=tokenizer.pad_token_id)  # LoRA adapter (peft)']
    return [f'model = {loader}.from_pretrained("{name}")', tokenizer]


def model_card_text(config: Any, kind: str, results: dict[str, Any], command: str | None = None) -> str:
    """README.md for a saved model: YAML metadata (see :func:`card_metadata`), then a short body."""
    command = command or invoking_command()
    meta = card_metadata(config, kind, results, command)
    name = Path(config.output_dir).name
    loader = "AutoModelForSequenceClassification" if kind == "reward_model" else "AutoModelForCausalLM"
    gamma = "none (hard labels, p = 1)" if config.gamma is None else f"{config.gamma:g}"
    lines = [
        "---",
        yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=10**6).rstrip(),
        "---",
        "",
        f"# {name}",
        "",
        f"Trained with mmpo (Margin Matching Preference Optimization, Kim et al., EMNLP 2024 Findings): {_LOSS_LINE[kind]}, loss `{config.loss}`, gamma {gamma}"
        + (f", beta {config.beta:g}" if hasattr(config, "beta") else "") + f", starting from `{config.model}`.",
        "",
        "```python",
        f"from transformers import AutoTokenizer, {loader}",
        *_loading_lines(config, kind, loader, name),
        "```",
        "",
        "## Held-out metrics",
        "",
    ]
    numbers = meta["mmpo"]["held_out"]
    if numbers:
        lines += ["| metric | value |", "|---|---|"] + [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in numbers.items()]
    else:
        lines.append("None: the run had no held-out pairs.")
    lines += [
        "",
        "## How it was made",
        "",
        "```bash",
        command,
        "```",
        "",
        "Full configuration (`config.yaml` in this directory):",
        "",
        "```yaml",
        yaml.safe_dump(dataclasses.asdict(config), sort_keys=False).rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)


def write_model_card(output_dir: str | os.PathLike, config: Any, kind: str, results: dict[str, Any], command: str | None = None) -> Path:
    """Write ``output_dir/README.md`` (atomically: a reader never sees half a card)."""
    from mmpo.io import atomic_write_text

    from mmpo.training.files import RunFiles

    path = RunFiles(output_dir).card
    atomic_write_text(path, model_card_text(config, kind, results, command))
    return path


def push_final_model(trainer: Any, output_dir: str | os.PathLike) -> None:
    """With ``push_to_hub``: upload the final model directory (model, tokenizer, card, metrics) to the Hub repo
    Trainer created (``hub_model_id``), leaving out checkpoints and hidden files. Trainer's own
    ``push_to_hub`` would re-save the unmerged model and replace our card, so the upload is ours."""
    args = trainer.args
    if not getattr(args, "push_to_hub", False) or not trainer.is_world_process_zero():
        return
    from huggingface_hub import upload_folder

    repo_id = getattr(trainer, "hub_model_id", None) or args.hub_model_id or Path(output_dir).name
    upload_folder(
        repo_id=repo_id,
        folder_path=str(output_dir),
        commit_message="mmpo: final model and card",
        token=getattr(args, "hub_token", None),
        revision=getattr(args, "hub_revision", None),
        ignore_patterns=["checkpoint-*", "checkpoint-*/**", ".*", ".*/**", "_*"],
    )
    print(f"pushed {output_dir} to the Hub repository {repo_id}")
