"""A run's pair batch layout, chosen once together with the scorers that read it.

The layout (two rows per pair, a shared prompt, packed pairs) is decided where the collator is built, by what
the models can take (:func:`pair_batching`). The :class:`PairBatching` built there carries the collator and
the two scorers for that layout, so trainers, the reference pass and evaluation call ``batching.logps(model,
batch)`` or ``batching.rewards(model, batch)`` and never look inside a batch to find out how it was laid out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from mmpo.data.collate import PairCollator, SharedPromptCollator
from mmpo.models.logps import response_logps, shared_response_logps
from mmpo.models.reward import sequence_rewards, shared_sequence_rewards
from mmpo.models.shared_prefix import prefix_sharing_unsupported, shared_prompt_collator
from mmpo.models.unwrap import base_model

Batch = dict[str, torch.Tensor]


def _two_row_logps(model: Any, batch: Batch, full_logits: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    return response_logps(model, batch["input_ids"], batch["attention_mask"], batch["response_mask"], full_logits=full_logits)


def _two_row_rewards(model: Any, batch: Batch) -> torch.Tensor:
    return sequence_rewards(model, batch["input_ids"], batch["attention_mask"])


@dataclass(frozen=True)
class PairBatching:
    """A pair batch layout: ``collate`` builds the batches, ``logps`` and ``rewards`` score them.

    * ``collate(features) -> batch`` (calling the object does the same: it is a run's ``data_collator``).
    * ``logps(model, batch, full_logits=False) -> (logps [2B], n_tokens [2B])``: a policy's summed response
      log-probabilities ``log pi(y|x)`` and response lengths, chosen first then rejected.
    * ``rewards(model, batch) -> [2B]`` float32: a reward model's rewards, chosen first then rejected.

    Both scorers give the same numbers for the same pairs whatever the layout (up to float summation order).
    """

    collate: Callable[[list[dict[str, Any]]], Batch]
    logps: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    rewards: Callable[[Any, Batch], torch.Tensor]

    def __call__(self, features: list[dict[str, Any]]) -> Batch:
        return self.collate(features)

    @classmethod
    def two_rows(cls, collate: PairCollator) -> PairBatching:
        """The two-row layout built by ``collate``."""
        return cls(collate, _two_row_logps, _two_row_rewards)

    @classmethod
    def shared_prompt(cls, collate: SharedPromptCollator) -> PairBatching:
        """The shared-prompt layout (one span per pair, packed or not) built by ``collate``."""
        return cls(collate, shared_response_logps, shared_sequence_rewards)


def two_row_batching(pad_token_id: int) -> PairBatching:
    """Chosen and rejected in separate right-padded rows (:class:`~mmpo.data.collate.PairCollator`)."""
    return PairBatching.two_rows(PairCollator(pad_token_id=pad_token_id))


def shared_prompt_batching(model: Any, pad_token_id: int, packing: bool | str) -> PairBatching:
    """One span ``[prompt | chosen | rejected]`` per pair, packed per ``packing``, with the collator suited to
    ``model``'s attention kernel (:func:`~mmpo.models.shared_prefix.shared_prompt_collator`)."""
    return PairBatching.shared_prompt(shared_prompt_collator(model, pad_token_id, packing))


def pair_batching(
    model: Any, pad_token_id: int, prefix_sharing: bool, max_length: int | None, *also: Any, packing: bool | str = False
) -> PairBatching:
    """The batch layout for training or scoring ``model`` (and any ``also`` models scored on the same batches).

    The shared-prompt layout (:func:`shared_prompt_batching`; several pairs per row with ``packing``) when
    ``prefix_sharing`` is on and every model can take the shared mask; else the two-row layout
    (:func:`two_row_batching`), with a one-line notice why.
    """
    if not prefix_sharing:
        return two_row_batching(pad_token_id)
    for m in (model, *also):
        if m is None:
            continue
        reason = prefix_sharing_unsupported(m, max_length)
        if reason is not None:
            print(f"note: prefix sharing off ({type(base_model(m)).__name__}: {reason}); scoring chosen and rejected in separate rows")
            return two_row_batching(pad_token_id)
    return shared_prompt_batching(model, pad_token_id, packing)
