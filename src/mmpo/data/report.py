"""The data report shown before training: what was read, kept, dropped or fixed, and what the targets look like."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class DataReport:
    """Counts for one data source. ``dropped`` and ``fixed`` map a reason to how many pairs it hit."""

    source: str
    read: int = 0
    dropped: Counter = field(default_factory=Counter)
    fixed: Counter = field(default_factory=Counter)
    truncation: dict[str, int] = field(default_factory=dict)
    margins: list[float] = field(default_factory=list)
    targets: list[float] = field(default_factory=list)

    @property
    def kept(self) -> int:
        return len(self.targets)

    def drop(self, reason: str) -> None:
        self.dropped[reason] += 1

    def fix(self, reason: str) -> None:
        self.fixed[reason] += 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "read": self.read,
            "kept": self.kept,
            "dropped": dict(self.dropped),
            "fixed": dict(self.fixed),
            "truncation": dict(self.truncation),
            "margin": _summary(self.margins),
            "p": _summary(self.targets),
            "p_histogram": _histogram(self.targets),
        }

    def render(self) -> str:
        lines = [f"data {self.source}: read {self.read}, kept {self.kept}"]
        for reason, n in sorted(self.dropped.items()):
            lines.append(f"  dropped {n}: {reason}")
        for reason, n in sorted(self.fixed.items()):
            lines.append(f"  fixed {n}: {reason}")
        for key, n in sorted(self.truncation.items()):
            if n and key != "pairs":
                lines.append(f"  {key.replace('_', ' ')}: {n}")
        if self.margins:
            m = _summary(self.margins)
            lines.append(f"  margin: min {m['min']:.3g}  median {m['median']:.3g}  max {m['max']:.3g}  ({m['distinct']} distinct)")
        if self.targets:
            t = _summary(self.targets)
            lines.append(f"  target p: min {t['min']:.3f}  mean {t['mean']:.3f}  max {t['max']:.3f}")
            hist = _histogram(self.targets)
            lines.append("  p histogram [0.5-0.6 ... 0.9-1.0]: " + " ".join(str(c) for c in hist["counts"][5:]))
        return "\n".join(lines)


def _summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    a = np.asarray(values, dtype=np.float64)
    return {
        "min": float(a.min()),
        "mean": float(a.mean()),
        "median": float(np.median(a)),
        "max": float(a.max()),
        "distinct": int(len(np.unique(a))),
    }


def _histogram(values: list[float]) -> dict[str, list]:
    counts, edges = np.histogram(np.asarray(values, dtype=np.float64), bins=10, range=(0.0, 1.0))
    return {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]}
