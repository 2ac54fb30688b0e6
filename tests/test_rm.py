"""Reward-model training (`mmpo rm`): loss wiring, learning, saving, resuming."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from mmpo.config import RMConfig, load_config
from mmpo.data.collate import PairCollator
from mmpo.data.pairs import PairOptions
from mmpo.data.pipeline import load_pairs
from mmpo.models.batching import two_row_batching
from mmpo.data.tokenize import tokenize_pair
from mmpo.errors import UserError
from mmpo.losses import bt_loss, label_smoothing_loss, margin_loss, mmpo_loss, scaled_bt_loss
from mmpo.models.reward import load_reward_model
from mmpo.training.args import training_arguments
from mmpo.training.rm import RewardTrainer, train_reward_model


def rm_config(model_dir: Path, data: Path, out: Path, **overrides) -> RMConfig:
    values = dict(
        model=str(model_dir), data=str(data), output_dir=str(out), max_length=96,
        per_device_train_batch_size=4, per_device_eval_batch_size=8, learning_rate=5e-3,
        logging_steps=1, resume="auto", eval_split=0.25, gamma=1.0,
        bf16=False,  # these tests compare with float32 arithmetic; bfloat16 runs are tested in test_precision.py
    )
    values.update(overrides)
    return load_config(RMConfig, None, values)


def reward_direct(model, ids: list[int]) -> float:
    """The reward of one unpadded sequence, straight from the model."""
    with torch.no_grad():
        return float(model(input_ids=torch.tensor([ids])).logits[0, 0])


def tokenized(rows_file: Path, tokenizer, gamma: float | None = 1.0):
    pairs, _ = load_pairs(str(rows_file), PairOptions(gamma=gamma))
    return [tokenize_pair(tokenizer, p, 96, 48).__dict__ for p in pairs]


@pytest.mark.parametrize("loss", ["mmpo", "bt", "margin", "label_smoothing", "scaled_bt"])
def test_trainer_loss_equals_loss_on_direct_rewards(loss, tiny_model_dir, tiny_tokenizer, graded_rows, write_jsonl, tmp_path):
    rows = graded_rows(5, seed=3)
    rows.append({"prompt": "Which is nicer?", "chosen": "A kind reply.", "rejected": "No.", "p_chosen": 0.8})  # no margin
    features = tokenized(write_jsonl(tmp_path / "d.jsonl", rows), tiny_tokenizer, gamma=0.5)
    torch.manual_seed(0)
    model = load_reward_model(str(tiny_model_dir), tiny_tokenizer).eval()
    trainer = RewardTrainer(
        model=model,
        args=training_arguments(rm_config(tiny_model_dir, tmp_path / "d.jsonl", tmp_path / "out"), eval_strategy="no"),
        data_collator=two_row_batching(tiny_tokenizer.pad_token_id),
        loss=loss,
        label_smoothing=0.2,
    )
    batch = PairCollator(tiny_tokenizer.pad_token_id)(features)
    with torch.no_grad():
        trainer_loss = trainer.compute_loss(model, batch)
    chosen = torch.tensor([reward_direct(model, f["prompt_ids"] + f["chosen_ids"]) for f in features])
    rejected = torch.tensor([reward_direct(model, f["prompt_ids"] + f["rejected_ids"]) for f in features])
    assert (chosen - rejected).abs().max() > 1e-4  # the rewards actually differ, so the check can fail
    p = torch.tensor([f["p"] for f in features])
    margin = torch.tensor([0.0 if f["margin"] is None else f["margin"] for f in features])
    expected = {
        "mmpo": lambda: mmpo_loss(chosen, rejected, p),
        "bt": lambda: bt_loss(chosen, rejected),
        "margin": lambda: margin_loss(chosen, rejected, margin),
        "label_smoothing": lambda: label_smoothing_loss(chosen, rejected, 0.2),
        # weight 1 (plain BT) on the pair without a margin
        "scaled_bt": lambda: scaled_bt_loss(chosen, rejected, torch.where(torch.tensor([f["margin"] is None for f in features]), 1.0, margin)),
    }[loss]().mean()
    assert trainer_loss.item() == pytest.approx(expected.item(), abs=1e-5)


def test_unknown_loss_is_a_user_error(tiny_model_dir, pair_file, tmp_path):
    with pytest.raises(UserError, match="unknown reward-model loss"):
        rm_config(tiny_model_dir, pair_file(), tmp_path / "out", loss="hinge")


@pytest.fixture(scope="module")
def trained_run(tiny_model_dir, graded_rows, write_jsonl, tmp_path_factory):
    """One short full fine-tune whose held-out set is its own training data (so learning shows)."""
    root = tmp_path_factory.mktemp("rm-run")
    data = write_jsonl(root / "train.jsonl", graded_rows(16, seed=1))
    out = root / "out"
    config = rm_config(tiny_model_dir, data, out, eval_data=str(shutil.copy(data, root / "held-out.jsonl")), allow_eval_overlap=True,
                       max_steps=30, eval_steps=15, save_steps=15)
    results = train_reward_model(config).metrics
    return config, results, out


def test_training_reduces_mmpo_loss(trained_run, tiny_model_dir, tiny_tokenizer):
    config, results, out = trained_run
    torch.manual_seed(0)
    from transformers import set_seed

    set_seed(config.seed)  # the same fresh head train_reward_model started from
    model = load_reward_model(str(tiny_model_dir), tiny_tokenizer).eval()
    features = tokenized(Path(config.data), tiny_tokenizer, gamma=config.gamma)
    chosen = torch.tensor([reward_direct(model, f["prompt_ids"] + f["chosen_ids"]) for f in features])
    rejected = torch.tensor([reward_direct(model, f["prompt_ids"] + f["rejected_ids"]) for f in features])
    before = mmpo_loss(chosen, rejected, torch.tensor([f["p"] for f in features])).mean().item()
    assert results["n"] == len(features) == 16
    assert results["loss"] < before - 0.05
    assert results["nll"] == pytest.approx(results["loss"], abs=1e-5)  # the MMPO loss is the held-out NLL
    assert results["accuracy"] > 0.5


def test_run_directory_contents(trained_run):
    config, results, out = trained_run
    assert json.loads((out / "eval_results.json").read_text()) == pytest.approx(results)
    assert set(results) == {"n", "accuracy", "ece", "soft_ece", "nll", "brier", "loss", "step"}
    assert results["step"] == 30
    reloaded = load_config(RMConfig, out / "config.yaml")
    assert reloaded == config
    report = json.loads((out / "data_report.json").read_text())
    assert report["train"]["kept"] == 16
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("train_accuracy" in r for r in logged)
    # Periodic evaluation at step 15; the last step is evaluated once, by the final pass.
    assert [r["step"] for r in logged if "eval_accuracy" in r] == [15, 30]
    assert json.loads((out / "config.json").read_text())["architectures"] == ["LlamaForSequenceClassification"]


def test_saved_model_gives_the_evaluation_rewards(trained_run):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    config, results, out = trained_run
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.config.pad_token_id == tokenizer.pad_token_id
    features = {f["row"]: f for f in tokenized(Path(config.data), tokenizer, gamma=config.gamma)}
    scores = [json.loads(line) for line in (out / "eval_scores.jsonl").read_text().splitlines()]
    assert len(scores) == 16
    for s in scores:
        f = features[s["row"]]
        h = reward_direct(model, f["prompt_ids"] + f["chosen_ids"]) - reward_direct(model, f["prompt_ids"] + f["rejected_ids"])
        assert h == pytest.approx(s["h"], abs=1e-4)


def test_lora_run_saves_a_merged_model(tiny_model_dir, tiny_tokenizer, pair_file, tmp_path):
    from transformers import AutoModelForSequenceClassification

    data = pair_file(n=12, seed=2)
    out = tmp_path / "lora"
    config = rm_config(tiny_model_dir, data, out, eval_data=str(shutil.copy(data, tmp_path / "held-out.jsonl")), allow_eval_overlap=True,
                       lora_r=4, lora_alpha=8, max_steps=6)
    results = train_reward_model(config).metrics
    assert not (out / "adapter_config.json").exists()
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    base = load_reward_model(str(tiny_model_dir), tiny_tokenizer)
    q_saved = model.model.layers[0].self_attn.q_proj.weight
    q_base = base.model.layers[0].self_attn.q_proj.weight
    assert not torch.allclose(q_saved, q_base)  # the adapter's update was merged in
    features = {f["row"]: f for f in tokenized(data, tiny_tokenizer)}
    scores = [json.loads(line) for line in (out / "eval_scores.jsonl").read_text().splitlines()]
    for s in scores:
        f = features[s["row"]]
        h = reward_direct(model, f["prompt_ids"] + f["chosen_ids"]) - reward_direct(model, f["prompt_ids"] + f["rejected_ids"])
        assert h == pytest.approx(s["h"], abs=1e-4)
    assert math.isfinite(results["nll"])


@pytest.fixture(scope="module")
def lora_runs(tiny_model_dir, graded_rows, write_jsonl, tmp_path_factory):
    """Two identical LoRA runs, one saved merged (the default), one as its adapter (``merge_lora: false``)."""
    root = tmp_path_factory.mktemp("rm-lora")
    data = write_jsonl(root / "train.jsonl", graded_rows(12, seed=3))
    held_out = shutil.copy(data, root / "held-out.jsonl")
    runs = {}
    for merge in (True, False):
        out = root / ("merged" if merge else "adapter")
        config = rm_config(tiny_model_dir, data, out, eval_data=str(held_out), allow_eval_overlap=True, lora_r=2,
                           lora_alpha=8, max_steps=4, merge_lora=merge)
        assert train_reward_model(config).saved == ("merged" if merge else "adapter")
        runs["merged" if merge else "adapter"] = out
    return data, runs


def test_adapter_save_loads_with_the_merged_saves_rewards(lora_runs, tiny_tokenizer):
    from mmpo.evaluation.scoring import model_kind, score_pairs

    data, runs = lora_runs
    adapter, merged = runs["adapter"], runs["merged"]
    assert (adapter / "adapter_config.json").is_file() and not (adapter / "model.safetensors").exists()
    assert json.loads((adapter / "adapter_config.json").read_text())["task_type"] == "SEQ_CLS"
    assert model_kind(str(adapter)) == "reward"
    from_adapter = load_reward_model(str(adapter), tiny_tokenizer).eval()
    from_merged = load_reward_model(str(merged), tiny_tokenizer).eval()
    assert not hasattr(from_adapter, "peft_config") and from_adapter.config.pad_token_id == tiny_tokenizer.pad_token_id
    features = {f["row"]: f for f in tokenized(data, tiny_tokenizer)}
    scores = [json.loads(line) for line in (adapter / "eval_scores.jsonl").read_text().splitlines()]
    assert len(scores) == 12
    for s in scores:
        f = features[s["row"]]
        for ids in (f["prompt_ids"] + f["chosen_ids"], f["prompt_ids"] + f["rejected_ids"]):
            assert reward_direct(from_adapter, ids) == pytest.approx(reward_direct(from_merged, ids), abs=1e-5)
        h = reward_direct(from_adapter, f["prompt_ids"] + f["chosen_ids"]) - reward_direct(from_adapter, f["prompt_ids"] + f["rejected_ids"])
        assert h == pytest.approx(s["h"], abs=1e-4)  # the rewards the run evaluated in memory
    # `mmpo eval pairs` (and the graders, serving and labelling built on it) detect and load the adapter the same way.
    pairs, _ = load_pairs(str(data), PairOptions(gamma=1.0))
    from_adapter_scores = [r for pair in score_pairs(pairs, str(adapter), max_length=96, progress=False) for r in pair]
    from_merged_scores = [r for pair in score_pairs(pairs, str(merged), max_length=96, progress=False) for r in pair]
    assert from_adapter_scores == pytest.approx(from_merged_scores, abs=1e-5)
    # The LoRA update is stored as its low-rank factors and the head, not as a second copy of every weight.
    assert (adapter / "adapter_model.safetensors").stat().st_size * 5 < (merged / "model.safetensors").stat().st_size


def test_adapter_save_holds_the_trained_head_and_update(lora_runs, tiny_model_dir, tiny_tokenizer):
    data, runs = lora_runs
    from_adapter = load_reward_model(str(runs["adapter"]), tiny_tokenizer).eval()
    from_merged = load_reward_model(str(runs["merged"]), tiny_tokenizer).eval()
    torch.manual_seed(0)
    untrained = load_reward_model(str(tiny_model_dir), tiny_tokenizer).eval()  # the base with a fresh head
    assert torch.equal(from_adapter.score.weight, from_merged.score.weight)
    assert not torch.allclose(from_adapter.score.weight, untrained.score.weight)
    q = from_adapter.model.layers[-1].self_attn.q_proj.weight
    assert not torch.allclose(q, untrained.model.layers[-1].self_attn.q_proj.weight)  # the update was merged in
    f = tokenized(data, tiny_tokenizer)[0]
    ids = f["prompt_ids"] + f["chosen_ids"]
    assert abs(reward_direct(from_adapter, ids) - reward_direct(untrained, ids)) > 1e-3


def test_resume_continues_from_the_last_checkpoint(tiny_model_dir, pair_file, tmp_path, capsys):
    data = pair_file(n=24, seed=4)
    out = tmp_path / "resume"
    common = dict(save_steps=2, eval_split=0.0, save_total_limit=3)
    train_reward_model(rm_config(tiny_model_dir, data, out, max_steps=6, **common))
    # As if killed while step 6 was being saved: checkpoint-4 is the last complete one, no final files.
    for name in ("model.safetensors", "config.json", "eval_results.json"):
        (out / name).unlink()
    shutil.rmtree(out / "checkpoint-6")
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    capsys.readouterr()

    train_reward_model(rm_config(tiny_model_dir, data, out, max_steps=6, **common))
    assert f"resuming from {out / 'checkpoint-4'}" in capsys.readouterr().out
    state = json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["global_step"] == 6
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in logged if "loss" in r]
    # A fresh start would log step 1 again; a resumed run continues at step 5.
    assert train_steps == [1, 2, 3, 4, 5, 6]
    assert (out / "model.safetensors").exists()


def test_resume_false_starts_over(tiny_model_dir, pair_file, tmp_path, capsys):
    data = pair_file(n=16, seed=5)
    out = tmp_path / "fresh"
    train_reward_model(rm_config(tiny_model_dir, data, out, max_steps=2, save_steps=2, eval_split=0.0))
    capsys.readouterr()
    train_reward_model(rm_config(tiny_model_dir, data, out, max_steps=2, save_steps=2, eval_split=0.0, resume=False))
    assert "resuming" not in capsys.readouterr().out
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "loss" in r] == [1, 2]  # the earlier run's lines went with it


@pytest.mark.integration
def test_embedded_reward_model_trains_and_evaluates(pair_file, tmp_path):
    """The embedded SmolLM2 as a LoRA reward model: 2 steps, then `mmpo eval pairs` on the saved model."""
    from mmpo.cli.main import main

    data = pair_file(n=6, seed=6)
    out = tmp_path / "embedded-rm"
    config = load_config(RMConfig, None, dict(
        model="embedded", data=str(data), eval_data=str(shutil.copy(data, tmp_path / "held-out.jsonl")), allow_eval_overlap=True,
        output_dir=str(out), max_length=64, max_steps=2,
        per_device_train_batch_size=2, per_device_eval_batch_size=6, learning_rate=1e-4, lora_r=4, logging_steps=1,
    ))
    results = train_reward_model(config).metrics
    assert results["n"] == 6 and 0.0 <= results["accuracy"] <= 1.0 and math.isfinite(results["nll"])
    assert not (out / "adapter_config.json").exists()
    scores_file = tmp_path / "scores.jsonl"
    rc = main(["eval", "pairs", "--model", str(out), "--data", str(data), "--out", str(tmp_path / "m.json"),
               "--scores", str(scores_file), "--batch-size", "6"])
    assert rc == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["kind"] == "reward" and metrics["n"] == 6 and metrics["max_length"] == 64  # from config.yaml
    # `mmpo eval pairs` on the saved (merged) model agrees with the trainer's own final evaluation.
    by_row = {json.loads(l)["row"]: json.loads(l) for l in scores_file.read_text().splitlines()}
    for line in (out / "eval_scores.jsonl").read_text().splitlines():
        s = json.loads(line)
        mine = by_row[s["row"]]
        assert mine["chosen_reward"] - mine["rejected_reward"] == pytest.approx(s["h"], abs=1e-3)
    assert metrics["accuracy"] == pytest.approx(results["accuracy"])
    shutil.rmtree(out)
