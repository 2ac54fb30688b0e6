"""`mmpo data SPEC`: read a preference data set and print the report, without training."""

from __future__ import annotations

import argparse
import json


def add_arguments(name: str, p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="a data file, a source name (ultrafeedback, shp, helpsteer2, helpsteer3) or a hub id")
    p.add_argument("--gamma", default="1.0", help="soft-target scale; 'none' for hard labels")
    p.add_argument("--split", default=None)
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace) -> int:
    from mmpo.data.sources import PairOptions, load_pairs

    gamma = None if str(args.gamma).lower() == "none" else float(args.gamma)
    if gamma is not None and gamma <= 0:
        from mmpo.errors import UserError

        raise UserError(f"gamma must be > 0 (got {gamma}); use --gamma none for hard labels")
    _, report = load_pairs(args.spec, PairOptions(gamma=gamma, split=args.split))
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.render())
    return 0
