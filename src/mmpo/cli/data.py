"""`mmpo data SPEC`: read a preference data set and print its report (see docs/data.md), without training."""

from __future__ import annotations

import argparse
import json

from mmpo.errors import UserError
from mmpo.gamma import parse_gamma


def add_arguments(name: str, p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="a data file or directory, a source name (ultrafeedback, shp, helpsteer2, helpsteer3, alpaca_graded, ultrafeedback_raw) or a hub id")
    p.add_argument("--source", default=None, help="read SPEC (a local copy) in this source's schema, e.g. shp")
    p.add_argument("--split", default=None, help="split to read (default: the source's training split)")
    p.add_argument("--columns", nargs="+", default=[], metavar="EXPECTED=THEIRS", help="rename columns, e.g. prompt=question")
    p.add_argument("--margin-from", default=None, choices=("score_difference", "log_score_ratio"), help="SHP margin")
    p.add_argument("--gamma", default="1.0", help="soft-target scale, > 0; none or hard for hard labels")
    p.add_argument("--ties", default="keep", help="keep (p = 0.5) or drop")
    p.add_argument("--order-conflict", default="swap", help="chosen rated below rejected: swap, drop or error")
    p.add_argument("--pairs-per-prompt", type=int, default=None, help="cap per prompt (default: the source's; 0 = none)")
    p.add_argument("--margin-bins", type=int, default=0, help="sample uniformly across this many margin quantile bins")
    p.add_argument("--max-pairs", type=int, default=None, help="keep a seeded sample of this many pairs (default: all)")
    p.add_argument("--seed", type=int, default=42, help="seed of the per-prompt cap, margin-bin and --max-pairs sampling")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def _columns(pairs: list[str]) -> dict[str, str]:
    out = {}
    for item in pairs:
        expected, sep, theirs = item.partition("=")
        if not sep or not expected or not theirs:
            raise UserError(f"--columns expects EXPECTED=THEIRS (got {item!r})")
        out[expected] = theirs
    return out


def data_spec(args: argparse.Namespace) -> str | dict:
    """The spec as ``load_pairs`` takes it: the bare argument, or a mapping when flags add to it."""
    from mmpo.data.sources import looks_like_path

    extra = {"source": args.source, "columns": _columns(args.columns), "margin_from": args.margin_from}
    extra = {k: v for k, v in extra.items() if v}
    if not extra:
        return args.spec
    return {("path" if args.source or looks_like_path(args.spec) else "source"): args.spec, **extra}


def run(args: argparse.Namespace) -> int:
    from mmpo.data.pipeline import PairOptions, load_pairs

    options = PairOptions(
        gamma=parse_gamma(args.gamma, "--gamma"),
        ties=args.ties,
        order_conflict=args.order_conflict,
        pairs_per_prompt=args.pairs_per_prompt,
        margin_bins=args.margin_bins,
        max_pairs=args.max_pairs,
        seed=args.seed,
        split=args.split,
    )
    _, report = load_pairs(data_spec(args), options)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.render())
    return 0
