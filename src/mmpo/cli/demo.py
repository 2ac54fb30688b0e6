"""`mmpo demo`: MMPO vs BT reward models and MMPO vs DPO policies on real graded data, over several seeds."""

from __future__ import annotations

import argparse
from pathlib import Path

ACCEPTS_OVERRIDES = {"demo": True}


def add_arguments(name: str, p: argparse.ArgumentParser) -> None:
    p.allow_abbrev = False
    p.usage = "mmpo demo [--out DIR] [--seeds 0,1,2] [--only rm|dpo] [--key value ...]"
    p.epilog = "Extra --key value pairs override both recipes (e.g. --max_steps 4 for a quick look)."
    p.add_argument("--out", default=None, help="demo directory (default: <cache>/demo); rerun to resume")
    p.add_argument("--recipes", default=None, help="directory with rm.yaml and dpo.yaml (default: the packaged embedded/ recipes)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    p.add_argument("--only", choices=["rm", "dpo"], default=None, help="run only the reward models or only the policies")


def run(args: argparse.Namespace) -> int:
    from mmpo.config import parse_overrides
    from mmpo.experiments.demo import REPO_RECIPES, DemoSettings, default_out, run_demo
    from mmpo.experiments.compare import parse_list

    settings = DemoSettings(
        out=Path(args.out) if args.out else default_out(),
        recipes=Path(args.recipes) if args.recipes else REPO_RECIPES,
        seeds=parse_list(args.seeds, "seeds", int),
        overrides=parse_overrides(args.extra),
        parts=(args.only,) if args.only else ("rm", "dpo"),
    )
    run_demo(settings)
    return 0
