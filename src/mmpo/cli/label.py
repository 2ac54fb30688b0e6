"""`mmpo label --data FILE --out FILE (--reward-model DIR | --judge-url URL --judge-model NAME | --checker NAME)`

Adds a margin to every row of a pair file, so data without one (binarized, hard-labelled) can train with MMPO:

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
import json
import os
from pathlib import Path
from typing import Any

STRENGTH_COLUMNS = ("score_chosen", "score_rejected", "margin", "p_chosen")


def add_arguments(name: str, p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="pair file (.jsonl/.json/.parquet/.csv) with prompt, chosen, rejected")
    p.add_argument("--out", required=True, help="labelled pair file to write (JSON Lines)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--reward-model", help="a saved reward model directory (any AutoModelForSequenceClassification)")
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


def side_files(out: str | Path) -> dict[str, Path]:
    """The files written beside ``out``: ``unlabeled``, ``summary`` and ``cache``."""
    out = Path(out)
    stem = out.parent / (out.name[: -len(".jsonl")] if out.name.endswith(".jsonl") else out.name)
    return {
        "unlabeled": Path(f"{stem}.unlabeled.jsonl"),
        "summary": Path(f"{stem}.label.json"),
        "cache": Path(f"{stem}.cache.jsonl"),
    }


def _jsonable(value: Any) -> Any:
    """numpy scalars and arrays (from Parquet / CSV rows) as plain JSON values."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def write_jsonl_atomic(path: Path, rows: list[dict[str, Any]]) -> None:
    """All of ``rows`` or nothing: written to a temporary file, then renamed over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, default=_jsonable) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def response_text(messages: list[dict[str, str]]) -> str:
    """The assistant turn(s) of a response as one text (several assistant messages are joined by a blank line)."""
    return "\n\n".join(m["content"] for m in messages)


def relabel(raw: dict[str, Any], added: dict[str, float]) -> dict[str, Any]:
    """``raw`` with its old strength columns renamed ``original_<name>`` and the ``added`` ones set."""
    row = {}
    for key, value in raw.items():
        row[f"original_{key}" if key in STRENGTH_COLUMNS else key] = value
    row.update(added)
    return row


def earlier_labelling(out: str | Path, summary_path: Path) -> dict[str, Any] | None:
    """The summary of the labelling that wrote ``out`` (``{}`` when ``out`` exists without a readable one), or
    None when there is no ``out``."""
    if not Path(out).exists():
        return None
    try:
        summary = json.loads(summary_path.read_text())
    except (OSError, ValueError):
        return {}
    return summary if isinstance(summary, dict) else {}


def check_replacing(out: str | Path, data: str | Path, earlier: dict[str, Any] | None, grader: str | None,
                    overwrite: bool) -> str | None:
    """Refuse (UserError) to replace ``out`` unless ``overwrite`` or ``earlier`` (its summary) names the same
    ``data`` and, when given, the same ``grader`` fingerprint: a rerun, which resumes. Returns the line to print."""
    from mmpo.errors import UserError

    if earlier is None:
        return None
    same_data = "data" in earlier and Path(str(earlier["data"])).resolve() == Path(data).resolve()
    same_grader = grader is None or earlier.get("grader") == grader
    rows = earlier.get("labeled", "?")
    if same_data and same_grader:
        return f"{out} holds this labelling ({rows} rows): resuming (grades already made are read from the cache)"
    if overwrite:
        return f"--overwrite: replacing {out} ({rows} rows labelled from {earlier.get('data', 'unknown data')})"
    what = (f"labels of {earlier['data']}" if not same_data and "data" in earlier else
            "labels by another grader" if "data" in earlier else "a file without its .label.json summary")
    raise UserError(f"{out} exists and holds {what} ({rows} rows): pass --overwrite to replace it, or choose another --out")


def run(args: argparse.Namespace) -> int:
    from mmpo.data.hub import read_local
    from mmpo.data.pairs import _prompt_and_responses
    from mmpo.data.sources import RowRef
    from mmpo.errors import DataError, UserError
    from mmpo.graders import PairItem, load_grader

    if args.judge_model and not args.judge_url:
        raise UserError("--judge-model goes with --judge-url")
    files = side_files(args.out)
    if Path(args.out).resolve() == Path(args.data).resolve():
        raise UserError("--out must differ from --data")
    earlier = earlier_labelling(args.out, files["summary"])
    check_replacing(args.out, args.data, earlier, None, args.overwrite)  # before a model or endpoint is touched
    common = {"cache_path": files["cache"], "progress": True}
    if args.reward_model:
        grader = load_grader({"kind": "reward_model", "path": args.reward_model, "batch_size": args.batch_size,
                              "max_length": args.max_length, "max_prompt_length": args.max_prompt_length, **common})
    elif args.judge_url:
        if not args.judge_model:
            raise UserError("--judge-url needs --judge-model (the model name the endpoint serves)")
        grader = load_grader({"kind": "judge", "url": args.judge_url, "model": args.judge_model, "verdict_from": args.verdict_from,
                              "averaging": args.judge_averaging, "samples": args.judge_samples, "concurrency": args.judge_concurrency,
                              "max_retries": args.max_retries, "batch_size": max(args.judge_concurrency, 1), **common})
    else:
        grader = load_grader({"kind": "checker", "checker": args.checker, **common})

    said = check_replacing(args.out, args.data, earlier, grader.fingerprint, args.overwrite)
    if said:
        print(said)

    raws: list[dict[str, Any]] = []
    items: list[PairItem | None] = []
    errors: dict[int, str] = {}
    first_error: DataError | None = None
    for where, row, raw in read_local(args.data):
        i = len(raws)
        raws.append(raw)
        try:
            prompt, chosen, rejected = _prompt_and_responses(raw, RowRef(where, row))
        except DataError as e:
            first_error = first_error or e
            errors[i] = str(e)
            items.append(None)
            continue
        meta = {k: v for k, v in raw.items() if k not in ("prompt", "chosen", "rejected")}
        items.append(PairItem(prompt, response_text(chosen), response_text(rejected), meta))
    if not raws:
        raise UserError(f"{args.data}: no rows to label")
    todo = [i for i, it in enumerate(items) if it is not None]
    if not todo:
        raise first_error or UserError(f"{args.data}: no row could be read")

    pairs = [items[i] for i in todo]
    added: dict[int, dict[str, float]] = {}
    if grader.kind == "judge":
        for i, p in zip(todo, grader.compare_many(pairs)):
            if p is None:
                errors[i] = "judge: no verdict (request failed or unparseable after retries; see the summary's problems)"
            else:
                added[i] = {"p_chosen": p}
    else:
        for i, (a, b) in zip(todo, grader.score_pairs(pairs)):
            if a is None or b is None:
                errors[i] = f"{grader.kind}: no score"
            else:
                added[i] = {"score_chosen": a, "score_rejected": b}

    labeled = [relabel(raws[i], added[i]) for i in range(len(raws)) if i in added]
    unlabeled = [{**raws[i], "label_error": errors[i], "input_index": i} for i in range(len(raws)) if i in errors]
    write_jsonl_atomic(Path(args.out), labeled)
    if unlabeled:
        write_jsonl_atomic(files["unlabeled"], unlabeled)
    elif files["unlabeled"].exists():
        files["unlabeled"].unlink()  # left by an earlier run whose missing rows are now labelled
    summary = {
        "data": str(args.data), "out": str(args.out), "grader": grader.fingerprint,
        "rows": len(raws), "labeled": len(labeled), "unlabeled": len(unlabeled),
        "unlabeled_file": str(files["unlabeled"]) if unlabeled else None,
        **({"judge": dict(grader.stats), "problems": grader.problems} if grader.kind == "judge" else {}),
    }
    files["summary"].write_text(json.dumps(summary, indent=2) + "\n")
    print(f"labelled {len(labeled)} of {len(raws)} rows -> {args.out}")
    if unlabeled:
        print(f"NOT labelled: {len(unlabeled)} rows -> {files['unlabeled']} (rerun the same command to retry them)")
    return 0 if labeled else 1
