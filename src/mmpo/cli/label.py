"""`mmpo label --data FILE --out FILE (--reward-model DIR | --judge-url URL --judge-model NAME | --checker NAME)`

The command line of :func:`mmpo.graders.labelling.label_pairs`, which adds a margin to every row of a pair file, so data without one (binarized, hard-labelled) can train with MMPO:

* ``--reward-model``: ``score_chosen`` / ``score_rejected`` (the rewards ``mmpo eval pairs --scores`` gives);
* ``--judge-url`` + ``--judge-model``: ``p_chosen``, the judge's probability that chosen is better, asked in
  both orders and averaged (``--judge-averaging``, :mod:`mmpo.graders.judge`);
* ``--checker``: ``score_chosen`` / ``score_rejected`` from a checker (``graded-tasks`` or ``module:function``).

Rows keep every field they had. Strength columns the input already had (``score_chosen``, ``score_rejected``,
``margin``, ``p_chosen``) are renamed ``original_<name>``, so the new margin is the only one training reads and
``mmpo fit-gamma`` can still compare the two. The output is JSON Lines and trains with ``mmpo rm`` / ``mmpo dpo``
as is. Rows that could not be labelled (a judge call failed or gave no verdict after its retries, a row without
prompt/chosen/rejected) are not written there: they go, with a ``label_error`` field, to
``OUT_STEM.unlabeled.jsonl``, and their count is printed. A summary (counts, grader, judge statistics) goes to
``OUT_STEM.label.json``. Grades are cached in ``OUT_STEM.cache.jsonl`` as they are made: rerunning the same
command after a crash grades only what is missing (and retries the missing rows).

An existing ``--out`` is replaced only by a rerun of the same labelling (its ``OUT_STEM.label.json`` names the same
``--data`` and grader: it resumes through the cache) or with ``--overwrite``; anything else is refused, so a
labelled file is never silently replaced by one from other data.
"""

from __future__ import annotations

import argparse
from typing import Any

def add_arguments(name: str, p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="pair file (.jsonl/.json/.parquet/.csv) with prompt, chosen, rejected")
    p.add_argument("--out", required=True, help="labelled pair file to write (JSON Lines)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--reward-model", help="a saved reward model directory (any AutoModelForSequenceClassification, or an mmpo LoRA adapter)")
    which.add_argument("--judge-url", help="an OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1 (key: $MMPO_JUDGE_API_KEY or $OPENAI_API_KEY)")
    which.add_argument("--checker", help="graded-tasks, or module:function called as fn(row, response) -> grade")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out made from other data or by another grader (a rerun of the same "
                        "labelling resumes without it)")
    p.add_argument("--judge-model", help="model name at --judge-url")
    p.add_argument("--verdict-from", default="auto", choices=["auto", "logprobs", "samples"],
                   help="judge: verdict-token log-probabilities, repeated verdicts, or logprobs when the endpoint gives them (auto)")
    p.add_argument("--judge-averaging", default="logit", choices=["logit", "probability"],
                   help="judge: combine the two orders' P(A) in logit space (cancels a constant position bias; default) or in probability space")
    p.add_argument("--judge-samples", type=int, default=5, help="judge: verdicts per order when sampling (default 5)")
    p.add_argument("--judge-concurrency", type=int, default=4, help="judge: pairs in flight at once (default 4)")
    p.add_argument("--max-retries", type=int, default=4, help="judge: retries per request, with exponential backoff (default 4)")
    p.add_argument("--batch-size", type=int, default=8, help="reward model: pairs per forward pass (default 8)")
    p.add_argument("--max-length", type=int, default=None, help="reward model: tokens per sequence (default: its config.yaml, else 1024)")
    p.add_argument("--max-prompt-length", type=int, default=None, help="reward model: prompt tokens kept (default: its config.yaml, else half)")


def grader_spec(args: argparse.Namespace) -> dict[str, Any]:
    """The :func:`mmpo.graders.load_grader` spec the options name."""
    from mmpo.errors import UserError

    if args.judge_model and not args.judge_url:
        raise UserError("--judge-model goes with --judge-url")
    if args.reward_model:
        return {"kind": "reward_model", "path": args.reward_model, "batch_size": args.batch_size,
                "max_length": args.max_length, "max_prompt_length": args.max_prompt_length}
    if args.judge_url:
        if not args.judge_model:
            raise UserError("--judge-url needs --judge-model (the model name the endpoint serves)")
        return {"kind": "judge", "url": args.judge_url, "model": args.judge_model, "verdict_from": args.verdict_from,
                "averaging": args.judge_averaging, "samples": args.judge_samples, "concurrency": args.judge_concurrency,
                "max_retries": args.max_retries, "batch_size": max(args.judge_concurrency, 1)}
    return {"kind": "checker", "checker": args.checker}


def run(args: argparse.Namespace) -> int:
    from mmpo.graders.labelling import label_pairs

    summary = label_pairs(args.data, args.out, grader_spec(args), overwrite=args.overwrite)
    print(f"labelled {summary['labeled']} of {summary['rows']} rows -> {args.out}")
    if summary["unlabeled"]:
        print(f"NOT labelled: {summary['unlabeled']} rows -> {summary['unlabeled_file']} (rerun the same command to retry them)")
    return 0 if summary["labeled"] else 1
