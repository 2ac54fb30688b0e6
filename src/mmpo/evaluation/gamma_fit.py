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

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


# --- fitting a pair file: the library behind `mmpo fit-gamma` ------------------------------------------------

MARGIN_CANDIDATES = (("score_chosen", "score_rejected"), "margin", ("original_score_chosen", "original_score_rejected"), "original_margin")
OUTCOME_CANDIDATES = ("p_chosen", "original_p_chosen", "label", "outcome", "vote_share")



def _names(candidates: tuple[Any, ...]) -> str:
    """``(("a", "b"), "c")`` -> ``"a - b, c"``: the candidate columns as --help lists them."""
    return ", ".join(" - ".join(c) if isinstance(c, tuple) else c for c in candidates)


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)) and math.isfinite(float(value)):
        return float(value)
    if hasattr(value, "item"):
        return _number(value.item())
    return None


def _pick(rows: list[dict[str, Any]], candidates: tuple[Any, ...]) -> Any:
    for c in candidates:
        names = c if isinstance(c, tuple) else (c,)
        if any(all(r.get(n) is not None for n in names) for r in rows):
            return c
    return None


def fit_gamma_file(data: str | os.PathLike, out: str | os.PathLike | None = None, margin: str | None = None,
                   scores: tuple[str, str] | None = None, outcome: str | None = None) -> dict[str, Any]:
    """Fit gamma (:func:`fit_gamma`) to the pairs of the file ``data`` that carry both a margin and an outcome.

    Columns, when not named: the margin is ``score_chosen - score_rejected``, else ``margin``, else the same under
    ``original_`` (as ``mmpo label`` renames them); ``scores=(A, B)`` makes it ``A - B``. The outcome is the first
    present of :data:`OUTCOME_CANDIDATES`: a number in [0, 1] (or true/false), the probability or indicator that
    chosen was preferred. A row without both is skipped and counted (``skipped_rows``).

    Returns the fit (:meth:`GammaFit.as_dict`, plus ``data``, ``margin``, ``outcome``, ``skipped_rows`` and
    ``reliability`` bins at the fitted gamma). With ``out``, the result is written there as JSON and a reliability
    plot beside it (``.png``, its path under ``plot`` in the result).
    """
    from mmpo.data.hub import read_local
    from mmpo.errors import DataError, UserError

    rows = [(where, row, raw) for where, row, raw in read_local(data)]
    if not rows:
        raise UserError(f"{data}: no rows")
    raws = [raw for _, _, raw in rows]
    if scores is not None:
        if len(scores) != 2:
            raise UserError("--scores takes two columns, A,B (margin = A - B)")
        margin_col: Any = tuple(scores)
    else:
        margin_col = margin or _pick(raws, MARGIN_CANDIDATES)
    outcome_col = outcome or _pick(raws, OUTCOME_CANDIDATES)
    if margin_col is None:
        raise UserError(f"{data}: no margin column (score_chosen + score_rejected, margin, or their original_ forms); name one with --margin or --scores")
    if outcome_col is None:
        raise UserError(f"{data}: no outcome column ({', '.join(OUTCOME_CANDIDATES)}); name one with --outcome")
    if outcome_col in (margin_col if isinstance(margin_col, tuple) else (margin_col,)):
        raise UserError("the outcome column must differ from the margin columns")

    margins, outcomes, skipped = [], [], 0
    for where, row, raw in rows:
        if isinstance(margin_col, tuple):
            a, b = _number(raw.get(margin_col[0])), _number(raw.get(margin_col[1]))
            m = None if a is None or b is None else a - b
        else:
            m = _number(raw.get(margin_col))
        y = _number(raw.get(outcome_col))
        if m is None or y is None:
            skipped += 1
            continue
        if not 0.0 <= y <= 1.0:
            raise DataError(where, row, outcome_col, f"outcome must lie in [0, 1] (got {y:g})")
        margins.append(m)
        outcomes.append(y)
    if not margins:
        raise UserError(f"{data}: no row has both a margin and an outcome")
    m_arr, y_arr = np.array(margins), np.array(outcomes)
    try:
        fit = fit_gamma(m_arr, y_arr)
    except SeparableData as e:
        raise UserError(f"{data}: cannot fit gamma: {e}") from None
    bins = reliability_bins(m_arr, y_arr, fit.gamma)
    margin_name = f"{margin_col[0]} - {margin_col[1]}" if isinstance(margin_col, tuple) else margin_col
    result = {
        **fit.as_dict(), "interval": "profile likelihood, 95%", "data": str(data), "margin": margin_name,
        "outcome": outcome_col, "skipped_rows": skipped, "reliability": bins,
    }
    if out is not None:
        from mmpo.io import atomic_write_text

        out = Path(out)
        plot = out.with_suffix(".png")
        result["plot"] = str(plot)
        atomic_write_text(out, json.dumps(result, indent=2) + "\n")
        _plot(bins, fit.gamma, plot, margin_name, outcome_col)
    return result


def _plot(bins: list[dict[str, float]], gamma: float, path: Path, margin_name: str, outcome_col: str) -> None:
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="calibrated")
    xs = [b["mean_predicted"] for b in bins]
    ys = [b["mean_outcome"] for b in bins]
    sizes = [20 + 180 * b["n"] / max(x["n"] for x in bins) for b in bins]
    ax.plot(xs, ys, color="C0", linewidth=1)
    ax.scatter(xs, ys, s=sizes, color="C0", label=f"gamma = {gamma:.3g} (marker area ~ pairs)", clip_on=False, zorder=3)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    # Two lines, the column names wrapped: a long margin name on one line ran past the figure's edges.
    ax.set_xlabel("predicted sigmoid(gamma * margin)\n" + textwrap.fill(f"margin = {margin_name}", 48), fontsize=9)
    ax.set_ylabel(f"mean {outcome_col}")
    ax.set_title("reliability at the fitted gamma")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
