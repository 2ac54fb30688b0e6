"""`mmpo eval pairs --model DIR --data FILE --out FILE.json [--scores FILE.jsonl] ...`

Scores every pair of a data file with a reward model or a policy (implicit reward, see
:mod:`mmpo.evaluation.scoring`) and writes the held-out metrics of :func:`mmpo.evaluation.metrics.pair_metrics`
(n, accuracy, ece, soft_ece, nll, brier) with ``h = reward(chosen) - reward(rejected)`` against the data's
soft targets ``p = sigmoid(gamma * margin)``. ``--scores`` adds one JSON line per pair:
``{"row", "chosen_reward", "rejected_reward", "p"}`` (``p`` is the target; ``row`` points into the data file).
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

_UNSET = object()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="a saved reward model or policy directory (detected from config.json)")
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


def _gamma(value: Any, trained: dict[str, Any]) -> float | None:
    if value is _UNSET:
        return trained["gamma"] if "gamma" in trained else 1.0
    from mmpo.gamma import parse_gamma

    return parse_gamma(value, "--gamma")


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


def _is_none(value: str | None) -> bool:
    return value is None or value.strip().lower() in ("none", "null")


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from mmpo.data.pipeline import PairOptions, load_pairs
    from mmpo.data.sources import held_out_split
    from mmpo.errors import UserError
    from mmpo.evaluation.metrics import pair_metrics
    from mmpo.evaluation.scoring import DEFAULT_BETA, load_scoring_model, model_kind, score_with_models, trained_over_length, training_config

    # Every argument is checked before the data is read or a model loads.
    check_numbers(args)
    trained = training_config(args.model)
    gamma = _gamma(args.gamma, trained)
    # The model's kind comes from its config.json; the choice of reference is checked before weights load.
    kind = model_kind(args.model)
    ref_name = None if _is_none(args.ref_model) else args.ref_model
    if kind == "policy" and args.ref_model is None:
        # With and without a reference the scores differ widely (DPO's implicit reward is a log-ratio):
        # the choice is the user's, never a silent default.
        trained_from = trained.get("ref_model") or trained.get("model")
        hint = f" ({trained_from!r} per its config.yaml)" if trained_from else ""
        raise UserError(
            f"{args.model} is a policy: pass --ref-model PATH, the model it was trained from{hint}, or "
            "--ref-model none for the reference-free reward beta * log pi(y|x)"
        )
    if kind == "reward" and (args.ref_model is not None or args.beta is not None):
        raise UserError(f"{args.model} is a reward model: --ref-model and --beta only apply to a policy")
    # A data set named without a split is scored on its test split (a local file is read whole).
    pairs, report = load_pairs(args.data, PairOptions(gamma=gamma, max_pairs=args.max_pairs, split=held_out_split(args.data)))
    print(report.render())
    if not pairs:
        raise UserError(f"{args.data}: no pairs to score")
    model, tokenizer, kind = load_scoring_model(args.model, kind=kind)
    ref = None
    beta = None
    if kind == "policy":
        beta = args.beta if args.beta is not None else trained.get("beta", DEFAULT_BETA)
        if ref_name is not None:
            ref, _, _ = load_scoring_model(ref_name, kind="policy", device=next(model.parameters()).device)
    max_length = args.max_length or int(trained.get("max_length") or 1024)
    max_prompt_length = args.max_prompt_length
    if max_prompt_length is None and args.max_length is None and trained.get("max_prompt_length"):
        max_prompt_length = int(trained["max_prompt_length"])

    scores = score_with_models(
        model, tokenizer, pairs, kind, ref_model=ref, beta=beta,
        batch_size=args.batch_size, max_length=max_length, max_prompt_length=max_prompt_length,
        over_length=trained_over_length(trained),  # a pair its training kept whole is scored whole
    )
    h = np.array([c - r for c, r in scores], dtype=np.float64)
    p = np.array([pair.p for pair in pairs], dtype=np.float64)
    metrics = pair_metrics(h, p)
    result = {
        **metrics,
        "model": args.model,
        "kind": kind,
        "data": str(args.data),
        "gamma": gamma,
        "max_length": max_length,
        **({"beta": beta, "ref_model": ref_name} if kind == "policy" else {}),
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    if args.scores:
        os.makedirs(os.path.dirname(os.path.abspath(args.scores)), exist_ok=True)
        with open(args.scores, "w") as f:
            for pair, (chosen, rejected) in zip(pairs, scores):
                f.write(json.dumps({"row": pair.row, "chosen_reward": chosen, "rejected_reward": rejected, "p": pair.p}) + "\n")
    print(
        f"{kind} {args.model} on {args.data}: n {metrics['n']}  accuracy {metrics['accuracy']:.4f}  "
        f"ece {metrics['ece']:.4f}  soft_ece {metrics['soft_ece']:.4f}  nll {metrics['nll']:.4f}  brier {metrics['brier']:.4f}"
    )
    print(f"wrote {args.out}" + (f" and {args.scores}" if args.scores else ""))
    return 0
