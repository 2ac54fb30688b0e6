"""`mmpo eval rewardbench --model DIR [--ref-model DIR --beta B] [--data PATH] [--prior-sets [PATH]] --out FILE.json`

Scores RewardBench (allenai/reward-bench, split ``filtered``, or a local copy) with a reward model or a
policy used as an implicit reward model, and writes per-subset accuracies, the four section scores and the
overall score (see :mod:`mmpo.evaluation.rewardbench`). Rewards are cached in ``OUT_STEM.scores.jsonl`` as
they are computed; rerunning the same command resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="a saved reward model or policy directory (detected from config.json)")
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
    from mmpo.errors import UserError
    from mmpo.evaluation.rewardbench import (
        format_table,
        limit_per_subset,
        load_prior_sets,
        load_rewardbench,
        rewardbench_report,
        score_rows,
    )
    from mmpo.evaluation.scoring import DEFAULT_BETA, load_scoring_model, score_with_models, training_config

    if args.batch_size < 1 or args.max_length < 2 or (args.limit is not None and args.limit < 1):
        raise UserError("--batch-size and --limit must be positive and --max-length at least 2")
    rows = limit_per_subset(load_rewardbench(args.data, args.split), args.limit)
    prior_rows = None
    if args.prior_sets is not None:
        prior_rows = limit_per_subset(load_prior_sets(None if args.prior_sets == "hub" else args.prior_sets), args.limit)
    print(f"RewardBench: {len(rows)} pairs" + (f", Prior Sets: {len(prior_rows)} pairs" if prior_rows else ""))

    model, tokenizer, kind = load_scoring_model(args.model)
    ref = None
    beta = None
    if kind == "policy":
        beta = args.beta if args.beta is not None else float(training_config(args.model).get("beta", DEFAULT_BETA))
        if args.ref_model:
            ref, _, _ = load_scoring_model(args.ref_model, kind="policy", device=next(model.parameters()).device)
        else:
            print("note: policy without --ref-model: reference-free implicit reward beta * log pi(y|x)")
    elif args.ref_model or args.beta is not None:
        raise UserError(f"{args.model} is a reward model: --ref-model and --beta only apply to a policy")

    def scorer(pairs):
        return score_with_models(
            model, tokenizer, pairs, kind, ref_model=ref, beta=beta, batch_size=args.batch_size,
            max_length=args.max_length, max_prompt_length=args.max_prompt_length, progress=False,
        )

    setup = {
        "model": _identity(args.model),
        "kind": kind,
        "ref_model": _identity(args.ref_model) if args.ref_model else None,
        "beta": beta,
        "max_length": args.max_length,
        "max_prompt_length": args.max_prompt_length,
    }
    out = Path(args.out)
    stem = out.with_suffix("") if out.suffix == ".json" else out
    cache = Path(f"{stem}.scores.jsonl")
    scores = score_rows(rows + (prior_rows or []), scorer, cache, setup, batch_size=args.batch_size)
    report = rewardbench_report(rows, scores, prior_rows)
    report.update(
        model=args.model, kind=kind, ref_model=args.ref_model, beta=beta,
        data=args.data or "allenai/reward-bench", split=args.split, limit_per_subset=args.limit, cache=str(cache),
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(format_table(report))
    print(f"wrote {out} (scores cached in {cache})")
    return 0


def _identity(model: str) -> str:
    """A model as recorded in the cache: local paths absolute, so `./m` and `m` match; names as given."""
    p = Path(model).expanduser()
    return str(p.resolve()) if p.exists() else model
