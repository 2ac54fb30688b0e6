"""Maximum-likelihood gamma: how sharply a margin predicts an independent preference outcome.

Model: the probability that chosen beats rejected is ``p_i = sigmoid(gamma * m_i)`` for margin ``m_i``
(a score difference). With outcomes ``y_i`` in [0, 1] (a binary label, a vote share, a judge's probability)
the negative log-likelihood is the cross-entropy MMPO trains with::

    NLL(gamma) = - sum_i [ y_i log sigmoid(gamma m_i) + (1 - y_i) log sigmoid(-gamma m_i) ]

Its derivative ``U(gamma) = sum_i (sigmoid(gamma m_i) - y_i) m_i`` increases with gamma (the second derivative
``I(gamma) = sum_i sigmoid(gamma m_i) (1 - sigmoid(gamma m_i)) m_i^2`` is >= 0), so the estimate is the one
root of ``U``. For binary outcomes this is logistic regression through the origin on the margin; for a
judge's scores against a reward model's score differences it is temperature scaling (``1 / gamma`` is the
temperature). No root exists when the margins separate the outcomes (every y = 1 has m > 0 and so on):
then the likelihood grows without bound and the fit reports that instead of a number.

Interval: the 95% profile-likelihood interval ``{gamma : 2 (NLL(gamma) - NLL(gamma_hat)) <= 3.841}``
(3.841 = the 0.95 quantile of chi-square with one degree of freedom). The Wald interval from the Fisher
information, ``gamma_hat +- 1.96 / sqrt(I(gamma_hat))``, is reported beside it. Both treat each pair as one
Bernoulli trial; with fractional outcomes (vote shares, judge probabilities) that is a quasi-likelihood, and
the interval is then an approximation (it is too wide when a share pools many votes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

CHI2_1_95 = 3.841458820694124  # chi-square, 1 degree of freedom, 0.95 quantile
Z_95 = 1.959963984540054
MAX_GAMMA = 1e6


class SeparableData(ValueError):
    """The margins separate the outcomes: the likelihood has no maximum at a finite gamma."""


def _log_sigmoid(x: np.ndarray) -> np.ndarray:
    return -np.logaddexp(0.0, -x)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.exp(_log_sigmoid(x))


def gamma_nll(gamma: float, margins: np.ndarray, outcomes: np.ndarray) -> float:
    """``-sum_i [y_i log sigmoid(gamma m_i) + (1 - y_i) log sigmoid(-gamma m_i)]``."""
    z = gamma * margins
    return float(-np.sum(outcomes * _log_sigmoid(z) + (1.0 - outcomes) * _log_sigmoid(-z)))


def gamma_score(gamma: float, margins: np.ndarray, outcomes: np.ndarray) -> float:
    """``dNLL/dgamma = sum_i (sigmoid(gamma m_i) - y_i) m_i`` (non-decreasing in gamma)."""
    return float(np.sum((_sigmoid(gamma * margins) - outcomes) * margins))


def gamma_information(gamma: float, margins: np.ndarray) -> float:
    """``d2NLL/dgamma2 = sum_i sigmoid(gamma m_i) (1 - sigmoid(gamma m_i)) m_i^2`` (observed = expected here)."""
    q = _sigmoid(gamma * margins)
    return float(np.sum(q * (1.0 - q) * margins**2))


def _bisect(f, lo: float, hi: float, iters: int = 200) -> float:
    """A root of the increasing-through-zero ``f`` on [lo, hi] (f(lo) <= 0 <= f(hi))."""
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        if f(mid) > 0:
            hi = mid
        else:
            lo = mid
        if hi - lo <= 1e-12 * max(1.0, abs(mid)):
            break
    return 0.5 * (lo + hi)


def mle_gamma(margins: np.ndarray, outcomes: np.ndarray) -> float:
    """The root of :func:`gamma_score`; raises :class:`SeparableData` when there is none below ``MAX_GAMMA``."""
    if not np.any(margins != 0):
        raise SeparableData("every margin is 0: the outcomes say nothing about gamma")
    # U's limits as gamma -> +-infinity: U(+inf) = sum_{m>0} (1-y) m + sum_{m<0} y |m| >= 0 and
    # U(-inf) = -(sum_{m<0} (1-y) |m| + sum_{m>0} y m) <= 0. A limit of 0 means U never crosses zero on that side.
    pos, neg = margins > 0, margins < 0
    scale = float(np.sum(np.abs(margins)))
    if float(np.sum((1 - outcomes[pos]) * margins[pos]) - np.sum(outcomes[neg] * margins[neg])) <= 1e-12 * scale:
        raise SeparableData("the margins separate the outcomes (gamma -> +infinity): every outcome agrees with its margin's sign")
    if float(-np.sum((1 - outcomes[neg]) * margins[neg]) + np.sum(outcomes[pos] * margins[pos])) <= 1e-12 * scale:
        raise SeparableData("the margins separate the outcomes the wrong way (gamma -> -infinity)")
    f = lambda g: gamma_score(g, margins, outcomes)  # noqa: E731
    lo, hi = -1.0, 1.0
    while f(lo) > 0:
        lo *= 2
        if lo < -MAX_GAMMA:
            raise SeparableData("the margins separate the outcomes (gamma -> -infinity)")
    while f(hi) < 0:
        hi *= 2
        if hi > MAX_GAMMA:
            raise SeparableData("the margins separate the outcomes (gamma -> +infinity): every outcome agrees with its margin's sign")
    return _bisect(f, lo, hi)


def profile_interval(gamma_hat: float, margins: np.ndarray, outcomes: np.ndarray, level_chi2: float = CHI2_1_95) -> tuple[float, float]:
    """``{gamma : 2 (NLL(gamma) - NLL(gamma_hat)) <= level_chi2}`` (an interval: the NLL is convex); an end with
    no crossing below ``MAX_GAMMA`` is returned as +-inf."""
    base = gamma_nll(gamma_hat, margins, outcomes)
    excess = lambda g: 2.0 * (gamma_nll(g, margins, outcomes) - base) - level_chi2  # noqa: E731
    step = max(1e-3, 2.0 / math.sqrt(max(gamma_information(gamma_hat, margins), 1e-12)))
    ends = []
    for direction in (-1.0, 1.0):
        far = step
        while excess(gamma_hat + direction * far) < 0:
            far *= 2
            if far > MAX_GAMMA:
                ends.append(direction * math.inf)
                break
        else:
            # excess goes from < 0 at gamma_hat to >= 0 at the far end; bisect on the distance.
            ends.append(gamma_hat + direction * _bisect(lambda d: excess(gamma_hat + direction * d), 0.0, far))
    return ends[0], ends[1]


@dataclass
class GammaFit:
    """A fitted gamma with its 95% intervals and the data size."""

    gamma: float
    profile_low: float
    profile_high: float
    wald_low: float
    wald_high: float
    n: int
    nll_per_pair: float

    def as_dict(self) -> dict[str, float]:
        return dict(self.__dict__)


def fit_gamma(margins: np.ndarray, outcomes: np.ndarray) -> GammaFit:
    """Maximum-likelihood gamma of ``y ~ sigmoid(gamma * margin)`` with the 95% profile-likelihood and Wald
    (Fisher-information) intervals; outcomes must lie in [0, 1]."""
    margins = np.asarray(margins, dtype=np.float64)
    outcomes = np.asarray(outcomes, dtype=np.float64)
    if margins.shape != outcomes.shape or margins.ndim != 1 or margins.size == 0:
        raise ValueError("margins and outcomes must be equal-length, non-empty 1-d arrays")
    if np.any((outcomes < 0) | (outcomes > 1)) or not np.all(np.isfinite(margins)):
        raise ValueError("outcomes must lie in [0, 1] and margins be finite")
    gamma = mle_gamma(margins, outcomes)
    low, high = profile_interval(gamma, margins, outcomes)
    half = Z_95 / math.sqrt(max(gamma_information(gamma, margins), 1e-300))
    return GammaFit(gamma, low, high, gamma - half, gamma + half, int(margins.size), gamma_nll(gamma, margins, outcomes) / margins.size)


def reliability_bins(margins: np.ndarray, outcomes: np.ndarray, gamma: float, n_bins: int = 10) -> list[dict[str, float]]:
    """Pairs grouped by predicted ``q = sigmoid(gamma m)`` into ``n_bins`` equal-width bins on [0, 1]:
    per non-empty bin its count, mean predicted q and mean outcome y (a calibrated gamma puts them equal)."""
    q = _sigmoid(gamma * np.asarray(margins, dtype=np.float64))
    y = np.asarray(outcomes, dtype=np.float64)
    index = np.minimum((q * n_bins).astype(int), n_bins - 1)
    out = []
    for b in range(n_bins):
        sel = index == b
        if sel.any():
            out.append({"low": b / n_bins, "high": (b + 1) / n_bins, "n": int(sel.sum()),
                        "mean_predicted": float(q[sel].mean()), "mean_outcome": float(y[sel].mean())})
    return out
