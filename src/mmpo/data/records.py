"""The one canonical preference-pair record every source is turned into."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Message = dict[str, str]  # {"role": ..., "content": ...}


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
