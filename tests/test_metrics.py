"""Held-out metrics against hand computations."""

import math

import numpy as np
import pytest

from mmpo.evaluation.metrics import accuracy, brier, ece, nll, pair_metrics, soft_ece


def _sig(x):
    return 1 / (1 + math.exp(-x))


def test_accuracy_counts_ties_half():
    assert accuracy([1.0, -1.0, 0.0, 2.0]) == pytest.approx((1 + 0 + 0.5 + 1) / 4)


def test_ece_by_hand():
    # Two pairs in one bin (confidence ~0.731 and ~0.731), one right and one wrong: gap |0.5 - 0.731|.
    h = [1.0, -1.0]
    # h = -1 has confidence max(q, 1-q) = 0.731 and is wrong (h < 0 means the model prefers rejected).
    assert ece(h) == pytest.approx(abs(0.5 - _sig(1.0)))
    # Perfectly confident and right: no gap.
    assert ece([50.0, 60.0]) == pytest.approx(0.0, abs=1e-12)


def test_ece_bins_separately():
    h = [0.1, 3.0]  # confidences 0.525 and 0.953 fall in different bins, both right
    expected = 0.5 * (1 - _sig(0.1)) + 0.5 * (1 - _sig(3.0))
    assert ece(h) == pytest.approx(expected)


def test_soft_ece_nll_brier_by_hand():
    h = np.array([0.0, 2.0])
    p = np.array([0.5, 0.6])
    q = np.array([0.5, _sig(2.0)])
    # q = 0.5 and 0.881 are in different bins on [0, 1].
    assert soft_ece(h, p) == pytest.approx(0.5 * 0 + 0.5 * abs(q[1] - 0.6))
    assert nll(h, p) == pytest.approx(np.mean(-p * np.log(q) - (1 - p) * np.log(1 - q)))
    assert brier(h, p) == pytest.approx(np.mean((q - p) ** 2))


def test_nll_is_finite_for_extreme_logits():
    assert math.isfinite(nll([1e4, -1e4], [1.0, 1.0]))
    assert nll([1e4, -1e4], [1.0, 1.0]) == pytest.approx(0.5 * 1e4, rel=1e-6)


def test_calibrated_model_has_small_soft_ece():
    rng = np.random.default_rng(0)
    h = rng.normal(0, 2, 20000)
    p = 1 / (1 + np.exp(-h))
    m = pair_metrics(h, p)
    assert m["soft_ece"] < 1e-9 and m["brier"] < 1e-12
    assert m["n"] == 20000
    assert pair_metrics(h * 3, p)["soft_ece"] > 0.05  # overconfident


def test_pair_metrics_rejects_mismatched_lengths():
    with pytest.raises(ValueError):
        pair_metrics([1.0, 2.0], [1.0])
