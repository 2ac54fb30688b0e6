"""The one canonical preference-pair record every source is turned into."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

Message = dict[str, str]  # {"role": ..., "content": ...}


def prompt_key(prompt: list[Message]) -> str:
    """The text that identifies a prompt (a chat): equal keys are the same prompt, for the held-out split and for
    counting held-out prompts that also occur in training."""
    return json.dumps(prompt, sort_keys=True)


def prompt_overlap(train: list[list[Message]], held_out: list[list[Message]]) -> tuple[int, int]:
    """``(shared, distinct)``: how many of the ``distinct`` held-out prompts also occur among the training prompts."""
    seen = {prompt_key(p) for p in train}
    held = {prompt_key(p) for p in held_out}
    return len(held & seen), len(held)


@dataclass
class PreferencePair:
    """A prompt with a chosen and a rejected response and the target probability that chosen is preferred.

    ``prompt`` is a chat (list of messages ending with a user turn); ``chosen`` and ``rejected`` are the
    assistant messages that answer it. ``p`` is the soft target (1.0 for hard labels); ``margin`` is the raw
    quality margin it came from (``score_chosen - score_rejected``), or None where the source gave none
    (a judged probability, or a binary label). ``source``/``row`` point back at the input for reports.
    """

    prompt: list[Message]
    chosen: list[Message]
    rejected: list[Message]
    p: float = 1.0
    margin: float | None = None
    source: str = ""
    row: int = -1
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "chosen": self.chosen,
            "rejected": self.rejected,
            "p": self.p,
            "margin": self.margin,
            "source": self.source,
            "row": self.row,
        }


@dataclass
class PreferenceGroup:
    """A prompt with ``k >= 2`` graded responses (``layout: groups``): ``responses[i]`` (assistant messages) has
    score ``scores[i]`` on the scale pair margins use (``margin = score_chosen - score_rejected``), so the pair
    of responses ``a`` and ``b`` has target ``p = sigmoid(gamma * (scores[a] - scores[b]))``.
    ``source``/``row`` point back at the input (the first pair the group was built from)."""

    prompt: list[Message]
    responses: list[list[Message]]
    scores: list[float]
    source: str = ""
    row: int = -1
