"""`mmpo fit-gamma --data FILE [--margin COL | --scores A,B] [--outcome COL] [--out FIT.json]`

The command line of :func:`mmpo.evaluation.gamma_fit.fit_gamma_file`: fits gamma of ``p = sigmoid(gamma * margin)`` by maximum likelihood to pairs that carry both a margin and an
independent outcome (:mod:`mmpo.evaluation.gamma_fit`), prints it with its 95% profile-likelihood interval
(and the Fisher-information one), and writes the fit and a reliability plot at the fitted gamma.

Columns, when not named: the margin is ``score_chosen - score_rejected``, else ``margin``, else the same under
``original_`` (as ``mmpo label`` renames them); the outcome is the first present of ``p_chosen``,
``original_p_chosen``, ``label``, ``outcome``, ``vote_share``: a number in [0, 1] (or true/false), the
probability or indicator that chosen was preferred. A row without both is skipped and counted.
"""

from __future__ import annotations

import argparse


def add_arguments(name: str, p: argparse.ArgumentParser) -> None:
    from mmpo.evaluation.gamma_fit import MARGIN_CANDIDATES, OUTCOME_CANDIDATES, _names

    p.add_argument("--data", required=True, help="pair file (.jsonl/.json/.parquet/.csv) with a margin and an outcome per row")
    p.add_argument("--margin", default=None, help=f"column holding the margin (default: the first present of {_names(MARGIN_CANDIDATES)})")
    p.add_argument("--scores", default=None, help="two columns A,B: margin = A - B (instead of --margin)")
    p.add_argument("--outcome", default=None, help=f"column holding the outcome in [0, 1] (default: the first present of {_names(OUTCOME_CANDIDATES)})")
    p.add_argument("--out", default="fit-gamma.json", help="where to write the fit (JSON); the plot goes beside it (.png)")



def run(args: argparse.Namespace) -> int:
    from mmpo.errors import UserError
    from mmpo.evaluation.gamma_fit import fit_gamma_file

    scores = None
    if args.scores:
        parts = tuple(s.strip() for s in args.scores.split(","))
        if len(parts) != 2:
            raise UserError("--scores takes two columns, A,B (margin = A - B)")
        scores = parts
    result = fit_gamma_file(args.data, args.out, margin=args.margin, scores=scores, outcome=args.outcome)
    skipped = result["skipped_rows"]
    print(
        f"gamma {result['gamma']:.4f}  95% profile-likelihood interval [{result['profile_low']:.4f}, {result['profile_high']:.4f}]  "
        f"(Fisher/Wald [{result['wald_low']:.4f}, {result['wald_high']:.4f}])  n {result['n']}  margin {result['margin']}  "
        f"outcome {result['outcome']}" + (f"  skipped {skipped} rows without both" if skipped else "")
    )
    print(f"wrote {args.out} and {result['plot']}")
    if result["gamma"] <= 0:
        print("warning: gamma <= 0: the margins point the wrong way for these outcomes")
    return 0
