"""`mmpo sweep CONFIG --gamma 0.3,1,2.2,none [--kind rm|dpo] [--key value ...]`."""

from __future__ import annotations

import argparse

ACCEPTS_OVERRIDES = {"sweep": True}


def add_arguments(name: str, p: argparse.ArgumentParser) -> None:
    p.allow_abbrev = False  # `--seed 3` is a run key, not an abbreviation of --seeds
    p.usage = "mmpo sweep [CONFIG.yaml] --gamma 0.3,1,2.2,none [--seeds 0,1,2] [--kind rm|dpo] [--key value ...]"
    p.add_argument("--gamma", dest="gammas", required=True, help="comma-separated gammas (> 0); none or hard = hard labels")
    p.add_argument("--kind", choices=["rm", "dpo"], default="rm", help="train reward models (rm) or policies (dpo)")
    p.add_argument("--seeds", default=None, help="comma-separated seeds: one run per gamma and seed, NLL with 95%% intervals")
    p.add_argument("--out", default=None, help="sweep directory (default: the recipe's output_dir)")


def run(args: argparse.Namespace) -> int:
    from mmpo.experiments.compare import parse_list
    from mmpo.reports.intervals import format_interval
    from mmpo.gamma import parse_gamma_list
    from mmpo.experiments.sweep import gamma_name, run_sweep

    from mmpo.cli.train import split_recipe

    recipe, overrides = split_recipe(args.extra)
    seeds = parse_list(args.seeds, "seeds", int) if args.seeds else None
    result = run_sweep(args.kind, recipe, parse_gamma_list(args.gammas, "--gamma"), overrides, args.out, seeds)
    several = bool(seeds) and len(seeds) > 1
    if several:
        print("\n| gamma | held-out NLL (binary), mean +- 95% CI | minus the best [95% CI] |\n|---|---|---|")
    else:
        print("\n| gamma | held-out NLL (binary) |\n|---|---|")
    for name, r in result["runs"].items():
        if not several:
            print(f"| {name} | {r['nll_binary']:.4f} |")
            continue
        d = r.get("minus_best")
        gap = "(best)" if d is None else f"{d['diff']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]" + (" distinguishable" if d["distinguishable"] else "")
        print(f"| {name} | {format_interval(r['nll_binary'], r['low'], r['high'], 4)} | {gap} |")
    if several:
        print(f"\n{result['interval']}; seeds {', '.join(map(str, seeds))}")
    if result.get("warning"):
        print(f"\n{result['warning']}")
    print(f"\nlowest held-out NLL: {gamma_name(result['best_gamma'])} ({result['best_run']})")
    return 0
