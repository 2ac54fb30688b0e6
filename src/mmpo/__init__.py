"""mmpo: Margin Matching Preference Optimization for reward models and policies."""

from mmpo.losses import (
    bt_loss,
    dpo_logits,
    ipo_loss,
    label_smoothing_loss,
    margin_loss,
    mmpo_loss,
    simpo_logits,
    soft_targets,
)
from mmpo.evaluation.metrics import pair_metrics
from mmpo.data.records import PreferencePair

__version__ = "0.1.0"

__all__ = [
    "soft_targets",
    "mmpo_loss",
    "bt_loss",
    "margin_loss",
    "label_smoothing_loss",
    "dpo_logits",
    "ipo_loss",
    "simpo_logits",
    "pair_metrics",
    "PreferencePair",
]


# --- labelling pair files and fitting gamma (imported on first call: they load data and model libraries) ---


def label(data: str, out: str, grader: "str | dict", overwrite: bool = False, progress: bool = True) -> dict:
    """Add a margin to every row of the pair file ``data`` and write the labelled rows to ``out`` (JSON Lines).

    ``grader``: ``"checker:graded-tasks"``, ``"checker:module:function"``, ``"reward_model:DIR"``,
    ``"judge:MODEL@URL"`` or a mapping (:func:`mmpo.graders.load_grader`). Returns the summary written to
    ``OUT_STEM.label.json`` (``rows``, ``labeled``, ``unlabeled``, ...). See :func:`mmpo.graders.labelling.label_pairs`.
    """
    from mmpo.graders.labelling import label_pairs

    return label_pairs(data, out, grader, overwrite=overwrite, progress=progress)


def fit_gamma(data: str, out: str | None = None, margin: str | None = None, scores: "tuple[str, str] | None" = None,
              outcome: str | None = None) -> dict:
    """Fit gamma of ``p = sigmoid(gamma * margin)`` by maximum likelihood to the pairs of the file ``data`` that
    carry a margin and an independent outcome; returns ``gamma`` with its 95% profile-likelihood interval
    (``profile_low``, ``profile_high``) and more. See :func:`mmpo.evaluation.gamma_fit.fit_gamma_file`."""
    from mmpo.evaluation.gamma_fit import fit_gamma_file

    return fit_gamma_file(data, out, margin=margin, scores=scores, outcome=outcome)


__all__ += ["label", "fit_gamma"]
