"""`mmpo report` on run directories the test writes (no training needed)."""

import json

import numpy as np
import pytest
import yaml

from mmpo.cli.main import main
from mmpo.reports.report import accuracy_by_margin, margin_bins, read_logs, read_run, write_report


def _write_run(path, h, margins, gamma, loss="mmpo"):
    path.mkdir(parents=True)
    p = 1 / (1 + np.exp(-gamma * np.asarray(margins))) if gamma else np.ones(len(h))
    with open(path / "eval_scores.jsonl", "w") as f:
        for i, (hi, pi, m) in enumerate(zip(h, p, margins)):
            f.write(json.dumps({"row": i, "h": float(hi), "p": float(pi), "margin": float(m)}) + "\n")
    (path / "config.yaml").write_text(yaml.safe_dump({"loss": loss, "gamma": gamma}))
    with open(path / "metrics.jsonl", "w") as f:
        for step, loss_value in [(1, 0.7), (2, 0.6), (2, 0.55), (3, 0.5)]:  # step 2 logged twice (a resume)
            f.write(json.dumps({"step": step, "loss": loss_value}) + "\n")
        f.write(json.dumps({"step": 3, "eval_loss": 0.58}) + "\n")


def test_report_table_plots_and_margin_bins(tmp_path):
    rng = np.random.default_rng(0)
    margins = rng.choice([1.0, 2.0, 4.0, 8.0], size=400)
    # Calibrated by construction: a pair with |h| = x is ranked right with probability sigmoid(x).
    size = np.abs(margins * 0.4 + rng.normal(0, 0.3, 400))
    sign = np.where(rng.random(400) < 1 / (1 + np.exp(-size)), 1.0, -1.0)
    good = sign * size
    overconfident = good * 6
    _write_run(tmp_path / "mmpo", good, margins, 1.0)
    _write_run(tmp_path / "bt", overconfident, margins, None, loss="bt")
    summary = write_report([tmp_path / "mmpo", tmp_path / "bt"], tmp_path / "report")
    for name in ("report.md", "summary.json", "reliability.png", "accuracy_by_margin.png", "curves.png"):
        assert (tmp_path / "report" / name).stat().st_size > 0
    runs = summary["runs"]
    mm, bt = runs["mmpo (mmpo, gamma 1.0)"], runs["bt (bt)"]
    # Same ranking (same sign of h) so same accuracy; the 6x sharper run is the worse-calibrated one.
    assert mm["accuracy"] == pytest.approx(bt["accuracy"])
    assert bt["ece"] > mm["ece"]
    assert bt["nll_binary"] > mm["nll_binary"]
    # Four distinct margins -> four bins, accuracy rising with the margin.
    assert [b[0] for b in summary["accuracy_by_margin"]["bins"]] == [1.0, 2.0, 4.0, 8.0]
    accs = [a for _, a in summary["accuracy_by_margin"]["mmpo (mmpo, gamma 1.0)"]]
    assert abs(mm["ece"]) < 0.08
    assert accs[0] < accs[-1]


def test_accuracy_by_margin_counts_and_ties():
    run = read_run.__globals__["RunRecord"]("x", None, np.array([1.0, -1.0, 0.0, 2.0]), np.ones(4), np.array([1.0, 1.0, 3.0, 3.0]))
    bins = margin_bins([run])
    assert bins == [(1.0, 1.0), (3.0, 3.0)]
    assert accuracy_by_margin(run, bins) == [(2, 0.5), (2, 0.75)]


def test_resumed_steps_are_deduplicated(tmp_path):
    _write_run(tmp_path / "r", [1.0], [1.0], 1.0)
    logs = read_logs(tmp_path / "r")
    train = [(r["step"], r["loss"]) for r in logs if "loss" in r]
    assert train == [(1, 0.7), (2, 0.55), (3, 0.5)]


def test_cli_report_missing_scores_is_one_line_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "eval_scores.jsonl" in err[0]


def test_cli_report_says_where_it_wrote(tmp_path, capsys):
    _write_run(tmp_path / "a", np.array([1.0, -0.5, 2.0]), [1.0, 2.0, 3.0], 1.0)
    assert main(["report", str(tmp_path / "a"), "--out", str(tmp_path / "rep")]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith(f"wrote the report to {(tmp_path / 'rep').resolve()}: ")
    assert "report.md" in last and "summary.json" in last and "curves.png" in last


def test_one_point_series_get_markers_and_zero_bars_a_label(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mmpo.reports.report import bar_text, plot_loss_curves

    run = tmp_path / "one"
    _write_run(run, [-1.0, -2.0], [1.0, 1.0], 1.0)  # both pairs ranked wrong: accuracy 0.0
    (run / "metrics.jsonl").write_text(json.dumps({"step": 5, "loss": 0.6}) + "\n" + json.dumps({"step": 5, "eval_loss": 0.7}) + "\n")
    fig, ax = plt.subplots()
    plot_loss_curves(ax, [read_run(run)])
    lines = [line for line in ax.get_lines() if len(line.get_xdata()) == 1]
    plt.close(fig)
    assert len(lines) == 2 and all(line.get_marker() not in (None, "None", "", " ") for line in lines)
    assert bar_text(0.0) == "0.00" and bar_text(float("nan")) == "no pairs"
    summary = write_report([run], tmp_path / "report")
    assert summary["accuracy_by_margin"][read_run(run).name] == [(2, 0.0)]


def test_read_logs_drops_a_torn_last_line(tmp_path):
    """A run killed mid-write leaves half a line at the end of metrics.jsonl; the report reads the rest."""
    run = tmp_path / "r"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 0.6}) + "\n" + '{"step": 2, "lo')
    assert read_logs(run) == [{"step": 1, "loss": 0.6}]


def test_run_files_names_each_file(tmp_path):
    from mmpo.training.files import RunFiles

    files = RunFiles(tmp_path)
    assert [p.name for p in (files.config, files.metrics, files.results, files.eval_scores, files.data_report, files.card)] == [
        "config.yaml", "metrics.jsonl", "eval_results.json", "eval_scores.jsonl", "data_report.json", "README.md"]
    assert files.checkpoint(7) == tmp_path / "checkpoint-7"
