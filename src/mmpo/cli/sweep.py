"""`mmpo sweep CONFIG --gamma 0.3,1,2.2,none [--kind rm|dpo] [--key value ...]`."""

from __future__ import annotations

import argparse

ACCEPTS_OVERRIDES = {"sweep": True}


def add_arguments(name: str, p: argparse.ArgumentParser) -> None:
    p.usage = "mmpo sweep [CONFIG.yaml] --gamma 0.3,1,2.2,none [--kind rm|dpo] [--key value ...]"
    p.add_argument("--gamma", dest="gammas", required=True, help="comma-separated gammas; 'none' = hard labels")
    p.add_argument("--kind", choices=["rm", "dpo"], default="rm", help="train reward models (rm) or policies (dpo)")
    p.add_argument("--out", default=None, help="sweep directory (default: the recipe's output_dir)")


def run(args: argparse.Namespace) -> int:
    from mmpo.reports.sweep import gamma_name, parse_gammas, run_sweep

    from mmpo.cli.train import split_recipe

    recipe, overrides = split_recipe(args.extra)
    result = run_sweep(args.kind, recipe, parse_gammas(args.gammas), overrides, args.out)
    print("\n| gamma | held-out NLL (binary) |\n|---|---|")
    for name, r in result["runs"].items():
        print(f"| {name} | {r['nll_binary']:.4f} |")
    print(f"\nlowest held-out NLL: {gamma_name(result['best_gamma'])} ({result['best_run']})")
    return 0
