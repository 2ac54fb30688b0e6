"""`mmpo report`: compare finished runs on their held-out pairs.

Reads from each run directory ``eval_scores.jsonl`` (one line per held-out pair: row, h, p, margin),
``metrics.jsonl`` (training and evaluation logs) and ``config.yaml``, and writes ``report.md`` with:

* a table of held-out accuracy, ECE, soft ECE, Brier and NLL — against each run's own soft targets, and NLL /
  Brier against the *binary* outcome (p = 1 for the chosen response, 0.5 for ties), which is the same for every
  run and so is the fair basis for comparing runs trained with different gammas;
* ``reliability.png``: confidence against accuracy (binary) and mean q against mean p (soft), per run;
* ``accuracy_by_margin.png``: accuracy per margin bin — how well a run separates close pairs from clear ones;
* ``curves.png``: train and eval loss against step (the overfitting picture).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from mmpo.errors import UserError
from mmpo.io import atomic_write_text, read_jsonl
from mmpo.evaluation.metrics import N_BINS, correctness, pair_metrics
from mmpo.losses import uses_soft_targets
from mmpo.training.files import RunFiles
from mmpo.training.run_dir import read_metrics



@dataclass
class RunRecord:
    name: str
    path: Path
    h: np.ndarray
    p: np.ndarray
    margin: np.ndarray  # NaN where the pair had no margin
    config: dict[str, Any] = field(default_factory=dict)
    logs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def binary_p(self) -> np.ndarray:
        """The observed outcome: chosen preferred (1), or a tie (0.5) where the margin is 0."""
        out = np.ones_like(self.p)
        out[self.margin == 0] = 0.5
        return out


def run_label(config: dict[str, Any], path: Path) -> str:
    loss = config.get("loss")
    if loss is None:
        return path.name
    gamma = config.get("gamma")
    soft = uses_soft_targets(loss)
    return f"{path.name} ({loss}{', gamma ' + str(gamma) if soft else ''})"


def read_run(path: str | Path) -> RunRecord:
    """Load one run directory; a missing eval_scores.jsonl is a one-line error."""
    path = Path(path)
    files = RunFiles(path)
    scores = files.eval_scores
    if not scores.exists():
        raise UserError(f"{path}: no {scores.name} (is this a finished `mmpo rm` / `mmpo dpo` run?)")
    rows = read_jsonl(scores)
    if not rows:
        raise UserError(f"{scores}: no held-out pairs")
    h = np.array([r["h"] for r in rows], dtype=np.float64)
    p = np.array([r["p"] for r in rows], dtype=np.float64)
    margin = np.array([math.nan if r.get("margin") is None else r["margin"] for r in rows], dtype=np.float64)
    config = yaml.safe_load(files.config.read_text()) if files.config.exists() else {}
    logs = read_logs(path)
    return RunRecord(run_label(config or {}, path), path, h, p, margin, config or {}, logs)


def read_logs(run_dir: str | Path) -> list[dict[str, Any]]:
    """The run's ``metrics.jsonl`` (:func:`mmpo.training.run_dir.read_metrics`) with one record per (step, kind),
    in step order; a resumed run's re-logged steps replace the old ones."""
    by_key: dict[tuple[int, str], dict[str, Any]] = {}
    for rec in read_metrics(run_dir):
        kind = "eval" if any(k.startswith("eval_") for k in rec) else "train"
        by_key[(int(rec.get("step", 0)), kind)] = rec
    return [by_key[k] for k in sorted(by_key)]


def summary_row(run: RunRecord) -> dict[str, float]:
    own = pair_metrics(run.h, run.p)
    binary = pair_metrics(run.h, run.binary_p)
    return {
        "n": own["n"],
        "accuracy": own["accuracy"],
        "ece": own["ece"],
        "soft_ece": own["soft_ece"],
        "brier": own["brier"],
        "nll": own["nll"],
        "brier_binary": binary["brier"],
        "nll_binary": binary["nll"],
    }


def margin_bins(runs: list[RunRecord], max_bins: int = 6) -> list[tuple[float, float]]:
    """Bins of |margin| shared by all runs: one per distinct value when there are few, else quantiles."""
    values = np.concatenate([r.margin[np.isfinite(r.margin)] for r in runs]) if runs else np.array([])
    values = np.abs(values)
    if values.size == 0:
        return []
    distinct = np.unique(values)
    if distinct.size <= max_bins:
        return [(float(v), float(v)) for v in distinct]
    edges = np.unique(np.quantile(values, np.linspace(0, 1, max_bins + 1)))
    return [(float(a), float(b)) for a, b in zip(edges[:-1], edges[1:])]


def accuracy_by_margin(run: RunRecord, bins: list[tuple[float, float]]) -> list[tuple[int, float]]:
    """(count, accuracy) of the run's pairs in each margin bin (the last bin is closed on the right)."""
    m = np.abs(run.margin)
    out = []
    for i, (lo, hi) in enumerate(bins):
        if lo == hi:
            sel = m == lo
        else:
            sel = (m >= lo) & ((m < hi) if i < len(bins) - 1 else (m <= hi))
        out.append((int(sel.sum()), float(correctness(run.h[sel]).mean()) if sel.any() else math.nan))
    return out


def _fmt_bin(lo: float, hi: float) -> str:
    return f"{lo:g}" if lo == hi else f"{lo:.3g}–{hi:.3g}"


def bar_text(value: float) -> str:
    """The label over an accuracy bar: its value, or "no pairs" for an empty bin (NaN)."""
    return "no pairs" if math.isnan(value) else f"{value:.2f}"


def plot_loss_curves(ax: Any, runs: list[RunRecord]) -> None:
    """Train loss (line) and held-out loss (dashed, dots) against step, per run. A series of one point gets a
    marker: a line through one point draws nothing."""
    for i, run in enumerate(runs):
        color = f"C{i}"
        train = [(r["step"], r["loss"]) for r in run.logs if "loss" in r and r.get("step", 0) > 0]
        evals = [(r["step"], r["eval_loss"]) for r in run.logs if "eval_loss" in r]
        if train:
            ax.plot(*zip(*train), "-" if len(train) > 1 else "o", color=color, alpha=0.8, label=f"{run.name} train")
        if evals:
            ax.plot(*zip(*evals), "o--", color=color, label=f"{run.name} eval")
    ax.set(xlabel="step", ylabel="loss (own targets)", title="Training and held-out loss")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)


def write_report(run_dirs: list[str | Path], out_dir: str | Path) -> dict[str, Any]:
    """Compare runs; write report.md, summary.json and three PNGs to ``out_dir``. Returns the summary."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [read_run(d) for d in run_dirs]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = {r.name: summary_row(r) for r in runs}
    bins = margin_bins(runs)

    # Reliability: binary (confidence vs accuracy) and soft (mean q vs mean p).
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
    for run in runs:
        q = 1 / (1 + np.exp(-np.clip(run.h, -500, 500)))
        conf = np.maximum(q, 1 - q)
        right = correctness(run.h)
        edges = np.linspace(0.5, 1.0, N_BINS + 1)
        idx = np.clip(np.searchsorted(edges, conf, side="right") - 1, 0, N_BINS - 1)
        xs, ys = zip(*[(conf[idx == b].mean(), right[idx == b].mean()) for b in range(N_BINS) if (idx == b).any()])
        axes[0].plot(xs, ys, "o-", label=run.name)
        edges = np.linspace(0, 1, N_BINS + 1)
        idx = np.clip(np.searchsorted(edges, q, side="right") - 1, 0, N_BINS - 1)
        xs, ys = zip(*[(q[idx == b].mean(), run.p[idx == b].mean()) for b in range(N_BINS) if (idx == b).any()])
        axes[1].plot(xs, ys, "o-", label=run.name)
    axes[0].plot([0.5, 1], [0.5, 1], "k--", lw=1)
    axes[0].set(xlabel="confidence max(q, 1-q)", ylabel="accuracy", title="Reliability (binary)", xlim=(0.5, 1), ylim=(0, 1.02))
    axes[1].plot([0, 1], [0, 1], "k--", lw=1)
    axes[1].set(xlabel="model q = sigmoid(h)", ylabel="mean soft target p", title="Reliability (soft targets)", xlim=(0, 1), ylim=(0, 1.02))
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "reliability.png", dpi=110)
    plt.close(fig)

    # Accuracy by margin bin.
    by_margin = {r.name: accuracy_by_margin(r, bins) for r in runs}
    if bins:
        fig, ax = plt.subplots(figsize=(7.5, 4.2))
        width = 0.8 / len(runs)
        x = np.arange(len(bins))
        for i, run in enumerate(runs):
            cells = by_margin[run.name]
            bars = ax.bar(x + i * width - 0.4 + width / 2, [a for _, a in cells], width, label=run.name,
                          edgecolor=f"C{i}", linewidth=1.2)
            # The value over each bar, so a bar of height 0 (and a bin without pairs) still shows.
            ax.bar_label(bars, labels=[bar_text(a) for _, a in cells], fontsize=7, padding=2)
        ax.set_xticks(x, [_fmt_bin(lo, hi) for lo, hi in bins])
        ax.axhline(0.5, color="k", lw=0.8, ls=":")
        ax.set(xlabel="|score margin| of the held-out pair", ylabel="accuracy", ylim=(0, 1.1), title="Accuracy by margin")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "accuracy_by_margin.png", dpi=110)
        plt.close(fig)

    # Training curves.
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    plot_loss_curves(ax, runs)
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=110)
    plt.close(fig)

    lines = ["# Run comparison", "", "Held-out pairs. `nll`/`brier`: against each run's own targets; "
             "`nll_binary`/`brier_binary`: against the observed preference (the same for every run).", ""]
    cols = ["n", "accuracy", "ece", "soft_ece", "brier", "nll", "brier_binary", "nll_binary"]
    lines.append("| run | " + " | ".join(cols) + " |")
    lines.append("|---|" + "---|" * len(cols))
    for name, row in rows.items():
        lines.append(f"| {name} | " + " | ".join(str(row[c]) if c == "n" else f"{row[c]:.4f}" for c in cols) + " |")
    if bins:
        lines += ["", "## Accuracy by |margin|", "", "| run | " + " | ".join(_fmt_bin(*b) for b in bins) + " |",
                  "|---|" + "---|" * len(bins)]
        for name, cells in by_margin.items():
            lines.append(f"| {name} | " + " | ".join(f"{a:.3f} (n={n})" for n, a in cells) + " |")
    lines += ["", "![reliability](reliability.png)", ""]
    if bins:
        lines += ["![accuracy by margin](accuracy_by_margin.png)", ""]
    lines += ["![curves](curves.png)", ""]
    atomic_write_text(out / "report.md", "\n".join(lines))
    summary = {"runs": {r.name: {"path": str(r.path), **rows[r.name]} for r in runs},
               "accuracy_by_margin": {"bins": bins, **{k: v for k, v in by_margin.items()}}}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    return summary
