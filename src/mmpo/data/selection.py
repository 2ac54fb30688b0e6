"""Stage 4 of the data pipeline: which pairs to keep (per-prompt caps, margin bins, ``max_pairs``).

Every drop is counted in the :class:`DataReport`; a step that drops more than half of the pairs it was given
says so in a warning line of the report (and on stderr when the report is printed), because a silent
selection that keeps 6 of 50,000 pairs looks like a working run.
"""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Any

import numpy as np

from mmpo.data.records import PreferencePair
from mmpo.data.report import DataReport
from mmpo.errors import UserError


def _sample_indices(n: int, k: int, rng: random.Random) -> list[int]:
    """``k`` of ``range(n)`` drawn with ``rng``, in their original order."""
    return sorted(rng.sample(range(n), k))


def _count(report: DataReport, reason: str, before: int, after: int, warn: bool = True) -> None:
    """Count a selection drop, and warn when the step kept less than half of what it was given (unless the
    step is a sample size the user asked for: ``warn=False``)."""
    if after < before:
        report.dropped[reason] += before - after
        if warn and after < before / 2:
            report.warn(f"{reason} kept {after} of {before} pairs ({after / before:.1%})")


def cap_per_prompt(pairs: list[PreferencePair], cap: int, rng: random.Random, report: DataReport, warn: bool = True) -> list[PreferencePair]:
    """At most ``cap`` pairs per prompt group (a seeded random choice among a larger group's pairs); ``warn``
    as in :func:`_count` (False when the user chose ``cap``, e.g. k pairs of each prompt's scored responses)."""
    groups: dict[Any, list[int]] = defaultdict(list)
    for i, pair in enumerate(pairs):
        groups[pair.meta["group"]].append(i)
    keep: list[int] = []
    for members in groups.values():
        keep.extend(members if len(members) <= cap else [members[j] for j in _sample_indices(len(members), cap, rng)])
    _count(report, f"over pairs_per_prompt={cap}", len(pairs), len(keep), warn)
    return [pairs[i] for i in sorted(keep)]


def margin_bin_of(margins: list[float], bins: int) -> list[int]:
    """Index of each margin's quantile bin: edges at the ``k / bins`` quantiles of the margins.

    Quantile bins follow the data's own spread, so a heavy tail (SHP's upvote differences) does not leave
    nearly every pair in the first of ``bins`` equal-width bins. Equal margins share a bin (the edges are
    searched from the right), so a bin may hold more or fewer than ``n / bins`` pairs when values repeat.
    """
    values = np.asarray(margins, dtype=np.float64)
    if values.size == 0:
        return []
    inner = np.quantile(values, np.arange(1, bins) / bins)
    return [int(b) for b in np.searchsorted(inner, values, side="right")]


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
    """Sample pairs uniformly across ``bins`` margin-quantile bins (:func:`margin_bin_of`).

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
    _count(report, f"margin-bin sampling ({bins} quantile bins)", len(pairs), len(keep))
    return [pairs[i] for i in sorted(keep)]


def select_pairs(pairs: list[PreferencePair], cap: int | None, margin_bins: int, max_pairs: int | None, seed: int,
                 report: DataReport, cap_is_default: bool = True) -> list[PreferencePair]:
    """The per-prompt cap, then margin-bin sampling, then ``max_pairs``; all seeded with ``seed``. A source's
    default cap (SHP's 5) warns when it drops most pairs; a cap the user set does not."""
    rng = random.Random(seed)
    if cap:
        pairs = cap_per_prompt(pairs, cap, rng, report, warn=cap_is_default)
    if margin_bins:
        pairs = sample_across_margin_bins(pairs, margin_bins, max_pairs, rng, report)
    if max_pairs is not None and len(pairs) > max_pairs:
        before = len(pairs)
        pairs = [pairs[i] for i in _sample_indices(len(pairs), max_pairs, rng)]
        # max_pairs is an explicit size, not a filter: counted, never a warning.
        report.dropped[f"over max_pairs={max_pairs}"] += before - len(pairs)
    return pairs
