"""Issue 14.1, 14.2, 14.7: a rerun in the same output_dir resumes only a run with the same settings, reuses a
finished run as it is (also after a kill during the final evaluation or save), and a run that fails before
training leaves no output directory behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmpo.config import RMConfig, load_config
from mmpo.errors import UserError
from mmpo.training.rm import RewardTrainer, train_reward_model


def rm_config(model_dir: Path, data: Path, out: Path, **overrides) -> RMConfig:
    values = dict(model=str(model_dir), data=str(data), output_dir=str(out), max_length=96, max_steps=2,
                  save_steps=1, per_device_train_batch_size=4, per_device_eval_batch_size=8, learning_rate=5e-3,
                  logging_steps=1, eval_split=0.25)
    values.update(overrides)
    return load_config(RMConfig, None, values)


def logged(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def checkpoints(out: Path) -> list[str]:
    return sorted(p.name for p in out.glob("checkpoint-*"))


def test_settings_differences_ignore_bookkeeping_and_keys_older_runs_lack():
    from mmpo.training.run_dir import settings_differences

    saved = {"gamma": 1.0, "loss": "mmpo", "logging_steps": 10, "save_steps": 5}
    current = {"gamma": 2.0, "loss": "mmpo", "logging_steps": 1, "save_steps": 50, "max_length": 512}
    assert settings_differences(saved, current, {"max_length": 512}) == ["gamma 1.0 -> 2.0"]
    assert settings_differences(saved, {**current, "max_length": 256}, {"max_length": 512}) == [
        "gamma 1.0 -> 2.0", "max_length 512 -> 256"]


def test_rerun_with_other_settings_is_refused_with_the_keys_and_ways_out(tiny_model_dir, pair_file, tmp_path):
    data, out = pair_file(24), tmp_path / "run"
    train_reward_model(rm_config(tiny_model_dir, data, out))
    before = (out / "config.yaml").read_text(), (out / "metrics.jsonl").read_text()
    other_data = pair_file(24, seed=1, name="other.jsonl")
    with pytest.raises(UserError) as err:
        train_reward_model(rm_config(tiny_model_dir, other_data, out, gamma=2.0, loss="bt"))
    message = str(err.value)
    assert "\n" not in message
    assert "loss mmpo -> bt" in message and "gamma 1.0 -> 2.0" in message and "pairs.jsonl -> " in message and "other.jsonl;" in message
    assert "output_dir" in message and "resume: false" in message and "overwrite_output_dir: true" in message
    assert ((out / "config.yaml").read_text(), (out / "metrics.jsonl").read_text()) == before  # untouched

    # The ways out: start over in the same directory.
    results = train_reward_model(rm_config(tiny_model_dir, other_data, out, gamma=2.0, loss="bt", overwrite_output_dir=True)).metrics
    assert load_config(RMConfig, out / "config.yaml").loss == "bt"
    assert [r["step"] for r in logged(out) if "loss" in r] == [1, 2] and results["step"] == 2
    train_reward_model(rm_config(tiny_model_dir, data, out, resume=False))
    assert load_config(RMConfig, out / "config.yaml").loss == "mmpo"
    assert [r["step"] for r in logged(out) if "loss" in r] == [1, 2]


def test_a_finished_run_is_reused_even_with_other_bookkeeping(tiny_model_dir, pair_file, tmp_path, capsys):
    data, out = pair_file(24), tmp_path / "run"
    first = train_reward_model(rm_config(tiny_model_dir, data, out)).metrics
    lines = (out / "metrics.jsonl").read_text()
    capsys.readouterr()
    again = train_reward_model(rm_config(tiny_model_dir, data, out, logging_steps=5, save_steps=10,
                                         per_device_eval_batch_size=2, save_total_limit=1)).metrics
    assert again == first and first["step"] == 2
    assert "holds this run, finished at step 2: reusing it" in capsys.readouterr().out
    assert checkpoints(out) == ["checkpoint-1", "checkpoint-2"]  # no step 3
    assert (out / "metrics.jsonl").read_text() == lines  # nothing logged twice


def test_a_kill_during_the_final_evaluation_then_a_rerun_ends_at_max_steps(tiny_model_dir, pair_file, tmp_path):
    data, out = pair_file(24), tmp_path / "run"
    original = RewardTrainer.save_eval_scores

    def killed(self, *args, **kwargs):
        self.log({"eval_loss": 0.5})  # a final evaluation logged just before the kill
        raise KeyboardInterrupt

    RewardTrainer.save_eval_scores = killed
    try:
        with pytest.raises(KeyboardInterrupt):
            train_reward_model(rm_config(tiny_model_dir, data, out))
    finally:
        RewardTrainer.save_eval_scores = original
    assert checkpoints(out) == ["checkpoint-1", "checkpoint-2"] and not (out / "eval_results.json").exists()

    results = train_reward_model(rm_config(tiny_model_dir, data, out)).metrics
    assert results["step"] == 2 and checkpoints(out) == ["checkpoint-1", "checkpoint-2"]
    records = logged(out)
    assert [r["step"] for r in records if "loss" in r] == [1, 2]  # no third step, no step logged twice
    finals = [r for r in records if "eval_nll" in r or r.get("eval_loss") == 0.5]
    assert len(finals) == 1 and "eval_nll" in finals[0]  # the killed run's line is gone, the rerun's is there


def test_a_resume_after_a_kill_mid_run_logs_each_step_once(tiny_model_dir, pair_file, tmp_path, capsys):
    data, out = pair_file(24), tmp_path / "run"
    train_reward_model(rm_config(tiny_model_dir, data, out, max_steps=4, save_steps=2, eval_split=0.0))
    # As if killed after step 4 was logged but before checkpoint-4 and the final files were complete.
    for name in ("eval_results.json", "model.safetensors"):
        (out / name).unlink()
    import shutil

    shutil.rmtree(out / "checkpoint-4")
    capsys.readouterr()
    train_reward_model(rm_config(tiny_model_dir, data, out, max_steps=4, save_steps=2, eval_split=0.0, save_total_limit=5))
    assert f"resuming from {out / 'checkpoint-2'}" in capsys.readouterr().out
    assert [r["step"] for r in logged(out) if "loss" in r] == [1, 2, 3, 4]  # 3 and 4 trained again, logged once


def test_a_run_that_fails_before_training_leaves_no_output_dir(tiny_model_dir, tmp_path, write_jsonl):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "p", "chosen": "a"}])  # no rejected
    out = tmp_path / "never"
    with pytest.raises(UserError):
        train_reward_model(rm_config(tiny_model_dir, bad, out))
    assert not out.exists()
