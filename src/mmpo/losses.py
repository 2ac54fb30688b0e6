"""The MMPO math: soft Bradley–Terry targets and the pairwise losses that use them.

Every function here is pure and works on tensors of per-pair values. Notation follows the paper
(Kim et al., 2024, "Margin Matching Preference Optimization"):

* ``h``  — the model's preference logit for a pair: ``r(x, y_w) - r(x, y_l)`` for a reward model, or
  DPO's implicit reward difference for a policy (see :func:`dpo_logits`).
* ``p``  — the soft target, the probability that ``y_w`` is preferred: ``sigmoid(gamma * (s_w - s_l))``.

Losses are returned per pair (no reduction) and in float32 for float32 / bfloat16 / float16 inputs (float64
stays float64): the upcast is what keeps them finite for ``|h|`` up to 1e4 in bfloat16.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any, overload

import torch
import torch.nn.functional as F

__all__ = [
    "soft_targets",
    "mmpo_loss",
    "bt_loss",
    "margin_loss",
    "label_smoothing_loss",
    "dpo_rewards",
    "dpo_logits",
    "ipo_loss",
    "simpo_rewards",
    "simpo_logits",
    "odpo_offset",
    "odpo_loss",
    "rating_dpo_loss",
    "target_logits",
    "rpo_sq_loss",
    "rpo_fwd_kl_loss",
    "rpo_bwd_kl_loss",
    "gdpo_loss",
    "preference_strength",
    "scaled_bt_loss",
    "listwise_soft_loss",
    "score_margin",
    "group_pairs",
    "drops_ties",
    "group_losses",
    "LossSettings",
    "Loss",
    "LOSSES",
    "losses_for",
    "uses_soft_targets",
    "needs_reference",
]


def _wide(x: torch.Tensor | float, like: torch.Tensor | None = None) -> torch.Tensor:
    """``x`` as a tensor of at least float32 (float64 stays float64, so gradients can be checked in it)."""
    t = torch.as_tensor(x, device=None if like is None else like.device)
    return t if t.dtype == torch.float64 else t.float()


def _logit(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> torch.Tensor:
    return _wide(chosen_rewards) - _wide(rejected_rewards)


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
    h = _logit(chosen_rewards, rejected_rewards)
    p = _wide(p, h)
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


def dpo_rewards(logps: torch.Tensor, reference_logps: torch.Tensor, beta: float) -> torch.Tensor:
    """DPO's implicit reward of each response: ``beta * (log pi(y|x) - log pi_ref(y|x))``."""
    if not beta > 0:
        raise ValueError(f"beta must be > 0 (got {beta})")
    return beta * (logps.float() - reference_logps.float())


def dpo_logits(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    reference_chosen_logps: torch.Tensor,
    reference_rejected_logps: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DPO's implicit rewards ``beta * (log pi(y|x) - log pi_ref(y|x))`` for chosen and rejected
    (:func:`dpo_rewards` of each).

    Their difference is the policy's preference logit ``h``; feed the pair to any loss above.
    """
    return dpo_rewards(policy_chosen_logps, reference_chosen_logps, beta), dpo_rewards(policy_rejected_logps, reference_rejected_logps, beta)


def ipo_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, beta: float) -> torch.Tensor:
    """IPO (Azar et al., 2023): ``(h / beta - 1 / (2 * beta))^2`` on the log-ratio difference.

    Takes the rewards from :func:`dpo_logits` (already scaled by ``beta``) and undoes the scale.
    """
    log_ratio_diff = (chosen_rewards.float() - rejected_rewards.float()) / beta
    return (log_ratio_diff - 1.0 / (2.0 * beta)) ** 2


def simpo_rewards(logps: torch.Tensor, lengths: torch.Tensor, beta: float) -> torch.Tensor:
    """SimPO's reference-free reward of each response: ``beta * log pi(y|x) / |y|`` (``|y|`` at least 1)."""
    if not beta > 0:
        raise ValueError(f"beta must be > 0 (got {beta})")
    return beta * logps.float() / lengths.float().clamp(min=1)


def simpo_logits(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    chosen_lengths: torch.Tensor,
    rejected_lengths: torch.Tensor,
    beta: float,
    target_margin: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SimPO's reference-free rewards (:func:`simpo_rewards`): ``beta * log pi(y|x) / |y|``; the target margin is
    taken off chosen.

    ``h = beta * (avg_logp_w - avg_logp_l) - target_margin``; use with :func:`bt_loss` (SimPO) or
    :func:`mmpo_loss` (its soft-target variant).
    """
    chosen = simpo_rewards(policy_chosen_logps, chosen_lengths, beta) - target_margin
    return chosen, simpo_rewards(policy_rejected_logps, rejected_lengths, beta)


# --- margin-aware pairwise losses ------------------------------------------------------------------------

ODPO_OFFSETS = ("log", "log1p", "linear")


def odpo_offset(margin: torch.Tensor, alpha: float, function: str = "log") -> torch.Tensor:
    """ODPO's offset ``Delta = alpha * f(margin)``, ``margin = score_w - score_l`` (>= 0: pairs come ordered).

    ``f`` is ``log`` (the paper's choice and the ODPO code's default: ``log(score_w - score_l)``), ``log1p`` or
    ``linear``. With ``log`` a tie (margin 0) has offset ``-inf``: no constraint, loss 0. A missing margin
    (NaN) gets offset 0 (plain DPO), as does ``alpha = 0``.
    """
    if function not in ODPO_OFFSETS:
        raise ValueError(f"ODPO offset function must be one of {', '.join(ODPO_OFFSETS)} (got {function!r})")
    if not alpha >= 0:
        raise ValueError(f"ODPO alpha must be >= 0 (got {alpha})")
    m = _wide(margin)
    if alpha == 0:
        return torch.zeros_like(m)
    f = {"log": torch.log, "log1p": torch.log1p, "linear": lambda x: x}[function](m)
    return torch.where(torch.isnan(m), torch.zeros_like(f), alpha * f)


def odpo_loss(
    chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, margin: torch.Tensor, alpha: float = 1.0, function: str = "log"
) -> torch.Tensor:
    """ODPO (Amini, Vieira & Cotterell, 2024, "Direct Preference Optimization with an Offset", arXiv 2402.10571).

    ``loss = -log sigmoid(h - Delta)``, ``Delta = alpha * f(score_w - score_l)`` (:func:`odpo_offset`): the
    DPO logit ``h`` must exceed an offset that grows with the score gap. Checked against the paper's ODPO
    objective and its reference code (``-logsigmoid(beta * logits - alpha * log(margin))``, ``alpha = 1``).
    ``alpha = 0`` is DPO; ``function="linear", alpha=1`` is :func:`margin_loss`.
    """
    h = _logit(chosen_rewards, rejected_rewards)
    return -F.logsigmoid(h - odpo_offset(margin, alpha, function).to(h))


def rating_dpo_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, margin: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Rating-DPO (Viano et al., 2026, "Direct Preference Optimization with Rating Information", arXiv 2602.00603).

    ``loss = -log sigmoid(h - scale * (rating_w - rating_l))``: the DPO logit shifted by the rating gap; a
    missing gap (NaN) shifts nothing. Only the abstract could be read here: this is the form the task
    describes, not checked against the paper's equations. ``scale = 0`` (or a zero gap) is DPO.
    """
    if not scale >= 0:
        raise ValueError(f"rating scale must be >= 0 (got {scale})")
    h = _logit(chosen_rewards, rejected_rewards)
    gap = torch.nan_to_num(_wide(margin, h), nan=0.0)
    return -F.logsigmoid(h - scale * gap)


def target_logits(p: torch.Tensor, margin: torch.Tensor, gamma: float | None, eps: float = 1e-6) -> torch.Tensor:
    """The soft target's logit ``t`` (``p = sigmoid(t)``): ``gamma * margin`` where the margin is known, else ``logit(p)``.

    ``gamma * margin`` is RPO's scaled reward gap (NeMo-Aligner's ``gt_reward_scale * (r_w - r_l)``); taking it
    from the margin keeps it exact where float32 ``p`` has rounded to 1. ``logit(p)`` clamps ``p`` to
    ``[eps, 1 - eps]`` (a judged probability of exactly 0 or 1).
    """
    p = _wide(p)
    from_p = torch.logit(p, eps=eps)
    if gamma is None:
        return from_p
    m = _wide(margin, p)
    return torch.where(torch.isnan(m), from_p, gamma * m)


def rpo_sq_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, target_logit: torch.Tensor) -> torch.Tensor:
    """RPO, squared distance (NeMo-Aligner ``preference_loss: rpo_sq``; Nemotron-4 340B's reward-aware PO).

    ``loss = (h - t)^2`` with ``t`` the scaled reward gap (:func:`target_logits`): the implicit reward gap is
    regressed onto the graded one. A tie (``t = 0``) asks for ``h = 0``.
    """
    h = _logit(chosen_rewards, rejected_rewards)
    return (h - _wide(target_logit, h)) ** 2


def rpo_fwd_kl_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, target_logit: torch.Tensor) -> torch.Tensor:
    """RPO, forward Bernoulli KL (NeMo-Aligner ``rpo_fwd_kl``): ``KL(Bern(sigmoid(h)) || Bern(sigmoid(t)))``.

    ``loss = q (log q - log p) + (1 - q) (log(1 - q) - log(1 - p))``, ``q = sigmoid(h)``, ``p = sigmoid(t)``,
    all in log-sigmoids so a saturated ``p`` stays finite. Zero iff ``h = t``; mode-seeking in ``q``.
    """
    h = _logit(chosen_rewards, rejected_rewards)
    t = _wide(target_logit, h)
    log_q, log_not_q = F.logsigmoid(h), F.logsigmoid(-h)
    return log_q.exp() * (log_q - F.logsigmoid(t)) + log_not_q.exp() * (log_not_q - F.logsigmoid(-t))


def rpo_bwd_kl_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, target_logit: torch.Tensor) -> torch.Tensor:
    """RPO, backward Bernoulli KL (NeMo-Aligner ``rpo_bwd_kl``): ``KL(Bern(sigmoid(t)) || Bern(sigmoid(h)))``.

    ``loss = p (log p - log q) + (1 - p) (log(1 - p) - log(1 - q))``: the MMPO cross-entropy
    (:func:`mmpo_loss` with ``p = sigmoid(t)``) minus the target's entropy, a constant in the model, so the
    same gradient ``sigmoid(h) - p``.
    """
    h = _logit(chosen_rewards, rejected_rewards)
    t = _wide(target_logit, h)
    log_p, log_not_p = F.logsigmoid(t), F.logsigmoid(-t)
    return log_p.exp() * (log_p - F.logsigmoid(h)) + log_not_p.exp() * (log_not_p - F.logsigmoid(-h))


def gdpo_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """GDPO (Furuta et al., 2024, "Geometric-Averaged Preference Optimization for Soft Preference Labels", arXiv 2409.06691).

    DPO on the weighted geometric averages ``pi(y_w)^p pi(y_l)^(1-p)`` against ``pi(y_l)^p pi(y_w)^(1-p)``
    (reference likewise), whose logit is ``(2p - 1) h``: ``loss = -log sigmoid((2p - 1) h)``. Checked against
    the paper's gradient scale ``(2p - 1)`` (its table of scaling factors); the full text was not read here.
    ``p = 1`` is DPO; ``p = 0.5`` gives the constant ``log 2`` (no gradient).
    """
    h = _logit(chosen_rewards, rejected_rewards)
    return -F.logsigmoid((2 * _wide(p, h) - 1) * h)


def preference_strength(margin: torch.Tensor) -> torch.Tensor:
    """Scaled BT's per-pair weight: the score margin where known, 1 (plain BT) where unknown (NaN)."""
    return torch.nan_to_num(_wide(margin), nan=1.0)


def scaled_bt_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Scaled Bradley–Terry (Wang et al., 2024, "HelpSteer2-Preference", arXiv 2410.01257).

    ``loss = -m * log sigmoid(h)``: BT weighted by the preference strength ``m`` (:func:`preference_strength`;
    the paper's ``m`` is the annotated magnitude 1-3, here the graded score margin). Checked against
    NeMo-Aligner's ``scale`` preference loss (``|r_w - r_l| * -logsigmoid(h)``); the paper's equation was not
    read here. ``m = 1`` is BT; a tie (``m = 0``) contributes nothing.
    """
    h = _logit(chosen_rewards, rejected_rewards)
    return -_wide(weight, h) * F.logsigmoid(h)


def listwise_soft_loss(
    rewards: torch.Tensor, scores: torch.Tensor, gamma: float | None, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Listwise soft target for a prompt with ``k`` graded responses: cross-entropy between two softmaxes.

    ``loss = -sum_i q_i log softmax(r)_i``, ``q = softmax(gamma * s)``, for ``rewards`` and ``scores`` of shape
    ``[groups, k]`` (``r``: reward-model rewards or DPO's implicit rewards); returns ``[groups]``. ``mask``
    (bool, ``[groups, k]``) marks the responses present when groups have fewer than ``k``. With ``k = 2`` this
    is exactly :func:`mmpo_loss` (``q_1 = sigmoid(gamma * (s_1 - s_2))``); equal scores give the uniform target.
    ``gamma=None`` (hard labels) is the limit ``gamma -> inf``: ``q`` uniform over the top-scored responses.
    """
    if gamma is not None and not gamma > 0:
        raise ValueError(f"gamma must be > 0 (got {gamma})")
    r, s = _wide(rewards), _wide(scores)
    if r.shape != s.shape or r.dim() != 2:
        raise ValueError(f"rewards and scores must both be [groups, k] (got {tuple(r.shape)} and {tuple(s.shape)})")
    present = torch.ones_like(r, dtype=torch.bool) if mask is None else mask.bool().to(r.device)
    s = s.to(r).masked_fill(~present, float("-inf"))
    if gamma is None:
        target_logits_ = torch.where(s == s.max(dim=-1, keepdim=True).values, 0.0, float("-inf")).to(r)
    else:
        target_logits_ = gamma * s
    logits = r.masked_fill(~present, float("-inf"))
    q = torch.softmax(target_logits_, dim=-1)
    log_model = torch.log_softmax(logits, dim=-1)
    # 0 * -inf at an absent response is 0, not NaN.
    return -(q * torch.where(q > 0, log_model, torch.zeros_like(log_model))).sum(dim=-1)


MARGIN_DECIMALS = 9
_MARGIN_SCALE = 10.0**MARGIN_DECIMALS


@overload
def score_margin(chosen: float, rejected: float) -> float: ...


@overload
def score_margin(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor: ...


def score_margin(chosen: torch.Tensor | float, rejected: torch.Tensor | float) -> torch.Tensor | float:
    """The margin of two scores, ``s_chosen - s_rejected`` rounded to :data:`MARGIN_DECIMALS` decimals.

    ``round(d * 10**9) / 10**9`` (half to even), so that scores equal up to float error are a tie (``0.3`` and
    ``0.1 + 0.2``: margin 0) and ``8.7 - 4.5`` is the same margin as ``4.2 - 0.0``. The one rule for both
    layouts: the pair pipeline applies it to Python floats, :func:`group_pairs` to float64 tensors, with
    bit-identical results (the same IEEE float64 operations).
    """
    scaled = (chosen - rejected) * _MARGIN_SCALE
    if isinstance(scaled, torch.Tensor):
        return torch.round(scaled) / _MARGIN_SCALE
    return round(scaled) / _MARGIN_SCALE


def group_pairs(
    rewards: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor, gamma: float | None, drop_ties: bool
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """All ``C(k, 2)`` pairs of each group's present responses as the pair losses take them.

    For responses ``a < b`` of a group (``rewards``, ``scores``, ``mask`` all ``[groups, k]``), in group order then
    ``(a, b)`` order, the pair is oriented as the pair pipeline orients it (chosen = the higher score, ``b`` only
    when it scores strictly higher): ``margin = s_chosen - s_rejected >= 0`` and ``p = sigmoid(gamma * margin)``
    (1 under ``gamma=None``; a tie then has no target). The margin is :func:`score_margin` of the two scores, so
    ties are decided as the pair pipeline decides them; ties (``margin = 0``) are left out when ``drop_ties`` or
    ``gamma`` is None, as :func:`mmpo.data.pairs.retarget` drops them. The margin and ``p`` are computed in
    float64, then rounded to float32, as the pair pipeline computes them. Returns
    ``(chosen_rewards, rejected_rewards, {"p", "margin"})``, one entry per pair.
    """
    k = rewards.shape[-1]
    a, b = torch.triu_indices(k, k, offset=1, device=rewards.device)
    s = scores.double()
    s_a, s_b, r_a, r_b = s[:, a], s[:, b], rewards[:, a], rewards[:, b]
    keep = mask[:, a].bool() & mask[:, b].bool()
    b_wins = s_b > s_a
    margin = torch.where(b_wins, score_margin(s_b, s_a), score_margin(s_a, s_b))
    if drop_ties or gamma is None:
        keep = keep & (margin != 0)
    chosen = torch.where(b_wins, r_b, r_a)[keep]
    rejected = torch.where(b_wins, r_a, r_b)[keep]
    margin = margin[keep]
    p = torch.ones_like(margin) if gamma is None else torch.sigmoid(gamma * margin)
    return chosen, rejected, {"p": p.float(), "margin": margin.float()}


def drops_ties(loss: str, gamma: float | None) -> bool:
    """Whether ``loss``'s training pairs leave ties out: under hard labels, or when it ignores ``p``
    (:func:`uses_soft_targets`)."""
    return gamma is None or not uses_soft_targets(loss)


# --- the registry: one line per loss ---------------------------------------------------------------------

RM, POLICY = "rm", "policy"
PairBatch = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class LossSettings:
    """The config values the losses read (:meth:`from_config` takes those a config has)."""

    beta: float = 0.1
    label_smoothing: float = 0.1
    gamma: float | None = 1.0
    odpo_alpha: float = 1.0
    odpo_offset: str = "log"
    rdpo_scale: float = 1.0

    @classmethod
    def from_config(cls, config: Any) -> LossSettings:
        return cls(**{f.name: getattr(config, f.name) for f in fields(cls) if hasattr(config, f.name)})


LossFn = Callable[[torch.Tensor, torch.Tensor, PairBatch, LossSettings], torch.Tensor]
GroupLossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, LossSettings], torch.Tensor]


@dataclass(frozen=True)
class Loss:
    """One training loss: what it trains (``rm`` / ``policy``), what it reads, and how to compute it per pair.

    ``fn(chosen, rejected, batch, settings)`` takes the rewards whose difference is ``h``, the batch's ``p`` and
    ``margin`` (NaN where unknown), and :class:`LossSettings`. ``uses_soft_targets``: the loss reads the soft
    target ``p`` (so ``gamma`` shapes it). ``needs_reference``: for a policy, ``h`` is DPO's implicit reward
    difference against a reference (False: SimPO's reference-free, length-normalised rewards).
    ``group_fn(rewards, scores, mask, settings) -> [groups]``: a listwise loss on a group's ``k`` responses
    (``layout: groups``); None: the loss is pairwise and a group trains on all its pairs (:func:`group_losses`).
    """

    name: str
    kinds: frozenset[str]
    uses_soft_targets: bool
    needs_reference: bool
    fn: LossFn
    formula: str
    group_fn: GroupLossFn | None = None


def _margin(batch: PairBatch) -> torch.Tensor:
    return batch["margin"].float()


def _known_margin(batch: PairBatch) -> torch.Tensor:
    # The collator marks a missing margin as NaN; such pairs get no offset (plain BT).
    return torch.nan_to_num(_margin(batch), nan=0.0)


def _rpo_target(batch: PairBatch, s: LossSettings) -> torch.Tensor:
    return target_logits(batch["p"], _margin(batch), s.gamma)


_BOTH, _RM, _POLICY = frozenset({RM, POLICY}), frozenset({RM}), frozenset({POLICY})

LOSSES: dict[str, Loss] = {
    spec.name: spec
    for spec in (
        Loss("mmpo", _BOTH, True, True, lambda c, r, b, s: mmpo_loss(c, r, b["p"]),
             "-p log sigmoid(h) - (1-p) log sigmoid(-h), p = sigmoid(gamma * margin)"),
        Loss("bt", _RM, False, True, lambda c, r, b, s: bt_loss(c, r), "-log sigmoid(h)"),
        Loss("margin", _RM, False, True, lambda c, r, b, s: margin_loss(c, r, _known_margin(b)),
             "-log sigmoid(h - margin) (Llama 2; no offset where the margin is unknown)"),
        Loss("label_smoothing", _RM, False, True, lambda c, r, b, s: label_smoothing_loss(c, r, s.label_smoothing),
             "-(1-eps) log sigmoid(h) - eps log sigmoid(-h), eps = label_smoothing"),
        Loss("scaled_bt", _RM, False, True, lambda c, r, b, s: scaled_bt_loss(c, r, preference_strength(_margin(b))),
             "-margin * log sigmoid(h) (HelpSteer2-Preference; weight 1 where the margin is unknown)"),
        Loss("dpo", _POLICY, False, True, lambda c, r, b, s: bt_loss(c, r), "-log sigmoid(h)"),
        Loss("cdpo", _POLICY, False, True, lambda c, r, b, s: label_smoothing_loss(c, r, s.label_smoothing),
             "-(1-eps) log sigmoid(h) - eps log sigmoid(-h), eps = label_smoothing"),
        Loss("ipo", _POLICY, False, True, lambda c, r, b, s: ipo_loss(c, r, s.beta), "(h / beta - 1 / (2 beta))^2"),
        Loss("simpo", _POLICY, False, False, lambda c, r, b, s: bt_loss(c, r),
             "-log sigmoid(h'), h' = beta (log pi(y_w)/|y_w| - log pi(y_l)/|y_l|) - simpo_margin"),
        Loss("simpo_mmpo", _POLICY, True, False, lambda c, r, b, s: mmpo_loss(c, r, b["p"]),
             "the MMPO cross-entropy on SimPO's h'"),
        Loss("odpo", _POLICY, False, True,
             lambda c, r, b, s: odpo_loss(c, r, _margin(b), s.odpo_alpha, s.odpo_offset),
             "-log sigmoid(h - odpo_alpha * f(margin)), f = odpo_offset (ODPO)"),
        Loss("rdpo", _POLICY, False, True, lambda c, r, b, s: rating_dpo_loss(c, r, _margin(b), s.rdpo_scale),
             "-log sigmoid(h - rdpo_scale * margin) (Rating-DPO)"),
        Loss("rpo_sq", _POLICY, True, True, lambda c, r, b, s: rpo_sq_loss(c, r, _rpo_target(b, s)),
             "(h - gamma * margin)^2 (RPO, squared distance)"),
        Loss("rpo_fwd_kl", _POLICY, True, True, lambda c, r, b, s: rpo_fwd_kl_loss(c, r, _rpo_target(b, s)),
             "KL(sigmoid(h) || p) between Bernoullis (RPO, forward KL)"),
        Loss("rpo_bwd_kl", _POLICY, True, True, lambda c, r, b, s: rpo_bwd_kl_loss(c, r, _rpo_target(b, s)),
             "KL(p || sigmoid(h)) between Bernoullis: MMPO minus the target's entropy (RPO, backward KL)"),
        Loss("gdpo", _POLICY, True, True, lambda c, r, b, s: gdpo_loss(c, r, b["p"]),
             "-log sigmoid((2p - 1) h) (GDPO, geometric averaging)"),
        # On a pair the listwise target is MMPO's (k = 2), so pairs (held-out ones included) train and score as mmpo.
        Loss("listwise", _BOTH, True, True, lambda c, r, b, s: mmpo_loss(c, r, b["p"]),
             "-sum_i q_i log softmax(r)_i over a prompt's responses, q = softmax(gamma * score) (layout: groups; "
             "on a pair it is mmpo)",
             group_fn=lambda r, sc, m, s: listwise_soft_loss(r, sc, s.gamma, m)),
    )
}


def group_losses(
    loss: str, rewards: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor, settings: LossSettings
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(losses, chosen, rejected)`` for a batch of groups (``rewards``, ``scores``, ``mask`` ``[groups, k]``).

    A listwise loss (``group_fn``) gives one loss per group; a pairwise one one per pair of :func:`group_pairs`
    (all ``C(k, 2)`` pairs of each group, ties left out as :func:`drops_ties` says), so the mean is the mean over
    the same pairs the pair layout would train on. ``chosen`` / ``rejected`` are those pairs' rewards either way
    (for statistics).
    """
    spec = LOSSES[loss]
    chosen, rejected, pair_batch = group_pairs(rewards, scores, mask, settings.gamma, drops_ties(loss, settings.gamma))
    if spec.group_fn is not None:
        return spec.group_fn(rewards, scores, mask, settings), chosen, rejected
    return spec.fn(chosen, rejected, pair_batch, settings), chosen, rejected


def losses_for(kind: str) -> tuple[str, ...]:
    """The names of the losses that train ``kind`` (``rm`` or ``policy``), in registry order."""
    if kind not in (RM, POLICY):
        raise ValueError(f"kind must be {RM!r} or {POLICY!r} (got {kind!r})")
    return tuple(name for name, spec in LOSSES.items() if kind in spec.kinds)


def uses_soft_targets(loss: str) -> bool:
    """Whether ``loss`` reads the soft target ``p`` (so ``gamma`` shapes it); False for a name not registered.

    A loss that does not (bt / dpo / simpo: ``-log sigmoid(h)``; ipo: a fixed target margin; cdpo /
    label_smoothing: a fixed target ``1 - eps``; margin, odpo, rdpo, scaled_bt: a margin that is 0 at a tie)
    trains on the written order whatever ``p`` says, so the data pipeline drops ties from its training pairs:
    a kept tie would teach it "chosen wins" where the data names no winner.
    """
    spec = LOSSES.get(loss)
    return spec is not None and spec.uses_soft_targets


def needs_reference(loss: str) -> bool:
    """Whether policy loss ``loss`` needs reference log-probs (False for the reference-free SimPO family)."""
    spec = LOSSES.get(loss)
    return spec is None or spec.needs_reference
