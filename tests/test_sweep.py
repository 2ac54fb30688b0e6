"""`mmpo sweep`: one run per gamma, a report, and the lowest held-out NLL named."""

import json
from pathlib import Path

import pytest
import yaml

from mmpo.cli.main import main
from mmpo.errors import UserError
from mmpo.gamma import parse_gamma_list


def test_parse_gamma_list():
    assert parse_gamma_list("0.3, 1,2.2,none") == [0.3, 1.0, 2.2, None]
    for bad in ("0", "-1", "x", ""):
        with pytest.raises(UserError):
            parse_gamma_list(bad)


def test_sweep_trains_each_gamma_and_names_the_lowest_nll(tiny_model_dir, pair_file, tmp_path, capsys):
    out = tmp_path / "sweep"
    code = main(["sweep", "--gamma", "0.5,none", "--kind", "rm", "--model", str(tiny_model_dir), "--data", str(pair_file(48)),
                 "--eval_split", "0.3", "--eval_gamma", "1", "--max_steps", "3", "--per_device_train_batch_size", "4",
                 "--max_length", "96", "--learning_rate", "1e-2", "--output_dir", str(out)])
    assert code == 0
    result = json.loads((out / "sweep.json").read_text())
    assert set(result["runs"]) == {"gamma-0.5", "gamma-none"}
    nlls = {name: r["nll_binary"] for name, r in result["runs"].items()}
    best = "gamma-none" if result["best_gamma"] is None else f"gamma-{result['best_gamma']:g}"
    assert nlls[best] == min(nlls.values())
    # Each run trained with its own gamma (the saved configs) and was scored against the same truth, eval_gamma 1.
    assert [yaml.safe_load((out / g / "config.yaml").read_text())["gamma"] for g in ("gamma-0.5", "gamma-none")] == [0.5, None]
    hard = [json.loads(line)["p"] for line in (out / "gamma-none" / "eval_scores.jsonl").read_text().splitlines()]
    soft = [json.loads(line)["p"] for line in (out / "gamma-0.5" / "eval_scores.jsonl").read_text().splitlines()]
    assert hard == soft and max(soft) < 1.0
    assert (out / "report" / "report.md").exists() and (out / "report" / "reliability.png").exists()
    assert f"lowest held-out NLL: {best}" in capsys.readouterr().out


def test_sweep_with_seeds_reports_intervals(tiny_model_dir, pair_file, tmp_path, capsys):
    import math

    import numpy as np

    from mmpo.reports.report import read_run, summary_row

    out = tmp_path / "sweep"
    code = main(["sweep", "--gamma", "0.5,none", "--seeds", "0,1", "--kind", "rm", "--model", str(tiny_model_dir),
                 "--data", str(pair_file(48)), "--eval_split", "0.3", "--eval_gamma", "1", "--max_steps", "2", "--per_device_train_batch_size", "4",
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


def test_every_gamma_is_scored_on_the_same_held_out_pairs_ties_included(tiny_model_dir, graded_rows, write_jsonl, tmp_path):
    """A hard-label run holds out the same pairs as a soft one (its training ties are dropped after the split,
    not its held-out ones), and the sweep checks that on the written scores."""
    rows = graded_rows(48, seed=5)
    for row in rows[::4]:
        row["score_rejected"] = row["score_chosen"]  # a quarter of the pairs are ties
    data = write_jsonl(tmp_path / "ties.jsonl", rows)
    out = tmp_path / "sweep"
    code = main(["sweep", "--gamma", "0.5,none", "--kind", "rm", "--model", str(tiny_model_dir), "--data", str(data),
                 "--eval_split", "0.4", "--eval_gamma", "1", "--max_steps", "1", "--per_device_train_batch_size", "4",
                 "--max_length", "96", "--output_dir", str(out)])
    assert code == 0
    scored = {g: [(r["row"], r["p"]) for r in map(json.loads, (out / g / "eval_scores.jsonl").read_text().splitlines())]
              for g in ("gamma-0.5", "gamma-none")}
    assert scored["gamma-0.5"] == scored["gamma-none"] and any(p == 0.5 for _, p in scored["gamma-none"])


def test_sweep_refuses_eval_gamma_same(capsys):
    assert main(["sweep", "--gamma", "0.5,none", "--kind", "rm", "--data", "x.jsonl", "--eval_gamma", "same"]) == 2
    assert "set eval_gamma" in capsys.readouterr().err


def test_sweep_refuses_runs_scored_on_different_held_out_pairs(monkeypatch, tmp_path):
    """Runs reused from earlier (or trained on other data) with other held-out rows are not ranked."""
    from mmpo.experiments import compare as comparison
    from mmpo.experiments.sweep import run_sweep

    def fake_run(kind, recipe, values):
        run = Path(values["output_dir"])
        run.mkdir(parents=True)
        rows = range(5) if values["gamma"] is None else range(6)
        (run / "eval_scores.jsonl").write_text("".join(json.dumps({"row": i, "h": 0.1, "p": 0.7}) + "\n" for i in rows))
        return run

    monkeypatch.setattr(comparison, "train_or_reuse", fake_run)
    with pytest.raises(UserError, match="gamma-0.5 and gamma-none were scored on different held-out pairs"):
        run_sweep("rm", None, [0.5, None], ["--data", "x.jsonl", "--eval_gamma", "1"], str(tmp_path / "sweep"))
