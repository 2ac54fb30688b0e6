"""The MMPO math: soft Bradley–Terry targets and the pairwise losses that use them.

Every function here is pure and works on tensors of per-pair values. Notation follows the paper
(Kim et al., 2024, "Margin Matching Preference Optimization"):

* ``h``  — the model's preference logit for a pair: ``r(x, y_w) - r(x, y_l)`` for a reward model, or
  DPO's implicit reward difference for a policy (see :func:`dpo_logits`).
* ``p``  — the soft target, the probability that ``y_w`` is preferred: ``sigmoid(gamma * (s_w - s_l))``.

Losses are returned per pair (no reduction) and in float32, whatever the input dtype: the upcast is what
keeps them finite for ``|h|`` up to 1e4 in bfloat16.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "soft_targets",
    "mmpo_loss",
    "bt_loss",
    "margin_loss",
    "label_smoothing_loss",
    "dpo_logits",
    "ipo_loss",
    "simpo_logits",
    "PAIR_LOSSES",
    "uses_soft_targets",
]


def soft_targets(
    score_chosen: torch.Tensor | float | None = None,
    score_rejected: torch.Tensor | float | None = None,
    gamma: float | None = None,
    *,
    margin: torch.Tensor | float | None = None,
    probability: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """Target probability that the chosen response is preferred.

    ``p = sigmoid(gamma * (score_chosen - score_rejected))`` under Bradley–Terry. Instead of two scores a
    ``margin = score_chosen - score_rejected`` may be given; a judged ``probability`` is passed through
    unchanged. ``gamma=None`` means hard labels: ``p = 1`` (plain DPO / BT), whatever the margin.

    Raises ``ValueError`` for ``gamma <= 0`` or a probability outside [0, 1].
    """
    if probability is not None:
        p = torch.as_tensor(probability, dtype=torch.float32)
        if bool(((p < 0) | (p > 1) | torch.isnan(p)).any()):
            raise ValueError("probability must lie in [0, 1]")
        return p
    if margin is None:
        if score_chosen is None or score_rejected is None:
            raise ValueError("give score_chosen and score_rejected, a margin, or a probability")
        margin = torch.as_tensor(score_chosen, dtype=torch.float32) - torch.as_tensor(score_rejected, dtype=torch.float32)
    margin = torch.as_tensor(margin, dtype=torch.float32)
    if gamma is None:
        return torch.ones_like(margin)
    if not gamma > 0:
        raise ValueError(f"gamma must be > 0 (got {gamma}); use gamma=None for hard labels")
    return torch.sigmoid(gamma * margin)


def mmpo_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """MMPO: cross-entropy between the target ``p`` and the model's ``sigmoid(h)``, ``h = chosen - rejected``.

    ``loss = -p * log sigmoid(h) - (1 - p) * log sigmoid(-h)``; ``d loss / d h = sigmoid(h) - p``.
    """
    h = chosen_rewards.float() - rejected_rewards.float()
    p = torch.as_tensor(p, dtype=torch.float32, device=h.device)
    return -p * F.logsigmoid(h) - (1 - p) * F.logsigmoid(-h)


def bt_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, p: torch.Tensor | None = None) -> torch.Tensor:
    """Hard Bradley–Terry (DPO's loss on its implicit reward): ``-log sigmoid(h)``. ``p`` is ignored."""
    return -F.logsigmoid(chosen_rewards.float() - rejected_rewards.float())


def margin_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, margin: torch.Tensor) -> torch.Tensor:
    """Llama-2's margin offset: ``-log sigmoid(h - m)`` with ``m`` the raw score margin (0 where unknown)."""
    h = chosen_rewards.float() - rejected_rewards.float()
    return -F.logsigmoid(h - torch.as_tensor(margin, dtype=torch.float32, device=h.device))


def label_smoothing_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Conservative labels (cDPO): ``-(1 - eps) * log sigmoid(h) - eps * log sigmoid(-h)``.

    The same cross-entropy as :func:`mmpo_loss` with every pair's target fixed at ``1 - eps``.
    """
    if not 0 <= epsilon < 0.5:
        raise ValueError(f"label smoothing epsilon must lie in [0, 0.5) (got {epsilon})")
    return mmpo_loss(chosen_rewards, rejected_rewards, torch.tensor(1.0 - epsilon))


def dpo_logits(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    reference_chosen_logps: torch.Tensor,
    reference_rejected_logps: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DPO's implicit rewards ``beta * (log pi(y|x) - log pi_ref(y|x))`` for chosen and rejected.

    Their difference is the policy's preference logit ``h``; feed the pair to any loss above.
    """
    if not beta > 0:
        raise ValueError(f"beta must be > 0 (got {beta})")
    chosen = beta * (policy_chosen_logps.float() - reference_chosen_logps.float())
    rejected = beta * (policy_rejected_logps.float() - reference_rejected_logps.float())
    return chosen, rejected


def ipo_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, beta: float) -> torch.Tensor:
    """IPO (Azar et al., 2023): ``(h / beta - 1 / (2 * beta))^2`` on the log-ratio difference.

    Takes the rewards from :func:`dpo_logits` (already scaled by ``beta``) and undoes the scale.
    """
    log_ratio_diff = (chosen_rewards.float() - rejected_rewards.float()) / beta
    return (log_ratio_diff - 1.0 / (2.0 * beta)) ** 2


def simpo_logits(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    chosen_lengths: torch.Tensor,
    rejected_lengths: torch.Tensor,
    beta: float,
    target_margin: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SimPO's reference-free rewards: ``beta * log pi(y|x) / |y|``; the target margin is taken off chosen.

    ``h = beta * (avg_logp_w - avg_logp_l) - target_margin``; use with :func:`bt_loss` (SimPO) or
    :func:`mmpo_loss` (its soft-target variant).
    """
    if not beta > 0:
        raise ValueError(f"beta must be > 0 (got {beta})")
    chosen = beta * policy_chosen_logps.float() / chosen_lengths.float().clamp(min=1) - target_margin
    rejected = beta * policy_rejected_logps.float() / rejected_lengths.float().clamp(min=1)
    return chosen, rejected


# Losses that take (chosen_rewards, rejected_rewards, p) directly; the rest need a margin, epsilon or beta.
PAIR_LOSSES = {"mmpo": mmpo_loss, "bt": bt_loss}


# Losses whose value depends on each pair's target p, so a tie (p = 0.5) teaches them "no preference". Every
# other loss trains on the written order whatever p says: bt / dpo / simpo (-log sigmoid(h)), ipo (a fixed
# target margin), cdpo / label_smoothing (a fixed target 1 - eps) and margin (-log sigmoid(h - m), which for a
# tie, m = 0, is plain BT). A kept tie would teach those "chosen wins" where the data names no winner.
SOFT_TARGET_LOSSES = frozenset({"mmpo", "simpo_mmpo"})


def uses_soft_targets(loss: str) -> bool:
    """True when ``loss`` reads the soft target ``p`` (and so can learn a tie, p = 0.5); see SOFT_TARGET_LOSSES."""
    return loss in SOFT_TARGET_LOSSES
