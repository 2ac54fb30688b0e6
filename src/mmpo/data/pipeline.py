"""The data pipeline, one stage after another: read -> rows -> pairs -> selection -> split -> targets -> tokens.

================  =============================================  ==========================================
stage             function                                       module
================  =============================================  ==========================================
read              :func:`mmpo.data.sources.read_rows`             which files / hub data a spec names
rows              the source's converter (+ renames, checks)      :mod:`mmpo.data.sources`
pairs             :func:`mmpo.data.pairs.make_pair`               orientation, strength, ties, drops
selection         :func:`mmpo.data.selection.select_pairs`        per-prompt cap, margin bins, max_pairs
split             :func:`split_by_prompt` / a held-out spec       never one prompt on both sides
targets           :func:`mmpo.data.pairs.retarget`                held-out truth under ``eval_gamma``
tokens            :func:`tokenize_pairs`                          truncate or drop over-length pairs
================  =============================================  ==========================================

:func:`load_pairs` runs read to selection for one spec; :func:`prepare_data` runs the whole line for a run's
config. :class:`DataPlan` is the only place that reads the config.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from typing import Any, Iterator

from tqdm.auto import tqdm

from mmpo.data.pairs import PairOptions, make_pair, retarget
from mmpo.data.records import PreferencePair
from mmpo.data.report import DataReport
from mmpo.data.selection import select_pairs
from mmpo.data.sources import SOURCES, RowRef, Source, check_columns, held_out_split, normalize_spec, read_rows, rename_columns
from mmpo.data.tokenize import OVER_LENGTH, TruncationStats, tokenize_pair
from mmpo.errors import UserError

__all__ = ["PairOptions", "PreparedData", "DataPlan", "load_pairs", "prepare_data", "split_by_prompt", "tokenize_pairs"]


# --- rows -> pairs -> selection, for one spec -----------------------------------------------------------------

def canonical_rows(source: Source, spec: dict[str, Any], raw_rows: Iterator, columns: dict[str, str],
                   report: DataReport) -> Iterator[tuple[RowRef, dict[str, Any]]]:
    """Each raw row renamed, checked and converted into canonical rows (one, or every pair of its responses)."""
    for where, row, raw in raw_rows:
        report.read += 1
        ref = RowRef(where, row)
        raw = rename_columns(raw, columns, ref)
        check_columns(raw, source, columns, ref)
        converted = source.convert(raw, ref, spec)
        for canonical in converted if isinstance(converted, list) else [converted]:
            report.pairs += 1
            yield ref, canonical


def load_pairs(spec: Any, options: PairOptions | None = None) -> tuple[list[PreferencePair], DataReport]:
    """Every selected pair of ``spec`` with targets for ``options.gamma``, and a report of what was read, kept,
    dropped and fixed (read -> rows -> pairs -> selection).

    Raises :class:`DataError` (file, row, field) for rows that cannot be read and :class:`UserError` for a
    spec that names nothing readable.
    """
    options = options or PairOptions()
    spec = normalize_spec(spec)
    source = SOURCES[spec["source"]]
    columns = {**options.columns, **spec.get("columns", {})}
    label, raw_rows = read_rows(source, spec, spec.get("split") or options.split or source.default_split)
    report = DataReport(source=label)
    pairs = []
    rows = canonical_rows(source, spec, tqdm(raw_rows, desc=f"reading {label}", unit=" rows", disable=None, leave=False), columns, report)
    for ref, canonical in rows:
        pair = make_pair(canonical, ref, options, report)
        if pair is not None:
            pairs.append(pair)
    if report.read == 0:
        raise UserError(f"{label}: no rows to read")
    cap = source.pairs_per_prompt if options.pairs_per_prompt is None else options.pairs_per_prompt
    pairs = select_pairs(pairs, cap, options.margin_bins, options.max_pairs, options.seed, report,
                         cap_is_default=options.pairs_per_prompt is None)
    report.keep([p.p for p in pairs], [p.margin for p in pairs])
    return pairs, report


# --- the run's data: a plan from the config, then split, targets and tokens --------------------------------------

def _eval_gamma(config: Any) -> float | None:
    """``eval_gamma``: ``same`` (the default) means the training gamma; a number; or None (hard labels)."""
    value = getattr(config, "eval_gamma", "same")
    return config.gamma if value == "same" else value


@dataclass
class DataPlan:
    """What a run reads, taken from its config once: the training spec and options, the held-out spec (or the
    share of training prompts to hold out) and options, and how to tokenize."""

    train_spec: Any
    train_options: PairOptions
    eval_spec: Any
    eval_options: PairOptions
    eval_fraction: float
    eval_gamma: float | None
    seed: int
    max_length: int
    max_prompt_length: int
    over_length: str

    @classmethod
    def from_config(cls, config: Any) -> "DataPlan":
        common = dict(columns=dict(config.data_columns or {}), ties=config.ties, order_conflict=config.order_conflict,
                      pairs_per_prompt=config.pairs_per_prompt, margin_bins=config.margin_bins, seed=config.seed)
        eval_gamma = _eval_gamma(config)
        eval_split = held_out_split(config.eval_data) if config.eval_data is not None else None
        return cls(
            train_spec=config.data,
            train_options=PairOptions(gamma=config.gamma, max_pairs=config.max_pairs, **common),
            eval_spec=config.eval_data,
            eval_options=PairOptions(gamma=eval_gamma, max_pairs=config.max_eval_pairs, split=eval_split, **common),
            eval_fraction=config.eval_split,
            eval_gamma=eval_gamma,
            seed=config.seed,
            max_length=config.max_length,
            max_prompt_length=config.prompt_budget,
            over_length=getattr(config, "over_length", "truncate"),
        )


@dataclass
class PreparedData:
    train: list[dict[str, Any]]
    eval: list[dict[str, Any]]
    reports: dict[str, DataReport]

    def render(self) -> str:
        return "\n".join(r.render() for r in self.reports.values())


def _prompt_bucket(pair: PreferencePair, seed: int) -> float:
    """A stable number in [0, 1) per prompt, so all pairs of a prompt land on the same side of the split."""
    key = json.dumps(pair.prompt, sort_keys=True) + f"|{seed}"
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 2**32


def split_by_prompt(pairs: list[PreferencePair], fraction: float, seed: int) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """Hold out about ``fraction`` of the prompts (with all their pairs): no prompt is on both sides."""
    train, held = [], []
    for pair in pairs:
        (held if _prompt_bucket(pair, seed) < fraction else train).append(pair)
    return train, held


def split_stage(plan: DataPlan, pairs: list[PreferencePair], report: DataReport) -> tuple[list[PreferencePair], list[PreferencePair], DataReport]:
    """Training pairs, held-out pairs (targets under ``eval_gamma``) and the held-out report."""
    if plan.eval_spec is not None:
        held, eval_report = load_pairs(plan.eval_spec, plan.eval_options)
        return pairs, held, eval_report
    train, held = split_by_prompt(pairs, plan.eval_fraction, plan.seed) if plan.eval_fraction > 0 else (pairs, [])
    eval_report = DataReport(source=f"{report.source} (held-out {plan.eval_fraction:.0%} of prompts)")
    eval_report.pairs = len(held)  # pairs split off the training data: no rows of its own
    report.dropped["held out for evaluation"] += len(held)
    if plan.eval_gamma != plan.train_options.gamma:
        held = retarget(held, plan.eval_gamma, eval_report)
    return train, held, eval_report


def tokenize_pairs(pairs: list[PreferencePair], tokenizer: Any, max_length: int, max_prompt_length: int, report: DataReport,
                   over_length: str = "truncate") -> list[dict[str, Any]]:
    """Tokenize once; pairs that cannot fit (or, with ``over_length: drop``, that do not fit) are dropped and
    counted in ``report``."""
    if over_length not in OVER_LENGTH:
        raise UserError(f"over_length must be {' or '.join(OVER_LENGTH)} (got {over_length!r})")
    stats = TruncationStats()
    out = []
    cache: dict = {}  # each prompt and answer is tokenized once (scored-response data repeats them)
    for pair in pairs:
        tok = tokenize_pair(tokenizer, pair, max_length, max_prompt_length, stats, over_length=over_length, cache=cache)
        if tok is not None:
            out.append(tok.__dict__)
    report.truncation = stats.as_dict()
    if stats.dropped_no_room:
        report.dropped["no room for the response at max_length"] += stats.dropped_no_room
    if stats.dropped_over_length:
        report.dropped[f"longer than max_length={max_length} (over_length: drop)"] += stats.dropped_over_length
        if stats.dropped_over_length > stats.pairs / 2:
            report.warn(f"over_length: drop removed {stats.dropped_over_length} of {stats.pairs} pairs; raise max_length or use over_length: truncate")
    report.keep([t["p"] for t in out], [t["margin"] for t in out])
    return out


def prepare_data(config: Any, tokenizer: Any) -> PreparedData:
    """The whole line for a run: read, select and split ``config.data`` (or read ``config.eval_data``), give the
    held-out pairs their ``eval_gamma`` targets, tokenize both sides."""
    from mmpo.data.synthetic import generate_if_default_and_missing

    # The graded-tasks set a recipe names under ``$MMPO_CACHE/data/graded-tasks-<seed>/`` is written on first use.
    for spec in (config.data, config.eval_data):
        generate_if_default_and_missing(spec)
    plan = DataPlan.from_config(config)
    pairs, train_report = load_pairs(plan.train_spec, plan.train_options)
    train, held, eval_report = split_stage(plan, pairs, train_report)
    reports = {"train": train_report, "eval": eval_report}
    train_tok = tokenize_pairs(train, tokenizer, plan.max_length, plan.max_prompt_length, train_report, plan.over_length)
    eval_tok = tokenize_pairs(held, tokenizer, plan.max_length, plan.max_prompt_length, eval_report, plan.over_length)
    for name, report in reports.items():
        for warning in report.warnings:
            print(f"WARNING: {name} data {report.source}: {warning}", file=sys.stderr)
    return PreparedData(train_tok, eval_tok, reports)
