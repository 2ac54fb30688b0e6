"""`mmpo compare`: one recipe trained with each loss and each seed, compared with 95% intervals over seeds.

Layout under ``out``: one run per loss and seed (``<loss>-seed<seed>/``, a normal `mmpo rm` / `mmpo dpo` run
directory), and

* ``comparison.json``: ``{"losses", "seeds", "interval", "metrics": {metric: ...}}``. The baseline is the last
  loss listed (`mmpo compare --baseline` moves the one it names there); every other loss is compared with it by
  the paired difference ``loss - baseline`` over seeds with a 95% interval (:mod:`mmpo.reports.intervals`).
  With two losses a metric is ``{<loss>: mean, ..., "diff", "low", "high", "distinguishable", "per_seed":
  {<loss>: [...]}, "intervals": {<loss>: {mean, low, high, n}}}``, ``diff`` being first - second. With more,
  a metric is ``{<loss>: {mean, low, high}, ..., "vs_baseline": {<loss>: {diff, low, high, distinguishable}},
  "per_seed"}`` and the top level names the ``"baseline"``;
* ``comparison.md``: the same as a table (with more than two losses: ranked per metric, best first);
  ``comparison.png``: each metric's means with error bars;
* ``curves.png``: held-out NLL, ECE and accuracy against training progress (every evaluation the runs logged
  to ``metrics.jsonl``), one line per loss (the mean over seeds) with a band from the lowest to the highest seed;
  ``comparison.json``'s ``"during_training"`` and a table in ``comparison.md`` give, at each of those
  evaluations, each loss minus the baseline with its paired interval (:func:`differences_during_training`).

Every run of a seed is trained on the same sample of pairs in the same order (``seed`` sets the sample, the
order and the head's initialisation; a loss that ignores ``p`` trains on it less its ties, see docs/data.md) and
is scored on the same held-out pairs against the same targets: the losses differ in training only. :func:`check_same_truth` verifies the last part on the written per-pair scores.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from mmpo.errors import UserError
from mmpo.io import atomic_write_text, read_jsonl
from mmpo.evaluation.metrics import pair_metrics
from mmpo.losses import losses_for
from mmpo.training.files import RunFiles
from mmpo.reports.intervals import (
    distinguishable,
    few_seeds_warning,
    format_interval,
    mean_interval,
    method_for,
    paired_difference,
)

METRICS = ("accuracy", "ece", "soft_ece", "nll", "brier")
# `--kind online` (mmpo online runs): the held-out greedy answers' mean grade after the last round, its gain over
# the starting model's (round 0: the same greedy answers for every seed and loss), and the share at full marks.
ONLINE_METRICS = ("mean_grade", "gain", "full_marks")
HIGHER_IS_BETTER = frozenset({"accuracy", "mean_grade", "gain", "full_marks"})
POLICY_ONLY_LOSSES = frozenset(losses_for("policy")) - frozenset(losses_for("rm"))
METRIC_NOTES = {
    "accuracy": "held-out pairs ranked as the judge ranks them",
    "ece": "binary ECE: confidence against the judge's ranking",
    "soft_ece": "ECE against the judge's probabilities",
    "nll": "cross-entropy against the held-out targets",
    "brier": "squared gap to the held-out targets",
    "mean_grade": "held-out greedy answers' mean grade after the last round",
    "gain": "mean grade after the last round minus the starting model's",
    "full_marks": "share of held-out greedy answers at full marks",
}


def parse_list(text: str, what: str, cast: type = str) -> list[Any]:
    """``"mmpo, bt"`` -> ``["mmpo", "bt"]`` (``cast=int`` for seeds); duplicates and empty lists are errors."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    try:
        values = [cast(t) for t in items]
    except ValueError:
        raise UserError(f"--{what}: {text!r} is not a comma-separated list of {cast.__name__}s") from None
    if not values:
        raise UserError(f"--{what}: give at least one value")
    if len(set(values)) != len(values):
        raise UserError(f"--{what}: {text!r} repeats a value")
    return values


def infer_kind(losses: list[str]) -> str:
    """``dpo`` when any loss exists only for policies, else ``rm``."""
    return "dpo" if any(loss in POLICY_ONLY_LOSSES for loss in losses) else "rm"


def choose_kind(explicit: str | None, recipe: str | Path | None, losses: list[str]) -> tuple[str, str]:
    """``(kind, reason)`` for `mmpo compare`: what every loss of the comparison trains, and why.

    ``--kind`` decides when given. Else the recipe's kind (:func:`mmpo.training.tasks.recipe_kind`) decides, and a
    loss that kind does not train is refused; else :func:`infer_kind` from the losses, refusing a mix of
    reward-model-only and policy-only losses.
    """
    from mmpo.training.tasks import KIND_NAMES, recipe_kind
    from mmpo.training.tasks import TASKS

    if explicit:
        return explicit, f"--kind {explicit}"
    trains = {name: losses_for(entry.loss_kind) for name, entry in TASKS.items()}
    models = {"rm": "reward models", "dpo": "policies"}
    kind, why = recipe_kind(recipe) if recipe is not None else (None, "")
    if kind is not None:
        for loss in losses:
            if loss not in trains[kind]:
                other = next((k for k in ("rm", "dpo") if loss in trains[k]), None)
                hint = f"; pass --kind {other} to train {models[other]} from this recipe anyway" if other else ""
                raise UserError(f"{recipe} is {KIND_NAMES[kind]} ({why}); loss {loss} is not one of its losses "
                                f"({', '.join(trains[kind])}){hint}")
        return kind, f"{recipe} is {KIND_NAMES[kind]} ({why})"
    rm_only = [loss for loss in losses if loss not in trains["dpo"]]
    policy_only = [loss for loss in losses if loss in POLICY_ONLY_LOSSES]
    if rm_only and policy_only:
        raise UserError(f"losses {rm_only[0]} (reward models only) and {policy_only[0]} (policies only) train "
                        "different kinds of model: compare losses of one kind")
    kind = infer_kind(losses)
    source = f"{recipe} fits either kind" if recipe is not None else "no recipe"
    if kind == "dpo":
        return kind, f"{source}, and loss {policy_only[0]} trains policies only"
    return kind, f"{source}, and every loss trains a reward model (pass --kind dpo for policies)"


def baseline_last(losses: list[str], baseline: str | None) -> list[str]:
    """``losses`` with ``baseline`` moved to the end (the comparison's baseline is its last loss); unchanged for
    None. A baseline that is not one of the losses is a UserError."""
    if baseline is None:
        return list(losses)
    if baseline not in losses:
        raise UserError(f"--baseline: {baseline} is not one of --losses ({', '.join(losses)})")
    return [loss for loss in losses if loss != baseline] + [baseline]


def run_name(loss: str, seed: int) -> str:
    return f"{loss}-seed{seed}"


def finished_results(run_dir: Path) -> dict[str, Any] | None:
    """The run's ``eval_results.json`` when it finished (that and ``eval_scores.jsonl`` exist), else None."""
    results, scores = RunFiles(run_dir).results, RunFiles(run_dir).eval_scores
    if results.exists() and scores.exists():
        return json.loads(results.read_text())
    return None


def train_or_reuse(kind: str, recipe: str | Path | None, overrides: dict[str, Any]) -> Path:
    """Train one run (``kind`` rm | dpo) unless ``output_dir`` already holds it finished; returns its directory.

    An unfinished run resumes from its last complete checkpoint (``resume: auto``); a directory holding a run
    with other settings is refused (:func:`mmpo.training.run_dir.plan_run`).
    """
    from mmpo.config import load_config
    from mmpo.training.run_dir import plan_run
    from mmpo.training.tasks import task

    entry = task(kind)
    config = load_config(entry.config_class, recipe, overrides)
    out = Path(config.output_dir)
    # plan_run refuses a directory that holds a run with other settings, so a changed recipe is never "reused".
    if plan_run(config).finished is not None and finished_results(out) is not None:
        print(f"== {out.name}: finished earlier, reusing {out}", flush=True)
        return out
    print(f"== {out.name}: training (loss {config.loss}, seed {config.seed})", flush=True)
    entry.train(config)
    return out


def read_scores(run_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(row, h, p)`` arrays from a run's ``eval_scores.jsonl``, sorted by row."""
    path = RunFiles(run_dir).eval_scores
    if not path.exists():
        raise UserError(f"{run_dir}: no {path.name} (the run has no held-out pairs, or did not finish)")
    recs = read_jsonl(path)
    recs.sort(key=lambda r: r["row"])
    return (np.array([r["row"] for r in recs]), np.array([r["h"] for r in recs], dtype=np.float64),
            np.array([r["p"] for r in recs], dtype=np.float64))


def check_same_truth(run_dirs: dict[str, Path], seed: int) -> None:
    """All runs of one seed (a comparison's losses, a sweep's gammas; ``run_dirs`` by name) were scored on the
    same held-out pairs against the same targets ``p``; else one UserError line naming the two runs."""
    reference: tuple[str, np.ndarray, np.ndarray] | None = None
    for loss, path in run_dirs.items():
        rows, _, p = read_scores(path)
        if reference is None:
            reference = (loss, rows, p)
            continue
        first, rows0, p0 = reference
        if not (np.array_equal(rows, rows0) and np.allclose(p, p0, rtol=0, atol=1e-6)):
            raise UserError(f"seed {seed}: runs {first} and {loss} were scored on different held-out pairs or targets "
                            f"({path}); give every run the same data and eval_gamma")


def run_metrics(run_dir: Path) -> dict[str, float]:
    """:func:`pair_metrics` of a finished run's held-out scores (the same function every trainer uses)."""
    _, h, p = read_scores(run_dir)
    return pair_metrics(h, p)


def compare_values(values: dict[str, dict[int, dict[str, float]]], losses: list[str], seeds: list[int],
                   metrics: tuple[str, ...] = METRICS) -> dict[str, Any]:
    """The comparison from recorded metrics ``values[loss][seed][metric]`` (shapes in the module doc).

    Each loss: ``mean +- t * sd / sqrt(n)`` over seeds. The baseline is ``losses[-1]``; each other loss gets the
    paired difference ``d_s = loss_s - baseline_s`` with the same interval on ``d``, distinguishable from zero
    when that interval excludes 0.
    """
    baseline, others = losses[-1], losses[:-1]
    out: dict[str, Any] = {}
    for metric in metrics:
        per_seed = {loss: [float(values[loss][s][metric]) for s in seeds] for loss in losses}
        intervals = {loss: mean_interval(per_seed[loss]) for loss in losses}
        vs = {}
        for other in others:
            d = paired_difference(per_seed[other], per_seed[baseline])
            vs[other] = {"diff": d["diff"], "low": d["low"], "high": d["high"],
                         "distinguishable": distinguishable(d["low"], d["high"])}
        if len(losses) <= 2:
            entry: dict[str, Any] = {loss: intervals[loss]["mean"] for loss in losses}
            entry["intervals"] = intervals
            if others:
                entry.update(vs[others[0]])
        else:
            entry = {loss: {k: intervals[loss][k] for k in ("mean", "low", "high")} for loss in losses}
            entry["vs_baseline"] = vs
        entry["per_seed"] = per_seed
        out[metric] = entry
    result: dict[str, Any] = {"losses": list(losses), "seeds": list(seeds), "interval": method_for(len(seeds))}
    if len(losses) > 2:
        result["baseline"] = baseline
    result["metrics"] = out
    warning = few_seeds_warning(len(seeds))
    if warning:
        result["warning"] = warning
    return result


def loss_intervals(entry: dict[str, Any], losses: list[str]) -> dict[str, dict[str, Any]]:
    """Each loss's ``{mean, low, high}`` from one metric of a comparison, of either shape."""
    if "intervals" in entry:
        return entry["intervals"]
    return {loss: entry[loss] for loss in losses}


def baseline_differences(entry: dict[str, Any], losses: list[str]) -> dict[str, dict[str, Any]]:
    """``{loss: {diff, low, high, distinguishable}}``: each loss but the baseline (the last) minus the baseline."""
    if "vs_baseline" in entry:
        return entry["vs_baseline"]
    if "diff" in entry:
        return {losses[0]: {k: entry[k] for k in ("diff", "low", "high", "distinguishable")}}
    return {}


def ranking(metric: str, means: dict[str, float]) -> list[str]:
    """The losses best first: by mean, descending for :data:`HIGHER_IS_BETTER` metrics, else ascending."""
    sign = -1.0 if metric in HIGHER_IS_BETTER else 1.0
    return sorted(means, key=lambda loss: sign * means[loss])


def better_loss(metric: str, diff: float, first: str, second: str) -> str:
    """Which loss the difference ``first - second`` favours (higher accuracy; lower ECE, NLL, Brier)."""
    first_better = diff > 0 if metric in HIGHER_IS_BETTER else diff < 0
    return first if first_better else second


def _difference_cells(metric: str, d: dict[str, Any], loss: str, baseline: str) -> list[str]:
    """``["+0.012 [-0.003, +0.027]", "no"]`` for the difference ``loss - baseline``."""
    if d["low"] is None:
        return [f"{d['diff']:+.3f}", "no interval (one seed)"]
    verdict = f"yes: {better_loss(metric, d['diff'], loss, baseline)} better" if d["distinguishable"] else "no"
    return [f"{d['diff']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]", verdict]


def _pair_table(comparison: dict[str, Any]) -> list[str]:
    """One row per metric: each loss's mean +- half-width, then the difference first - second and a verdict."""
    losses = comparison["losses"]
    baseline = losses[-1]
    header = ["metric", *losses]
    for other in losses[:-1]:
        header += [f"{other} - {baseline} [95% CI]", "distinguishable from 0?"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for metric, entry in comparison["metrics"].items():
        intervals = loss_intervals(entry, losses)
        cells = [metric] + [format_interval(intervals[l]["mean"], intervals[l]["low"], intervals[l]["high"]) for l in losses]
        for other, d in baseline_differences(entry, losses).items():
            cells += _difference_cells(metric, d, other, baseline)
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _ranked_table(comparison: dict[str, Any]) -> list[str]:
    """Per metric, the losses best first: mean +- half-width and the difference from the baseline with a verdict."""
    losses = comparison["losses"]
    baseline = losses[-1]
    lines = [f"Baseline: {baseline}. Each difference is the loss minus {baseline}, paired by seed; "
             "the rank is by mean, best first.", "",
             "| metric | rank | loss | mean | minus " + baseline + " [95% CI] | distinguishable from 0? |",
             "|---|---|---|---|---|---|"]
    for metric, entry in comparison["metrics"].items():
        intervals = loss_intervals(entry, losses)
        diffs = baseline_differences(entry, losses)
        label = metric + (" (higher better)" if metric in HIGHER_IS_BETTER else " (lower better)")
        for rank, loss in enumerate(ranking(metric, {l: intervals[l]["mean"] for l in losses}), start=1):
            iv = intervals[loss]
            cells = [label if rank == 1 else "", str(rank), loss, format_interval(iv["mean"], iv["low"], iv["high"])]
            cells += ["baseline", ""] if loss == baseline else _difference_cells(metric, diffs[loss], loss, baseline)
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def render_table(comparison: dict[str, Any], title: str | None = None) -> str:
    """Markdown: each loss's mean +- half-width, its paired difference from the baseline with an interval, and a
    verdict; two losses in one row per metric, more ranked per metric (best first)."""
    losses, seeds = comparison["losses"], comparison["seeds"]
    lines = [f"### {title}", ""] if title else []
    lines += _pair_table(comparison) if len(losses) <= 2 else _ranked_table(comparison)
    if comparison.get("kind") == "online":
        lines += ["", f"Starting model (round 0, greedy): mean grade {comparison['base_grade']:.3f} on "
                  f"{comparison['n_eval_prompts']} held-out prompts. Gain over it, per loss:"]
        for loss, g in comparison["gain_over_base"].items():
            above = "above the starting model" if g["distinguishable"] and g["mean"] > 0 else \
                "below the starting model" if g["distinguishable"] else "not distinguishable from the starting model"
            span = f" [{g['low']:+.3f}, {g['high']:+.3f}]" if g["low"] is not None else " (one seed: no interval)"
            lines.append(f"- {loss}: {g['mean']:+.3f}{span}: {above}")
        lines += ["", seeds_footer(seeds) + " Higher is better for every metric here."]
    else:
        lines += ["", seeds_footer(seeds) + " Higher is better for accuracy, lower for the rest."]
    warning = few_seeds_warning(len(seeds))
    return "\n".join(lines + (["", f"**{warning}**"] if warning else []))


def seeds_footer(seeds: list[int]) -> str:
    """What the table's numbers are: the mean and t-interval over the seeds, or one seed's value and no interval."""
    if len(seeds) == 1:
        return f"One seed ({seeds[0]}): each value is that seed's, no interval."
    return f"Mean +- half-width of the {method_for(len(seeds))}; {len(seeds)} seeds ({', '.join(map(str, seeds))})."


def plot_comparison(comparison: dict[str, Any], path: Path, title: str = "") -> None:
    """One panel per metric: each loss's mean with its 95% interval as an error bar, and each seed as a dot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    losses = comparison["losses"]
    metrics = list(comparison["metrics"])
    panel = max(2.7, 0.5 * len(losses) + 0.5)
    # Names slanted when upright ones would not fit their share of the panel (~0.075 in a character at 8.5 pt).
    longest = max(len(loss) + (len(" (baseline)") if loss == losses[-1] else 1) for loss in losses)
    many = len(losses) > 3 or (len(losses) > 2 and longest * 0.075 > panel / len(losses))
    fig, axes = plt.subplots(1, len(metrics), figsize=(panel * len(metrics) + 0.6, 4.4 if many else 3.6))
    axes = np.atleast_1d(axes)
    baseline = losses[-1]
    for ax, metric in zip(axes, metrics):
        entry = comparison["metrics"][metric]
        intervals, diffs = loss_intervals(entry, losses), baseline_differences(entry, losses)
        for i, loss in enumerate(losses):
            iv = intervals[loss]
            err = None if iv["low"] is None else [[iv["mean"] - iv["low"]], [iv["high"] - iv["mean"]]]
            ax.errorbar([i], [iv["mean"]], yerr=err, fmt="o", color=f"C{i}", capsize=6, ms=8, lw=2)
            seeds = entry["per_seed"][loss]
            ax.plot(i + np.linspace(-0.12, 0.12, len(seeds)), seeds, "x", color=f"C{i}", alpha=0.6)
        sub = metric + (" (higher better)" if metric in HIGHER_IS_BETTER else " (lower better)")
        if len(losses) <= 2:
            ticks = losses
            d = diffs.get(losses[0])
            if d is not None and d["low"] is not None:
                mark = "distinguishable" if d["distinguishable"] else "not distinguishable"
                sub += f"\n{losses[0]}-{baseline}: {d['diff']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]\n{mark}"
        else:  # * marks a loss whose difference from the baseline is distinguishable from zero
            ticks = [f"{loss} (baseline)" if loss == baseline else loss + ("*" if diffs[loss]["distinguishable"] else "")
                     for loss in losses]
            sub += f"\n* = differs from {baseline}"
        ax.set_xticks(range(len(losses)), ticks, **({"fontsize": 8, "rotation": 40, "ha": "right"} if many else {}))
        ax.set_xlim(-0.6, len(losses) - 0.4)
        ax.set_title(sub, fontsize=8.5)
        ax.grid(axis="y", alpha=0.3)
    n_seeds = len(comparison["seeds"])
    what = ("one seed, no interval" if n_seeds == 1 else
            f"mean and 95% t-interval over {n_seeds} seeds (x = one seed)"
            + ("\n2 seeds: intervals too wide to be useful (not clipped); use 3 or more" if n_seeds == 2 else ""))
    fig.suptitle((title + ": " if title else "") + what, fontsize=9.5)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def eval_curve(logs: list[dict[str, Any]], metric: str) -> list[tuple[float, float]]:
    """``(epoch, eval_<metric>)`` for every evaluation a run logged, in order of step."""
    key = f"eval_{metric}"
    return [(float(r.get("epoch") or 0.0), float(r[key])) for r in logs if key in r]


def seed_band(curves: list[list[tuple[float, float]]]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x, mean, low, high)`` over the evaluation points every seed has (matched by position, x from the first);
    low / high are the lowest and highest seed."""
    n = min(len(c) for c in curves) if curves else 0
    if n == 0:
        empty = np.array([])
        return empty, empty, empty, empty
    x = np.array([c[i][0] for c in curves[:1] for i in range(n)])
    y = np.array([[c[i][1] for i in range(n)] for c in curves])
    return x, y.mean(axis=0), y.min(axis=0), y.max(axis=0)


def differences_during_training(logs_by_loss: dict[str, list[list[dict[str, Any]]]], losses: list[str],
                                metrics: tuple[str, ...] = ("nll", "accuracy")) -> list[dict[str, Any]]:
    """How the differences move with training: at every evaluation during training that each run logged (matched
    by position, as in :func:`seed_band`), each loss minus the baseline (the last loss) per metric, paired by
    seed, ``d_s = loss_s - baseline_s``, with the 95% interval of :func:`~mmpo.reports.intervals.paired_difference`.

    Returns ``[{"epoch", "metrics": {metric: {loss: {diff, low, high, distinguishable}}}}, ...]``; empty when a
    run logged no evaluation. These are the trainer's evaluations under its training precision, so the last one
    can differ slightly from the final float32 scores of the main table.
    """
    baseline = losses[-1]
    curves = {(loss, m): [eval_curve(run, m) for run in logs_by_loss[loss]] for loss in losses for m in metrics}
    n = min((len(c) for runs in curves.values() for c in runs), default=0)
    rows = []
    for i in range(n):
        per_metric: dict[str, Any] = {}
        for m in metrics:
            at = {loss: [c[i][1] for c in curves[(loss, m)]] for loss in losses}
            per_metric[m] = {}
            for loss in losses[:-1]:
                d = paired_difference(at[loss], at[baseline])
                per_metric[m][loss] = {"diff": d["diff"], "low": d["low"], "high": d["high"],
                                       "distinguishable": distinguishable(d["low"], d["high"])}
        rows.append({"epoch": curves[(baseline, metrics[0])][0][i][0], "metrics": per_metric})
    return rows


def render_during_training(rows: list[dict[str, Any]], losses: list[str]) -> str:
    """Markdown: per metric, one row per evaluation during training, a cell per loss: ``loss - baseline [95% CI]``,
    starred where the interval excludes zero."""
    if not rows:
        return ""
    baseline = losses[-1]
    lines = [f"During training (held-out, each loss minus {baseline}, paired by seed; * where the 95% interval "
             "excludes 0):", ""]
    for metric in rows[0]["metrics"]:
        lines += ["| " + " | ".join([f"{metric}: epoch", *losses[:-1]]) + " |", "|" + "---|" * len(losses)]
        for row in rows:
            cells = [f"{row['epoch']:.2g}"]
            for loss in losses[:-1]:
                d = row["metrics"][metric][loss]
                span = f" [{d['low']:+.3f}, {d['high']:+.3f}]" if d["low"] is not None else ""
                cells.append(f"{d['diff']:+.3f}{span}" + (" *" if d["distinguishable"] else ""))
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines).rstrip()


def plot_curves(logs_by_loss: dict[str, list[list[dict[str, Any]]]], path: Path, title: str = "",
                metrics: tuple[str, ...] = ("nll", "ece", "accuracy"), xlabel: str = "training epochs") -> bool:
    """Held-out metrics against training progress: per loss the mean over seeds and a min-max band.

    Returns False (and writes nothing) when no run logged an evaluation during training.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not any(eval_curve(logs, metrics[0]) for runs in logs_by_loss.values() for logs in runs):
        return False
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.7))
    axes = np.atleast_1d(axes)
    for ax, metric in zip(axes, metrics):
        for i, (loss, runs) in enumerate(logs_by_loss.items()):
            x, mean, low, high = seed_band([eval_curve(logs, metric) for logs in runs])
            if x.size == 0:
                continue
            ax.plot(x, mean, "o-", color=f"C{i}", label=f"{loss} (mean of {len(runs)})", ms=4)
            ax.fill_between(x, low, high, color=f"C{i}", alpha=0.2, lw=0)
        better = "higher" if metric in HIGHER_IS_BETTER else "lower"
        ax.set(xlabel=xlabel, ylabel=f"held-out {metric}", title=f"held-out {metric} ({better} is better)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle((title + ": " if title else "") + "evaluated during training; band = lowest to highest seed", fontsize=9.5)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def summarize(run_dirs: dict[str, dict[int, Path]], losses: list[str], seeds: list[int], out: Path,
              title: str = "") -> dict[str, Any]:
    """Check the shared truth, compute the comparison and write comparison.json / .md / .png and curves.png."""
    from mmpo.reports.report import read_logs

    for seed in seeds:
        check_same_truth({loss: run_dirs[loss][seed] for loss in losses}, seed)
    values = {loss: {s: run_metrics(run_dirs[loss][s]) for s in seeds} for loss in losses}
    comparison = compare_values(values, losses, seeds)
    comparison["n_eval_pairs"] = {str(s): int(values[losses[0]][s]["n"]) for s in seeds}
    comparison["runs"] = {loss: {str(s): str(run_dirs[loss][s]) for s in seeds} for loss in losses}
    out.mkdir(parents=True, exist_ok=True)
    table = render_table(comparison, title or None)
    plot_comparison(comparison, out / "comparison.png", title)
    logs = {loss: [read_logs(run_dirs[loss][s]) for s in seeds] for loss in losses}
    comparison["plots"] = {"comparison": str(out / "comparison.png")}
    if plot_curves(logs, out / "curves.png", title):
        comparison["plots"]["curves"] = str(out / "curves.png")
    comparison["during_training"] = differences_during_training(logs, losses)
    during = render_during_training(comparison["during_training"], losses)
    atomic_write_text(out / "comparison.json", json.dumps(comparison, indent=2, default=_json_default))
    atomic_write_text(out / "comparison.md", table + ("\n\n" + during if during else "") + "\n")
    return comparison


def compare_saving(kind: str, recipe: str | Path | None) -> dict[str, Any]:
    """How a comparison's models are saved unless the recipe says: a LoRA run, reward model or policy, keeps
    its adapter (``merge_lora: false``; a reward model's with its trained head), not a merged copy of the whole
    model. The comparison reads only each run's ``eval_scores.jsonl``; a policy's adapter loads with
    ``AutoModelForCausalLM.from_pretrained`` (peft), a reward model's with every mmpo command that scores
    (:func:`mmpo.models.reward.load_reward_model`). Online runs keep their own saving (each round starts from
    the last one's policy: merged when sampled in process, the adapter trained on with ``sampler_urls``)."""
    from mmpo.config import read_recipe

    if kind not in ("rm", "dpo") or (recipe is not None and "merge_lora" in read_recipe(recipe)):
        return {}
    return {"merge_lora": False}


def run_compare(kind: str | None, recipe: str | Path | None, losses: list[str], seeds: list[int],
                overrides: dict[str, Any], out: str | Path, title: str = "") -> dict[str, Any]:
    """Train (or reuse) every loss x seed of ``recipe`` under ``out`` and write the comparison (see module doc)."""
    if len(losses) < 2:
        raise UserError("--losses: give at least two losses to compare, e.g. mmpo,bt")
    kind = kind or infer_kind(losses)
    out = Path(out)
    for key in ("loss", "seed", "output_dir"):
        if key in overrides:
            raise UserError(f"--{key} is set by mmpo compare itself (use --losses / --seeds / --out)")
    overrides = {**compare_saving(kind, recipe), **overrides}
    run_dirs: dict[str, dict[int, Path]] = {loss: {} for loss in losses}
    for seed in seeds:  # seed-major: a stopped comparison has whole seeds done
        for loss in losses:
            values = {**overrides, "loss": loss, "seed": seed, "output_dir": str(out / run_name(loss, seed))}
            run_dirs[loss][seed] = train_or_reuse_online(recipe, values) if kind == "online" else train_or_reuse(kind, recipe, values)
    if kind == "online":
        return summarize_online(run_dirs, losses, seeds, out, title)
    return summarize(run_dirs, losses, seeds, out, title)


# --- online runs (`mmpo online`) ---------------------------------------------------------------------------


def train_or_reuse_online(recipe: str | Path | None, overrides: dict[str, Any]) -> Path:
    """Run (or continue; finished rounds are read back) one `mmpo online` run; returns its directory."""
    from mmpo.config import load_config
    from mmpo.training.tasks import task

    entry = task("online")
    config = load_config(entry.config_class, recipe, overrides)
    print(f"== {Path(config.output_dir).name}: online rounds (loss {config.loss}, seed {config.seed})", flush=True)
    entry.train(config)
    return Path(config.output_dir)


def online_records(run_dir: Path) -> list[dict[str, Any]]:
    """A finished online run's ``log.jsonl`` (round 0 = the starting model, then one record per round)."""
    path = RunFiles(run_dir).online_log
    if not path.exists():
        raise UserError(f"{run_dir}: no {path.name} (the online run did not finish)")
    return read_jsonl(path)


def online_metrics(records: list[dict[str, Any]]) -> dict[str, float]:
    """:data:`ONLINE_METRICS` of one run from its rounds: the last round's held-out grade, minus round 0's for the gain."""
    if len(records) < 2 or "eval_mean_grade" not in records[0]:
        raise UserError("an online run without held-out prompts or rounds cannot be compared (set eval_prompts)")
    base, last = records[0], records[-1]
    return {"mean_grade": float(last["eval_mean_grade"]), "gain": float(last["eval_mean_grade"] - base["eval_mean_grade"]),
            "full_marks": float(last["eval_full_marks"]), "base_grade": float(base["eval_mean_grade"]),
            "n": int(last["eval_n"])}


def summarize_online(run_dirs: dict[str, dict[int, Path]], losses: list[str], seeds: list[int], out: Path,
                     title: str = "") -> dict[str, Any]:
    """The online comparison: :data:`ONLINE_METRICS` per loss with 95% intervals over seeds, the paired difference,
    and whether each loss's gain over the starting model excludes zero; comparison.json / .md / .png and a
    curves.png of the held-out grade after every round."""
    records = {loss: {s: online_records(run_dirs[loss][s]) for s in seeds} for loss in losses}
    values = {loss: {s: online_metrics(records[loss][s]) for s in seeds} for loss in losses}
    bases = {values[loss][s]["base_grade"] for loss in losses for s in seeds}
    if max(bases) - min(bases) > 1e-9:
        raise UserError(f"the runs start from different held-out grades ({sorted(bases)}): give every run the same "
                        "model, eval_prompts, max_new_tokens and torch thread count (OMP_NUM_THREADS: under bf16 "
                        "the thread count changes greedy answers)")
    comparison = compare_values(values, losses, seeds, ONLINE_METRICS)
    comparison["kind"] = "online"
    comparison["base_grade"] = bases.pop()
    comparison["n_eval_prompts"] = values[losses[0]][seeds[0]]["n"]
    gain = loss_intervals(comparison["metrics"]["gain"], losses)
    comparison["gain_over_base"] = {loss: {**gain[loss], "distinguishable": distinguishable(gain[loss]["low"], gain[loss]["high"])}
                                    for loss in losses}
    comparison["runs"] = {loss: {str(s): str(run_dirs[loss][s]) for s in seeds} for loss in losses}
    out.mkdir(parents=True, exist_ok=True)
    table = render_table(comparison, title or None)
    plot_comparison(comparison, out / "comparison.png", title)
    logs = {loss: [[{"epoch": r["round"], "eval_mean_grade": r["eval_mean_grade"], "eval_full_marks": r["eval_full_marks"]}
                    for r in records[loss][s]] for s in seeds] for loss in losses}
    comparison["plots"] = {"comparison": str(out / "comparison.png")}
    if plot_curves(logs, out / "curves.png", title, metrics=("mean_grade", "full_marks"), xlabel="round (0 = starting model)"):
        comparison["plots"]["curves"] = str(out / "curves.png")
    atomic_write_text(out / "comparison.json", json.dumps(comparison, indent=2, default=_json_default))
    atomic_write_text(out / "comparison.md", table + "\n")
    return comparison


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    raise TypeError(f"not JSON serialisable: {type(value)}")
