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
