"""`mmpo demo`: the main job, on the embedded model and a CPU: MMPO against its baseline over several seeds.

1. Reward models: ``recipes/embedded/rm.yaml`` with ``loss: mmpo`` and ``loss: bt``, every seed
   (`mmpo compare`, :mod:`mmpo.experiments.compare`).
2. Policies: ``recipes/embedded/dpo.yaml`` with ``loss: mmpo`` and ``loss: dpo``, every seed.
3. For each, the held-out metrics per loss (mean +- 95% t-interval over seeds), the paired difference MMPO minus
   baseline with its interval and whether it excludes zero, an error-bar plot, and the held-out curves evaluated
   during training (the overfitting picture), written under ``out/reward-models`` and ``out/policies``.

The recipes read the real graded data (``alpaca_graded``: real model outputs, GPT-4-turbo's probability that each
beats a reference) and hold out a share of its prompts; every run of a seed is scored on the same held-out pairs
against the judge's probability (``eval_gamma: 1``). Every step is resumable: rerunning reuses finished runs.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmpo.errors import UserError
from mmpo.io import atomic_write_text
from mmpo.paths import cache_dir
from mmpo.recipes import RECIPES_DIR

REPO_RECIPES = RECIPES_DIR / "embedded"  # packaged: works from an installed wheel too

# (title, kind, recipe file, losses: MMPO first, then its baseline, sub-directory)
PARTS = (
    ("reward models", "rm", "rm.yaml", ["mmpo", "bt"], "reward-models"),
    ("policies", "dpo", "dpo.yaml", ["mmpo", "dpo"], "policies"),
)


@dataclass
class DemoSettings:
    out: Path
    recipes: Path = REPO_RECIPES
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    overrides: dict[str, Any] = field(default_factory=dict)  # applied to every run of both parts
    parts: tuple[str, ...] = ("rm", "dpo")


def run_demo(settings: DemoSettings) -> dict[str, Any]:
    """Run both comparisons; print their tables and write ``summary.json`` and ``summary.md`` under ``out``."""
    from mmpo.experiments.compare import render_table, run_compare

    start = time.time()
    out = settings.out
    out.mkdir(parents=True, exist_ok=True)
    parts = [p for p in PARTS if p[1] in settings.parts]
    for _, _, recipe, _, _ in parts:
        if not (settings.recipes / recipe).exists():
            raise UserError(f"recipe not found: {settings.recipes / recipe} (pass --recipes DIR)")
    results: dict[str, Any] = {}
    timings: dict[str, float] = {}
    for title, kind, recipe, losses, sub in parts:
        t0 = time.time()
        print(f"\n==== {title}: {' vs '.join(losses)}, seeds {', '.join(map(str, settings.seeds))} ({recipe})", flush=True)
        results[sub] = run_compare(kind, settings.recipes / recipe, losses, settings.seeds, dict(settings.overrides),
                                   out / sub, title=title)
        timings[sub] = time.time() - t0
    elapsed = time.time() - start
    tables = [render_table(results[sub], f"{title}: {' vs '.join(losses)}") for title, _, _, losses, sub in parts]
    plots = [f"{sub}: " + ", ".join(results[sub]["plots"].values()) for _, _, _, _, sub in parts]
    text = "\n\n".join(tables)
    atomic_write_text(out / "summary.md", text + "\n\nPlots:\n" + "\n".join(plots) + "\n")
    atomic_write_text(out / "summary.json", json.dumps({"comparisons": results, "elapsed_s": elapsed, "part_s": timings}, indent=2))
    print("\n" + text)
    print("\nplots (error bars per metric; held-out curves during training with seed bands):")
    for line in plots:
        print("  " + line)
    print(f"\nsummary: {out / 'summary.md'}   (wall time {elapsed / 60:.1f} min)")
    return {"comparisons": results, "elapsed_s": elapsed}


def default_out() -> Path:
    return cache_dir() / "demo"
