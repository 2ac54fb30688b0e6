"""`mmpo eval rewardbench --model DIR [--ref-model DIR --beta B] [--data PATH] [--prior-sets [PATH]] --out FILE.json`

The command line of :func:`mmpo.evaluation.rewardbench.run_rewardbench`: scores RewardBench (allenai/reward-bench, split ``filtered``, or a local copy) with a reward model or a
policy used as an implicit reward model, and writes per-subset accuracies, the four section scores and the
overall score (see :mod:`mmpo.evaluation.rewardbench`). Rewards are cached in ``OUT_STEM.scores.jsonl`` as
they are computed; rerunning the same command resumes where it stopped.
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="a saved reward model or policy directory (detected from config.json, or a LoRA adapter's adapter_config.json)")
    p.add_argument("--ref-model", default=None, help="policy only: reference model; without it the implicit reward is reference-free")
    p.add_argument("--beta", type=float, default=None, help="policy only: implicit-reward scale (default: the model's config.yaml, else 0.1)")
    p.add_argument("--data", default=None, help="local copy of allenai/reward-bench (file or directory; default: the Hub)")
    p.add_argument("--split", default="filtered", help="split to read (default: filtered)")
    p.add_argument(
        "--prior-sets", nargs="?", const="hub", default=None, metavar="PATH",
        help="also score the Prior Sets (allenai/preference-test-sets); PATH = local copy, no PATH = the Hub",
    )
    p.add_argument("--out", required=True, help="results JSON; the score cache goes beside it (OUT_STEM.scores.jsonl)")
    p.add_argument("--batch-size", type=int, default=8, help="pairs per forward pass (2x rows)")
    p.add_argument("--max-length", type=int, default=2048, help="tokens per sequence (longer ones are truncated)")
    p.add_argument("--max-prompt-length", type=int, default=None, help="prompt tokens kept (default: max-length // 2)")
    p.add_argument("--limit", type=int, default=None, help="smoke test: only the first N rows of each subset")


def run(args: argparse.Namespace) -> int:
    from mmpo.evaluation.rewardbench import format_table, run_rewardbench

    report = run_rewardbench(
        args.model, args.out, ref_model=args.ref_model, beta=args.beta, data=args.data, split=args.split,
        prior_sets=args.prior_sets, batch_size=args.batch_size, max_length=args.max_length,
        max_prompt_length=args.max_prompt_length, limit=args.limit,
    )
    print(format_table(report))
    print(f"wrote {args.out} (scores cached in {report['cache']})")
    return 0
