"""Prefix sharing: a pair scored in one row ``[prompt | chosen | rejected]``, each prompt encoded once.

Under the mask built here a token attends to key ``k`` when ``k`` comes no later in the row and belongs to
the prompt or to the token's own segment::

    allowed(q, k) = k <= q  and  (segment[k] == prompt  or  segment[k] == segment[q])
                    [and  position[q] - position[k] < sliding_window]

With the rejected part's positions restarted at the prompt's length, every chosen and rejected token sees
exactly the keys, at exactly the positions, it would see in its own ``prompt + response`` row: the outputs
equal the two-row layout's up to floating-point summation order, for one prompt's worth less work.
Packing puts several such spans in one row; the mask then also requires query and key to belong to the same
pair, and positions restart at 0 for each pair.

The mask goes to the model as a ready 4D mask, which transformers' ``masking_utils.create_causal_mask`` passes
through unchanged for every architecture built on it (Llama, Qwen2, Mistral, Gemma-2, ...): a boolean
``[B, 1, T, T]`` for SDPA, an additive float mask for eager attention. Kernels that cannot take an arbitrary
mask (flash-attention, FlexAttention without a block mask) and encoders are scored the two-row way.
"""

from __future__ import annotations

import sys
from typing import Any

import torch

from mmpo.data.collate import PADDING, PROMPT

# Attention implementations that take an explicit [B, 1, T, T] mask.
MASKED_ATTENTION = ("sdpa", "eager")


def shared_prefix_mask(
    segment_ids: torch.Tensor, position_ids: torch.Tensor, sliding_window: int | None = None, pair_ids: torch.Tensor | None = None
) -> torch.Tensor:
    """Boolean ``[R, 1, T, T]`` mask, True where query ``q`` may attend to key ``k`` (formula in the module doc),
    within one pair (``pair_ids``, when rows hold several packed pairs).

    Padding queries attend to themselves only, so no softmax row is empty (their outputs are never read).
    """
    seg_q, seg_k = segment_ids.unsqueeze(2), segment_ids.unsqueeze(1)
    n = segment_ids.shape[1]
    idx = torch.arange(n, device=segment_ids.device)
    causal = idx.view(1, 1, n) <= idx.view(1, n, 1)
    allowed = causal & (seg_k != PADDING) & (seg_q != PADDING) & ((seg_k == PROMPT) | (seg_k == seg_q))
    if pair_ids is not None:
        allowed &= pair_ids.unsqueeze(2) == pair_ids.unsqueeze(1)
    if sliding_window is not None:
        allowed &= (position_ids.unsqueeze(2) - position_ids.unsqueeze(1)) < sliding_window
    allowed |= torch.eye(n, dtype=torch.bool, device=segment_ids.device).unsqueeze(0) & (seg_q == PADDING)
    return allowed.unsqueeze(1)


def _base(model: Any) -> Any:
    """The transformers model under DDP / accelerate / peft wrappers (see :func:`mmpo.models.logps._unwrap`)."""
    from mmpo.models.logps import _unwrap

    return _unwrap(model)


def _sliding_window(config: Any) -> tuple[int | None, bool]:
    """``(window, mixed)``: the sliding window the layers use (None: none does) and whether only some do."""
    window = getattr(config, "sliding_window", None)
    if not window:
        return None, False
    kinds = set(getattr(config, "layer_types", None) or [])
    if not kinds:
        return int(window), False  # Mistral: every layer slides
    if "sliding_attention" not in kinds:
        return None, False  # e.g. Qwen2 with use_sliding_window off
    return int(window), len(kinds) > 1


def prefix_sharing_unsupported(model: Any, max_length: int | None = None) -> str | None:
    """Why ``model`` cannot score pairs with a shared prompt (None when it can).

    It can when it is a decoder whose masks come from transformers' ``masking_utils`` (a 4D mask passes
    through as given) under SDPA or eager attention. Models mixing sliding-window and full layers take one
    mask for both, so they qualify only while ``max_length`` fits in the window.
    """
    base = _base(model)
    config = getattr(base, "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False):
        return "not a decoder-only model"
    impl = getattr(config, "_attn_implementation", None)
    if impl not in MASKED_ATTENTION:
        return f"attention implementation {impl!r} takes no custom 4D mask (needs sdpa or eager)"
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else getattr(base, "model", None)
    module = sys.modules.get(type(decoder).__module__) if decoder is not None else None
    if module is None or not hasattr(module, "create_causal_mask"):
        return f"{type(base).__name__} does not build its masks with transformers' masking_utils"
    attention = [m for m in decoder.modules() if hasattr(m, "is_causal")]
    if not attention or not all(m.is_causal is True for m in attention):
        return "its attention is not causal (an encoder)"
    window, mixed = _sliding_window(config)
    if mixed and (max_length is None or max_length > window):
        return f"mixes sliding-window ({window}) and full layers and max_length ({max_length}) exceeds the window"
    return None


def shared_forward_inputs(model: Any, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``input_ids``, ``position_ids`` and the 4D ``attention_mask`` for a shared-prompt batch."""
    config = _base(model).config
    window, _ = _sliding_window(config)
    allowed = shared_prefix_mask(batch["segment_ids"], batch["position_ids"], window, batch.get("pair_ids"))
    if getattr(config, "_attn_implementation", None) == "eager":
        # Eager attention adds the mask to the scores.
        mask = torch.zeros(allowed.shape, dtype=torch.float32, device=allowed.device)
        mask = mask.masked_fill(~allowed, torch.finfo(torch.float32).min)
    else:
        mask = allowed
    return {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"], "attention_mask": mask}


def pair_collator(
    model: Any, pad_token_id: int, prefix_sharing: bool, max_length: int | None, *also: Any, packing: bool = False
) -> Any:
    """The batch layout for training ``model`` (and any ``also`` models scored on the same batches).

    :class:`~mmpo.data.collate.SharedPromptCollator` (several pairs per row with ``packing``) when
    ``prefix_sharing`` is on and every model can take the shared mask; else the two-row
    :class:`~mmpo.data.collate.PairCollator`, with a one-line notice why.
    """
    from mmpo.data.collate import PairCollator, SharedPromptCollator

    if not prefix_sharing:
        return PairCollator(pad_token_id=pad_token_id)
    for m in (model, *also):
        if m is None:
            continue
        reason = prefix_sharing_unsupported(m, max_length)
        if reason is not None:
            print(f"note: prefix sharing off ({type(_base(m)).__name__}: {reason}); scoring chosen and rejected in separate rows")
            return PairCollator(pad_token_id=pad_token_id)
    return SharedPromptCollator(pad_token_id=pad_token_id, pack=packing)
