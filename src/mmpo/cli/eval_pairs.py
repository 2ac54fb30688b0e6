"""`mmpo eval pairs --model DIR --data FILE --out FILE.json [--scores FILE.jsonl] ...`

The command line of :func:`mmpo.evaluation.pairs.evaluate_pairs`: scores every pair of a data file with a reward model or a policy (implicit reward, see
:mod:`mmpo.evaluation.scoring`) and writes the held-out metrics of :func:`mmpo.evaluation.metrics.pair_metrics`
(n, accuracy, ece, soft_ece, nll, brier) with ``h = reward(chosen) - reward(rejected)`` against the data's
soft targets ``p = sigmoid(gamma * margin)``. ``--scores`` adds one JSON line per pair:
``{"row", "chosen_reward", "rejected_reward", "p"}`` (``p`` is the target; ``row`` points into the data file).
"""

from __future__ import annotations

import argparse

_UNSET = object()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="a saved reward model or policy directory (detected from config.json, or a LoRA adapter's adapter_config.json)")
    p.add_argument("--data", required=True, help="pair file (.jsonl/.json/.parquet/.csv) or a registered data set name")
    p.add_argument("--out", required=True, help="where to write the metrics (JSON)")
    p.add_argument("--scores", default=None, help="also write per-pair rewards here (JSONL)")
    p.add_argument(
        "--gamma", default=_UNSET,
        help="soft-target scale for p = sigmoid(gamma * margin); 'none' = hard labels "
        "(default: the gamma in the model's config.yaml, else 1.0)",
    )
    p.add_argument(
        "--ref-model", default=None,
        help="policy only, required for one: the reference model (usually the one it was trained from), "
        "or 'none' for the reference-free reward beta * log pi(y|x)",
    )
    p.add_argument("--beta", type=float, default=None, help="policy only: implicit-reward scale (default: the model's config.yaml, else 0.1)")
    p.add_argument("--batch-size", type=int, default=8, help="pairs per forward pass (2x rows)")
    p.add_argument("--max-length", type=int, default=None, help="tokens per sequence (default: the model's config.yaml, else 1024)")
    p.add_argument("--max-prompt-length", type=int, default=None, help="prompt tokens kept (default: the model's config.yaml, else max-length // 2)")
    p.add_argument("--max-pairs", type=int, default=None, help="score only the first N pairs")


def check_numbers(args: argparse.Namespace) -> None:
    """A one-line UserError naming the first option out of its range."""
    from mmpo.errors import UserError

    limits = (("--batch-size", args.batch_size, 1), ("--max-length", args.max_length, 2),
              ("--max-prompt-length", args.max_prompt_length, 1), ("--max-pairs", args.max_pairs, 1))
    for flag, value, low in limits:
        if value is not None and value < low:
            raise UserError(f"{flag} must be >= {low} (got {value})")
    if args.beta is not None and not args.beta > 0:
        raise UserError(f"--beta must be > 0 (got {args.beta})")


def run(args: argparse.Namespace) -> int:
    from mmpo.evaluation.pairs import TRAINED_GAMMA, evaluate_pairs

    check_numbers(args)  # every argument is checked before the data is read or a model loads
    result = evaluate_pairs(
        args.model, args.data, out=args.out, scores_out=args.scores,
        gamma=TRAINED_GAMMA if args.gamma is _UNSET else args.gamma, ref_model=args.ref_model, beta=args.beta,
        batch_size=args.batch_size, max_length=args.max_length, max_prompt_length=args.max_prompt_length,
        max_pairs=args.max_pairs,
    )
    print(
        f"{result['kind']} {args.model} on {args.data}: n {result['n']}  accuracy {result['accuracy']:.4f}  "
        f"ece {result['ece']:.4f}  soft_ece {result['soft_ece']:.4f}  nll {result['nll']:.4f}  brier {result['brier']:.4f}"
    )
    print(f"wrote {args.out}" + (f" and {args.scores}" if args.scores else ""))
    return 0
