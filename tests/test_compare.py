"""`mmpo compare`: intervals by hand on recorded values, the truth check, and a 2-loss x 2-seed run on a tiny model."""

import json
import math

import numpy as np
import pytest

from mmpo.cli.main import main
from mmpo.errors import UserError
from mmpo.evaluation.metrics import pair_metrics
from mmpo.experiments.compare import check_same_truth, compare_values, parse_list, render_table, seed_band
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


def test_differences_during_training_pair_each_evaluation_by_seed():
    from mmpo.experiments.compare import differences_during_training, render_during_training

    def run(nlls):  # one run's metrics.jsonl: a training log between evaluations, as the trainers write it
        return [row for e, v in enumerate(nlls, 1) for row in ({"loss": 1.0}, {"epoch": e, "eval_nll": v, "eval_accuracy": 0.5})]

    base = [[0.70, 0.65, 0.60], [0.72, 0.66, 0.61], [0.69, 0.64, 0.62]]
    ours = [[b[0], b[1] - 0.02, b[2] - 0.04 + 0.001 * i] for i, b in enumerate(base)]  # equal, then lower by ~0.02, ~0.04
    rows = differences_during_training({"ours": [run(x) for x in ours], "base": [run(x) for x in base]}, ["ours", "base"])
    assert [r["epoch"] for r in rows] == [1.0, 2.0, 3.0]
    for i, row in enumerate(rows):
        d = row["metrics"]["nll"]["ours"]
        expected = paired_difference([x[i] for x in ours], [x[i] for x in base])
        assert (d["diff"], d["low"], d["high"]) == pytest.approx((expected["diff"], expected["low"], expected["high"]))
    assert not rows[0]["metrics"]["nll"]["ours"]["distinguishable"]  # no difference at epoch 1
    assert rows[2]["metrics"]["nll"]["ours"]["distinguishable"] and rows[2]["metrics"]["nll"]["ours"]["diff"] < 0
    table = render_during_training(rows, ["ours", "base"])
    assert table.count(" * |") == 2 and "| nll: epoch | ours |" in table
    # A run cut short: only the evaluations every run has.
    short = differences_during_training({"ours": [run(x[:2]) for x in ours], "base": [run(x) for x in base]}, ["ours", "base"])
    assert len(short) == 2


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
    # ... and each of those evaluations compared, loss minus baseline, paired by seed.
    at_2 = {(l, s): next(json.loads(r)["eval_nll"] for r in (out / f"{l}-seed{s}" / "metrics.jsonl").read_text().splitlines()
                         if json.loads(r).get("step") == 2 and "eval_nll" in json.loads(r)) for l in ("mmpo", "bt") for s in (0, 1)}
    during = c["during_training"]
    assert len(during) == 2
    assert during[0]["metrics"]["nll"]["mmpo"]["diff"] == pytest.approx(np.mean([at_2["mmpo", s] - at_2["bt", s] for s in (0, 1)]))
    assert "During training" in (out / "comparison.md").read_text()
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


def _fake_runs(root, losses, seeds):
    """Per-run eval_scores.jsonl for each loss x seed: the same held-out targets per seed, logits per loss."""
    dirs, scores = {}, {}
    for seed in seeds:
        rng = np.random.default_rng(seed)
        p = rng.uniform(0.55, 0.95, size=12)
        truth = np.log(p / (1 - p))
        for i, loss in enumerate(losses):
            # Loss i scales the true logit by a factor and adds per-seed noise: different, seed-dependent metrics.
            h = truth * (1.0 - 0.3 * i) + rng.normal(0.0, 0.4 + 0.2 * i, size=p.size)
            run = root / f"{loss}-seed{seed}"
            run.mkdir(parents=True)
            run.joinpath("eval_scores.jsonl").write_text("".join(
                json.dumps({"row": r, "h": float(h[r]), "p": float(p[r]), "margin": 1.0}) + "\n" for r in range(p.size)))
            dirs.setdefault(loss, {})[seed] = run
            scores[loss, seed] = (h, p)
    return dirs, scores


def _by_hand(scores, loss, seeds):
    """Held-out NLL and accuracy per seed, computed here from the logits (not through pair_metrics)."""
    nll = [float(np.mean(p * np.logaddexp(0, -h) + (1 - p) * np.logaddexp(0, h))) for h, p in (scores[loss, s] for s in seeds)]
    acc = [float(np.mean((h > 0) + 0.5 * (h == 0))) for h, _ in (scores[loss, s] for s in seeds)]
    return {"nll": np.array(nll), "accuracy": np.array(acc)}


def _t_interval(x):
    """mean, low, high of the 95% t-interval (3 seeds: t(0.975, 2) = 4.303)."""
    half = 4.303 * np.std(x, ddof=1) / math.sqrt(len(x))
    return x.mean(), x.mean() - half, x.mean() + half


def test_three_losses_against_a_baseline_json_ranking_and_plot(tmp_path):
    from mmpo.experiments.compare import baseline_last, summarize

    losses = baseline_last(["mmpo", "dpo", "odpo"], "dpo")
    assert losses == ["mmpo", "odpo", "dpo"]
    seeds = [0, 1, 2]
    dirs, scores = _fake_runs(tmp_path / "runs", losses, seeds)
    out = tmp_path / "cmp"
    summarize(dirs, losses, seeds, out)
    c = json.loads((out / "comparison.json").read_text())
    assert c["losses"] == losses and c["baseline"] == "dpo" and "vs" not in c["metrics"]["nll"]
    by_hand = {loss: _by_hand(scores, loss, seeds) for loss in losses}
    md = (out / "comparison.md").read_text()
    assert "Baseline: dpo." in md
    for metric, label in (("nll", "nll (lower better)"), ("accuracy", "accuracy (higher better)")):
        entry = c["metrics"][metric]
        assert set(entry["vs_baseline"]) == {"mmpo", "odpo"}
        for loss in losses:
            mean, low, high = _t_interval(by_hand[loss][metric])
            assert (entry[loss]["mean"], entry[loss]["low"], entry[loss]["high"]) == pytest.approx((mean, low, high))
        rows = [line for line in md.splitlines() if line.startswith("| ")]
        start = next(i for i, line in enumerate(rows) if line.startswith(f"| {label} | 1 |"))
        means = {loss: by_hand[loss][metric].mean() for loss in losses}
        order = sorted(losses, key=lambda l: means[l], reverse=metric == "accuracy")
        assert [row.split(" | ")[2] for row in rows[start:start + 3]] == order
        for rank, loss in enumerate(order, start=1):
            row = rows[start + rank - 1]
            if loss == "dpo":
                assert "| baseline |" in row
                continue
            diff, low, high = _t_interval(by_hand[loss][metric] - by_hand["dpo"][metric])
            d = entry["vs_baseline"][loss]
            assert (d["diff"], d["low"], d["high"]) == pytest.approx((diff, low, high))
            assert d["distinguishable"] == (low > 0 or high < 0)
            better = loss if (diff < 0) == (metric == "nll") else "dpo"
            verdict = f"yes: {better} better" if (low > 0 or high < 0) else "no"
            assert row.endswith(f"| {diff:+.3f} [{low:+.3f}, {high:+.3f}] | {verdict} |"), row
    # The fixture gives both verdicts somewhere, so the marks are not all one way.
    verdicts = [d["distinguishable"] for m in c["metrics"].values() for d in m["vs_baseline"].values()]
    assert any(verdicts) and not all(verdicts)
    assert (out / "comparison.png").stat().st_size > 0 and c["plots"]["comparison"] == str(out / "comparison.png")


def test_two_losses_keep_their_json_shape(tmp_path):
    from mmpo.experiments.compare import summarize

    seeds = [0, 1, 2]
    dirs, scores = _fake_runs(tmp_path / "runs", ["mmpo", "bt"], seeds)
    summarize(dirs, ["mmpo", "bt"], seeds, tmp_path / "cmp")
    c = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert set(c) == {"losses", "seeds", "interval", "metrics", "n_eval_pairs", "runs", "plots", "during_training"}
    nll = c["metrics"]["nll"]
    assert set(nll) == {"mmpo", "bt", "intervals", "diff", "low", "high", "distinguishable", "per_seed"}
    diff, low, high = _t_interval(_by_hand(scores, "mmpo", seeds)["nll"] - _by_hand(scores, "bt", seeds)["nll"])
    assert (nll["diff"], nll["low"], nll["high"]) == pytest.approx((diff, low, high))  # first - second
    assert nll["mmpo"] == pytest.approx(_by_hand(scores, "mmpo", seeds)["nll"].mean())
    assert "| metric | mmpo | bt | mmpo - bt [95% CI] |" in (tmp_path / "cmp" / "comparison.md").read_text()


def test_baseline_option_moves_the_baseline_last_and_refuses_an_unknown_one(tmp_path, capsys):
    from mmpo.experiments.compare import baseline_last

    assert baseline_last(["mmpo", "bt"], None) == ["mmpo", "bt"]
    assert baseline_last(["mmpo", "bt"], "mmpo") == ["bt", "mmpo"]  # two losses: bt - mmpo
    assert main(["compare", "--losses", "mmpo,bt", "--baseline", "dpo", "--out", str(tmp_path / "x")]) == 2
    assert "--baseline: dpo is not one of --losses (mmpo, bt)" in capsys.readouterr().err


def test_online_comparison_of_three_losses(tmp_path):
    from mmpo.experiments.compare import summarize_online

    finals = {"mmpo": [3.0, 4.0, 5.0], "odpo": [2.2, 2.4, 4.9], "dpo": [2.0, 2.5, 4.5]}
    dirs = {}
    for loss, values in finals.items():
        for seed, final in enumerate(values):
            run = tmp_path / f"{loss}-seed{seed}"
            run.mkdir()
            run.joinpath("log.jsonl").write_text("".join(
                json.dumps({"round": r, "eval_mean_grade": g, "eval_full_marks": 0.0, "eval_n": 4}) + "\n"
                for r, g in enumerate([1.0, final])))
            dirs.setdefault(loss, {})[seed] = run
    c = summarize_online(dirs, list(finals), [0, 1, 2], tmp_path / "cmp")
    grade = c["metrics"]["mean_grade"]
    diff, low, high = _t_interval(np.array(finals["odpo"]) - np.array(finals["dpo"]))  # 0.2, -0.1, 0.4
    assert (grade["vs_baseline"]["odpo"]["diff"], grade["vs_baseline"]["odpo"]["low"]) == pytest.approx((diff, low))
    assert set(c["gain_over_base"]) == set(finals) and c["gain_over_base"]["dpo"]["mean"] == pytest.approx(2.0)
    md = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "| mean_grade (higher better) | 1 | mmpo |" in md and "- odpo: +2.167" in md


@pytest.mark.parametrize("losses", [["mmpo", "margin", "label_smoothing", "scaled_bt", "rpo_fwd_kl", "bt"],
                                    ["mmpo", "rpo_sq", "dpo"], ["mmpo", "rpo_fwd_kl", "label_smoothing"]])
def test_plot_with_long_loss_names_has_no_overlapping_tick_labels(tmp_path, monkeypatch, losses):
    import matplotlib.pyplot as plt

    from mmpo.experiments.compare import plot_comparison

    rng = np.random.default_rng(0)
    values = {loss: {s: {"nll": float(rng.uniform(0.6, 0.8)), "accuracy": float(rng.uniform(0.5, 0.7))} for s in range(3)}
              for loss in losses}
    comparison = compare_values(values, losses, [0, 1, 2], metrics=("nll", "accuracy"))
    figures = []
    monkeypatch.setattr(plt, "close", lambda fig=None: figures.append(fig))
    plot_comparison(comparison, tmp_path / "c.png")
    (fig,) = figures
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        labels = ax.get_xticklabels()
        assert len(labels) == len(losses)
        for a, b in zip(labels, labels[1:]):
            angle = math.radians(a.get_rotation())
            if angle == 0:
                assert not a.get_window_extent(renderer).overlaps(b.get_window_extent(renderer)), "loss names overlap"
            else:  # parallel slanted lines of text: apart by the tick spacing times sin(angle), perpendicular
                spacing = ax.transData.transform((1, 0))[0] - ax.transData.transform((0, 0))[0]
                line_height = a.get_fontsize() * fig.dpi / 72 * 1.2
                assert spacing * math.sin(angle) > line_height, "slanted loss names overlap"
    plt.close("all")
