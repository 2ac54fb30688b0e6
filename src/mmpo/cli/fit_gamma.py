"""`mmpo fit-gamma --data FILE [--margin COL | --scores A,B] [--outcome COL] [--out FIT.json]`

Fits gamma of ``p = sigmoid(gamma * margin)`` by maximum likelihood to pairs that carry both a margin and an
independent outcome (:mod:`mmpo.evaluation.gamma_fit`), prints it with its 95% profile-likelihood interval
(and the Fisher-information one), and writes the fit and a reliability plot at the fitted gamma.

Columns, when not named: the margin is ``score_chosen - score_rejected``, else ``margin``, else the same under
``original_`` (as ``mmpo label`` renames them); the outcome is the first present of ``p_chosen``,
``original_p_chosen``, ``label``, ``outcome``, ``vote_share``: a number in [0, 1] (or true/false), the
probability or indicator that chosen was preferred. A row without both is skipped and counted.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

MARGIN_CANDIDATES = (("score_chosen", "score_rejected"), "margin", ("original_score_chosen", "original_score_rejected"), "original_margin")
OUTCOME_CANDIDATES = ("p_chosen", "original_p_chosen", "label", "outcome", "vote_share")


def add_arguments(name: str, p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="pair file (.jsonl/.json/.parquet/.csv) with a margin and an outcome per row")
    p.add_argument("--margin", default=None, help=f"column holding the margin (default: the first present of {_names(MARGIN_CANDIDATES)})")
    p.add_argument("--scores", default=None, help="two columns A,B: margin = A - B (instead of --margin)")
    p.add_argument("--outcome", default=None, help=f"column holding the outcome in [0, 1] (default: the first present of {_names(OUTCOME_CANDIDATES)})")
    p.add_argument("--out", default="fit-gamma.json", help="where to write the fit (JSON); the plot goes beside it (.png)")


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


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from mmpo.data.hub import read_local
    from mmpo.errors import DataError, UserError
    from mmpo.evaluation.gamma_fit import SeparableData, fit_gamma, reliability_bins

    rows = [(where, row, raw) for where, row, raw in read_local(args.data)]
    if not rows:
        raise UserError(f"{args.data}: no rows")
    raws = [raw for _, _, raw in rows]
    if args.scores:
        parts = tuple(s.strip() for s in args.scores.split(","))
        if len(parts) != 2:
            raise UserError("--scores takes two columns, A,B (margin = A - B)")
        margin_col: Any = parts
    else:
        margin_col = args.margin or _pick(raws, MARGIN_CANDIDATES)
    outcome_col = args.outcome or _pick(raws, OUTCOME_CANDIDATES)
    if margin_col is None:
        raise UserError(f"{args.data}: no margin column (score_chosen + score_rejected, margin, or their original_ forms); name one with --margin or --scores")
    if outcome_col is None:
        raise UserError(f"{args.data}: no outcome column ({', '.join(OUTCOME_CANDIDATES)}); name one with --outcome")
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
        raise UserError(f"{args.data}: no row has both a margin and an outcome")
    m_arr, y_arr = np.array(margins), np.array(outcomes)
    try:
        fit = fit_gamma(m_arr, y_arr)
    except SeparableData as e:
        raise UserError(f"{args.data}: cannot fit gamma: {e}") from None
    bins = reliability_bins(m_arr, y_arr, fit.gamma)
    margin_name = f"{margin_col[0]} - {margin_col[1]}" if isinstance(margin_col, tuple) else margin_col
    result = {
        **fit.as_dict(), "interval": "profile likelihood, 95%", "data": str(args.data), "margin": margin_name,
        "outcome": outcome_col, "skipped_rows": skipped, "reliability": bins,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    plot = out.with_suffix(".png")
    _plot(bins, fit.gamma, plot, margin_name, outcome_col)
    print(
        f"gamma {fit.gamma:.4f}  95% profile-likelihood interval [{fit.profile_low:.4f}, {fit.profile_high:.4f}]  "
        f"(Fisher/Wald [{fit.wald_low:.4f}, {fit.wald_high:.4f}])  n {fit.n}  margin {margin_name}  outcome {outcome_col}"
        + (f"  skipped {skipped} rows without both" if skipped else "")
    )
    print(f"wrote {out} and {plot}")
    if fit.gamma <= 0:
        print("warning: gamma <= 0: the margins point the wrong way for these outcomes")
    return 0


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
