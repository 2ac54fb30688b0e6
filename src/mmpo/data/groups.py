"""``layout: groups``: a prompt's graded responses put back together from its pairs, one group of up to
``group_size`` responses per training row.

A run reads, selects, splits and retargets its pairs as always (:mod:`mmpo.data.pipeline`), so the held-out pairs
are the pair layout's. Only then are the training pairs of each prompt gathered into one group: every distinct
response of the prompt's kept pairs, with its own score (``score_chosen`` / ``score_rejected``, or the score a
scored-response source gives each answer: ``logit(p)`` for ``alpaca_graded``, ``overall_score`` for
``ultrafeedback_raw``). A prompt with more than ``group_size`` responses is split into ``ceil(n / group_size)``
groups of near-equal size (sizes differ by at most one), its responses dealt round-robin in an order shuffled by
a generator seeded with ``seed`` and the prompt, so a run splits them the same way every time. The listwise loss
trains on each group's responses; a pairwise loss on all ``C(k, 2)`` pairs of each group
(:func:`mmpo.losses.group_losses`).
"""

from __future__ import annotations

import json
import math
import random

from mmpo.data.records import Message, PreferenceGroup, PreferencePair, prompt_key
from mmpo.errors import DataError


def _pair_scores(pair: PreferencePair, pairs_of_prompt: int) -> tuple[float, float]:
    """``(score_chosen, score_rejected)`` of a pair; a pair with only a margin is ``(margin, 0)`` when it is its
    prompt's only pair (the softmax is blind to a shift); anything else cannot place its responses on one scale."""
    scores = pair.meta.get("scores")
    if scores is not None:
        return float(scores[0]), float(scores[1])
    if pair.margin is not None and pairs_of_prompt == 1:
        return float(pair.margin), 0.0
    field = "p_chosen" if pair.meta.get("judged") is not None else "margin"
    raise DataError(pair.source or "data", pair.row, field,
                    "layout: groups needs each response's own score (score_chosen and score_rejected, or a "
                    "scored-response source); this prompt has several pairs with only a margin or a judged probability")


def _response_key(response: list[Message]) -> str:
    return json.dumps(response, sort_keys=True)


def split_group(n: int, group_size: int, rng: random.Random) -> list[list[int]]:
    """Indices ``0..n-1`` in ``ceil(n / group_size)`` groups of near-equal size, dealt round-robin from a shuffled
    order; each group sorted. One group ``[0..n-1]`` when ``n <= group_size``."""
    if n <= group_size:
        return [list(range(n))]
    order = list(range(n))
    rng.shuffle(order)
    m = math.ceil(n / group_size)
    return [sorted(order[c::m]) for c in range(m)]


def make_groups(pairs: list[PreferencePair], group_size: int, seed: int) -> list[PreferenceGroup]:
    """The groups of ``pairs`` (see the module doc), in the order their prompts first occur.

    A response is identified by its messages; one scored differently in two pairs of a prompt is a
    :class:`DataError` naming the later pair's file, row and score field.
    """
    if group_size < 2:
        raise ValueError(f"group_size must be at least 2 (got {group_size})")
    by_prompt: dict[str, list[PreferencePair]] = {}
    for pair in pairs:
        by_prompt.setdefault(prompt_key(pair.prompt), []).append(pair)
    groups = []
    for key, members in by_prompt.items():
        responses: dict[str, tuple[list[Message], float]] = {}
        for pair in members:
            for response, score, field in zip((pair.chosen, pair.rejected), _pair_scores(pair, len(members)),
                                              ("score_chosen", "score_rejected")):
                seen = responses.setdefault(_response_key(response), (response, score))
                if seen[1] != score:
                    raise DataError(pair.source or "data", pair.row, field,
                                    f"this response of the prompt is scored {score:g} here and {seen[1]:g} in another "
                                    "row; layout: groups needs one score per response")
        listed = list(responses.values())
        first = members[0]
        for part in split_group(len(listed), group_size, random.Random(f"{seed}|{key}")):
            groups.append(PreferenceGroup(first.prompt, [listed[i][0] for i in part], [listed[i][1] for i in part],
                                          source=first.source, row=first.row))
    return groups
