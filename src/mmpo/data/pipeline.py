"""The data pipeline, one stage after another: read -> rows -> pairs -> selection -> split -> targets -> tokens.

================  =============================================  ==========================================
stage             function                                       module
================  =============================================  ==========================================
read              :func:`mmpo.data.sources.read_rows`             which files / hub data a spec names
rows              the source's converter (+ renames, checks)      :mod:`mmpo.data.sources`
pairs             :func:`mmpo.data.pairs.make_pair`               orientation, strength, ties, drops
selection         :func:`mmpo.data.selection.select_pairs`        per-prompt cap, margin bins, max_pairs
split             :func:`split_by_prompt` / a held-out spec       never one prompt on both sides
targets           :func:`mmpo.data.pairs.retarget`                training targets (ties the loss cannot use
                                                                 dropped), held-out truth (``eval_gamma``)
tokens            :func:`tokenize_pairs`                          truncate or drop over-length pairs
groups            :func:`mmpo.data.groups.make_groups`,           ``layout: groups`` only: the training pairs
                  :func:`tokenize_groups`                         of each prompt as groups of responses
================  =============================================  ==========================================

:func:`load_pairs` runs read to selection for one spec; :func:`prepare_data` runs the whole line for a run's
config. :class:`DataPlan` is the only place that reads the config. A run reads and selects its pairs with
every tie kept and splits them before any target is set, so its held-out pairs are the same whatever its
training loss and gamma; only then do the training pairs drop the ties their loss cannot use.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from typing import Any, Iterator

from tqdm.auto import tqdm

from mmpo.data.pairs import PairOptions, make_pair, retarget
from mmpo.data.records import PreferencePair, prompt_key, prompt_overlap
from mmpo.data.report import DataReport
from mmpo.data.selection import select_pairs
from mmpo.data.sources import (
    SOURCES,
    RowRef,
    Source,
    check_columns,
    held_out_split,
    normalize_spec,
    read_rows,
    rename_columns,
    source_identity,
    split_to_read,
)
from mmpo.data.tokenize import OVER_LENGTH, TruncationStats, tokenize_pair
from mmpo.errors import UserError
from mmpo.losses import uses_soft_targets

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
    label, raw_rows = read_rows(source, spec, split_to_read(spec, options.split))
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
    train_gamma: float | None
    train_tie_rule: str | None
    seed: int
    max_length: int
    max_prompt_length: int
    over_length: str
    allow_eval_overlap: bool = False
    layout: str = "pairs"
    group_size: int = 8

    @classmethod
    def from_config(cls, config: Any) -> "DataPlan":
        common = dict(columns=dict(config.data_columns or {}), ties=config.ties, order_conflict=config.order_conflict,
                      pairs_per_prompt=config.pairs_per_prompt, margin_bins=config.margin_bins, seed=config.seed)
        eval_gamma = _eval_gamma(config)
        eval_split = held_out_split(config.eval_data) if config.eval_data is not None else None
        loss = getattr(config, "loss", "mmpo")
        return cls(
            train_spec=config.data,
            # Ties stay through the split whatever the gamma: the targets are set after it (split_stage).
            train_options=PairOptions(gamma=config.gamma, max_pairs=config.max_pairs, hard_ties="keep", **common),
            eval_spec=config.eval_data,
            eval_options=PairOptions(gamma=eval_gamma, max_pairs=config.max_eval_pairs, split=eval_split, **common),
            eval_fraction=config.eval_split,
            eval_gamma=eval_gamma,
            train_gamma=config.gamma,
            train_tie_rule=None if uses_soft_targets(loss) else f"tie: loss {loss} ignores p, a tie would teach it the written order",
            seed=config.seed,
            max_length=config.max_length,
            max_prompt_length=config.prompt_budget,
            over_length=getattr(config, "over_length", "truncate"),
            allow_eval_overlap=bool(getattr(config, "allow_eval_overlap", False)),
            layout=getattr(config, "layout", "pairs"),
            group_size=getattr(config, "group_size", 8),
        )


@dataclass
class PreparedData:
    train: list[dict[str, Any]]
    eval: list[dict[str, Any]]
    reports: dict[str, DataReport]
    notes: tuple[str, ...] = ()  # lines printed after the reports (the groups of layout: groups)

    def render(self) -> str:
        return "\n".join([*(r.render() for r in self.reports.values()), *self.notes])


def _prompt_bucket(pair: PreferencePair, seed: int) -> float:
    """A stable number in [0, 1) per prompt, so all pairs of a prompt land on the same side of the split."""
    key = prompt_key(pair.prompt) + f"|{seed}"
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 2**32


def split_by_prompt(pairs: list[PreferencePair], fraction: float, seed: int) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """Hold out about ``fraction`` of the prompts (with all their pairs): no prompt is on both sides."""
    train, held = [], []
    for pair in pairs:
        (held if _prompt_bucket(pair, seed) < fraction else train).append(pair)
    return train, held


def split_stage(plan: DataPlan, pairs: list[PreferencePair], report: DataReport) -> tuple[list[PreferencePair], list[PreferencePair], DataReport]:
    """Training pairs (targets under the training ``gamma``; ties dropped under hard labels or when the loss
    ignores ``p``, counted in ``report``), held-out pairs (targets under ``eval_gamma``) and the held-out report,
    which counts the held-out prompts that also occur in training (see :func:`check_held_out`).

    The split comes first, on pairs that still hold every tie, so the held-out pairs never depend on the
    training loss or gamma."""
    if plan.eval_spec is not None:
        if source_identity(plan.train_spec, plan.train_options.split) == source_identity(plan.eval_spec, plan.eval_options.split):
            raise UserError(f"eval_data reads the same data as data ({report.source}): held-out metrics would score training "
                            "pairs; name other held-out data, or drop eval_data to hold out eval_split of the prompts")
        held, eval_report = load_pairs(plan.eval_spec, plan.eval_options)
        train = pairs
    else:
        train, held = split_by_prompt(pairs, plan.eval_fraction, plan.seed) if plan.eval_fraction > 0 else (pairs, [])
        eval_report = DataReport(source=f"{report.source} (held-out {plan.eval_fraction:.0%} of prompts)")
        eval_report.pairs = len(held)  # pairs split off the training data: no rows of its own
        report.dropped["held out for evaluation"] += len(held)
        # max_eval_pairs samples the held-out pairs wherever they come from (eval_data's are sampled as read).
        held = select_pairs(held, None, 0, plan.eval_options.max_pairs, plan.seed, eval_report)
        held = retarget(held, plan.eval_gamma, eval_report)
    # A split of one source keeps each prompt on one side, so it counts none here.
    check_held_out(train, held, eval_report, plan.allow_eval_overlap)
    return retarget(train, plan.train_gamma, report, drop_ties=plan.train_tie_rule), held, eval_report


def check_held_out(train: list[PreferencePair], held: list[PreferencePair], eval_report: DataReport, allow_overlap: bool) -> None:
    """Count the distinct held-out prompts and those that also occur in training into ``eval_report``; refuse any
    overlap unless ``allow_overlap`` (``allow_eval_overlap: true``)."""
    shared, distinct = prompt_overlap([p.prompt for p in train], [p.prompt for p in held])
    eval_report.prompts, eval_report.prompts_in_training = distinct, shared
    if shared and not allow_overlap:
        raise UserError(f"{shared} of {distinct} held-out prompts ({eval_report.source}) also occur in the training data: "
                        "held-out metrics would score training prompts; hold out other prompts, or set "
                        "allow_eval_overlap: true to accept them (the count stays in the data report)")


def tokenize_pairs(pairs: list[PreferencePair], tokenizer: Any, max_length: int, max_prompt_length: int, report: DataReport,
                   over_length: str = "truncate", cache: dict | None = None) -> list[dict[str, Any]]:
    """Tokenize once; pairs that cannot fit (or, with ``over_length: drop``, that do not fit) are dropped and
    counted in ``report``. ``cache`` (a dict) may be shared with :func:`tokenize_groups`."""
    if over_length not in OVER_LENGTH:
        raise UserError(f"over_length must be {' or '.join(OVER_LENGTH)} (got {over_length!r})")
    stats = TruncationStats()
    out = []
    cache = {} if cache is None else cache  # each prompt and answer is tokenized once (scored-response data repeats them)
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


def tokenize_groups(pairs: list[PreferencePair], tokenizer: Any, plan: DataPlan, cache: dict | None = None) -> list[dict[str, Any]]:
    """The training features of ``layout: groups``: ``pairs`` gathered into groups
    (:func:`mmpo.data.groups.make_groups`) and tokenized response by response as :func:`tokenize_pairs` tokenizes
    pairs (:func:`mmpo.data.tokenize.tokenize_group`); a group left with fewer than two responses is dropped."""
    from mmpo.data.groups import make_groups
    from mmpo.data.tokenize import tokenize_group

    out = []
    for group in make_groups(pairs, plan.group_size, plan.seed):
        feature = tokenize_group(tokenizer, group, plan.max_length, plan.max_prompt_length, plan.over_length, cache)
        if feature is not None:
            out.append(feature)
    return out


def group_summary(features: list[dict[str, Any]]) -> str:
    """One line on a run's training groups: how many, their sizes and the pairs they hold."""
    sizes = [len(f["response_ids"]) for f in features]
    pairs = sum(k * (k - 1) // 2 for k in sizes)
    if not sizes:
        return "layout groups: no training groups"
    return (f"layout groups: {len(sizes)} training groups of {min(sizes)}-{max(sizes)} responses "
            f"(mean {sum(sizes) / len(sizes):.1f}), {pairs} pairs within them")


def prepare_data(config: Any, tokenizer: Any) -> PreparedData:
    """The whole line for a run: read, select and split ``config.data`` (or read ``config.eval_data``), give the
    held-out pairs their ``eval_gamma`` targets, tokenize both sides. Under ``layout: groups`` the training
    features are groups (:func:`tokenize_groups`); the held-out ones stay pairs."""
    from mmpo.data.synthetic import generate_if_default_and_missing

    # The graded-tasks set a recipe names under ``$MMPO_CACHE/data/graded-tasks-<seed>/`` is written on first use.
    for spec in (config.data, config.eval_data):
        generate_if_default_and_missing(spec)
    plan = DataPlan.from_config(config)
    pairs, train_report = load_pairs(plan.train_spec, plan.train_options)
    train, held, eval_report = split_stage(plan, pairs, train_report)
    reports = {"train": train_report, "eval": eval_report}
    cache: dict = {}
    train_tok = tokenize_pairs(train, tokenizer, plan.max_length, plan.max_prompt_length, train_report, plan.over_length, cache)
    if plan.layout == "groups":
        # The report stays the pairs' (what was read, dropped and cut); the groups are built from the same pairs.
        train_tok = tokenize_groups(train, tokenizer, plan, cache)
    eval_tok = tokenize_pairs(held, tokenizer, plan.max_length, plan.max_prompt_length, eval_report, plan.over_length)
    for name, report in reports.items():
        for warning in report.warnings:
            print(f"WARNING: {name} data {report.source}: {warning}", file=sys.stderr)
    notes = (group_summary(train_tok),) if plan.layout == "groups" else ()
    return PreparedData(train_tok, eval_tok, reports, notes)
