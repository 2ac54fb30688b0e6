"""Preference-data sources, each turned into :class:`PreferencePair` records plus a :class:`DataReport`.

``load_pairs(spec, ...)`` accepts:

* a local file: ``.jsonl``, ``.json``, ``.parquet``, ``.csv`` with ``prompt``, ``chosen``, ``rejected``
  (strings or message lists) and a margin as ``score_chosen`` + ``score_rejected``, ``margin``, or
  ``p_chosen`` (none of these = hard label, p = 1); column names remappable with ``columns``;
* a registered source name (``ultrafeedback``, ``shp``, ``helpsteer2``, ``helpsteer3``) or its hub id,
  optionally with ``path`` pointing at a local copy;
* a mapping ``{source: ..., path: ..., split: ..., columns: {...}}``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from mmpo.data.records import Message, PreferencePair
from mmpo.data.report import DataReport
from mmpo.errors import DataError, UserError
from mmpo.losses import soft_targets

LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
CANONICAL_COLUMNS = ("prompt", "chosen", "rejected", "score_chosen", "score_rejected", "margin", "p_chosen")


@dataclass
class PairOptions:
    """How raw rows become pairs; mirrors the data keys of :class:`mmpo.config.TrainConfig`."""

    gamma: float | None = 1.0
    columns: dict[str, str] = field(default_factory=dict)
    ties: str = "keep"  # keep (p = 0.5) | drop
    order_conflict: str = "swap"  # swap | drop | error
    pairs_per_prompt: int | None = None
    margin_bins: int = 0
    max_pairs: int | None = None
    seed: int = 0
    split: str | None = None


# A source reads raw rows and yields (row index, raw dict) in the canonical column names.
SourceReader = Callable[[dict[str, Any], PairOptions], tuple[str, Iterator[tuple[int, dict[str, Any]]]]]
SOURCES: dict[str, SourceReader] = {}
HUB_IDS: dict[str, str] = {}


def register_source(name: str, *hub_ids: str) -> Callable[[SourceReader], SourceReader]:
    def wrap(fn: SourceReader) -> SourceReader:
        SOURCES[name] = fn
        for hub_id in hub_ids:
            HUB_IDS[hub_id] = name
        return fn

    return wrap


# --- reading local files -------------------------------------------------------------------------------

def read_rows(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Rows of a local file as ``(row, dict)``; ``row`` is the 1-based line number for JSONL, else 0-based."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"data file not found: {path}")
    suffix = "".join(path.suffixes[-2:]) if path.suffix == ".gz" else path.suffix
    if suffix in (".jsonl", ".jsonl.gz"):
        opener = _open_text(path)
        with opener as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(str(path), lineno, None, f"malformed JSON line ({e.msg})") from None
                if not isinstance(obj, dict):
                    raise DataError(str(path), lineno, None, "each JSONL line must be an object")
                yield lineno, obj
    elif suffix == ".json":
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise DataError(str(path), None, None, f"malformed JSON (line {e.lineno}: {e.msg})") from None
        if isinstance(data, dict):
            data = next((v for v in data.values() if isinstance(v, list)), None)
        if not isinstance(data, list):
            raise DataError(str(path), None, None, "expected a list of row objects")
        yield from enumerate(data)
    elif suffix in (".parquet", ".csv"):
        import pandas as pd

        frame = pd.read_parquet(path) if suffix == ".parquet" else pd.read_csv(path)
        for i, rec in enumerate(frame.to_dict(orient="records")):
            yield i, {k: _plain(v) for k, v in rec.items()}
    else:
        raise UserError(f"unsupported data file type {path.suffix!r} ({path}): use .jsonl, .json, .parquet or .csv")


def _open_text(path: Path):
    if path.suffix == ".gz":
        import gzip

        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def _plain(v: Any) -> Any:
    """numpy arrays / scalars from parquet into plain Python."""
    if hasattr(v, "tolist"):
        v = v.tolist()
    if isinstance(v, list):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


# --- normalising a raw row -----------------------------------------------------------------------------

def as_messages(value: Any, role: str, source: str, row: int, fieldname: str) -> list[Message]:
    """A string becomes one message with ``role``; a message list is checked and kept."""
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if isinstance(value, list) and value and all(isinstance(m, dict) and "content" in m for m in value):
        return [{"role": str(m.get("role", role)), "content": str(m["content"])} for m in value]
    raise DataError(source, row, fieldname, f"expected a string or a list of {{role, content}} messages, got {type(value).__name__}")


def split_prompt_response(prompt: list[Message], response: list[Message]) -> list[Message]:
    """Strip a repeated prompt from a full conversation (UltraFeedback stores prompt + answer as `chosen`)."""
    if len(response) > len(prompt) and response[: len(prompt)] == prompt:
        return response[len(prompt):]
    return response


def _number(value: Any, source: str, row: int, fieldname: str) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise DataError(source, row, fieldname, f"not a number: {value!r}") from None
    if not math.isfinite(x):
        raise DataError(source, row, fieldname, f"not a finite number: {value!r}")
    return x


def make_pair(raw: dict[str, Any], source: str, row: int, options: PairOptions, report: DataReport) -> PreferencePair | None:
    """One canonical pair from a row in canonical column names, or None when the row is dropped (counted)."""
    for col in ("prompt", "chosen", "rejected"):
        if col not in raw or raw[col] is None:
            raise DataError(source, row, col, "missing column")
    prompt = as_messages(raw["prompt"], "user", source, row, "prompt")
    chosen = split_prompt_response(prompt, as_messages(raw["chosen"], "assistant", source, row, "chosen"))
    rejected = split_prompt_response(prompt, as_messages(raw["rejected"], "assistant", source, row, "rejected"))
    if not any(m["content"].strip() for m in chosen) or not any(m["content"].strip() for m in rejected):
        report.drop("empty response")
        return None
    if chosen == rejected:
        report.drop("chosen identical to rejected")
        return None

    margin: float | None = None
    if raw.get("p_chosen") is not None:
        p = _number(raw["p_chosen"], source, row, "p_chosen")
        if not 0.0 <= p <= 1.0:
            raise DataError(source, row, "p_chosen", f"probability outside [0, 1]: {p}")
        if p < 0.5:
            chosen, rejected, p = _reorder(chosen, rejected, p, source, row, "p_chosen", options, report)
            if chosen is None:
                return None
        target = p
    else:
        if raw.get("margin") is not None:
            margin = _number(raw["margin"], source, row, "margin")
        elif raw.get("score_chosen") is not None or raw.get("score_rejected") is not None:
            sc = _number(raw.get("score_chosen"), source, row, "score_chosen")
            sr = _number(raw.get("score_rejected"), source, row, "score_rejected")
            margin = sc - sr
        if margin is not None and margin < 0:
            chosen, rejected, margin = _reorder(chosen, rejected, margin, source, row, "score_chosen", options, report)
            if chosen is None:
                return None
        if margin == 0:
            if options.ties == "drop":
                report.drop("tie (margin 0)")
                return None
            target = 0.5
        else:
            target = float(soft_targets(margin=margin if margin is not None else math.inf, gamma=options.gamma))
            if margin is None:
                target = 1.0
    return PreferencePair(prompt, chosen, rejected, p=target, margin=margin, source=source, row=row)


def _reorder(chosen, rejected, value, source, row, fieldname, options, report):
    """score_chosen < score_rejected (or p_chosen < 0.5): swap (default), drop, or error, as configured."""
    if options.order_conflict == "error":
        raise DataError(source, row, fieldname, "chosen is rated below rejected (set order_conflict: swap or drop)")
    if options.order_conflict == "drop":
        report.drop("chosen rated below rejected")
        return None, None, None
    report.fix("chosen rated below rejected: swapped")
    flipped = 1.0 - value if fieldname == "p_chosen" else -value
    return rejected, chosen, flipped


def _rename(raw: dict[str, Any], columns: dict[str, str]) -> dict[str, Any]:
    """Map user column names (``columns: {canonical: theirs}``) onto the canonical ones."""
    if not columns:
        return raw
    out = dict(raw)
    for canonical, theirs in columns.items():
        if theirs in raw:
            out[canonical] = raw[theirs]
    return out


@register_source("local")
def _local(spec: dict[str, Any], options: PairOptions):
    path = spec["path"]
    return str(path), read_rows(path)


# --- entry point ---------------------------------------------------------------------------------------

def normalize_spec(spec: Any) -> dict[str, Any]:
    """A data spec as a mapping with at least ``source`` (and ``path`` for local files)."""
    if isinstance(spec, (str, Path)):
        text = str(spec)
        if text in SOURCES:
            return {"source": text}
        if text in HUB_IDS:
            return {"source": HUB_IDS[text], "hub_id": text}
        if Path(text).suffix in LOCAL_SUFFIXES or text.endswith(".gz") or Path(text).exists():
            return {"source": "local", "path": text}
        close = sorted(SOURCES) + sorted(HUB_IDS)
        raise UserError(f"unknown data set {text!r}: not a file and not one of {', '.join(close)}")
    if isinstance(spec, dict):
        spec = dict(spec)
        if "source" not in spec:
            if "path" not in spec:
                raise UserError("a data mapping needs `source` or `path`")
            spec["source"] = "local"
        if spec["source"] in HUB_IDS:
            spec["hub_id"] = spec["source"]
            spec["source"] = HUB_IDS[spec["source"]]
        if spec["source"] not in SOURCES:
            raise UserError(f"unknown data source {spec['source']!r}: choose one of {', '.join(sorted(SOURCES))}")
        return spec
    raise UserError(f"cannot read data spec {spec!r}")


def load_pairs(spec: Any, options: PairOptions | None = None) -> tuple[list[PreferencePair], DataReport]:
    """Read every pair of ``spec`` into canonical records, with a report of what was kept and dropped."""
    options = options or PairOptions()
    spec = normalize_spec(spec)
    columns = {**options.columns, **spec.get("columns", {})}
    if "split" in spec and options.split is None:
        options = PairOptions(**{**options.__dict__, "split": spec["split"]})
    name, rows = SOURCES[spec["source"]](spec, options)
    report = DataReport(source=name)
    pairs: list[PreferencePair] = []
    for row, raw in rows:
        report.read += 1
        pair = make_pair(_rename(raw, columns), name, row, options, report)
        if pair is not None:
            pairs.append(pair)
    pairs = _post_select(pairs, options, report)
    report.margins = [p.margin for p in pairs if p.margin is not None]
    report.targets = [p.p for p in pairs]
    return pairs, report


def _post_select(pairs: list[PreferencePair], options: PairOptions, report: DataReport) -> list[PreferencePair]:
    """Per-prompt caps, margin-bin sampling and max_pairs, in that order (hooks filled in by sources)."""
    if options.max_pairs is not None and len(pairs) > options.max_pairs:
        report.dropped[f"beyond max_pairs={options.max_pairs}"] += len(pairs) - options.max_pairs
        pairs = pairs[: options.max_pairs]
    return pairs
