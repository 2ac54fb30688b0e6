"""Stages 1-2 of the data pipeline: which data a spec names, its raw rows, and each source's schema.

A spec is

* a local file (``.jsonl``, ``.json``, ``.parquet``, ``.csv``, optionally ``.gz``) or a directory of them,
  in the generic schema: ``prompt``, ``chosen``, ``rejected`` (strings or message lists) and one of
  ``score_chosen`` + ``score_rejected``, ``margin`` or ``p_chosen`` (none of these: a plain label, p = 1);
* a registered source name (``ultrafeedback``, ``shp``, ``helpsteer2``, ``helpsteer3``, ``alpaca_graded``,
  ``ultrafeedback_raw``) or one of its hub ids;
* a mapping ``{source: NAME, path: LOCAL_COPY, split: ..., columns: {...}, margin_from: ..., p_clip: ...}``;
  ``path`` is a file, a directory saved with ``save_to_disk``, or a directory of data files (a hub snapshot).

``columns: {expected: theirs}`` renames a column the source expects to the name it has in the user's data.
Every source's converter turns a raw row into canonical rows (``prompt``, ``chosen``, ``rejected``, a strength
and an optional ``group``): one per row for pair data, every pair of responses for "one prompt, several scored
responses" data (:func:`scored_response_rows`). :mod:`mmpo.data.pipeline` runs the stages in order.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from mmpo.data.hub import ROW_SUFFIXES, RawRow, read_hub, read_local
from mmpo.data.records import Message
from mmpo.errors import DataError, UserError

SPEC_KEYS = ("source", "path", "split", "columns", "margin_from", "p_clip")



@dataclass(frozen=True)
class RowRef:
    """Where a row came from, for error messages: the file (or ``hub_id[split]``) and its row / line."""

    where: str
    row: int

    def error(self, fieldname: str | None, problem: str) -> DataError:
        return DataError(self.where, self.row, fieldname, problem)


# A converter turns a row in a source's own schema into canonical columns: one row (pair data) or a list of
# rows (every pair of a prompt's scored responses).
Converter = Callable[[dict[str, Any], RowRef, dict[str, Any]], "dict[str, Any] | list[dict[str, Any]]"]


@dataclass(frozen=True)
class Source:
    """A registered data set: its schema converter and where its rows live on the Hub and in a local copy."""

    name: str
    convert: Converter
    required: tuple[str, ...]
    hub_ids: tuple[str, ...] = ()
    default_split: str | None = None
    hub_config: str | None = None  # load_dataset's second argument (HelpSteer3: "preference")
    hub_files: str | None = None  # a file inside the hub repository (HelpSteer2's preference file)
    local_subpath: str | None = None  # where the data sits inside a full local snapshot of the repository
    split_column: str | None = None  # the split is a column, not a file (HelpSteer2: train / val)
    pairs_per_prompt: int | None = None  # default cap
    test_split: str | None = None  # held-out split used for eval_data when the spec names none
    hub_splits: dict[str, dict[str, str]] | None = None  # per hub id: our split name -> that repository's name
    locate: Callable[[], Path] | None = None  # where the data is when no path is given (instead of the Hub)


SOURCES: dict[str, Source] = {}
HUB_IDS: dict[str, str] = {}


def register_source(name: str, *hub_ids: str, required: tuple[str, ...], **settings: Any) -> Callable[[Converter], Converter]:
    """Register ``convert`` as the reader of source ``name`` (and of each hub id); ``settings`` fill :class:`Source`."""

    def wrap(convert: Converter) -> Converter:
        SOURCES[name] = Source(name, convert, required, hub_ids, **settings)
        for hub_id in hub_ids:
            HUB_IDS[hub_id] = name
        return convert

    return wrap


# --- small helpers for converters ----------------------------------------------------------------------

def number(value: Any, ref: RowRef, fieldname: str) -> float:
    """``value`` as a finite float, else a one-line DataError naming the field."""
    if value is None:
        raise ref.error(fieldname, "missing value")
    if isinstance(value, bool):
        raise ref.error(fieldname, f"not a number: {value!r}")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ref.error(fieldname, f"not a number: {value!r}") from None
    if not math.isfinite(x):
        raise ref.error(fieldname, f"not a finite number: {value!r}")
    return x


def likert_pair(prompt: Any, response_1: Any, response_2: Any, strength: float, ref: RowRef, fieldname: str) -> dict[str, Any]:
    """HelpSteer's -3..3 preference: negative = response 1 better, 0 = tie; the margin is ``|strength|``."""
    if not -3 <= strength <= 3:
        raise ref.error(fieldname, f"preference outside -3..3: {strength:g}")
    first_better = strength <= 0  # a tie (0) keeps the given order; its p is 0.5 either way
    chosen, rejected = (response_1, response_2) if first_better else (response_2, response_1)
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, "margin": abs(strength)}


# --- the sources -----------------------------------------------------------------------------------------

@register_source("local", required=("chosen", "rejected"), test_split="test")
def _generic(raw: dict[str, Any], ref: RowRef, spec: dict[str, Any]) -> dict[str, Any]:
    """The generic schema is the canonical one."""
    return raw


@register_source(
    "ultrafeedback",
    "allenai/ultrafeedback_binarized_cleaned",
    "HuggingFaceH4/ultrafeedback_binarized",
    required=("chosen", "rejected", "score_chosen", "score_rejected"),
    default_split="train_prefs",
    test_split="test_prefs",
)
def _ultrafeedback(raw: dict[str, Any], ref: RowRef, spec: dict[str, Any]) -> dict[str, Any]:
    """chosen / rejected are whole chats (user turn + answer); margin = score_chosen - score_rejected (1-10 scale)."""
    return {**raw, "group": raw.get("prompt_id")}


SHP_MARGINS = ("score_difference", "log_score_ratio")


@register_source(
    "shp",
    "stanfordnlp/SHP",
    "Ahjeong/SHP_filtered_for_MMPO",
    "Ahjeong/SHP_filtered_MMPO",
    required=("history", "human_ref_A", "human_ref_B", "score_A", "score_B"),
    default_split="train",
    test_split="test",
    pairs_per_prompt=5,
    # The official MMPO recipe names Ahjeong/SHP_filtered_MMPO with splits train_prefs / test_prefs.
    hub_splits={"Ahjeong/SHP_filtered_MMPO": {"train": "train_prefs", "test": "test_prefs"}},
)
def _shp(raw: dict[str, Any], ref: RowRef, spec: dict[str, Any]) -> dict[str, Any]:
    """Reddit comments A and B under a post; ``labels`` = 1 means A preferred (A has more upvotes).

    The margin is the upvote difference (``margin_from: score_difference``, the paper's choice) or
    ``ln(score_chosen / score_rejected)`` (``margin_from: log_score_ratio``), which tames SHP's heavy tail.
    """
    score_a, score_b = number(raw["score_A"], ref, "score_A"), number(raw["score_B"], ref, "score_B")
    if raw.get("labels") is None:
        a_preferred = score_a >= score_b
    elif raw["labels"] in (0, 1):
        a_preferred = raw["labels"] == 1
    else:
        raise ref.error("labels", f"expected 0 or 1, got {raw['labels']!r}")
    chosen, rejected = (raw["human_ref_A"], raw["human_ref_B"]) if a_preferred else (raw["human_ref_B"], raw["human_ref_A"])
    score_chosen, score_rejected = (score_a, score_b) if a_preferred else (score_b, score_a)
    if spec.get("margin_from", "score_difference") == "log_score_ratio":
        if score_chosen <= 0 or score_rejected <= 0:
            raise ref.error("score_A" if min(score_a, score_b) == score_a else "score_B", "log_score_ratio needs scores > 0")
        margin = math.log(score_chosen / score_rejected)
    else:
        margin = score_chosen - score_rejected
    # A label that disagrees with the upvotes gives a negative margin: order_conflict decides (default swap).
    return {"prompt": raw["history"], "chosen": chosen, "rejected": rejected, "margin": margin, "group": raw.get("post_id")}


_NEMO_TURN = re.compile(r"\n?<extra_id_1>(User|Assistant)\n")


def nemo_turns(prompt: str) -> list[Message]:
    """HelpSteer2 writes a multi-turn prompt as one string: the first user turn, then turns that each start
    with ``<extra_id_1>User`` or ``<extra_id_1>Assistant`` on their own line."""
    parts = _NEMO_TURN.split(prompt)
    turns = [{"role": "user", "content": parts[0]}]
    for role, content in zip(parts[1::2], parts[2::2]):
        turns.append({"role": role.lower(), "content": content})
    return turns


@register_source(
    "helpsteer2",
    "nvidia/HelpSteer2",
    required=("prompt", "response_1", "response_2", "preference_strength"),
    default_split="train",
    test_split="val",
    hub_files="preference/preference.jsonl.gz",
    local_subpath="preference/preference.jsonl.gz",
    split_column="split",
)
def _helpsteer2(raw: dict[str, Any], ref: RowRef, spec: dict[str, Any]) -> dict[str, Any]:
    # The nvidia/HelpSteer2 dataset card (preference/): "-3: Response 1 is much better than Response 2 ...
    # 0: about the same ... 3: Response 2 is much better than Response 1". Negative = response_1 wins.
    strength = number(raw["preference_strength"], ref, "preference_strength")
    prompt = nemo_turns(raw["prompt"]) if isinstance(raw["prompt"], str) else raw["prompt"]
    return likert_pair(prompt, raw["response_1"], raw["response_2"], strength, ref, "preference_strength")


@register_source(
    "helpsteer3",
    "nvidia/HelpSteer3",
    required=("context", "response1", "response2", "overall_preference"),
    default_split="train",
    test_split="validation",
    hub_config="preference",
    local_subpath="preference",
)
def _helpsteer3(raw: dict[str, Any], ref: RowRef, spec: dict[str, Any]) -> dict[str, Any]:
    # The nvidia/HelpSteer3 dataset card: overall_preference "-3: Response 1 is much better than Response 2
    # ... 3: Response 2 is much better than Response 1". context is the chat so far (ends with a user turn).
    strength = number(raw["overall_preference"], ref, "overall_preference")
    return likert_pair(raw["context"], raw["response1"], raw["response2"], strength, ref, "overall_preference")


# --- one prompt, several scored responses ----------------------------------------------------------------

# alpaca_graded stores p_beats_reference rounded to 6 decimals: 0 means "below 5e-7" (643 of 10,797 outputs,
# with 10 at exactly 1), and 1e-6 is the smallest value it can tell from 0. Clipping at that resolution
# keeps every distinction the data records and no more: scores lie in [-13.8, 13.8].
DEFAULT_P_CLIP = 1e-6


def probability_score(p: float, eps: float) -> float:
    """``s = logit(clip(p, eps, 1 - eps))``: a Bradley-Terry score from a judged probability of beating a
    common reference, so that ``sigmoid(s_a - s_b)`` is the judge's implied probability that a beats b."""
    q = min(max(p, eps), 1.0 - eps)
    return math.log(q / (1.0 - q))


def scored_response_rows(prompt: Any, responses: list[tuple[str, Any, float]], group: Any) -> list[dict[str, Any]]:
    """Every pair of a prompt's ``(name, response, score)`` responses as canonical rows.

    chosen = the higher score, ``margin = s_chosen - s_rejected`` (>= 0), so ``sigmoid(gamma * margin)`` with
    gamma = 1 is the judge's implied probability; equal scores give margin 0, a tie (see mmpo.data.pairs).
    ``response_scores`` = ``(s_chosen, s_rejected)`` (what ``layout: groups`` puts a prompt's responses back together with).
    Pairs come in response order (i < j); the per-prompt cap (``pairs_per_prompt``) samples k of them.
    """
    rows = []
    for i in range(len(responses)):
        for j in range(i + 1, len(responses)):
            (name_a, text_a, s_a), (name_b, text_b, s_b) = responses[i], responses[j]
            if s_b > s_a:
                (name_a, text_a, s_a), (name_b, text_b, s_b) = (name_b, text_b, s_b), (name_a, text_a, s_a)
            rows.append({"prompt": prompt, "chosen": text_a, "rejected": text_b, "margin": s_a - s_b,
                         "group": group, "responses": (name_a, name_b), "response_scores": (s_a, s_b)})
    return rows


def _locate_alpaca_graded() -> Path:
    from mmpo.data.alpaca_graded import locate

    return locate()


@register_source("alpaca_graded", required=("instruction", "outputs"), locate=_locate_alpaca_graded)
def _alpaca_graded(raw: dict[str, Any], ref: RowRef, spec: dict[str, Any]) -> list[dict[str, Any]]:
    """AlpacaEval outputs with GPT-4-turbo's ``p_beats_reference``: score = logit(clip(p, p_clip)).

    ``{"idx", "instruction", "dataset", "outputs": {model: {"output", "p_beats_reference"}}}``.
    """
    eps = spec.get("p_clip", DEFAULT_P_CLIP)
    if not isinstance(raw["outputs"], dict):
        raise ref.error("outputs", f"expected a mapping model -> {{output, p_beats_reference}}, got {type(raw['outputs']).__name__}")
    responses = []
    for name, out in raw["outputs"].items():
        if not isinstance(out, dict) or "output" not in out:
            raise ref.error(f"outputs.{name}", "expected {output, p_beats_reference}")
        p = number(out.get("p_beats_reference"), ref, f"outputs.{name}.p_beats_reference")
        if not 0.0 <= p <= 1.0:
            raise ref.error(f"outputs.{name}.p_beats_reference", f"probability outside [0, 1]: {p:g}")
        responses.append((name, out["output"], probability_score(p, eps)))
    group = raw.get("idx") if raw.get("idx") is not None else raw["instruction"]
    return scored_response_rows(raw["instruction"], responses, group)


@register_source(
    "ultrafeedback_raw",
    "openbmb/UltraFeedback",
    required=("instruction", "completions"),
    default_split="train",
)
def _ultrafeedback_raw(raw: dict[str, Any], ref: RowRef, spec: dict[str, Any]) -> list[dict[str, Any]]:
    """openbmb/UltraFeedback: ``instruction`` and ``completions[]`` with ``response``, ``overall_score``
    (1-10, GPT-4's rating) and ``model``; score = overall_score, so margins are the binarized sets' margins."""
    if not isinstance(raw["completions"], list):
        raise ref.error("completions", f"expected a list of completions, got {type(raw['completions']).__name__}")
    responses = []
    for k, completion in enumerate(raw["completions"]):
        if not isinstance(completion, dict) or "response" not in completion:
            raise ref.error(f"completions[{k}]", "expected an object with response and overall_score")
        score = number(completion.get("overall_score"), ref, f"completions[{k}].overall_score")
        responses.append((str(completion.get("model", k)), completion["response"], score))
    return scored_response_rows(raw["instruction"], responses, raw.get("prompt_id") or raw["instruction"])


# --- reading a spec --------------------------------------------------------------------------------------

def looks_like_path(text: str) -> bool:
    """An existing file or directory, or a name ending in a data-file suffix."""
    return Path(text).expanduser().exists() or any(text.endswith(s) for s in ROW_SUFFIXES) or text.endswith(".gz")


def normalize_spec(spec: Any) -> dict[str, Any]:
    """A data spec as a mapping with ``source`` (a registered name) and, for a local copy, ``path``."""
    if isinstance(spec, (str, Path)):
        text = str(spec)
        if text in SOURCES and text != "local":
            return {"source": text}
        if text in HUB_IDS:
            return {"source": HUB_IDS[text], "hub_id": text}
        if looks_like_path(text):
            return {"source": "local", "path": text}
        names = [n for n in SOURCES if n != "local"] + list(HUB_IDS)
        close = difflib.get_close_matches(text, names, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else f"; known: {', '.join(names)}"
        raise UserError(f"unknown data set {text!r}: not an existing file and not a known source{hint}")
    if isinstance(spec, dict):
        unknown = [k for k in spec if k not in SPEC_KEYS]
        if unknown:
            raise UserError(f"unknown data key {unknown[0]!r}: a data mapping takes {', '.join(SPEC_KEYS)}")
        out = dict(spec)
        source = out.get("source", "local")
        if source in HUB_IDS:
            out["hub_id"], source = source, HUB_IDS[source]
        if source not in SOURCES:
            raise UserError(f"unknown data source {source!r}: choose one of {', '.join(sorted(SOURCES))} or a hub id")
        if source == "local" and "path" not in out:
            raise UserError("a data mapping needs `source` (a data set name) or `path` (a local file)")
        if "margin_from" in out and source != "shp":
            raise UserError(f"margin_from applies to the shp source only (this data is {source})")
        if out.get("margin_from", SHP_MARGINS[0]) not in SHP_MARGINS:
            raise UserError(f"margin_from must be one of {', '.join(SHP_MARGINS)} (got {out['margin_from']!r})")
        if "p_clip" in out:
            if source != "alpaca_graded":
                raise UserError(f"p_clip applies to the alpaca_graded source only (this data is {source})")
            eps = out["p_clip"]
            if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < 0.5:
                raise UserError(f"p_clip must be a number in (0, 0.5) (got {eps!r})")
        out["source"] = source
        return out
    raise UserError(f"cannot read data spec {spec!r}: give a path, a data set name or a mapping")


def held_out_split(spec: Any) -> str | None:
    """The split a held-out load reads when the spec names none: the source's test split (None for files)."""
    spec = normalize_spec(spec)
    return spec.get("split") or SOURCES[spec["source"]].test_split


def split_to_read(spec: dict[str, Any], requested: str | None) -> str | None:
    """The split a load reads: the spec's own, else the one asked for (a held-out load's test split), else the
    source's default."""
    return spec.get("split") or requested or SOURCES[spec["source"]].default_split


def source_identity(spec: Any, requested_split: str | None = None) -> tuple[str, str | None]:
    """What a load of ``spec`` reads, comparable across specs: the resolved file or directory (or hub id) and
    the split where that picks rows (as :func:`read_rows` does). Equal identities read the same rows."""
    spec = normalize_spec(spec)
    source = SOURCES[spec["source"]]
    split = split_to_read(spec, requested_split)
    if "path" not in spec and source.locate is not None:
        spec = {**spec, "path": str(source.locate())}
    if "path" in spec:
        path = Path(spec["path"]).expanduser()
        picks_rows = source.split_column is not None or not path.is_file()
        return str(path.resolve()), split if picks_rows else None
    return spec.get("hub_id") or source.hub_ids[0], split


def read_rows(source: Source, spec: dict[str, Any], split: str | None) -> tuple[str, Iterator[RawRow]]:
    """A label for the report and the raw rows: from the local copy when ``path`` is given (or the source
    knows where its data is, ``Source.locate``), else from the Hub."""
    if "path" not in spec and source.locate is not None:
        spec = {**spec, "path": str(source.locate())}
    if "path" in spec:
        label = f"{source.name}: {spec['path']}" if source.name != "local" else str(spec["path"])
        rows = read_local(spec["path"], None if source.split_column else split, source.local_subpath)
    else:
        hub_id = spec.get("hub_id") or source.hub_ids[0]
        label = f"{source.name}: {hub_id}"
        split = ((source.hub_splits or {}).get(hub_id) or {}).get(split, split) if split else split
        # A split stored as a column lives in one hub file, which datasets names "train".
        rows = read_hub(hub_id, "train" if source.split_column else split, source.hub_config, source.hub_files)
    if source.split_column and split is not None:
        rows = _filter_split(rows, source.split_column, split)
    # A single file holds one split (or a split column); naming a split there would suggest a choice that was not made.
    split_used = split and (source.split_column or "path" not in spec or not Path(spec["path"]).expanduser().is_file())
    return (f"{label} [{split}]" if split_used else label), rows


def _filter_split(rows: Iterator[RawRow], column: str, split: str) -> Iterator[RawRow]:
    """Rows whose ``column`` equals ``split``; rows without the column are all kept (a one-split copy)."""
    seen: set[str] = set()
    matched = False
    for where, row, raw in rows:
        value = raw.get(column)
        if value is None or value == split:
            matched = True
            yield where, row, raw
        else:
            seen.add(str(value))
    if not matched and seen:
        raise UserError(f"no rows in split {split!r} (column '{column}' holds {', '.join(sorted(seen))})")


def rename_columns(raw: dict[str, Any], columns: dict[str, str], ref: RowRef) -> dict[str, Any]:
    """Apply ``columns: {expected: theirs}``: copy each ``theirs`` column to the name the source expects.

    A mapped column that is absent is an error even where the expected name exists: the mapping says it is wrong.
    """
    out = dict(raw)
    for expected, theirs in columns.items():
        if theirs not in raw:
            raise ref.error(theirs, f"missing column (columns maps it to '{expected}')")
        out[expected] = raw[theirs]
    return out


def _schema_hint(raw: dict[str, Any]) -> str:
    """Name a registered schema whose columns the row has, for a missing-column error on the generic source."""
    for source in SOURCES.values():
        if source.name != "local" and all(c in raw for c in source.required):
            return f" (the columns look like the {source.name} schema: use source: {source.name})"
    return ""


def check_columns(raw: dict[str, Any], source: Source, columns: dict[str, str], ref: RowRef) -> None:
    """A one-line error for the first column the source needs that the row lacks (or holds no value in)."""
    for col in source.required:
        if raw.get(col) is None:
            theirs = columns.get(col, col)
            what = "missing column" if col not in raw else "missing value"
            hint = _schema_hint(raw) if source.name == "local" else f" (the {source.name} schema needs it)"
            raise ref.error(theirs, f"{what}{hint}")
