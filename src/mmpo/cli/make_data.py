"""`mmpo make-data`: write the graded-tasks preference set (deterministic for a seed) and print a summary."""

from __future__ import annotations

import argparse
import json


def add_arguments(name: str, p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default=None, help="output directory (default: <cache>/data/graded-tasks-<seed>)")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed and sizes give the same bytes")
    p.add_argument("--prompts", type=int, default=400, help="number of distinct prompts (train + eval)")
    p.add_argument("--eval-fraction", type=float, default=0.15, help="share of prompts held out for eval")
    p.add_argument("--responses-per-prompt", type=int, default=5, help="responses (of different kinds) per prompt")
    p.add_argument("--pairs-per-prompt", type=int, default=4, help="at most this many pairs per prompt")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def render(out: str, summary: dict) -> str:
    """The summary as a few lines: sizes, margin histograms and the graded score of each response kind."""
    lines = [
        f"graded-tasks data in {out}",
        f"  prompts: train {summary['prompts']['train']}, eval {summary['prompts']['eval']}"
        f"   pairs: train {summary['pairs']['train']}, eval {summary['pairs']['eval']}"
        f"   distinct margins: {summary['distinct_margins']}",
    ]
    for split, hist in summary["margin_histogram"].items():
        total = max(1, sum(hist.values()))
        lines.append(f"  margin histogram ({split}):")
        for interval, n in hist.items():
            lines.append(f"    {interval:>9} {n:5d} {'#' * round(40 * n / total)}")
    lines.append("  response kind   n     mean   min   max   (grade, 0..10)")
    for kind, s in summary["response_scores"].items():
        lines.append(f"    {kind:<12} {s['n']:4d}  {s['mean']:6.2f} {s['min']:5.1f} {s['max']:5.1f}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from mmpo.data.synthetic import SyntheticConfig, make_dataset

    config = SyntheticConfig(
        seed=args.seed,
        prompts=args.prompts,
        eval_fraction=args.eval_fraction,
        responses_per_prompt=args.responses_per_prompt,
        pairs_per_prompt=args.pairs_per_prompt,
    )
    out, summary = make_dataset(config, args.out)
    print(json.dumps({"out": str(out), **summary}, indent=2) if args.json else render(str(out), summary))
    return 0
