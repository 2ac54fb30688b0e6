"""Preference-data sources, each turned into :class:`PreferencePair` records plus a :class:`DataReport`.

``load_pairs(spec, options)`` accepts

* a local file (``.jsonl``, ``.json``, ``.parquet``, ``.csv``, optionally ``.gz``) or a directory of them,
  in the generic schema: ``prompt``, ``chosen``, ``rejected`` (strings or message lists) and one of
  ``score_chosen`` + ``score_rejected``, ``margin`` or ``p_chosen`` (none of these: a hard label, p = 1);
* a registered source name (``ultrafeedback``, ``shp``, ``helpsteer2``, ``helpsteer3``) or one of its hub ids,
  read from the Hub with ``datasets.load_dataset``;
* a mapping ``{source: NAME, path: LOCAL_COPY, split: ..., columns: {...}, margin_from: ...}``; ``path`` is a
  file, a directory saved with ``save_to_disk``, or a directory of data files (a hub snapshot).

``columns: {expected: theirs}`` renames a column the source expects to the name it has in the user's data.
Every source yields rows in the canonical columns ``prompt``, ``chosen``, ``rejected`` and a strength
(``score_chosen``/``score_rejected``, ``margin`` or ``p_chosen``), plus an optional ``group`` (the prompt id
that ``pairs_per_prompt`` counts by). :func:`make_pair` turns such a row into a pair; ``docs/data.md`` lists
every fix-up and drop it counts.
"""

from __future__ import annotations

import difflib
import json
import math
import random
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from tqdm.auto import tqdm

from mmpo.data.hub import ROW_SUFFIXES, RawRow, read_hub, read_local
from mmpo.data.records import Message, PreferencePair
from mmpo.data.report import DataReport
from mmpo.errors import DataError, UserError
from mmpo.losses import soft_targets

SPEC_KEYS = ("source", "path", "split", "columns", "margin_from")


@dataclass
class PairOptions:
    """How raw rows become pairs; mirrors the data keys of :class:`mmpo.config.TrainConfig`.

    ``gamma``: p = sigmoid(gamma * margin); None = hard labels (p = 1). ``ties``: keep a margin-0 pair at
    p = 0.5, or drop it. ``order_conflict``: chosen rated below rejected -> swap (counted), drop, or error.
    ``pairs_per_prompt``: None = the source's default cap (5 for SHP, none elsewhere), 0 = no cap.
    ``margin_bins``: > 0 samples pairs uniformly across that many equal-width margin bins. ``max_pairs``: a
    seeded random sample of at most this many pairs. ``split``: used when the spec names none.
    """

    gamma: float | None = 1.0
    columns: dict[str, str] = field(default_factory=dict)
    ties: str = "keep"
    order_conflict: str = "swap"
    pairs_per_prompt: int | None = None
    margin_bins: int = 0
    max_pairs: int | None = None
    seed: int = 42  # as TrainConfig
    split: str | None = None

    def __post_init__(self) -> None:
        if self.gamma is not None and not (isinstance(self.gamma, (int, float)) and self.gamma > 0):
            raise UserError(f"gamma must be > 0 (got {self.gamma}); use gamma none for hard labels (p = 1)")
        if self.ties not in ("keep", "drop"):
            raise UserError(f"ties must be 'keep' or 'drop' (got {self.ties!r})")
        if self.order_conflict not in ("swap", "drop", "error"):
            raise UserError(f"order_conflict must be swap, drop or error (got {self.order_conflict!r})")
        for name in ("pairs_per_prompt", "margin_bins", "max_pairs"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 0):
                raise UserError(f"{name} must be a whole number >= 0 (got {value!r})")


@dataclass(frozen=True)
class RowRef:
    """Where a row came from, for error messages: the file (or ``hub_id[split]``) and its row / line."""

    where: str
    row: int

    def error(self, fieldname: str | None, problem: str) -> DataError:
        return DataError(self.where, self.row, fieldname, problem)


# A converter turns a row in a source's own schema into the canonical columns.
Converter = Callable[[dict[str, Any], RowRef, dict[str, Any]], dict[str, Any]]


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

@register_source("local", required=("chosen", "rejected"))
def _generic(raw: dict[str, Any], ref: RowRef, spec: dict[str, Any]) -> dict[str, Any]:
    """The generic schema is the canonical one."""
    return raw


@register_source(
    "ultrafeedback",
    "allenai/ultrafeedback_binarized_cleaned",
    "HuggingFaceH4/ultrafeedback_binarized",
    required=("chosen", "rejected", "score_chosen", "score_rejected"),
    default_split="train_prefs",
)
def _ultrafeedback(raw: dict[str, Any], ref: RowRef, spec: dict[str, Any]) -> dict[str, Any]:
    """chosen / rejected are whole chats (user turn + answer); margin = score_chosen - score_rejected (1-10 scale)."""
    return {**raw, "group": raw.get("prompt_id")}


SHP_MARGINS = ("score_difference", "log_score_ratio")


@register_source(
    "shp",
    "stanfordnlp/SHP",
    "Ahjeong/SHP_filtered_for_MMPO",
    required=("history", "human_ref_A", "human_ref_B", "score_A", "score_B"),
    default_split="train",
    pairs_per_prompt=5,
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
    hub_config="preference",
    local_subpath="preference",
)
def _helpsteer3(raw: dict[str, Any], ref: RowRef, spec: dict[str, Any]) -> dict[str, Any]:
    # The nvidia/HelpSteer3 dataset card: overall_preference "-3: Response 1 is much better than Response 2
    # ... 3: Response 2 is much better than Response 1". context is the chat so far (ends with a user turn).
    strength = number(raw["overall_preference"], ref, "overall_preference")
    return likert_pair(raw["context"], raw["response1"], raw["response2"], strength, ref, "overall_preference")


# --- from canonical columns to a pair --------------------------------------------------------------------

def as_messages(value: Any, role: str, ref: RowRef, fieldname: str) -> list[Message]:
    """A string becomes one message with ``role``; a list of ``{role, content}`` messages is checked and kept."""
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if isinstance(value, list) and value and all(isinstance(m, dict) and "content" in m for m in value):
        return [{"role": str(m.get("role") or role), "content": str(m["content"])} for m in value]
    raise ref.error(fieldname, f"expected a string or a list of {{role, content}} messages, got {type(value).__name__}")


def split_conversation(messages: list[Message]) -> tuple[list[Message], list[Message]]:
    """``(context, response)``: the response is the run of assistant messages at the end of the chat."""
    start = len(messages)
    while start > 0 and messages[start - 1]["role"] == "assistant":
        start -= 1
    return messages[:start], messages[start:]


def _prompt_and_responses(raw: dict[str, Any], ref: RowRef) -> tuple[list[Message], list[Message], list[Message]]:
    """The prompt and the two answers. A whole chat in ``chosen`` (UltraFeedback) brings its own prompt."""
    chosen_context, chosen = split_conversation(as_messages(raw["chosen"], "assistant", ref, "chosen"))
    rejected_context, rejected = split_conversation(as_messages(raw["rejected"], "assistant", ref, "rejected"))
    if chosen_context != rejected_context:
        raise ref.error("rejected", "chosen and rejected continue different conversations")
    if chosen_context:
        prompt = chosen_context
    elif raw.get("prompt") is not None:
        prompt = as_messages(raw["prompt"], "user", ref, "prompt")
    else:
        raise ref.error("prompt", "missing column (needed unless chosen and rejected are whole chats)")
    for name, response in (("chosen", chosen), ("rejected", rejected)):
        if not response:
            raise ref.error(name, "the message list does not end with an assistant turn")
    return prompt, chosen, rejected


def _margin(raw: dict[str, Any], ref: RowRef) -> float | None:
    """``margin``, or ``score_chosen - score_rejected``, or None (no strength given)."""
    if raw.get("margin") is not None:
        return number(raw["margin"], ref, "margin")
    if raw.get("score_chosen") is not None or raw.get("score_rejected") is not None:
        # Rounded so that 4.2 - 0.0 and 8.7 - 4.5 are the same margin in reports and bins.
        return round(number(raw.get("score_chosen"), ref, "score_chosen") - number(raw.get("score_rejected"), ref, "score_rejected"), 9)
    return None


def _order_conflict(ref: RowRef, fieldname: str, options: PairOptions, report: DataReport) -> bool:
    """Chosen is rated below rejected: True = swap them (counted), False = drop the pair (counted), or raise."""
    if options.order_conflict == "error":
        raise ref.error(fieldname, "chosen is rated below rejected (set order_conflict: swap or drop)")
    if options.order_conflict == "drop":
        report.drop("chosen rated below rejected")
        return False
    report.fix("chosen rated below rejected: swapped")
    return True


def make_pair(raw: dict[str, Any], ref: RowRef, options: PairOptions, report: DataReport) -> PreferencePair | None:
    """One pair from a row in canonical columns, or None when the row is dropped (the reason is counted).

    p = ``p_chosen`` when given (a judged probability passes through); else sigmoid(gamma * margin) with
    margin = ``margin`` or ``score_chosen - score_rejected``; no strength at all -> p = 1; a tie -> 0.5.
    """
    prompt, chosen, rejected = _prompt_and_responses(raw, ref)
    if not all(m["content"].strip() for m in chosen) or not all(m["content"].strip() for m in rejected):
        report.drop("empty response")
        return None
    if chosen == rejected:
        report.drop("chosen identical to rejected")
        return None

    margin: float | None = None
    if raw.get("p_chosen") is not None:
        p = number(raw["p_chosen"], ref, "p_chosen")
        if not 0.0 <= p <= 1.0:
            raise ref.error("p_chosen", f"probability outside [0, 1]: {p:g}")
        if p < 0.5:
            if not _order_conflict(ref, "p_chosen", options, report):
                return None
            chosen, rejected, p = rejected, chosen, 1.0 - p
    else:
        margin = _margin(raw, ref)
        if margin is not None and margin < 0:
            if not _order_conflict(ref, "margin" if raw.get("margin") is not None else "score_chosen", options, report):
                return None
            chosen, rejected, margin = rejected, chosen, -margin
        p = 1.0 if margin is None else float(soft_targets(margin=margin, gamma=options.gamma))
    if p == 0.5 or margin == 0:
        if options.ties == "drop":
            report.drop("tie (no preference)")
            return None
        p = 0.5
    group = raw.get("group")
    return PreferencePair(
        prompt, chosen, rejected, p=p, margin=margin, source=ref.where, row=ref.row,
        meta={"group": group if group is not None else json.dumps(prompt, sort_keys=True)},
    )


# --- selection after reading -----------------------------------------------------------------------------

def _sample_indices(n: int, k: int, rng: random.Random) -> list[int]:
    """``k`` of ``range(n)`` drawn with ``rng``, in their original order."""
    return sorted(rng.sample(range(n), k))


def cap_per_prompt(pairs: list[PreferencePair], cap: int, rng: random.Random, report: DataReport) -> list[PreferencePair]:
    """At most ``cap`` pairs per prompt group (a seeded random choice among a larger group's pairs)."""
    groups: dict[Any, list[int]] = defaultdict(list)
    for i, pair in enumerate(pairs):
        groups[pair.meta["group"]].append(i)
    keep: list[int] = []
    for members in groups.values():
        keep.extend(members if len(members) <= cap else [members[j] for j in _sample_indices(len(members), cap, rng)])
    if len(keep) < len(pairs):
        report.dropped[f"over pairs_per_prompt={cap}"] += len(pairs) - len(keep)
    return [pairs[i] for i in sorted(keep)]


def margin_bin_of(margins: list[float], bins: int) -> list[int]:
    """Index of each margin's equal-width bin over [min, max] (the top edge goes in the last bin)."""
    lo, hi = min(margins), max(margins)
    if hi == lo:
        return [0] * len(margins)
    return [min(int((m - lo) / (hi - lo) * bins), bins - 1) for m in margins]


def bin_quotas(sizes: list[int], budget: int) -> list[int]:
    """Equal shares of ``budget`` per non-empty bin; a bin smaller than its share gives all it has and its
    remainder is shared by the larger bins (water-filling)."""
    quotas = [0] * len(sizes)
    order = sorted((s, i) for i, s in enumerate(sizes) if s > 0)
    left = budget
    for rank, (size, i) in enumerate(order):
        quotas[i] = min(size, left // (len(order) - rank))
        left -= quotas[i]
    return quotas


def sample_across_margin_bins(
    pairs: list[PreferencePair], bins: int, budget: int | None, rng: random.Random, report: DataReport
) -> list[PreferencePair]:
    """Sample pairs uniformly across ``bins`` equal-width margin bins.

    With ``budget`` (max_pairs) each bin gets an equal share of it (see :func:`bin_quotas`); without one every
    bin is cut to the size of the smallest non-empty bin, so the margins come out uniform over the bins.
    """
    if any(p.margin is None for p in pairs):
        raise UserError("margin_bins needs a margin on every pair, and this data has pairs without one (p_chosen or a hard label)")
    if not pairs:
        return pairs
    members: list[list[int]] = [[] for _ in range(bins)]
    for i, b in enumerate(margin_bin_of([p.margin for p in pairs], bins)):
        members[b].append(i)
    sizes = [len(m) for m in members]
    if budget is None:
        budget = min(s for s in sizes if s) * sum(1 for s in sizes if s)
    keep: list[int] = []
    for idx, quota in zip(members, bin_quotas(sizes, budget)):
        keep.extend(idx[j] for j in _sample_indices(len(idx), quota, rng))
    if len(keep) < len(pairs):
        report.dropped[f"margin-bin sampling ({bins} bins)"] += len(pairs) - len(keep)
    return [pairs[i] for i in sorted(keep)]


def post_select(pairs: list[PreferencePair], options: PairOptions, source: Source, report: DataReport) -> list[PreferencePair]:
    """The per-prompt cap, then margin-bin sampling, then ``max_pairs``; all seeded with ``options.seed``."""
    rng = random.Random(options.seed)
    cap = source.pairs_per_prompt if options.pairs_per_prompt is None else options.pairs_per_prompt
    if cap:
        pairs = cap_per_prompt(pairs, cap, rng, report)
    if options.margin_bins:
        pairs = sample_across_margin_bins(pairs, options.margin_bins, options.max_pairs, rng, report)
    if options.max_pairs is not None and len(pairs) > options.max_pairs:
        report.dropped[f"over max_pairs={options.max_pairs}"] += len(pairs) - options.max_pairs
        pairs = [pairs[i] for i in _sample_indices(len(pairs), options.max_pairs, rng)]
    return pairs


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
        out["source"] = source
        return out
    raise UserError(f"cannot read data spec {spec!r}: give a path, a data set name or a mapping")


def _rows(source: Source, spec: dict[str, Any], split: str | None) -> tuple[str, Iterator[RawRow]]:
    """A label for the report and the raw rows: from the local copy when ``path`` is given, else from the Hub."""
    if "path" in spec:
        label = f"{source.name}: {spec['path']}" if source.name != "local" else str(spec["path"])
        rows = read_local(spec["path"], None if source.split_column else split, source.local_subpath)
    else:
        hub_id = spec.get("hub_id") or source.hub_ids[0]
        label = f"{source.name}: {hub_id}"
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


def _rename(raw: dict[str, Any], columns: dict[str, str], ref: RowRef) -> dict[str, Any]:
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


def _check_columns(raw: dict[str, Any], source: Source, columns: dict[str, str], ref: RowRef) -> None:
    for col in source.required:
        if raw.get(col) is None:
            theirs = columns.get(col, col)
            what = "missing column" if col not in raw else "missing value"
            hint = _schema_hint(raw) if source.name == "local" else f" (the {source.name} schema needs it)"
            raise ref.error(theirs, f"{what}{hint}")


def load_pairs(spec: Any, options: PairOptions | None = None) -> tuple[list[PreferencePair], DataReport]:
    """Every pair of ``spec`` as canonical records, with a report of what was read, kept, dropped and fixed.

    Raises :class:`DataError` (file, row, field) for rows that cannot be read and :class:`UserError` for a
    spec that names nothing readable.
    """
    options = options or PairOptions()
    spec = normalize_spec(spec)
    source = SOURCES[spec["source"]]
    columns = {**options.columns, **spec.get("columns", {})}
    split = spec.get("split") or options.split or source.default_split
    label, rows = _rows(source, spec, split)
    report = DataReport(source=label)
    pairs: list[PreferencePair] = []
    for where, row, raw in tqdm(rows, desc=f"reading {label}", unit=" rows", disable=None, leave=False):
        report.read += 1
        ref = RowRef(where, row)
        raw = _rename(raw, columns, ref)
        _check_columns(raw, source, columns, ref)
        pair = make_pair(source.convert(raw, ref, spec), ref, options, report)
        if pair is not None:
            pairs.append(pair)
    if report.read == 0:
        raise UserError(f"{label}: no rows to read")
    pairs = post_select(pairs, options, source, report)
    report.keep([p.p for p in pairs], [p.margin for p in pairs])
    return pairs, report
