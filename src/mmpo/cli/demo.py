"""`mmpo demo`: train MMPO and baseline reward models and policies on the embedded model and compare them."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(name: str, p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default=None, help="demo directory (default: <cache>/demo); rerun to resume")
    p.add_argument("--recipes", default=None, help="directory with rm.yaml and dpo.yaml (default: the packaged embedded/ recipes)")
    p.add_argument("--prompts", type=int, default=400, help="prompts in the generated data set")
    p.add_argument("--generate-prompts", type=int, default=44, help="held-out prompts each policy answers")
    p.add_argument("--max-steps", type=int, default=None, help="cap every training run at this many steps (a quick look)")


def run(args: argparse.Namespace) -> int:
    from mmpo.demo import REPO_RECIPES, DemoSettings, default_out, run_demo

    overrides = {"max_steps": args.max_steps} if args.max_steps else {}
    settings = DemoSettings(
        out=Path(args.out) if args.out else default_out(),
        recipes=Path(args.recipes) if args.recipes else REPO_RECIPES,
        prompts=args.prompts,
        generate_prompts=args.generate_prompts,
        rm_overrides=dict(overrides),
        dpo_overrides=dict(overrides),
    )
    run_demo(settings)
    return 0
