"""Held-out pair metrics. Defined once here and used by every trainer, `mmpo eval` and `mmpo report`.

For a pair with model logit ``h`` (chosen minus rejected reward) and soft target ``p``, ``q = sigmoid(h)``:

* ``accuracy``  share of pairs with ``h > 0``; ``h == 0`` counts one half.
* ``ece``       binary expected calibration error: confidence ``max(q, 1 - q)`` against correctness of
                ``h > 0``, 15 equal-width bins on [0.5, 1], ``sum_b n_b / n * |acc_b - conf_b|``.
* ``soft_ece``  15 equal-width bins on ``q`` in [0, 1]: ``sum_b n_b / n * |mean q_b - mean p_b|``.
* ``nll``       mean of ``-p log q - (1 - p) log(1 - q)``.
* ``brier``     mean of ``(q - p)^2``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

N_BINS = 15


def _as_array(x: Sequence[float] | np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float64).reshape(-1)


def _log_sigmoid(x: np.ndarray) -> np.ndarray:
    # log sigmoid(x) = -log(1 + exp(-x)), written so neither branch overflows.
    return -np.logaddexp(0.0, -x)


def _binned_gap(values: np.ndarray, left: np.ndarray, right: np.ndarray, lo: float, hi: float, n_bins: int) -> float:
    """sum_b n_b/n * |mean(left_b) - mean(right_b)| over equal-width bins of ``values`` on [lo, hi]."""
    edges = np.linspace(lo, hi, n_bins + 1)
    # Right-closed last bin: a value equal to ``hi`` lands in the last bin.
    idx = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        sel = idx == b
        if sel.any():
            total += sel.mean() * abs(left[sel].mean() - right[sel].mean())
    return float(total)


def correctness(h: Sequence[float] | np.ndarray) -> np.ndarray:
    """1 where ``h > 0``, 0.5 where ``h == 0``, 0 otherwise."""
    h = _as_array(h)
    return (h > 0).astype(np.float64) + 0.5 * (h == 0)


def accuracy(h: Sequence[float] | np.ndarray) -> float:
    """Share of pairs ranked the right way round (ties count half)."""
    return float(correctness(h).mean())


def ece(h: Sequence[float] | np.ndarray, n_bins: int = N_BINS) -> float:
    """Binary ECE of confidence ``max(q, 1-q)`` against correctness of ``h > 0``."""
    h = _as_array(h)
    q = 1.0 / (1.0 + np.exp(-np.clip(h, -500, 500)))
    confidence = np.maximum(q, 1.0 - q)
    return _binned_gap(confidence, correctness(h), confidence, 0.5, 1.0, n_bins)


def soft_ece(h: Sequence[float] | np.ndarray, p: Sequence[float] | np.ndarray, n_bins: int = N_BINS) -> float:
    """ECE of ``q`` against the soft targets ``p``, binned on ``q``."""
    h, p = _as_array(h), _as_array(p)
    q = 1.0 / (1.0 + np.exp(-np.clip(h, -500, 500)))
    return _binned_gap(q, q, p, 0.0, 1.0, n_bins)


def nll(h: Sequence[float] | np.ndarray, p: Sequence[float] | np.ndarray) -> float:
    """Mean cross-entropy ``-p log q - (1 - p) log(1 - q)``, computed from ``h`` so it never overflows."""
    h, p = _as_array(h), _as_array(p)
    return float(np.mean(-p * _log_sigmoid(h) - (1 - p) * _log_sigmoid(-h)))


def brier(h: Sequence[float] | np.ndarray, p: Sequence[float] | np.ndarray) -> float:
    """Mean squared gap ``(q - p)^2``."""
    h, p = _as_array(h), _as_array(p)
    q = 1.0 / (1.0 + np.exp(-np.clip(h, -500, 500)))
    return float(np.mean((q - p) ** 2))


def pair_metrics(h: Sequence[float] | np.ndarray, p: Sequence[float] | np.ndarray) -> dict[str, float]:
    """All held-out metrics for logits ``h`` and soft targets ``p``: n, accuracy, ece, soft_ece, nll, brier."""
    h, p = _as_array(h), _as_array(p)
    if h.shape != p.shape:
        raise ValueError(f"h and p differ in length ({h.size} vs {p.size})")
    if h.size == 0:
        raise ValueError("no pairs to evaluate")
    return {
        "n": int(h.size),
        "accuracy": accuracy(h),
        "ece": ece(h),
        "soft_ece": soft_ece(h, p),
        "nll": nll(h, p),
        "brier": brier(h, p),
    }
