"""Scoring preference pairs with a trained model: ``(reward(chosen), reward(rejected))`` per pair.

Two kinds of scorer, chosen from the saved config's ``architectures``:

* ``reward``: a ``...ForSequenceClassification`` model; the reward is its scalar output
  (:func:`mmpo.models.reward.sequence_rewards`, the same function training uses).
* ``policy``: a ``...ForCausalLM`` model used as an implicit reward model (DPO):
  ``reward(x, y) = beta * (log pi(y|x) - log pi_ref(y|x))`` with summed response-token log-probabilities
  (:func:`mmpo.models.logps.response_logps`). Without a reference model the scorer is reference-free:
  ``reward(x, y) = beta * log pi(y|x)``; that ranks pairs by plain likelihood, so it favours short answers.

Pairs are tokenized exactly as in training (:func:`mmpo.data.tokenize.tokenize_pair`), sorted by length so
each batch pads little, scored in batches of ``batch_size`` pairs and returned in input order. As in training,
each pair is scored as one span ``[prompt | chosen | rejected]``, its prompt encoded once, where the models can
take that mask (:mod:`mmpo.models.shared_prefix`; several spans to a row where attention runs per pair, as under
``packing: auto``; the same numbers up to summation order), else in two rows, chosen first.

``score_pairs`` loads a model directory and scores; ``score_with_models`` does the same on already-loaded
models (for callers that score several data sets with one model, e.g. RewardBench).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import torch
from tqdm.auto import tqdm

from mmpo.data.records import PreferencePair
from mmpo.data.tokenize import OVER_LENGTH, TokenizedPair, tokenize_pair
from mmpo.errors import DataError, UserError
from mmpo.models.embedded import resolve_model_path
from mmpo.models.batching import PairBatching, pair_batching

ModelKind = Literal["reward", "policy"]
DEFAULT_BETA = 0.1  # DPOConfig's default, used when neither --beta nor the policy's config.yaml gives one


# peft's task_type of an adapter directory -> the kind of model it is.
ADAPTER_KINDS: dict[str, ModelKind] = {"SEQ_CLS": "reward", "CAUSAL_LM": "policy"}


def model_kind(model_dir: str) -> ModelKind:
    """``reward`` for a ``*ForSequenceClassification`` checkpoint, ``policy`` for ``*ForCausalLM``; a peft adapter
    directory by its ``task_type`` (``SEQ_CLS``: reward, ``CAUSAL_LM``: policy)."""
    from mmpo.models.loading import is_adapter_dir
    from mmpo.models.loading import adapter_config

    resolved = resolve_model_path(model_dir)
    config_file = Path(resolved) / "config.json"
    if is_adapter_dir(resolved):
        task_type = adapter_config(resolved).get("task_type")
        if task_type not in ADAPTER_KINDS:
            raise UserError(f"{Path(resolved) / 'adapter_config.json'}: task_type {task_type!r} is neither a reward model "
                            "(SEQ_CLS) nor a policy (CAUSAL_LM)")
        return ADAPTER_KINDS[task_type]
    if config_file.exists():
        architectures = json.loads(config_file.read_text()).get("architectures") or []
    elif Path(resolved).is_dir():
        raise UserError(f"{model_dir}: no config.json (not a saved transformers model)")
    else:  # a hub id
        from transformers import AutoConfig

        try:
            architectures = AutoConfig.from_pretrained(resolved).architectures or []
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read the config of {model_dir!r}: {str(e).splitlines()[0]}") from None
    if any(a.endswith("ForSequenceClassification") for a in architectures):
        return "reward"
    if any(a.endswith(("ForCausalLM", "ForConditionalGeneration")) for a in architectures):
        return "policy"
    raise UserError(
        f"{config_file}: architectures {architectures} is neither a reward model (*ForSequenceClassification) "
        "nor a policy (*ForCausalLM)"
    )


def training_config(model_dir: str) -> dict[str, Any]:
    """The ``config.yaml`` mmpo wrote beside a trained model (empty when there is none)."""
    import yaml

    from mmpo.training.files import RunFiles

    path = RunFiles(model_dir).config
    if not path.exists():
        return {}
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        return {}


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def scoring_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 on GPUs that support it (as trained there), else float32."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def load_scoring_model(model_dir: str, kind: ModelKind | None = None, device: torch.device | None = None) -> tuple[Any, Any, ModelKind]:
    """``(model, tokenizer, kind)`` in eval mode on ``device``; ``kind`` detected when not given."""
    from transformers import AutoModelForCausalLM

    from mmpo.models.loading import load_tokenizer
    from mmpo.models.reward import load_reward_model

    kind = kind or model_kind(model_dir)
    device = device or default_device()
    dtype = scoring_dtype(device)
    tokenizer = load_tokenizer(model_dir)
    if kind == "reward":
        model = load_reward_model(model_dir, tokenizer, dtype=dtype)
    else:
        try:
            model = AutoModelForCausalLM.from_pretrained(resolve_model_path(model_dir), dtype=dtype)
        except (OSError, ValueError) as e:
            raise UserError(f"cannot load {model_dir!r} as a policy: {str(e).splitlines()[0]}") from None
    return model.to(device).eval(), tokenizer, kind


def trained_over_length(trained: dict[str, Any]) -> str:
    """The ``over_length`` a model was trained with (its ``config.yaml``); ``truncate`` when it names none
    (models trained before the key existed were truncated)."""
    value = trained.get("over_length") or "truncate"
    if value not in OVER_LENGTH:
        raise UserError(f"config.yaml: over_length must be {' or '.join(OVER_LENGTH)} (got {value!r})")
    return value


def tokenize_for_scoring_pair(tokenizer: Any, pair: PreferencePair, max_length: int, max_prompt_length: int, over_length: str = "truncate") -> TokenizedPair | None:
    """One pair's ids as training tokenized it (:func:`mmpo.data.tokenize.tokenize_pair`).

    ``over_length="drop"`` (the reward-model default): training kept a pair that fits in ``max_length`` whole,
    its prompt uncut even past ``max_prompt_length``, so such a pair is scored whole too; a pair that does not
    fit (training dropped it) is still scored, truncated, since a scorer owes every pair a score.
    ``over_length="truncate"``: the prompt is cut to ``max_prompt_length`` as in training.
    """
    if over_length == "drop":
        whole = tokenize_pair(tokenizer, pair, max_length, max_prompt_length, over_length="drop")
        if whole is not None:
            return whole
    return tokenize_pair(tokenizer, pair, max_length, max_prompt_length)


def tokenize_for_scoring(
    pairs: list[PreferencePair], tokenizer: Any, max_length: int, max_prompt_length: int | None = None, over_length: str = "truncate"
) -> list[TokenizedPair]:
    """Tokenize like training (see :func:`tokenize_for_scoring_pair`); ``max_prompt_length`` defaults to
    ``max_length // 2`` (the training default)."""
    budget = max_prompt_length if max_prompt_length is not None else max_length // 2
    out = []
    for pair in pairs:
        tok = tokenize_for_scoring_pair(tokenizer, pair, max_length, budget, over_length)
        if tok is None:
            raise DataError(pair.source or "data", pair.row, "chosen/rejected", "a response is empty after tokenization")
        out.append(tok)
    return out


@torch.no_grad()
def _batch_rewards(
    batching: PairBatching, model: Any, kind: ModelKind, batch: dict[str, torch.Tensor], ref_model: Any | None, beta: float
) -> torch.Tensor:
    """``[2B]`` rewards, chosen first, for a batch ``batching`` built: a reward model's, or a policy's implicit
    reward ``beta * (log pi(y|x) - log pi_ref(y|x))`` (without the reference term when there is none)."""
    if kind == "reward":
        return batching.rewards(model, batch)
    logps = batching.logps(model, batch)[0]
    if ref_model is not None:
        logps = logps - batching.logps(ref_model, batch)[0]
    return beta * logps


def score_with_models(
    model: Any,
    tokenizer: Any,
    pairs: list[PreferencePair] | list[TokenizedPair],
    kind: ModelKind,
    ref_model: Any | None = None,
    beta: float | None = None,
    batch_size: int = 8,
    max_length: int = 1024,
    max_prompt_length: int | None = None,
    progress: bool = True,
    over_length: str = "truncate",
    prefix_sharing: bool = True,
) -> list[tuple[float, float]]:
    """``(chosen_reward, rejected_reward)`` per pair, in input order, with loaded models.

    ``pairs`` may be already tokenized. For ``kind="policy"``: ``beta`` (default 0.1) scales the summed
    log-probabilities; ``ref_model`` (optional) is subtracted. The models stay where they are; batches go to
    ``model``'s device. ``over_length``: see :func:`tokenize_for_scoring_pair`. ``prefix_sharing``: each prompt
    encoded once where the models allow it (as training's key of that name, with ``packing: auto``).
    """
    if kind == "reward" and ref_model is not None:
        raise UserError("a reference model only applies to a policy (implicit reward), not to a reward model")
    if batch_size < 1:
        raise UserError(f"batch_size must be >= 1 (got {batch_size})")
    beta = DEFAULT_BETA if beta is None else float(beta)
    if kind == "policy" and not beta > 0:
        raise UserError(f"beta must be > 0 (got {beta})")
    if all(isinstance(p, TokenizedPair) for p in pairs):
        tokenized: list[TokenizedPair] = list(pairs)  # type: ignore[arg-type]
    else:
        tokenized = tokenize_for_scoring(list(pairs), tokenizer, max_length, max_prompt_length, over_length)  # type: ignore[arg-type]
    if not tokenized:
        return []
    device = next(model.parameters()).device
    batching = pair_batching(model, tokenizer.pad_token_id, prefix_sharing, max_length, ref_model, packing="auto")
    # Longest first: the first batch shows at once whether memory suffices; neighbours pad little.
    order = sorted(
        range(len(tokenized)),
        key=lambda i: len(tokenized[i].prompt_ids) + max(len(tokenized[i].chosen_ids), len(tokenized[i].rejected_ids)),
        reverse=True,
    )
    scores: list[tuple[float, float]] = [(float("nan"), float("nan"))] * len(tokenized)
    starts = range(0, len(order), batch_size)
    for start in tqdm(starts, desc=f"scoring pairs ({kind})", unit="batch", disable=None if progress else True):
        idx = order[start : start + batch_size]
        batch = batching([tokenized[i].__dict__ for i in idx])
        batch = {k: v.to(device) for k, v in batch.items()}
        rewards = _batch_rewards(batching, model, kind, batch, ref_model, beta).float().cpu()
        n = len(idx)
        for j, i in enumerate(idx):
            scores[i] = (float(rewards[j]), float(rewards[n + j]))
    return scores


def score_pairs(
    pairs: list[PreferencePair],
    model_dir: str,
    ref_model: str | None = None,
    beta: float | None = None,
    batch_size: int = 8,
    max_length: int = 1024,
    max_prompt_length: int | None = None,
    progress: bool = True,
) -> list[tuple[float, float]]:
    """Load ``model_dir`` (reward model or policy, detected) and score ``pairs``; see :func:`score_with_models`.

    For a policy, ``beta`` defaults to the ``beta`` in the policy's ``config.yaml`` (written by ``mmpo dpo``),
    else 0.1; ``ref_model`` is a model directory or hub id, or None for reference-free scoring. Pairs are
    tokenized with the ``over_length`` the model was trained with (:func:`trained_over_length`).
    """
    trained = training_config(model_dir)
    model, tokenizer, kind = load_scoring_model(model_dir)
    ref = None
    if kind == "policy":
        if beta is None:
            beta = trained.get("beta")
        if ref_model is not None:
            ref, _, _ = load_scoring_model(ref_model, kind="policy", device=next(model.parameters()).device)
    elif ref_model is not None:
        raise UserError(f"{model_dir} is a reward model; --ref-model only applies to a policy")
    return score_with_models(
        model, tokenizer, pairs, kind, ref, beta, batch_size, max_length, max_prompt_length, progress, trained_over_length(trained)
    )
