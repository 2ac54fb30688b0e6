"""Prefix sharing: a pair scored in one row ``[prompt | chosen | rejected]``, each prompt encoded once.

Under the mask built here a token attends to key ``k`` when ``k`` comes no later in the row and belongs to
the prompt or to the token's own segment::

    allowed(q, k) = k <= q  and  (segment[k] == prompt  or  segment[k] == segment[q])
                    [and  position[q] - position[k] < sliding_window]

With the rejected part's positions restarted at the prompt's length, every chosen and rejected token sees
exactly the keys, at exactly the positions, it would see in its own ``prompt + response`` row: the outputs
equal the two-row layout's up to floating-point summation order, for one prompt's worth less work.
Packing puts several such spans in one row; the mask then also requires query and key to belong to the same
pair, and positions restart at 0 for each pair. A group of ``k`` responses to one prompt (``layout: groups``) is
the same span with ``k`` response segments ``[prompt | r_1 | ... | r_k]``, each restarting at the prompt's
length; a pair is the group ``k = 2``.

The mask goes to the model ready-made, which transformers' ``masking_utils.create_causal_mask`` passes through
unchanged for every architecture built on it (Llama, Qwen2, Mistral, Gemma-2, ...): a boolean ``[B, 1, T, T]``
for SDPA, an additive float mask for eager attention, and for FlexAttention a ``BlockMask`` built from the same
rule (:func:`shared_prefix_mask_mod`), whose block sparsity skips the key blocks a query block cannot see
(other pairs, the chosen part for the rejected one, the future). FlexAttention trains on CUDA only (torch has no
CPU backward for it). flash-attention's kernels take no arbitrary mask, and encoders none at all: those are
scored the two-row way.
"""

from __future__ import annotations

import sys
from typing import Any, Callable

import torch

from mmpo.data.collate import PADDING, PROMPT, SharedPromptCollator
from mmpo.models.unwrap import base_model

# Attention implementations that take the shared mask: a [B, 1, T, T] tensor, or a BlockMask for flex_attention.
MASKED_ATTENTION = ("sdpa", "eager", "flex_attention")


def shared_prefix_mask_mod(
    segment_ids: torch.Tensor, position_ids: torch.Tensor, sliding_window: int | None = None, pair_ids: torch.Tensor | None = None
) -> Callable[[Any, Any, Any, Any], torch.Tensor]:
    """The rule of the module doc as FlexAttention's ``mask_mod(b, h, q, k) -> bool``: query ``q`` of row ``b``
    may attend to key ``k`` (within one pair, given ``pair_ids``, when rows hold several packed pairs).

    Padding queries attend to themselves only, so no softmax row is empty (their outputs are never read). The
    indices may be scalars (FlexAttention) or broadcastable index tensors (:func:`shared_prefix_mask`).
    """

    def allowed(b: Any, h: Any, q: Any, k: Any) -> torch.Tensor:
        seg_q, seg_k = segment_ids[b, q], segment_ids[b, k]
        ok = (k <= q) & (seg_k != PADDING) & (seg_q != PADDING) & ((seg_k == PROMPT) | (seg_k == seg_q))
        if pair_ids is not None:
            ok = ok & (pair_ids[b, q] == pair_ids[b, k])
        if sliding_window is not None:
            ok = ok & (position_ids[b, q] - position_ids[b, k] < sliding_window)
        return ok | ((q == k) & (seg_q == PADDING))

    return allowed


def shared_prefix_mask(
    segment_ids: torch.Tensor, position_ids: torch.Tensor, sliding_window: int | None = None, pair_ids: torch.Tensor | None = None
) -> torch.Tensor:
    """Boolean ``[R, 1, T, T]`` mask: :func:`shared_prefix_mask_mod` at every (row, query, key)."""
    rows, n = segment_ids.shape
    idx = torch.arange(n, device=segment_ids.device)
    b = torch.arange(rows, device=segment_ids.device).view(rows, 1, 1, 1)
    allowed = shared_prefix_mask_mod(segment_ids, position_ids, sliding_window, pair_ids)
    return allowed(b, None, idx.view(1, 1, n, 1), idx.view(1, 1, 1, n))


def shared_prefix_block_mask(
    segment_ids: torch.Tensor, position_ids: torch.Tensor, sliding_window: int | None = None, pair_ids: torch.Tensor | None = None
) -> Any:
    """FlexAttention's ``BlockMask`` for :func:`shared_prefix_mask_mod` (all heads share it)."""
    from torch.nn.attention.flex_attention import create_block_mask

    rows, n = segment_ids.shape
    allowed = shared_prefix_mask_mod(segment_ids, position_ids, sliding_window, pair_ids)
    return create_block_mask(allowed, B=rows, H=None, Q_LEN=n, KV_LEN=n, device=segment_ids.device)


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
    base = base_model(model)
    config = getattr(base, "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False):
        return "not a decoder-only model"
    impl = getattr(config, "_attn_implementation", None)
    if impl not in MASKED_ATTENTION:
        return f"attention implementation {impl!r} takes no custom mask (needs sdpa, eager or flex_attention)"
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


# The keyword under which a shared batch's attention layout reaches the attention function (:func:`span_attention`).
SPANS_KWARG = "shared_prefix_spans"


def two_row_gather(spans: list[tuple[int, ...]], rows: int, width: int, device: Any) -> dict[str, Any]:
    """Index maps between the shared layout ``[rows, width]`` and one causal row per response ``[n, L]``.

    Span ``i`` (``spans[i] = (row, start, P, L_1, ..., L_k)``; a pair is ``(row, start, P, C, R)``) becomes one row
    ``[prompt | response j]`` per response with ``L_j > 0`` (one prompt-only row if none has), in order, so pair
    ``i`` becomes rows ``2i`` (chosen) and ``2i + 1`` (rejected); rows are right-padded to ``L = max(P + max_j L_j)``.
    ``to_rows[j * L + t]`` is the flat shared position ``row * width + s`` that fills slot ``t`` of row ``j``;
    ``from_rows[row * width + s]`` is the flat slot whose output is shared position ``s``'s (a prompt token's from
    its span's first row). Padding on either side points at slot 0: a padding slot sits after its row's real
    tokens, so no real query attends to it under the causal mask, and a shared padding position's output is never
    read.
    """
    per_span = [[n for n in span[3:] if n > 0] or [0] for span in spans]
    n = sum(len(lengths) for lengths in per_span)
    length = max((span[2] + max(lengths) for span, lengths in zip(spans, per_span)), default=1)
    to_rows = torch.zeros((n, length), dtype=torch.long)
    from_rows = torch.zeros((rows * width,), dtype=torch.long)
    out = 0
    for span, lengths in zip(spans, per_span):
        row, start, p = span[:3]
        base = row * width + start
        prompt = torch.arange(base, base + p)
        from_rows[prompt] = torch.arange(out * length, out * length + p)
        begin = base + p  # where the next response starts in the shared row
        for n_j in lengths:
            to_rows[out, : p + n_j] = torch.cat([prompt, torch.arange(begin, begin + n_j)])
            from_rows[begin : begin + n_j] = torch.arange(out * length + p, out * length + p + n_j)
            begin += n_j
            out += 1
    return {"to_rows": to_rows.view(-1).to(device), "from_rows": from_rows.to(device), "shape": (n, length)}


def _bfloat16_on_cpu(value: torch.Tensor) -> bool:
    """Attention on the CPU that SDPA would run in bfloat16 (bf16 autocast or bf16 weights), where torch has the
    CPU flash-attention ops :class:`Float32BackwardAttention` calls."""
    if value.device.type != "cpu" or not hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu_backward"):
        return False
    autocast_bf16 = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    return autocast_bf16 or value.dtype == torch.bfloat16


class Float32BackwardAttention(torch.autograd.Function):
    """Causal attention ``softmax(q k^T * scale + causal) v`` (grouped-query heads allowed) on bfloat16-rounded
    inputs: the forward is SDPA's under bf16 autocast (torch's CPU flash-attention kernel in bfloat16, which
    accumulates in float32), the backward runs the same kernel's float32 instantiation.

    Under bf16 autocast SDPA's bfloat16 backward accumulates the key and value gradients in bfloat16, block by
    block, and on AVX512-BF16 CPUs runs slower than the float32 one; its bfloat16 forward is the faster one
    (docs/performance.md). The backward here gets exactly what SDPA's saves (q, k, v and the output in bfloat16,
    the float32 log-sum-exp), upcast, and accumulates in float32: gradients closer to exact attention
    (tests/test_prefix_sharing.py) at unchanged memory. Returns bfloat16; gradients come back in each input's
    dtype. No dropout.
    """

    @staticmethod
    def forward(ctx: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float | None) -> torch.Tensor:
        q, k, v = (x.to(torch.bfloat16) for x in (query, key, value))
        with torch.autocast("cpu", enabled=False):
            out, logsumexp = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, True, scale=scale)
        ctx.save_for_backward(q, k, v, out, logsumexp)
        ctx.scale, ctx.dtypes = scale, (query.dtype, key.dtype, value.dtype)
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, None]:
        q, k, v, out, logsumexp = ctx.saved_tensors
        with torch.autocast("cpu", enabled=False):
            grads = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
                grad_out.float(), q.float(), k.float(), v.float(), out.float(), logsumexp, 0.0, True, scale=ctx.scale
            )
        dq, dk, dv = (g.to(dtype) for g, dtype in zip(grads, ctx.dtypes))
        return dq, dk, dv, None


def span_attention(
    module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: Any, **kwargs: Any
) -> tuple[torch.Tensor, None]:
    """SDPA for a shared batch computed as the two-row layout computes it: the same numbers as under the dense
    mask, at the cost of causal attention over ``[prompt | chosen]`` and ``[prompt | rejected]``.

    Every chosen and rejected query attends to exactly the keys the shared mask allows it, which are the keys of
    its own response's causal row; so queries, keys and values are gathered into those rows
    (:func:`two_row_gather`), attended causally in one batched call (the kernels skip the blocks above the
    diagonal, where the dense ``[T, T]`` mask makes them visit every block, the chosen-for-rejected ones and other
    pairs' included) and gathered back. The model's linear layers still see each prompt once. Padding outputs are
    arbitrary (never read). Under bfloat16 (autocast or bf16 weights) the rows go through
    :class:`Float32BackwardAttention`: SDPA's bfloat16 forward, a float32 backward.
    Without the layout (any other batch), or with a sliding window or attention sinks, this is transformers' SDPA.
    """
    layout = kwargs.pop(SPANS_KWARG, None)
    if layout is None or kwargs.get("sliding_window") or kwargs.get("s_aux") is not None or query.shape[2] != key.shape[2]:
        return _SDPA(module, query, key, value, attention_mask, **kwargs)
    import torch.nn.functional as F

    n_rows, length = layout["shape"]

    def to_two_rows(x: torch.Tensor) -> torch.Tensor:  # [rows, heads, T, dim] -> [responses, heads, L, dim]
        flat = x.transpose(1, 2).reshape(-1, x.shape[1], x.shape[3])
        return flat.index_select(0, layout["to_rows"]).view(n_rows, length, x.shape[1], x.shape[3]).transpose(1, 2)

    dropout = kwargs.get("dropout", 0.0) or 0.0
    if dropout == 0.0 and _bfloat16_on_cpu(value):
        out = Float32BackwardAttention.apply(to_two_rows(query), to_two_rows(key), to_two_rows(value), kwargs.get("scaling"))
    else:
        out = F.scaled_dot_product_attention(
            to_two_rows(query), to_two_rows(key), to_two_rows(value), is_causal=True, scale=kwargs.get("scaling"),
            dropout_p=dropout, enable_gqa=query.shape[1] != key.shape[1],
        )
    flat = out.transpose(1, 2).reshape(-1, query.shape[1], query.shape[3])
    # [rows, T, heads, dim], the layout transformers' attention functions return.
    return flat.index_select(0, layout["from_rows"]).view(query.shape[0], query.shape[2], query.shape[1], query.shape[3]), None


_SDPA: Callable[..., Any] = None  # type: ignore[assignment]  # transformers' own, set by _install_span_attention


def _install_span_attention() -> None:
    """Route transformers' ``sdpa`` through :func:`span_attention`, which hands every call without spans to the
    original unchanged (idempotent)."""
    global _SDPA
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if _SDPA is None:
        _SDPA = sdpa_attention_forward
        AttentionInterface.register("sdpa", span_attention)


def _span_path(config: Any, device_type: str) -> bool:
    """Whether :func:`span_attention` attends a shared batch: SDPA, no sliding window, on the CPU."""
    return getattr(config, "_attn_implementation", None) == "sdpa" and _sliding_window(config)[0] is None and device_type == "cpu"


def shared_forward_inputs(model: Any, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
    """``input_ids``, ``position_ids`` and the 4D ``attention_mask`` for a shared-prompt batch, plus on CPU under
    SDPA without a sliding window the spans for :func:`span_attention` (faster than the dense mask there; on CUDA
    no faster, benchmarks/gpu/RESULTS.md)."""
    config = base_model(model).config
    window, _ = _sliding_window(config)
    impl = getattr(config, "_attn_implementation", None)
    mask_inputs = (batch["segment_ids"], batch["position_ids"], window, batch.get("pair_ids"))
    if impl == "flex_attention":
        mask = shared_prefix_block_mask(*mask_inputs)
    else:
        allowed = shared_prefix_mask(*mask_inputs)
        if impl == "eager":
            # Eager attention adds the mask to the scores.
            mask = torch.zeros(allowed.shape, dtype=torch.float32, device=allowed.device)
            mask = mask.masked_fill(~allowed, torch.finfo(torch.float32).min)
        else:
            mask = allowed
    inputs: dict[str, Any] = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"], "attention_mask": mask}
    if "spans" in batch and _span_path(config, batch["input_ids"].device.type):
        _install_span_attention()
        rows, width = batch["input_ids"].shape
        inputs[SPANS_KWARG] = two_row_gather([tuple(x) for x in batch["spans"].tolist()], rows, width, batch["input_ids"].device)
    return inputs


# FlexAttention's kernels work in blocks of this many tokens (torch's default BLOCK_SIZE for a BlockMask).
FLEX_BLOCK = 128
# Packed rows under span attention hold up to this many tokens (or one pair, if longer): a longer row costs no
# attention work there; the cap bounds the dense [T, T] mask that is still built beside the spans.
SPAN_PACK_TOKENS = 2048


def attends_per_pair(model: Any) -> bool:
    """Whether ``model``'s shared batches will be attended pair by pair (:func:`span_attention`): SDPA without
    a sliding window, running on the CPU (no CUDA device in reach)."""
    on_cpu = next(model.parameters()).device.type == "cpu" and not torch.cuda.is_available()
    return on_cpu and _span_path(base_model(model).config, "cpu")


def shared_prompt_collator(model: Any, pad_token_id: int, packing: bool | str) -> Any:
    """The :class:`~mmpo.data.collate.SharedPromptCollator` for ``model``'s attention kernel; ``packing`` is
    True, False or ``"auto"`` (on where :func:`attends_per_pair`).

    Under ``flex_attention`` rows are padded to a multiple of :data:`FLEX_BLOCK` tokens and packing puts all of
    a batch's pairs in one row. torch.compile specializes FlexAttention on the shapes it sees: a row count that
    changes from batch to batch (packing) compiles it again (seconds each time), and so does every new length
    until it marks the length dynamic. One row and lengths in whole blocks leave a single shape to vary; the
    block mask skips the other pairs' blocks, so the single row costs no attention work, and padding attends to
    itself only.

    On the CPU under SDPA (:func:`span_attention`: attention runs per pair, whatever the row holds) packed rows
    take up to :data:`SPAN_PACK_TOKENS` tokens, so a batch's pairs fill few rows and padding mostly disappears
    even when pairs differ in length.
    """
    per_pair = attends_per_pair(model)
    pack = per_pair if packing == "auto" else bool(packing)
    if getattr(base_model(model).config, "_attn_implementation", None) == "flex_attention":
        one_row = sys.maxsize if pack else None  # a budget no batch reaches
        return SharedPromptCollator(pad_token_id, pad_to_multiple_of=FLEX_BLOCK, pack=pack, pack_budget=one_row)
    if pack and per_pair:
        return SharedPromptCollator(pad_token_id, pack=True, pack_budget=SPAN_PACK_TOKENS)
    return SharedPromptCollator(pad_token_id=pad_token_id, pack=pack)
