"""Output to a file or pipe: no progress-bar control characters, short lines, one plain line per logging step."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mmpo.training.base import plain_log_line


def test_plain_log_lines_show_a_few_numbers():
    logs = {"loss": 0.69314, "grad_norm": 0.13, "learning_rate": 1e-5, "epoch": 0.5, "train_accuracy": 0.625,
            "train_margin": 0.01, "train_chosen_reward": 0.2, "train_rejected_reward": 0.1,
            "train_policy_chosen_logps": -123.4, "train_policy_rejected_logps": -120.1}
    assert plain_log_line(20, 100, logs) == "step 20/100: loss 0.6931  accuracy 0.625  margin 0.01  grad_norm 0.13  lr 1e-05"
    assert plain_log_line(20, 100, {"eval_loss": 0.5, "eval_nll": 0.51, "eval_runtime": 3.0}) == (
        "step 20/100 held-out: loss 0.5  nll 0.51")
    assert plain_log_line(3, 3, {"train_runtime": 12.34, "train_loss": 0.6}) == "step 3/3: trained in 12.3 s, mean loss 0.6"
    assert plain_log_line(3, 3, {"total_flos": 5}) is None
    # A finished run resumed trains no step: no "mean loss 0".
    assert plain_log_line(3, 3, {"train_runtime": 0.0, "train_loss": 0.0}, steps_this_run=0) == (
        "step 3/3: already trained (resumed from its last checkpoint)")
    assert plain_log_line(3, 3, {"train_runtime": 1.0, "train_loss": 0.6}, steps_this_run=1).endswith("mean loss 0.6")


def test_the_plain_log_counts_the_steps_this_process_trained(capsys):
    from types import SimpleNamespace

    from mmpo.training.base import PlainLogCallback

    done = {"train_runtime": 0.0, "train_loss": 0.0}
    for resumed_at, final in ((3, 3), (1, 3)):
        callback = PlainLogCallback()
        callback.on_train_begin(None, SimpleNamespace(global_step=resumed_at), None)
        callback.on_log(None, SimpleNamespace(global_step=final, max_steps=3, is_world_process_zero=True), None, logs=done)
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["step 3/3: already trained (resumed from its last checkpoint)", "step 3/3: trained in 0.0 s, mean loss 0"]


@pytest.mark.slow
@pytest.mark.parametrize("command", ["dpo", "rm"])
def test_training_log_to_a_pipe_has_no_control_characters_or_long_lines(tiny_model_dir, pair_file, tmp_path, command,
                                                                          subprocess_env):
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "mmpo.cli.main", command, "--model", str(tiny_model_dir), "--data", str(pair_file(24)),
            "--output_dir", str(out), "--max_steps", "3", "--logging_steps", "1", "--eval_steps", "2",
            "--per_device_train_batch_size", "4", "--max_length", "96", "--eval_split", "0.25", "--bf16", "false"]
    src = Path(__file__).resolve().parents[1] / "src"
    env = {**subprocess_env, "PYTHONPATH": os.pathsep.join([str(src), subprocess_env.get("PYTHONPATH", "")])}
    done = subprocess.run(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    log = done.stdout
    assert done.returncode == 0, log[-2000:]
    assert "\r" not in log and "\x1b" not in log
    long_lines = [line for line in log.splitlines() if len(line) > 200]
    assert not long_lines
    steps = [line for line in log.splitlines() if line.startswith("step ") and "held-out" not in line and "trained" not in line]
    assert [line.split(":")[0] for line in steps] == ["step 1/3", "step 2/3", "step 3/3"]


def test_data_report_counts_rows_and_pairs_apart(tmp_path, write_jsonl):
    from mmpo.data.pipeline import PairOptions, load_pairs

    def row(i):
        return {"instruction": f"Name colour {i}.", "models": ["a", "b", "c", "d"], "completions": [
            {"model": m, "response": f"{m} {i}", "overall_score": s, "fine-grained_score": s / 2}
            for m, s in zip("abcd", (9.0, 7.0, 5.0, 3.0))]}

    path = write_jsonl(tmp_path / "uf_raw.jsonl", [row(0), row(1)])
    pairs, report = load_pairs({"source": "ultrafeedback_raw", "path": str(path)}, PairOptions(max_pairs=3))
    assert (report.read, report.pairs, report.kept) == (2, 12, 3)
    assert report.pairs - sum(report.dropped.values()) == report.kept  # drops count pairs, as kept does
    text = report.render()
    assert text.splitlines()[0].endswith("read 2 rows -> 12 pairs, kept 3 pairs")
    assert "  dropped 9 pairs: over max_pairs=3" in text


@pytest.mark.parametrize("extra", [[], ["--batch-size", "0"]])
def test_eval_pairs_checks_its_arguments_before_printing_the_data_report(tiny_model_dir, pair_file, tmp_path, capsys, extra):
    from mmpo.cli.main import main

    model = tmp_path / "nope" if not extra else tiny_model_dir
    rc = main(["eval", "pairs", "--model", str(model), "--data", str(pair_file(n=4)), "--ref-model", "none",
               "--out", str(tmp_path / "m.json"), *extra])
    captured = capsys.readouterr()
    assert rc == 2 and len(captured.err.strip().splitlines()) == 1
    assert "data " not in captured.out  # no data report before the error
