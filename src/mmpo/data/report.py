"""The data report shown before training: what was read, kept, dropped or fixed, and what the targets look like."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Up to this many distinct margins are listed value by value (Likert and 1-10 scores); more get quantiles.
_MAX_LISTED_MARGINS = 12


@dataclass
class DataReport:
    """Counts for one data source. ``dropped`` and ``fixed`` map a reason to how many pairs it hit.

    ``read`` counts input rows and ``pairs`` the candidate pairs made from them (a row with several rated
    responses gives several; 0 = one per row, as for a report built by hand); ``kept`` the pairs that survive
    every drop (``pairs - sum(dropped)``);
    ``truncation`` holds the tokenizer's cut counts; ``margins`` / ``targets`` are the kept pairs' values.
    """

    source: str
    read: int = 0
    pairs: int = 0
    dropped: Counter = field(default_factory=Counter)
    fixed: Counter = field(default_factory=Counter)
    truncation: dict[str, int] = field(default_factory=dict)
    margins: list[float] = field(default_factory=list)
    targets: list[float] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # Held-out side only: distinct held-out prompts, and how many of them also occur among the training prompts.
    prompts: int | None = None
    prompts_in_training: int | None = None

    @property
    def kept(self) -> int:
        return len(self.targets)

    @property
    def candidates(self) -> int:
        """Pairs before any drop: ``pairs``, or ``read`` when the pairs were not counted (one per row)."""
        return self.pairs or self.read

    def drop(self, reason: str) -> None:
        self.dropped[reason] += 1

    def fix(self, reason: str) -> None:
        self.fixed[reason] += 1

    def warn(self, message: str) -> None:
        """A problem the user must see (e.g. a filter that dropped most of the data): rendered first, loudly."""
        self.warnings.append(message)

    def keep(self, targets: list[float], margins: list[float | None]) -> None:
        """Record the kept pairs' targets p and margins (None = the pair had no margin)."""
        self.targets = [float(p) for p in targets]
        self.margins = [float(m) for m in margins if m is not None]

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "read": self.read,
            "pairs": self.candidates,
            "kept": self.kept,
            "dropped": dict(self.dropped),
            "fixed": dict(self.fixed),
            "warnings": list(self.warnings),
            "prompts": self.prompts,
            "prompts_in_training": self.prompts_in_training,
            "truncation": dict(self.truncation),
            "margin": _summary(self.margins),
            "margin_counts": _value_counts(self.margins),
            "p": _summary(self.targets),
            "p_histogram": _histogram(self.targets),
        }

    def render(self) -> str:
        # Rows and pairs are counted apart: a row with several rated responses gives several pairs.
        made = f"read {_count(self.read, 'row')} -> {_count(self.candidates, 'pair')}" if self.read else _count(self.candidates, "pair")
        lines = [f"data {self.source}: {made}, kept {_count(self.kept, 'pair')}"]
        lines += [f"  WARNING: {w}" for w in self.warnings]
        lines += [f"  dropped {_count(n, 'pair')}: {reason}" for reason, n in sorted(self.dropped.items())]
        lines += [f"  fixed {_count(n, 'pair')}: {reason}" for reason, n in sorted(self.fixed.items())]
        if self.prompts_in_training is not None:
            lines.append(f"  held-out prompts also in the training data: {self.prompts_in_training} of {self.prompts}")
        lines += [f"  {key.replace('_', ' ')}: {n}" for key, n in sorted(self.truncation.items()) if n and key != "pairs"]
        if self.margins:
            lines.append("  margin: " + _render_margins(self.margins))
        if len(self.margins) < self.kept:
            lines.append(f"  no margin (judged p or hard label): {self.kept - len(self.margins)}")
        if self.targets:
            t = _summary(self.targets)
            lines.append(f"  target p: min {t['min']:.3f}  mean {t['mean']:.3f}  max {t['max']:.3f}")
            counts = _histogram(self.targets)["counts"]
            lines.append("  p histogram [0.5-0.6 ... 0.9-1.0]: " + " ".join(str(c) for c in counts[5:]))
            if sum(counts[:5]):
                lines.append(f"  p below 0.5: {sum(counts[:5])}")
        return "\n".join(lines)


def _count(n: int, noun: str) -> str:
    """``1 pair``, ``91,649 pairs``."""
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def _render_margins(margins: list[float]) -> str:
    counts = _value_counts(margins)
    if counts:
        return "  ".join(f"{v:g}: {n}" for v, n in counts.items())
    m = _summary(margins)
    return (
        f"min {m['min']:.3g}  q25 {m['q25']:.3g}  median {m['median']:.3g}  q75 {m['q75']:.3g}  "
        f"max {m['max']:.3g}  ({m['distinct']} distinct)"
    )


def _summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    a = np.asarray(values, dtype=np.float64)
    q25, median, q75 = np.quantile(a, [0.25, 0.5, 0.75])
    return {
        "min": float(a.min()),
        "q25": float(q25),
        "mean": float(a.mean()),
        "median": float(median),
        "q75": float(q75),
        "max": float(a.max()),
        "distinct": int(len(np.unique(a))),
    }


def _value_counts(values: list[float]) -> dict[float, int]:
    """Count per distinct value when there are few (else empty)."""
    counts = Counter(values)
    return dict(sorted(counts.items())) if len(counts) <= _MAX_LISTED_MARGINS else {}


HISTOGRAM_EDGES = [k / 10 for k in range(11)]


def _histogram(values: list[float]) -> dict[str, list]:
    """Counts in the bins [0, 0.1), [0.1, 0.2), ..., [0.9, 1.0] with exact decimal edges.

    The bin is ``floor(10 * p)`` computed after rounding ``10 * p`` to 9 decimals, so a p written as 0.6 or 0.7
    (whose binary values lie just below 6/10 and 7/10 times 10) lands in the bin it names, not the one below.
    """
    scaled = np.round(np.asarray(values, dtype=np.float64) * 10, 9)
    idx = np.clip(np.floor(scaled).astype(int), 0, 9)
    counts = np.bincount(idx, minlength=10) if idx.size else np.zeros(10, dtype=int)
    return {"edges": list(HISTOGRAM_EDGES), "counts": [int(c) for c in counts]}
