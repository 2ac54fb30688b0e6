"""mmpo: Margin Matching Preference Optimization for reward models and policies."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from mmpo.training.run import TrainSummary


def train_reward_model(config: Any, data: Any = None, **overrides: Any) -> TrainSummary:
    """Train a reward model; returns its :class:`~mmpo.training.run.TrainSummary` (``summary.output_dir`` holds
    the model, ``summary.metrics`` the final held-out metrics).

    ``config``: a packaged recipe name (``"embedded/rm"``), a YAML path, a dict of config keys or an
    :class:`~mmpo.config.RMConfig`. ``data``: a path or data spec, a ``datasets.Dataset`` or a list of dicts
    (rows as in a JSONL file); it replaces the config's ``data``. ``overrides``: any other config key.
    """
    from mmpo.training.tasks import train_task

    return train_task("rm", config, data, **overrides)


def train_policy(config: Any, data: Any = None, **overrides: Any) -> TrainSummary:
    """Train a policy from preference pairs (DPO-family losses, MMPO by default); returns its
    :class:`~mmpo.training.run.TrainSummary`. Arguments as for :func:`train_reward_model`, with a policy recipe
    (``"embedded/dpo"``) or a :class:`~mmpo.config.DPOConfig`.
    """
    from mmpo.training.tasks import train_task

    return train_task("dpo", config, data, **overrides)

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
    "train_reward_model",
    "train_policy",
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


# --- comparing losses over seeds (imported on first call: it trains) ---------------------------------------


def compare(recipe: str, losses: "list[str]", seeds: "list[int]" = (0, 1, 2), out: str = "runs/compare",
            kind: "str | None" = None, baseline: "str | None" = None, **overrides: object) -> dict:
    """Train ``recipe`` once per loss and seed under ``out`` and compare the losses, as `mmpo compare` does.

    Every run of a seed shares its data and order and is scored on the same held-out pairs; each metric gets its
    mean per loss and the paired difference from ``baseline`` (default: the last loss) with a 95% t-interval over
    seeds. ``kind`` (``rm`` | ``dpo`` | ``online``) defaults to the recipe's kind; ``overrides`` replace recipe
    keys in every run. Returns what ``OUT/comparison.json`` holds. See :func:`mmpo.experiments.compare.run_compare`.
    """
    from mmpo.experiments.compare import baseline_last, choose_kind, run_compare

    ordered = baseline_last(list(losses), baseline)
    chosen, _ = choose_kind(kind, recipe, ordered)
    return run_compare(chosen, recipe, ordered, list(seeds), dict(overrides), out)


__all__ += ["compare"]
