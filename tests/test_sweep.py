"""`mmpo sweep`: one run per gamma, a report, and the lowest held-out NLL named."""

import json

import pytest

from mmpo.cli.main import main
from mmpo.errors import UserError
from mmpo.reports.sweep import parse_gammas


def test_parse_gammas():
    assert parse_gammas("0.3, 1,2.2,none") == [0.3, 1.0, 2.2, None]
    for bad in ("0", "-1", "x", ""):
        with pytest.raises(UserError):
            parse_gammas(bad)


def test_sweep_trains_each_gamma_and_names_the_lowest_nll(tiny_model_dir, pair_file, tmp_path, capsys):
    out = tmp_path / "sweep"
    code = main(["sweep", "--gamma", "0.5,none", "--kind", "rm", "--model", str(tiny_model_dir), "--data", str(pair_file(48)),
                 "--eval_split", "0.3", "--max_steps", "3", "--per_device_train_batch_size", "4", "--max_length", "96",
                 "--learning_rate", "1e-2", "--output_dir", str(out)])
    assert code == 0
    result = json.loads((out / "sweep.json").read_text())
    assert set(result["runs"]) == {"gamma-0.5", "gamma-none"}
    nlls = {name: r["nll_binary"] for name, r in result["runs"].items()}
    best = "gamma-none" if result["best_gamma"] is None else f"gamma-{result['best_gamma']:g}"
    assert nlls[best] == min(nlls.values())
    # Each run trained with its own gamma: the hard-label run's held-out targets are all 1.
    hard = [json.loads(line)["p"] for line in (out / "gamma-none" / "eval_scores.jsonl").read_text().splitlines()]
    soft = [json.loads(line)["p"] for line in (out / "gamma-0.5" / "eval_scores.jsonl").read_text().splitlines()]
    assert set(hard) == {1.0} and max(soft) < 1.0
    assert (out / "report" / "report.md").exists() and (out / "report" / "reliability.png").exists()
    assert f"lowest held-out NLL: {best}" in capsys.readouterr().out


def test_sweep_with_seeds_reports_intervals(tiny_model_dir, pair_file, tmp_path, capsys):
    import math

    import numpy as np

    from mmpo.reports.compare import read_run, summary_row

    out = tmp_path / "sweep"
    code = main(["sweep", "--gamma", "0.5,none", "--seeds", "0,1", "--kind", "rm", "--model", str(tiny_model_dir),
                 "--data", str(pair_file(48)), "--eval_split", "0.3", "--max_steps", "2", "--per_device_train_batch_size", "4",
                 "--max_length", "96", "--learning_rate", "1e-2", "--output_dir", str(out)])
    assert code == 0
    result = json.loads((out / "sweep.json").read_text())
    nll = {g: [summary_row(read_run(out / g / f"seed-{s}"))["nll_binary"] for s in (0, 1)] for g in ("gamma-0.5", "gamma-none")}
    for g, values in nll.items():
        r = result["runs"][g]
        half = 12.706 * np.std(values, ddof=1) / math.sqrt(2)  # t(0.975, 1 df)
        assert r["nll_binary"] == pytest.approx(np.mean(values)) and r["high"] == pytest.approx(np.mean(values) + half)
    best = "gamma-none" if result["best_gamma"] is None else "gamma-0.5"
    other = "gamma-0.5" if best == "gamma-none" else "gamma-none"
    assert np.mean(nll[best]) <= np.mean(nll[other])
    gap = result["runs"][other]["minus_best"]
    assert gap["diff"] == pytest.approx(np.mean(nll[other]) - np.mean(nll[best]))
    assert "minus the best [95% CI]" in capsys.readouterr().out
