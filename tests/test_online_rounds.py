"""`mmpo online`: a round's train loss is the round's mean, and a round without pairs copies no policy."""

import json

from mmpo.config import load_config
from mmpo.training.online import OnlineConfig, read_jsonl, round_training_stats, train_online


def test_round_training_stats_cover_every_step_not_the_first():
    records = [
        {"step": 1, "loss": 0.9, "train_accuracy": 0.0},
        {"step": 4, "loss": 0.5, "train_accuracy": 1.0},  # the mean over steps 2-4
        {"step": 4, "eval_loss": 0.6},
        {"step": 4, "train_runtime": 1.0, "train_loss": 0.55},
    ]
    stats = round_training_stats(records)
    assert stats == {"train_loss": 0.55, "train_accuracy": 0.75, "last_step": 4}


def _prompts(path, n, start=0):
    path.write_text("".join(json.dumps({"prompt": f"Say something about the number {i}."}) + "\n"
                            for i in range(start, start + n)))
    return str(path)


def test_a_round_without_pairs_copies_nothing_and_the_next_trains_from_the_last_policy(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("MMPO_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    values = {
        "model": str(tiny_model_dir), "prompts": _prompts(tmp_path / "p.jsonl", 4),
        "eval_prompts": _prompts(tmp_path / "e.jsonl", 2, start=100), "rounds": 1, "prompts_per_round": 2,
        "samples_per_prompt": 3, "max_new_tokens": 8, "generation_batch_size": 2, "steps_per_round": 3,
        "per_device_train_batch_size": 2, "learning_rate": 1e-3, "max_length": 96, "logging_steps": 2,
        "reference": "precomputed", "gamma": 0.5, "output_dir": str(out), "seed": 3, "bf16": False,
    }
    records = train_online(load_config(OnlineConfig, None, values), grader=lambda reqs: [5.0] * len(reqs)).details["rounds"]
    assert records[1]["pairs_kept"] == 0
    assert not (out / "round-1" / "policy").exists()  # carried over without a copy

    values["rounds"] = 2
    records = train_online(load_config(OnlineConfig, None, values),
                           grader=lambda reqs: [float(min(10, len(set(r.response)))) for r in reqs]).details["rounds"]
    import yaml

    policy = out / "round-2" / "policy"
    assert yaml.safe_load((policy / "config.yaml").read_text())["model"] == str(tiny_model_dir)
    final = [x for x in read_jsonl(policy / "metrics.jsonl") if "train_loss" in x]
    steps = [x for x in read_jsonl(policy / "metrics.jsonl") if "loss" in x]
    assert records[2]["train_loss"] == final[-1]["train_loss"] and records[2]["train_steps"] == 3
    assert [x["step"] for x in steps] == [1, 2] and steps[0]["loss"] != final[-1]["train_loss"]


def test_train_online_returns_the_training_summary(tmp_path, tiny_model_dir, write_jsonl):
    """Every training entry point returns a TrainSummary; online's holds its rounds and the last held-out grade."""
    from mmpo.training.run import TrainSummary

    train = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"Say {w}."} for w in ("one", "two", "three", "four")])
    held = write_jsonl(tmp_path / "e.jsonl", [{"prompt": "Say five."}, {"prompt": "Say six."}])
    values = {"model": str(tiny_model_dir), "prompts": str(train), "eval_prompts": str(held), "rounds": 1,
              "prompts_per_round": 2, "samples_per_prompt": 2, "max_new_tokens": 4, "generation_batch_size": 2,
              "steps_per_round": 1, "per_device_train_batch_size": 2, "max_length": 64, "reference": "precomputed",
              "output_dir": str(tmp_path / "run")}
    summary = train_online(load_config(OnlineConfig, None, values), grader=lambda reqs: [float(len(r.response) % 7) for r in reqs])
    assert isinstance(summary, TrainSummary) and summary.kind == "online" and summary.output_dir == str(tmp_path / "run")
    rounds = summary.details["rounds"]
    assert [r["round"] for r in rounds] == [0, 1]
    assert summary.metrics["mean_grade"] == rounds[-1]["eval_mean_grade"]
    assert summary.global_step == sum(r.get("train_steps") or 0 for r in rounds)
