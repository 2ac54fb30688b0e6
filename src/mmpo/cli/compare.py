"""`mmpo compare [CONFIG.yaml] --losses mmpo,bt --seeds 0,1,2 --out DIR [--baseline LOSS] [--kind rm|dpo|online] [--key value ...]`."""

from __future__ import annotations

import argparse
import sys

ACCEPTS_OVERRIDES = {"compare": True}


def add_arguments(name: str, p: argparse.ArgumentParser) -> None:
    p.allow_abbrev = False  # `--seed 3` / `--loss bt` are run keys, not abbreviations of --seeds / --losses
    p.usage = ("mmpo compare [CONFIG.yaml] --losses mmpo,bt --seeds 0,1,2 --out DIR [--baseline LOSS] [--kind rm|dpo|online] "
               "[--key value ...]")
    p.epilog = ("Trains the recipe once per loss and seed under DIR (finished runs are reused, unfinished ones resume) "
                "and writes DIR/comparison.json, comparison.md, comparison.png and curves.png: each metric's mean "
                "per loss and each loss's paired difference from the baseline (loss - baseline), both with a 95% "
                "t-interval over seeds, also at every evaluation during training; with more than two losses the "
                "table ranks them per metric.")
    p.add_argument("--losses", required=True, help="comma-separated losses, two or more (e.g. mmpo,dpo,odpo)")
    p.add_argument("--baseline", default=None,
                   help="the loss every other one is compared with (loss - baseline, paired by seed); default: the "
                        "last one listed, so with two losses the difference is first - second")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    p.add_argument("--out", required=True, help="comparison directory")
    p.add_argument("--kind", choices=["rm", "dpo", "online"], default=None,
                   help="reward models, policies, or `mmpo online` runs (default: the recipe's kind, see "
                        "mmpo.training.tasks.recipe_kind; for a recipe that fits any, dpo when a loss exists only for "
                        "policies, else rm)")


def run(args: argparse.Namespace) -> int:
    from mmpo.cli.train import split_recipe
    from mmpo.config import parse_overrides
    from mmpo.experiments.compare import baseline_last, choose_kind, parse_list, render_table, run_compare
    from mmpo.reports.intervals import few_seeds_warning

    recipe, tokens = split_recipe(args.extra)
    losses = baseline_last(parse_list(args.losses, "losses"), args.baseline)
    seeds = parse_list(args.seeds, "seeds", int)
    kind, reason = choose_kind(args.kind, recipe, losses)
    print(f"kind {kind} for losses {', '.join(losses)}: {reason}", flush=True)
    warning = few_seeds_warning(len(seeds))
    if warning:  # said before the training too, not only under the table at the end
        print(warning, file=sys.stderr, flush=True)
    comparison = run_compare(kind, recipe, losses, seeds, parse_overrides(tokens), args.out)
    print("\n" + render_table(comparison))
    print(f"\nwritten: {args.out}/comparison.json, comparison.md, " + ", ".join(comparison["plots"].values()))
    return 0
