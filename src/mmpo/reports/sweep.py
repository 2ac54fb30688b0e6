"""`mmpo sweep`: train the same recipe for several gammas and pick the one with the lowest held-out NLL.

Each run's held-out NLL is measured against the *binary* outcome (chosen preferred; ties 0.5), the same target
for every run: comparing NLL against each run's own soft targets would compare runs on different questions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mmpo.errors import UserError


def parse_gammas(text: str) -> list[float | None]:
    """``"0.3,1,2.2,none"`` -> ``[0.3, 1.0, 2.2, None]``; each gamma must be > 0."""
    out: list[float | None] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        if item.lower() in ("none", "hard", "inf"):
            out.append(None)
            continue
        try:
            g = float(item)
        except ValueError:
            raise UserError(f"--gamma: {item!r} is not a number or 'none'") from None
        if g <= 0:
            raise UserError(f"--gamma: {g} must be > 0 (use 'none' for hard labels)")
        out.append(g)
    if not out:
        raise UserError("--gamma: give at least one value, e.g. 0.3,1,2.2,none")
    return out


def gamma_name(gamma: float | None) -> str:
    return "gamma-none" if gamma is None else f"gamma-{gamma:g}"


def run_sweep(kind: str, recipe: str | None, gammas: list[float | None], overrides: list[str], out_dir: str | None = None) -> dict[str, Any]:
    """Train ``kind`` (rm | dpo) once per gamma under ``out_dir/gamma-*``, then compare them with `mmpo report`."""
    from mmpo.config import DPOConfig, RMConfig, load_config, parse_overrides
    from mmpo.reports.compare import write_report

    cls = RMConfig if kind == "rm" else DPOConfig
    base = load_config(cls, recipe, overrides)
    root = Path(out_dir or base.output_dir)
    run_dirs = []
    for gamma in gammas:
        values = parse_overrides(overrides) if overrides else {}
        values.update({"gamma": gamma, "output_dir": str(root / gamma_name(gamma))})
        if base.loss not in ("mmpo", "simpo_mmpo"):
            values["loss"] = "mmpo"  # gamma only matters for soft-target losses
        config = load_config(cls, recipe, values)
        print(f"== sweep: {gamma_name(gamma)} -> {config.output_dir}", flush=True)
        if kind == "rm":
            from mmpo.training.rm import train_reward_model

            train_reward_model(config)
        else:
            from mmpo.training.dpo import train_policy

            train_policy(config)
        run_dirs.append(config.output_dir)
    summary = write_report(run_dirs, root / "report")
    by_dir = {v["path"]: (name, v) for name, v in summary["runs"].items()}
    scored = [(by_dir[str(Path(d))][1]["nll_binary"], g, d) for g, d in zip(gammas, run_dirs)]
    best_nll, best_gamma, best_dir = min(scored, key=lambda t: t[0])
    result = {"best_gamma": best_gamma, "best_run": best_dir, "best_nll_binary": best_nll,
              "runs": {gamma_name(g): {"nll_binary": n, "dir": d} for n, g, d in scored}}
    (root / "sweep.json").write_text(json.dumps(result, indent=2))
    return result
