"""Fitting where users work: every TrainingArguments knob, model-loading keys, TensorBoard events, model cards,
generated key listings (--help, docs/config.md), and quiet, consistent console output."""

from __future__ import annotations

import contextlib
import io
import json
import logging
from pathlib import Path

import pytest
import torch

from mmpo.cli.main import main as mmpo_main
from mmpo.config import DPOConfig, RMConfig, config_keys, config_markdown, load_config
from mmpo.errors import UserError
from mmpo.training.args import training_arguments
from mmpo.training.online import OnlineConfig

REPO = Path(__file__).resolve().parents[1]


def _config(cls, tiny_model_dir, data, out, **overrides):
    values = dict(model=str(tiny_model_dir), data=str(data), output_dir=str(out), max_length=96, max_prompt_length=64,
                  per_device_train_batch_size=4, per_device_eval_batch_size=8, logging_steps=1, eval_split=0.25)
    values.update(overrides)
    return load_config(cls, None, values)


# --- every knob -----------------------------------------------------------------------------------------


def test_any_training_argument_passes_through_from_recipe_and_command_line(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data: x.jsonl\noptim: adamw_torch\nadam_beta2: 0.95\nadam_epsilon: 1e-7\nreport_to: tensorboard\n")
    config = load_config(RMConfig, recipe, ["--ddp_timeout", "600", "--push_to_hub", "--hub_model_id", "me/rm",
                                            "--output_dir", str(tmp_path / "o")])
    assert config.trainer_args == {"optim": "adamw_torch", "adam_beta2": 0.95, "adam_epsilon": "1e-7", "ddp_timeout": 600,
                                   "push_to_hub": True, "hub_model_id": "me/rm"}
    args = training_arguments(config)
    assert (args.optim, args.adam_beta2, args.adam_epsilon, args.ddp_timeout) == ("adamw_torch", 0.95, 1e-7, 600)
    assert (args.push_to_hub, args.hub_model_id, args.report_to) == (True, "me/rm", ["tensorboard"])
    # The saved config.yaml reproduces the same arguments.
    from mmpo.config import save_config

    save_config(config, tmp_path / "config.yaml")
    assert load_config(RMConfig, tmp_path / "config.yaml").trainer_args == config.trainer_args


def test_unknown_key_names_the_closest_training_argument():
    with pytest.raises(UserError, match=r"unknown config key 'adam_beta3' \(did you mean 'adam_beta2'\?\)"):
        load_config(RMConfig, None, {"data": "x", "adam_beta3": 0.9})
    with pytest.raises(UserError, match="'remove_unused_columns' is set by mmpo itself"):
        load_config(RMConfig, None, {"data": "x", "trainer_args": {"remove_unused_columns": True}})
    with pytest.raises(UserError, match="training arguments: .*not a valid OptimizerNames"):
        training_arguments(load_config(RMConfig, None, {"data": "x", "optim": "nope"}))


def test_a_tracker_that_is_not_installed_is_one_line(monkeypatch):
    monkeypatch.setattr("transformers.integrations.get_available_reporting_integrations", lambda: ["tensorboard"])
    with pytest.raises(UserError, match=r"report_to: wandb not installed \(pip install wandb\); installed trackers: tensorboard"):
        training_arguments(load_config(RMConfig, None, {"data": "x", "report_to": ["tensorboard", "wandb"]}))
    assert training_arguments(load_config(RMConfig, None, {"data": "x"})).report_to == []  # none: no tracker


def test_no_future_warning_from_our_own_arguments(tmp_path, recwarn):
    for checkpointing in (False, True):
        training_arguments(load_config(RMConfig, None, {"data": "x", "output_dir": str(tmp_path),
                                                        "gradient_checkpointing": checkpointing}))
    assert [str(w.message) for w in recwarn if issubclass(w.category, FutureWarning)] == []


def test_model_loading_keys_reach_from_pretrained(tiny_model_dir, tiny_tokenizer):
    from mmpo.models.loading import model_load_kwargs
    from mmpo.models.policy import load_causal_lm
    from mmpo.models.reward import load_reward_model

    config = load_config(RMConfig, None, {"data": "x", "attn_implementation": "eager", "dtype": "bfloat16", "revision": "main"})
    kwargs = model_load_kwargs(config, torch.float32)
    assert kwargs == {"dtype": torch.bfloat16, "revision": "main", "attn_implementation": "eager"}
    model = load_reward_model(str(tiny_model_dir), tiny_tokenizer, **kwargs)
    assert model.dtype == torch.bfloat16 and model.config._attn_implementation == "eager"
    policy = load_causal_lm(str(tiny_model_dir), **model_load_kwargs(load_config(DPOConfig, None, {"data": "x", "attn_implementation": "sdpa"}), torch.float32))
    assert policy.dtype == torch.float32 and policy.config._attn_implementation == "sdpa"
    with pytest.raises(UserError, match="dtype must be"):
        load_config(RMConfig, None, {"data": "x", "dtype": "float8"})


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-only check (the error on a machine without CUDA); skipped on a CUDA machine")
def test_quantized_loading_on_cpu_is_one_clear_line(tiny_model_dir, pair_file, tmp_path):
    with pytest.raises(UserError, match="set lora_r > 0"):
        load_config(RMConfig, None, {"data": "x", "load_in_4bit": True})
    from mmpo.training.rm import train_reward_model

    config = _config(RMConfig, tiny_model_dir, pair_file(8), tmp_path / "q", load_in_4bit=True, lora_r=4, max_steps=1)
    with pytest.raises(UserError) as err:
        train_reward_model(config)
    assert str(err.value).startswith("load_in_4bit needs a CUDA GPU (bitsandbytes); this machine has none")


def test_reward_model_load_report_is_quiet_only_for_the_new_head(tiny_model_dir, tiny_tokenizer, tmp_path, caplog):
    from mmpo.models.policy import load_causal_lm
    from mmpo.models.reward import load_reward_model

    logger = logging.getLogger("transformers.modeling_utils")
    logger.addHandler(caplog.handler)  # transformers' loggers do not propagate to the root logger
    try:
        rm = load_reward_model(str(tiny_model_dir), tiny_tokenizer)  # new `score` head, unused lm_head: quiet
        assert "LOAD REPORT" not in caplog.text
        rm.save_pretrained(tmp_path / "rm")
        load_causal_lm(str(tmp_path / "rm"))  # a causal LM missing its lm_head: still reported
        assert "LOAD REPORT" in caplog.text and "lm_head.weight" in caplog.text
    finally:
        logger.removeHandler(caplog.handler)


# --- one short reward-model run with TensorBoard, read end to end -------------------------------------------


@pytest.fixture(scope="module")
def rm_run(tiny_model_dir, graded_rows, write_jsonl, tmp_path_factory):
    from mmpo.training.rm import train_reward_model

    root = tmp_path_factory.mktemp("rm-tb")
    data = write_jsonl(root / "pairs.jsonl", graded_rows(16, seed=2))
    config = _config(RMConfig, tiny_model_dir, data, root / "out", max_steps=3, save_steps=2, report_to="tensorboard")
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        results = train_reward_model(config).metrics
    return config, results, Path(config.output_dir), out.getvalue(), err.getvalue()


def test_tensorboard_events_hold_the_training_curves(rm_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, _, out, _, _ = rm_run
    event_files = list((out / "runs").rglob("events.out.tfevents.*"))
    assert event_files, "report_to: tensorboard wrote no event file"
    acc = EventAccumulator(str(event_files[0].parent))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert {"train/loss", "train/train_accuracy", "eval/nll", "eval/accuracy"} <= set(tags)
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = {r["step"]: r["loss"] for r in logged if "loss" in r}
    assert {e.step: pytest.approx(e.value, rel=1e-5) for e in acc.Scalars("train/loss")} == losses


def test_model_card_loads_with_huggingface_hub(rm_run):
    from huggingface_hub import ModelCard

    config, results, out, _, _ = rm_run
    card = ModelCard.load(out / "README.md")
    meta = card.data.to_dict()
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-classification"
    assert "base_model" not in meta  # a local directory is no Hub id
    mmpo = meta["mmpo"]
    assert (mmpo["loss"], mmpo["gamma"], mmpo["base_model"], mmpo["data"]) == ("mmpo", 1.0, config.model, config.data)
    assert mmpo["eval_data"] is None  # held out from data by eval_split
    assert mmpo["held_out"]["accuracy"] == pytest.approx(results["accuracy"], abs=1e-6)
    assert mmpo["held_out"]["step"] == 3
    assert mmpo["command"].split()[0] in ("mmpo", "python")
    assert "AutoModelForSequenceClassification" in card.text


def test_card_metadata_names_hub_ids():
    from mmpo.training.card import card_metadata

    config = load_config(DPOConfig, None, {"data": "HuggingFaceH4/ultrafeedback_binarized", "model": "embedded", "beta": 0.05})
    meta = card_metadata(config, "policy", {"accuracy": 0.6, "n": 10}, "mmpo dpo embedded/dpo")
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert meta["datasets"] == ["HuggingFaceH4/ultrafeedback_binarized"]
    assert meta["mmpo"]["beta"] == 0.05 and meta["mmpo"]["command"] == "mmpo dpo embedded/dpo"
    assert meta["tags"] == ["mmpo", "dpo"]


def test_push_to_hub_uploads_the_final_directory(monkeypatch, tmp_path):
    import types

    import huggingface_hub

    from mmpo.training.card import push_final_model

    calls = []
    monkeypatch.setattr(huggingface_hub, "upload_folder", lambda **kw: calls.append(kw))
    args = types.SimpleNamespace(push_to_hub=True, hub_model_id="me/rm", hub_token=None, hub_revision=None)
    trainer = types.SimpleNamespace(args=args, hub_model_id="me/rm", is_world_process_zero=lambda: True)
    push_final_model(trainer, tmp_path)
    assert len(calls) == 1 and calls[0]["repo_id"] == "me/rm" and calls[0]["folder_path"] == str(tmp_path)
    assert "checkpoint-*" in calls[0]["ignore_patterns"]
    args.push_to_hub = False
    push_final_model(trainer, tmp_path)
    assert len(calls) == 1


def test_console_output_is_clean(rm_run):
    _, results, out, stdout, stderr = rm_run
    console = stdout + stderr
    assert "LOAD REPORT" not in console and "Consider training" not in console
    assert "FutureWarning" not in console and "Warning" not in console
    log_lines = [line for line in console.replace("\r", "\n").splitlines() if "step 1/3: loss" in line]
    assert log_lines and "'" not in log_lines[0]  # numbers, not quoted strings
    assert f"held-out ({results['n']} pairs, step 3): " in stdout
    assert f"saved the reward model (full) to {out} (card: README.md" in stdout
    assert not (out / ".staging").exists()
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]


def test_policy_prints_the_same_summary_and_writes_a_card(tiny_model_dir, pair_file, tmp_path, capsys):
    from huggingface_hub import ModelCard

    from mmpo.training.dpo import train_policy

    config = _config(DPOConfig, tiny_model_dir, pair_file(16), tmp_path / "dpo", max_steps=2, lora_r=4, reference="adapter")
    train_policy(config)
    stdout = capsys.readouterr().out
    results = json.loads((tmp_path / "dpo" / "eval_results.json").read_text())
    assert "LoRA r=4: training " in stdout  # the same line as mmpo rm prints
    assert f"held-out ({results['n']} pairs, step 2): " in stdout
    assert f"saved the policy (merged) to {tmp_path / 'dpo'} (card: README.md" in stdout
    meta = ModelCard.load(tmp_path / "dpo" / "README.md").data.to_dict()
    assert meta["pipeline_tag"] == "text-generation" and meta["mmpo"]["beta"] == config.beta
    assert meta["mmpo"]["held_out"]["nll"] == pytest.approx(results["nll"], abs=1e-6)
    assert not (tmp_path / "dpo" / ".staging").exists()


# --- discoverable configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize("command,cls", [("rm", RMConfig), ("dpo", DPOConfig), ("online", OnlineConfig)])
def test_help_lists_every_key_with_default_and_meaning(command, cls, capsys):
    with pytest.raises(SystemExit):
        mmpo_main([command, "--help"])
    text = capsys.readouterr().out
    for key, default, meaning in config_keys(cls):
        assert meaning, f"{key} has no help text"
        line = next((ln for ln in text.splitlines() if ln.split()[:1] == [key]), None)
        assert line is not None, f"--help does not list {key}"
        assert line.rstrip().endswith(f"[{default}]") and meaning in line


def test_docs_config_md_is_in_sync():
    path = REPO / "docs" / "config.md"
    assert path.read_text() == config_markdown(), "docs/config.md is stale: python -m mmpo.config --markdown > docs/config.md"
