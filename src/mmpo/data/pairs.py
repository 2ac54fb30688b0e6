"""Stage 3 of the data pipeline: a row in canonical columns becomes a :class:`PreferencePair`.

Canonical columns: ``prompt`` (optional when ``chosen`` / ``rejected`` are whole chats), ``chosen``,
``rejected`` and at most one kind of strength (``score_chosen`` + ``score_rejected``, ``margin`` or
``p_chosen``), plus an optional ``group`` (the prompt id that per-prompt caps count by).

The target rule (``docs/data.md``, "Targets and ties"), in :func:`target_probability`:

* soft targets (``gamma`` a number): ``p = sigmoid(gamma * margin)``; a judged ``p_chosen`` passes through;
  a pair with no strength at all is a plain label, ``p = 1``;
* hard labels (``gamma`` none): ``p = 1`` for every pair with a strict preference;
* a tie (margin 0 or ``p_chosen = 0.5``) has no winner: with soft targets ``ties: keep`` keeps it at
  ``p = 0.5`` (``sigmoid(gamma * 0)``) and ``ties: drop`` drops it; with hard labels it is always dropped
  (counted), since a hard label must name a winner and a hard loss would learn the arbitrary order.
* a run's training pairs also drop their ties when the loss cannot use ``p = 0.5``
  (:func:`mmpo.losses.uses_soft_targets`); a run sets its targets after the held-out split
  (:func:`retarget`), so the held-out pairs do not depend on the training loss or gamma.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from mmpo.data.records import Message, PreferencePair
from mmpo.data.report import DataReport
from mmpo.data.sources import RowRef, number
from mmpo.errors import UserError
from mmpo.losses import score_margin

STRENGTH_KINDS = {"margin": ("margin",), "scores": ("score_chosen", "score_rejected"), "p_chosen": ("p_chosen",)}


@dataclass
class PairOptions:
    """How raw rows become pairs; mirrors the data keys of :class:`mmpo.config.TrainConfig`.

    ``gamma``: p = sigmoid(gamma * margin); None = hard labels (p = 1). ``ties``: keep a margin-0 pair at
    p = 0.5, or drop it (hard labels always drop it). ``order_conflict``: chosen rated below rejected ->
    swap (counted), drop, or error. ``pairs_per_prompt``: None = the source's default cap (5 for SHP, none
    elsewhere), 0 = no cap. ``margin_bins``: > 0 samples pairs uniformly across that many margin-quantile
    bins. ``max_pairs``: a seeded random sample of at most this many pairs. ``split``: used when the spec
    names none. ``hard_ties``: ``drop`` (a tie under ``gamma`` none has no target) or ``keep`` (for a run's
    pipeline, which sets the targets after the held-out split with :func:`retarget`).
    """

    gamma: float | None = 1.0
    columns: dict[str, str] = field(default_factory=dict)
    ties: str = "keep"
    order_conflict: str = "swap"
    pairs_per_prompt: int | None = None
    margin_bins: int = 0
    max_pairs: int | None = None
    seed: int = 42  # as TrainConfig
    split: str | None = None
    hard_ties: str = "drop"

    def __post_init__(self) -> None:
        if self.gamma is not None and (isinstance(self.gamma, bool) or not (isinstance(self.gamma, (int, float)) and self.gamma > 0)):
            raise UserError(f"gamma must be > 0 (got {self.gamma}); use gamma none for hard labels (p = 1)")
        if self.ties not in ("keep", "drop"):
            raise UserError(f"ties must be 'keep' or 'drop' (got {self.ties!r})")
        if self.order_conflict not in ("swap", "drop", "error"):
            raise UserError(f"order_conflict must be swap, drop or error (got {self.order_conflict!r})")
        if self.hard_ties not in ("keep", "drop"):
            raise ValueError(f"hard_ties must be 'keep' or 'drop' (got {self.hard_ties!r})")
        for name in ("pairs_per_prompt", "margin_bins", "max_pairs"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise UserError(f"{name} must be a whole number >= 0 (got {value!r})")


def target_probability(margin: float | None, judged: float | None, gamma: float | None) -> float:
    """The target ``p`` that chosen is preferred, for a pair already oriented (margin >= 0, judged >= 0.5).

    ``gamma`` a number: ``sigmoid(gamma * margin)``, or ``judged`` as given, or 1 with neither (a plain label).
    ``gamma`` None (hard labels, the ``gamma -> inf`` limit): 1, or 0.5 for a tie (callers drop hard-label ties).
    """
    if gamma is None:
        tie = margin == 0 or judged == 0.5
        return 0.5 if tie else 1.0
    if margin is not None:
        return 1.0 / (1.0 + math.exp(-gamma * margin))
    return 1.0 if judged is None else float(judged)


def is_tie(pair: PreferencePair) -> bool:
    """No preference: margin 0, or a judged probability of exactly 0.5."""
    return pair.margin == 0 or pair.meta.get("judged") == 0.5


def retarget(pairs: list[PreferencePair], gamma: float | None, report: DataReport | None = None,
             drop_ties: str | None = None) -> list[PreferencePair]:
    """The same pairs with targets for ``gamma`` (training targets, or held-out truth under ``eval_gamma``).

    Under hard labels (``gamma`` None) ties have no target and are dropped (counted in ``report``); a
    ``drop_ties`` reason drops them whatever ``gamma`` (counted under that reason).
    """
    out = []
    for pair in pairs:
        if is_tie(pair) and (gamma is None or drop_ties):
            if report is not None:
                report.drop("tie under hard labels (gamma none)" if gamma is None else drop_ties)
            continue
        p = target_probability(pair.margin, pair.meta.get("judged"), gamma)
        out.append(PreferencePair(pair.prompt, pair.chosen, pair.rejected, p=p, margin=pair.margin,
                                  source=pair.source, row=pair.row, meta=dict(pair.meta)))
    return out


def as_messages(value: Any, role: str, ref: RowRef, fieldname: str) -> list[Message]:
    """A string becomes one message with ``role``; a list of ``{role, content}`` messages is checked and kept."""
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if isinstance(value, list) and value and all(isinstance(m, dict) and "content" in m for m in value):
        return [{"role": str(m.get("role") or role), "content": str(m["content"])} for m in value]
    raise ref.error(fieldname, f"expected a string or a list of {{role, content}} messages, got {type(value).__name__}")


def split_conversation(messages: list[Message]) -> tuple[list[Message], list[Message]]:
    """``(context, response)``: the response is the run of assistant messages at the end of the chat."""
    start = len(messages)
    while start > 0 and messages[start - 1]["role"] == "assistant":
        start -= 1
    return messages[:start], messages[start:]


def _prompt_and_responses(raw: dict[str, Any], ref: RowRef) -> tuple[list[Message], list[Message], list[Message]]:
    """The prompt and the two answers. A whole chat in ``chosen`` (UltraFeedback) brings its own prompt."""
    chosen_context, chosen = split_conversation(as_messages(raw["chosen"], "assistant", ref, "chosen"))
    rejected_context, rejected = split_conversation(as_messages(raw["rejected"], "assistant", ref, "rejected"))
    if chosen_context != rejected_context:
        raise ref.error("rejected", "chosen and rejected continue different conversations")
    if chosen_context:
        prompt = chosen_context
    elif raw.get("prompt") is not None:
        prompt = as_messages(raw["prompt"], "user", ref, "prompt")
    else:
        raise ref.error("prompt", "missing column (needed unless chosen and rejected are whole chats)")
    for name, response in (("chosen", chosen), ("rejected", rejected)):
        if not response:
            raise ref.error(name, "the message list does not end with an assistant turn")
    return prompt, chosen, rejected


def _strength_kind(raw: dict[str, Any], ref: RowRef) -> str | None:
    """Which strength the row gives (``margin``, ``scores`` or ``p_chosen``); two kinds at once is an error."""
    given = [kind for kind, cols in STRENGTH_KINDS.items() if any(raw.get(c) is not None for c in cols)]
    if len(given) > 1:
        names = " and ".join("score_chosen/score_rejected" if k == "scores" else k for k in given)
        raise ref.error(STRENGTH_KINDS[given[-1]][0], f"the row gives both {names}: give one kind of strength")
    return given[0] if given else None


def _order_conflict(ref: RowRef, fieldname: str, options: PairOptions, report: DataReport) -> bool:
    """Chosen is rated below rejected: True = swap them (counted), False = drop the pair (counted), or raise."""
    if options.order_conflict == "error":
        raise ref.error(fieldname, "chosen is rated below rejected (set order_conflict: swap or drop)")
    if options.order_conflict == "drop":
        report.drop("chosen rated below rejected")
        return False
    report.fix("chosen rated below rejected: swapped")
    return True


def make_pair(raw: dict[str, Any], ref: RowRef, options: PairOptions, report: DataReport) -> PreferencePair | None:
    """One pair from a row in canonical columns, or None when the row is dropped (the reason is counted).

    The pair is oriented so that chosen is rated at least as high as rejected; ``p`` follows
    :func:`target_probability`; ties follow the module's rule.
    """
    prompt, chosen, rejected = _prompt_and_responses(raw, ref)
    if not all(m["content"].strip() for m in chosen) or not all(m["content"].strip() for m in rejected):
        report.drop("empty response")
        return None
    if chosen == rejected:
        report.drop("chosen identical to rejected")
        return None

    kind = _strength_kind(raw, ref)
    margin: float | None = None
    judged: float | None = None
    # Each response's own score, where the row gives it (layout: groups rebuilds a prompt's responses from them):
    # score_chosen / score_rejected, or a converter's response_scores (a tuple, which no data file can hold).
    given = raw.get("response_scores")
    scores: tuple[float, float] | None = given if isinstance(given, tuple) else None
    if kind == "p_chosen":
        judged = number(raw["p_chosen"], ref, "p_chosen")
        if not 0.0 <= judged <= 1.0:
            raise ref.error("p_chosen", f"probability outside [0, 1]: {judged:g}")
        if judged < 0.5:
            if not _order_conflict(ref, "p_chosen", options, report):
                return None
            chosen, rejected, judged = rejected, chosen, 1.0 - judged
    elif kind is not None:
        if kind == "margin":
            margin = number(raw["margin"], ref, "margin")
        else:
            scores = (number(raw.get("score_chosen"), ref, "score_chosen"), number(raw.get("score_rejected"), ref, "score_rejected"))
            margin = score_margin(*scores)
        if margin < 0:
            if not _order_conflict(ref, "margin" if kind == "margin" else "score_chosen", options, report):
                return None
            chosen, rejected, margin = rejected, chosen, -margin
            scores = None if scores is None else (scores[1], scores[0])
    if margin == 0 or judged == 0.5:
        if options.gamma is None and options.hard_ties == "drop":
            report.drop("tie under hard labels (gamma none)")
            return None
        if options.ties == "drop":
            report.drop("tie (no preference)")
            return None
    group = raw.get("group")
    meta: dict[str, Any] = {"group": group if group is not None else json.dumps(prompt, sort_keys=True)}
    if judged is not None:
        meta["judged"] = judged
    if scores is not None and kind in ("scores", "margin"):
        meta["scores"] = scores
    return PreferencePair(
        prompt, chosen, rejected, p=target_probability(margin, judged, options.gamma), margin=margin,
        source=ref.where, row=ref.row, meta=meta,
    )
