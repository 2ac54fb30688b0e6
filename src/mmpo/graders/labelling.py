"""Labelling a pair file: a margin for every row from a grader (the library behind ``mmpo label``).

:func:`label_pairs` adds a margin to every row of a pair file, so data without one (binarized, hard-labelled) can
train with MMPO:

* a reward model: ``score_chosen`` / ``score_rejected`` (the rewards ``mmpo eval pairs --scores`` gives);
* an LLM judge: ``p_chosen``, the judge's probability that chosen is better, asked in both orders and averaged
  (:mod:`mmpo.graders.judge`);
* a checker: ``score_chosen`` / ``score_rejected`` (``graded-tasks`` or ``module:function``).

Rows keep every field they had. Strength columns the input already had (``score_chosen``, ``score_rejected``,
``margin``, ``p_chosen``) are renamed ``original_<name>``, so the new margin is the only one training reads and
``mmpo fit-gamma`` can still compare the two. The output is JSON Lines and trains with ``mmpo rm`` / ``mmpo dpo``
as is. Rows that could not be labelled (a judge call failed or gave no verdict after its retries, a row without
prompt/chosen/rejected) are not written there: they go, with a ``label_error`` field, to
``OUT_STEM.unlabeled.jsonl``. A summary (counts, grader, judge statistics) goes to ``OUT_STEM.label.json``.
Grades are cached in ``OUT_STEM.cache.jsonl`` as they are made: rerunning the same labelling after a crash grades
only what is missing (and retries the missing rows).

An existing ``out`` is replaced only by a rerun of the same labelling (its ``OUT_STEM.label.json`` names the same
data and grader: it resumes through the cache) or with ``overwrite``; anything else is refused, so a labelled
file is never silently replaced by one from other data.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mmpo.errors import UserError
from mmpo.io import atomic_write_text, write_jsonl_atomic

STRENGTH_COLUMNS = ("score_chosen", "score_rejected", "margin", "p_chosen")


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


def label_pairs(data: str | os.PathLike, out: str | os.PathLike, grader: str | Mapping[str, Any],
                overwrite: bool = False, progress: bool = True, say: Any = print) -> dict[str, Any]:
    """Label every row of the pair file ``data`` with ``grader`` and write the labelled rows to ``out``.

    ``grader`` is a :func:`mmpo.graders.load_grader` spec (``"checker:graded-tasks"``, ``"reward_model:DIR"``,
    ``{"kind": "judge", "url": ..., "model": ...}``); its grades are cached beside ``out``. Returns the summary
    also written to ``OUT_STEM.label.json`` (``rows``, ``labeled``, ``unlabeled``, ``grader``, ...); ``say`` gets
    the lines worth printing. Rules for the side files and replacing ``out``: see the module docstring.
    """
    from mmpo.data.hub import read_local
    from mmpo.data.pairs import _prompt_and_responses
    from mmpo.data.sources import RowRef
    from mmpo.errors import DataError
    from mmpo.graders import PairItem, load_grader

    files = side_files(out)
    if Path(out).resolve() == Path(data).resolve():
        raise UserError("the labelled file (--out) must differ from the data (--data)")
    earlier = earlier_labelling(out, files["summary"])
    check_replacing(out, data, earlier, None, overwrite)  # before a model or endpoint is touched
    loaded = load_grader(grader if isinstance(grader, str) else dict(grader), cache_path=files["cache"], progress=progress)
    said = check_replacing(out, data, earlier, loaded.fingerprint, overwrite)
    if said:
        say(said)

    raws: list[dict[str, Any]] = []
    items: list[Any] = []
    errors: dict[int, str] = {}
    first_error: DataError | None = None
    for where, row, raw in read_local(data):
        i = len(raws)
        raws.append(raw)
        try:
            for column in ("chosen", "rejected"):
                if raw.get(column) is None:
                    raise RowRef(where, row).error(column, "missing column")
            prompt, chosen, rejected = _prompt_and_responses(raw, RowRef(where, row))
        except DataError as e:
            first_error = first_error or e
            errors[i] = str(e)
            items.append(None)
            continue
        meta = {k: v for k, v in raw.items() if k not in ("prompt", "chosen", "rejected")}
        items.append(PairItem(prompt, response_text(chosen), response_text(rejected), meta))
    if not raws:
        raise UserError(f"{data}: no rows to label")
    todo = [i for i, it in enumerate(items) if it is not None]
    if not todo:
        raise first_error or UserError(f"{data}: no row could be read")

    pairs = [items[i] for i in todo]
    added: dict[int, dict[str, float]] = {}
    if loaded.kind == "judge":
        for i, p in zip(todo, loaded.compare_many(pairs)):
            if p is None:
                errors[i] = "judge: no verdict (request failed or unparseable after retries; see the summary's problems)"
            else:
                added[i] = {"p_chosen": p}
    else:
        for i, (a, b) in zip(todo, loaded.score_pairs(pairs)):
            if a is None or b is None:
                errors[i] = f"{loaded.kind}: no score"
            else:
                added[i] = {"score_chosen": a, "score_rejected": b}

    labeled = [relabel(raws[i], added[i]) for i in range(len(raws)) if i in added]
    unlabeled = [{**raws[i], "label_error": errors[i], "input_index": i} for i in range(len(raws)) if i in errors]
    write_jsonl_atomic(out, labeled, default=_jsonable)
    if unlabeled:
        write_jsonl_atomic(files["unlabeled"], unlabeled, default=_jsonable)
    elif files["unlabeled"].exists():
        files["unlabeled"].unlink()  # left by an earlier run whose missing rows are now labelled
    summary = {
        "data": str(data), "out": str(out), "grader": loaded.fingerprint,
        "rows": len(raws), "labeled": len(labeled), "unlabeled": len(unlabeled),
        "unlabeled_file": str(files["unlabeled"]) if unlabeled else None,
        **({"judge": dict(loaded.stats), "problems": loaded.problems} if loaded.kind == "judge" else {}),
    }
    atomic_write_text(files["summary"], json.dumps(summary, indent=2) + "\n")
    return summary
