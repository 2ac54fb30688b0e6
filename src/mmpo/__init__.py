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
