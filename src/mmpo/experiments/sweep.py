"""`mmpo sweep`: train the same recipe for several gammas and pick the one with the lowest held-out NLL.

Every run is scored on the same held-out pairs against the same truth: the held-out split does not depend on
the training gamma, ``eval_gamma`` must be fixed (not ``same``), and :func:`mmpo.experiments.compare.check_same_truth`
checks the written per-pair scores of each seed's runs before any is ranked. Each run's held-out NLL is measured
against the *binary* outcome (chosen preferred; ties 0.5).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mmpo.errors import UserError
from mmpo.gamma import gamma_text
from mmpo.io import atomic_write_text
from mmpo.losses import uses_soft_targets


def gamma_name(gamma: float | None) -> str:
    return f"gamma-{gamma_text(gamma)}"


def run_sweep(kind: str, recipe: str | None, gammas: list[float | None], overrides: list[str], out_dir: str | None = None,
              seeds: list[int] | None = None) -> dict[str, Any]:
    """Train ``kind`` (rm | dpo) once per gamma under ``out_dir/gamma-*``, then compare them with `mmpo report`.

    With ``seeds``, once per gamma and seed (``gamma-*/seed-*``): each gamma's held-out NLL is the mean over seeds
    with its 95% interval, and each gamma's paired difference from the best one gets the same interval
    (:mod:`mmpo.reports.intervals`, as in `mmpo compare`).
    """
    from mmpo.config import load_config, parse_overrides
    from mmpo.reports.report import write_report
    from mmpo.experiments.compare import check_same_truth, train_or_reuse
    from mmpo.reports.intervals import distinguishable, few_seeds_warning, mean_interval, method_for, paired_difference

    from mmpo.training.tasks import task

    base = load_config(task(kind).config_class, recipe, overrides)
    if base.eval_gamma == "same" and len(set(gammas)) > 1:
        raise UserError("mmpo sweep: eval_gamma is 'same', so each gamma would be scored against its own held-out truth; "
                        "set eval_gamma (a number > 0, e.g. 1, or none) to score every gamma against one")
    root = Path(out_dir or base.output_dir)
    run_dirs: dict[str, list[Path]] = {}
    for gamma in gammas:
        for seed in (seeds or [None]):
            values = parse_overrides(overrides) if overrides else {}
            run_dir = root / gamma_name(gamma) if seed is None else root / gamma_name(gamma) / f"seed-{seed}"
            values.update({"gamma": gamma, "output_dir": str(run_dir)})
            if seed is not None:
                values["seed"] = seed
            if not uses_soft_targets(base.loss):
                values["loss"] = "mmpo"  # gamma only matters for soft-target losses
            print(f"== sweep: {gamma_name(gamma)}{'' if seed is None else f', seed {seed}'} -> {run_dir}", flush=True)
            run_dirs.setdefault(gamma_name(gamma), []).append(train_or_reuse(kind, recipe, values))
    for i, seed in enumerate(seeds or [base.seed]):
        check_same_truth({name: dirs[i] for name, dirs in run_dirs.items()}, seed)
    first_seed = [dirs[0] for dirs in run_dirs.values()]
    summary = write_report(first_seed, root / "report")
    by_dir = {v["path"]: v for v in summary["runs"].values()}
    if seeds and len(seeds) > 1:
        # The report covers the first seed; the NLL of every seed comes from its own scores.
        from mmpo.reports.report import read_run, summary_row

        nlls = {name: [summary_row(read_run(d))["nll_binary"] for d in dirs] for name, dirs in run_dirs.items()}
    else:
        nlls = {name: [by_dir[str(dirs[0])]["nll_binary"]] for name, dirs in run_dirs.items()}
    means = {name: mean_interval(v) for name, v in nlls.items()}
    best_name = min(means, key=lambda n: means[n]["mean"])
    best_gamma = gammas[list(run_dirs).index(best_name)]
    runs: dict[str, Any] = {}
    for (name, dirs), gamma in zip(run_dirs.items(), gammas):
        entry: dict[str, Any] = {"gamma": gamma, "nll_binary": means[name]["mean"], "low": means[name]["low"],
                                 "high": means[name]["high"], "per_seed": nlls[name], "dir": str(dirs[0]),
                                 "dirs": [str(d) for d in dirs]}
        if name != best_name:
            d = paired_difference(nlls[name], nlls[best_name])
            entry["minus_best"] = {**d, "distinguishable": distinguishable(d["low"], d["high"])}
        runs[name] = entry
    result = {"best_gamma": best_gamma, "best_run": str(run_dirs[best_name][0]), "best_nll_binary": means[best_name]["mean"],
              "seeds": seeds, "interval": method_for(len(seeds)) if seeds else None, "runs": runs}
    if seeds and few_seeds_warning(len(seeds)):
        result["warning"] = few_seeds_warning(len(seeds))
    atomic_write_text(root / "sweep.json", json.dumps(result, indent=2))
    return result
