"""`mmpo compare`: intervals by hand on recorded values, the truth check, and a 2-loss x 2-seed run on a tiny model."""

import json
import math

import numpy as np
import pytest

from mmpo.cli.main import main
from mmpo.errors import UserError
from mmpo.evaluation.metrics import pair_metrics
from mmpo.reports.comparison import check_same_truth, compare_values, parse_list, render_table, seed_band
from mmpo.reports.intervals import distinguishable, mean_interval, paired_difference, t_quantile_975


def test_t_quantiles():
    assert t_quantile_975(2) == 4.303 and t_quantile_975(1) == 12.706 and t_quantile_975(30) == 2.042
    # Beyond the table: the expansion against standard table values (df 60: 2.000, df 120: 1.980).
    assert abs(t_quantile_975(60) - 2.000) < 1e-3 and abs(t_quantile_975(120) - 1.980) < 1e-3
    assert t_quantile_975(31) < t_quantile_975(30)
    with pytest.raises(ValueError):
        t_quantile_975(0)


def test_mean_interval_by_hand():
    iv = mean_interval([0.60, 0.64, 0.68])  # mean 0.64, sd 0.04, half = 4.303 * 0.04 / sqrt(3)
    half = 4.303 * 0.04 / math.sqrt(3)
    assert iv["mean"] == pytest.approx(0.64) and iv["n"] == 3
    assert iv["low"] == pytest.approx(0.64 - half) and iv["high"] == pytest.approx(0.64 + half)
    one = mean_interval([0.5])
    assert one["low"] is None and one["high"] is None and not distinguishable(one["low"], one["high"])


def test_paired_difference_by_hand():
    # Differences 0.10, 0.12, 0.14: mean 0.12, sd 0.02, half = 4.303 * 0.02 / sqrt(3) = 0.0497 -> excludes 0.
    d = paired_difference([0.70, 0.72, 0.74], [0.60, 0.60, 0.60])
    half = 4.303 * 0.02 / math.sqrt(3)
    assert d["diff"] == pytest.approx(0.12) and d["low"] == pytest.approx(0.12 - half) and d["high"] == pytest.approx(0.12 + half)
    assert distinguishable(d["low"], d["high"])
    # Pairing matters: the same numbers unpaired-looking but with crossing differences (+0.1, -0.1, +0.03).
    crossing = paired_difference([0.7, 0.5, 0.63], [0.6, 0.6, 0.6])
    assert crossing["low"] < 0 < crossing["high"] and not distinguishable(crossing["low"], crossing["high"])
    with pytest.raises(ValueError):
        paired_difference([1, 2], [1])


def test_compare_values_and_table_on_recorded_values():
    values = {
        "mmpo": {0: {"nll": 0.60, "accuracy": 0.70}, 1: {"nll": 0.62, "accuracy": 0.66}, 2: {"nll": 0.61, "accuracy": 0.71}},
        "bt": {0: {"nll": 0.70, "accuracy": 0.69}, 1: {"nll": 0.75, "accuracy": 0.70}, 2: {"nll": 0.71, "accuracy": 0.70}},
    }
    c = compare_values(values, ["mmpo", "bt"], [0, 1, 2], metrics=("nll", "accuracy"))
    nll = c["metrics"]["nll"]
    diffs = np.array([0.60 - 0.70, 0.62 - 0.75, 0.61 - 0.71])  # -0.10, -0.13, -0.10
    half = 4.303 * diffs.std(ddof=1) / math.sqrt(3)
    assert nll["mmpo"] == pytest.approx(0.61) and nll["bt"] == pytest.approx(0.72)
    assert nll["diff"] == pytest.approx(diffs.mean()) and nll["low"] == pytest.approx(diffs.mean() - half)
    assert nll["high"] == pytest.approx(diffs.mean() + half) and nll["high"] < 0 and nll["distinguishable"]
    acc = c["metrics"]["accuracy"]
    assert acc["low"] < 0 < acc["high"] and not acc["distinguishable"]
    table = render_table(c)
    assert "| nll | 0.610 +- " in table and "yes: mmpo better" in table
    assert "| accuracy |" in table and table.count("| no |") == 1
    assert "t-interval over seeds" in c["interval"]


def test_parse_list():
    assert parse_list("mmpo, bt", "losses") == ["mmpo", "bt"]
    assert parse_list("0,1,2", "seeds", int) == [0, 1, 2]
    for bad in ("", "0,0", "a"):
        with pytest.raises(UserError):
            parse_list(bad, "seeds", int)


def test_seed_band_uses_common_points():
    x, mean, low, high = seed_band([[(0.5, 1.0), (1.0, 0.8)], [(0.5, 3.0), (1.0, 0.6), (1.5, 0.1)]])
    assert x.tolist() == [0.5, 1.0] and mean.tolist() == [2.0, 0.7] and low.tolist() == [1.0, 0.6] and high.tolist() == [3.0, 0.8]


def _scores(path, p):
    path.mkdir(parents=True)
    with open(path / "eval_scores.jsonl", "w") as f:
        for i, pi in enumerate(p):
            f.write(json.dumps({"row": i, "h": 0.1 * i, "p": pi, "margin": 1.0}) + "\n")
    return path


def test_check_same_truth_refuses_different_targets(tmp_path):
    a = _scores(tmp_path / "a", [0.7, 0.8])
    b = _scores(tmp_path / "b", [0.7, 0.8])
    check_same_truth({"mmpo": a, "bt": b}, 0)
    c = _scores(tmp_path / "c", [1.0, 1.0])
    with pytest.raises(UserError, match="different held-out pairs or targets"):
        check_same_truth({"mmpo": a, "bt": c}, 0)


def test_compare_trains_every_loss_and_seed_and_resumes(tiny_model_dir, pair_file, tmp_path, capsys):
    out = tmp_path / "cmp"
    data = pair_file(48)
    argv = ["compare", "--losses", "mmpo,bt", "--seeds", "0,1", "--kind", "rm", "--out", str(out), "--model", str(tiny_model_dir),
            "--data", str(data), "--eval_split", "0.3", "--max_steps", "4", "--eval_steps", "2", "--per_device_train_batch_size", "4",
            "--max_length", "96", "--learning_rate", "1e-2", "--gamma", "0.5", "--logging_steps", "1"]
    assert main(argv) == 0
    c = json.loads((out / "comparison.json").read_text())
    assert c["losses"] == ["mmpo", "bt"] and c["seeds"] == [0, 1]
    # Recompute from the written per-pair scores: the paired difference and its t-interval (df 1: t = 12.706).
    per = {}
    for loss in ("mmpo", "bt"):
        for seed in (0, 1):
            recs = [json.loads(l) for l in (out / f"{loss}-seed{seed}" / "eval_scores.jsonl").read_text().splitlines()]
            per[loss, seed] = pair_metrics([r["h"] for r in recs], [r["p"] for r in recs])["nll"]
            # Each run is a normal run directory; BT trained with the same held-out targets as MMPO.
            assert max(r["p"] for r in recs) < 1.0
    d = np.array([per["mmpo", s] - per["bt", s] for s in (0, 1)])
    half = 12.706 * d.std(ddof=1) / math.sqrt(2)
    nll = c["metrics"]["nll"]
    assert nll["diff"] == pytest.approx(d.mean()) and nll["low"] == pytest.approx(d.mean() - half) and nll["high"] == pytest.approx(d.mean() + half)
    assert nll["mmpo"] == pytest.approx((per["mmpo", 0] + per["mmpo", 1]) / 2)
    # Same data per seed across losses; a different sample across seeds.
    reports = {(l, s): (out / f"{l}-seed{s}" / "data_report.json").read_text() for l in ("mmpo", "bt") for s in (0, 1)}
    assert reports["mmpo", 0] == reports["bt", 0]
    # Evaluation during training was logged (steps 2 and the final 4) and plotted.
    logged = [json.loads(l) for l in (out / "mmpo-seed0" / "metrics.jsonl").read_text().splitlines()]
    assert sorted({r["step"] for r in logged if "eval_nll" in r}) == [2, 4]
    for name in ("comparison.md", "comparison.png", "curves.png"):
        assert (out / name).stat().st_size > 0
    assert "distinguishable from 0?" in capsys.readouterr().out
    # A rerun reuses every finished run.
    stamp = (out / "bt-seed1" / "eval_scores.jsonl").stat().st_mtime_ns
    assert main(argv) == 0
    assert capsys.readouterr().out.count("finished earlier") == 4
    assert (out / "bt-seed1" / "eval_scores.jsonl").stat().st_mtime_ns == stamp
    # Other settings into the same directory: refused, not silently reused.
    assert main([*argv[:-6], "--learning_rate", "5e-3", "--gamma", "0.5", "--logging_steps", "1"]) == 2
    assert "holds a run with other settings" in capsys.readouterr().err


def test_compare_refuses_keys_it_sets(tiny_model_dir, pair_file, tmp_path, capsys):
    code = main(["compare", "--losses", "mmpo,bt", "--out", str(tmp_path / "x"), "--model", str(tiny_model_dir),
                 "--data", str(pair_file(8)), "--seed", "3"])
    assert code == 2 and "--seed is set by mmpo compare" in capsys.readouterr().err


def _two_loss_values(seeds):
    acc = {"mmpo": [0.70, 0.20, 0.9], "bt": [0.69, 0.70, 0.7]}
    return {loss: {s: {"accuracy": acc[loss][s]} for s in seeds} for loss in acc}


def test_two_seeds_warn_and_keep_the_interval_as_computed():
    c = compare_values(_two_loss_values([0, 1]), ["mmpo", "bt"], [0, 1], metrics=("accuracy",))
    iv = c["metrics"]["accuracy"]["intervals"]["mmpo"]
    half = 12.706 * np.std([0.70, 0.20], ddof=1) / math.sqrt(2)
    assert iv["low"] == pytest.approx(0.45 - half) and iv["low"] < 0 and iv["high"] > 1  # not clipped to [0, 1]
    assert "2 seeds" in c["warning"] and "3 or more seeds" in c["warning"]
    table = render_table(c)
    assert c["warning"] in table and "t-interval" in table


def test_one_seed_says_no_interval_and_three_seeds_do_not_warn():
    c = compare_values(_two_loss_values([0]), ["mmpo", "bt"], [0], metrics=("accuracy",))
    assert c["interval"].startswith("no interval") and "one seed" in c["warning"]
    table = render_table(c)
    assert "no interval" in table and "t-interval" not in table and "+-" not in table
    three = compare_values(_two_loss_values([0, 1, 2]), ["mmpo", "bt"], [0, 1, 2], metrics=("accuracy",))
    assert "warning" not in three and "warning" not in render_table(three)
