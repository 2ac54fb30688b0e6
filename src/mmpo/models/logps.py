"""Per-sequence log-probabilities of response tokens: ``log pi(y|x) = sum_t log pi(y_t | x, y_<t)``.

Only response tokens count (prompt and padding are masked). The vocabulary projection is applied only at
response positions, in row chunks, so the ``[tokens, vocab]`` float32 logits of the whole batch never exist at
once: at length 1024 with a 49k vocabulary that tensor alone would be 200 MB per sequence. In training a head
that trains runs each chunk under activation checkpointing; a frozen head (adapters) gets its input gradient in
forward instead (:class:`FrozenHeadTokenLogps`), which saves a third of the vocabulary work.
"""

from __future__ import annotations

from typing import Any

import warnings

import torch
from torch.utils.checkpoint import checkpoint

from mmpo.models.shared_prefix import shared_forward_inputs
from mmpo.models.unwrap import base_model

# Rows of the [rows, vocab] logits projected at once; 1024 x 49152 x 4 bytes = 200 MB.
LOGIT_CHUNK_ROWS = 1024
# Logits kept for backward rather than recomputed, when a training step has no more than this many (2**25: about
# 200 MB as bfloat16 + float32; 682 rows of SmolLM2's 49152-token vocabulary).
KEEP_LOGITS_ELEMENTS = 2**25


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip padding, so left- and right-padded rows give the same log-probabilities."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def _token_logps(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor, softcap: float | None) -> torch.Tensor:
    logits = head(hidden).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


class FrozenHeadTokenLogps(torch.autograd.Function):
    """``log softmax(c * tanh(head(h) / c))[t]`` per row for a frozen head, its input gradient found in forward.

    With ``z = h W^T (+ b)``, ``logits = c tanh(z / c)`` (or ``z`` without soft-capping) and ``p = softmax(logits)``:

        d logp / d h = ((onehot(t) - p) * (1 - tanh(z / c)^2)) @ W

    Forward computes that ``[rows, hidden]`` matrix chunk by chunk and keeps it instead of the ``[rows, vocab]``
    logits; backward only scales it by each row's upstream gradient. That is two vocabulary-sized matmuls a step
    instead of the three of checkpointed recomputation (forward, recompute, backward), and ``hidden`` floats of
    memory a row. Only for a head that does not train (adapters, frozen embeddings): the weight's gradient would
    need the upstream gradient before it is known.
    """

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor, softcap: float | None) -> torch.Tensor:  # type: ignore[override]
        logps = hidden.new_empty(hidden.shape[0], dtype=torch.float32)
        input_grad = torch.empty(hidden.shape, dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], LOGIT_CHUNK_ROWS):
            stop = start + LOGIT_CHUNK_ROWS
            t = targets[start:stop]
            z = torch.nn.functional.linear(hidden[start:stop], weight, bias).float()  # autocast applies here
            # In place from here on (no graph is recorded in forward): one [rows, vocab] float32 buffer a chunk.
            if softcap:
                squashed = z.div_(softcap).tanh_()
                logits = squashed * softcap
            else:
                logits = z
            log_probs = logits.sub_(torch.logsumexp(logits, dim=-1, keepdim=True))
            logps[start:stop] = log_probs.gather(-1, t.unsqueeze(-1)).squeeze(-1)
            d_logits = log_probs.exp_().neg_()  # -p, in place of the log-probabilities
            d_logits.scatter_add_(-1, t.unsqueeze(-1), torch.ones_like(d_logits[:, :1]))
            if softcap:
                d_logits.mul_(1 - squashed * squashed)
            input_grad[start:stop] = torch.matmul(d_logits.to(weight.dtype), weight).float()
        ctx.save_for_backward(input_grad)
        ctx.hidden_dtype = hidden.dtype
        return logps

    @staticmethod
    def backward(ctx: Any, grad_logps: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        (input_grad,) = ctx.saved_tensors
        return (grad_logps.float().unsqueeze(-1) * input_grad).to(ctx.hidden_dtype), None, None, None, None


def _frozen_head(head: torch.nn.Module) -> bool:
    return isinstance(head, torch.nn.Linear) and not any(p.requires_grad for p in head.parameters())


def response_logps(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_mask: torch.Tensor,
    full_logits: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed response-token log-probabilities and response lengths, one per row.

    ``response_mask[i, t] = 1`` marks token ``t`` of row ``i`` as part of the response; token ``t`` is
    predicted from position ``t - 1``. Returns ``(logps [N] float32, n_tokens [N])``.

    The model is called through its own ``forward`` (so DDP/accelerate hooks run) with ``logits_to_keep=1``
    and the final hidden states are projected here. ``full_logits=True`` instead takes the model's own logits
    (needed where the head's weights are sharded outside forward: FSDP, ZeRO-3).

    The hidden-state path assumes ``logits = head(last hidden state)`` (plus Gemma-2's soft-capping). Each call
    checks that assumption on the one position the model did project (its last); an architecture that
    scales or post-processes its logits differently fails the check and is scored with ``full_logits``.
    """
    position_ids = position_ids_from_mask(attention_mask)
    target_mask = response_mask[:, 1:].bool()
    n_rows = input_ids.shape[0]
    rows, sources = target_mask.nonzero(as_tuple=True)  # target t = source + 1, in row-major order
    targets = input_ids[rows, sources + 1]
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}
    logps = scored_logps(model, inputs, rows, sources, targets, rows, n_rows, full_logits)
    return logps, target_mask.sum(-1)


def shared_response_logps(model: Any, batch: dict[str, torch.Tensor], full_logits: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`response_logps` for a prefix-shared batch (:class:`mmpo.data.collate.SharedPromptCollator`).

    One forward over the rows of spans ``[prompt | chosen | rejected]`` (one pair per row, or packed); returns
    ``(logps [2B], n_tokens [2B])``,
    chosen first then rejected, as :func:`response_logps` returns them for the two-row layout. A batch of groups
    gives ``[k * B]``, response ``j`` of group ``i`` at ``j * B + i`` (0 for an absent one).
    """
    source = batch["logp_source"]
    n_out = batch["score_at"].shape[0]  # one per response slot
    rows, targets_at = (source >= 0).nonzero(as_tuple=True)
    sources = source[rows, targets_at]
    targets = batch["input_ids"][rows, targets_at]
    out_index = batch["logp_out"][rows, targets_at]
    logps = scored_logps(model, shared_forward_inputs(model, batch), rows, sources, targets, out_index, n_out, full_logits)
    n_tokens = torch.zeros(n_out, dtype=torch.long, device=source.device).index_add(
        0, out_index, torch.ones_like(out_index)
    )
    return logps, n_tokens


def scored_logps(
    model: Any,
    inputs: dict[str, torch.Tensor],
    rows: torch.Tensor,
    sources: torch.Tensor,
    targets: torch.Tensor,
    out_index: torch.Tensor,
    n_out: int,
    full_logits: bool = False,
) -> torch.Tensor:
    """``logps[j] = sum over k with out_index[k] = j of log softmax(logits[rows[k], sources[k]])[targets[k]]``.

    One forward of ``model`` on ``inputs``; the vocabulary projection runs only at the ``(rows, sources)``
    positions (see :func:`response_logps` for the hidden-state path and its check). Returns float32 ``[n_out]``.
    """
    input_ids = inputs["input_ids"]
    if full_logits:
        out = model(**inputs, use_cache=False)
        logits = out.logits[rows, sources].float()
        token_logps = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    else:
        base = base_model(model)
        final_hidden, out = _forward_final_hidden(model, base, inputs)
        head = base.get_output_embeddings()
        softcap = getattr(base.config, "final_logit_softcapping", None)
        if not _head_matches(head, final_hidden[:, -1], out.logits[:, -1], softcap):
            _warn_head_mismatch(type(base).__name__)
            return scored_logps(model, inputs, rows, sources, targets, out_index, n_out, full_logits=True)
        hidden = final_hidden[rows, sources]
        if torch.is_grad_enabled() and hidden.requires_grad and _frozen_head(head):
            token_logps = FrozenHeadTokenLogps.apply(hidden, head.weight, head.bias, targets, softcap)
            logps = torch.zeros(n_out, dtype=torch.float32, device=input_ids.device)
            return logps.index_add(0, out_index, token_logps)
        pieces = []
        # Many rows: recompute each chunk's logits in backward instead of keeping them all alive. Few rows (at most
        # KEEP_LOGITS_ELEMENTS logits): keep them, which saves the recompute, a quarter of the head's work.
        recompute = torch.is_grad_enabled() and hidden.shape[0] * head.weight.shape[0] > KEEP_LOGITS_ELEMENTS
        for start in range(0, hidden.shape[0], LOGIT_CHUNK_ROWS):
            h, t = hidden[start : start + LOGIT_CHUNK_ROWS], targets[start : start + LOGIT_CHUNK_ROWS]
            if recompute:
                pieces.append(checkpoint(_token_logps, head, h, t, softcap, use_reentrant=False))
            else:
                pieces.append(_token_logps(head, h, t, softcap))
        token_logps = torch.cat(pieces) if pieces else hidden.new_zeros(0, dtype=torch.float32)
    logps = torch.zeros(n_out, dtype=torch.float32, device=input_ids.device)
    return logps.index_add(0, out_index, token_logps.float())


def _forward_final_hidden(model: Any, base: Any, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Any]:
    """The model's forward with ``logits_to_keep=1``, plus its final (normed) hidden states ``[N, T, H]``.

    The decoder's output is caught with a forward hook: asking for ``output_hidden_states`` instead would keep
    every layer's hidden states alive, which under ``no_grad`` (reference pass, evaluation) costs layers x the
    memory of one. Models without ``get_decoder`` fall back to ``output_hidden_states``.
    """
    kwargs = dict(inputs, use_cache=False, logits_to_keep=1)
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else None
    if decoder is None or decoder is base:
        out = model(**kwargs, output_hidden_states=True)
        return out.hidden_states[-1], out
    caught: dict[str, torch.Tensor] = {}

    def keep(module, args, output):
        caught["hidden"] = output[0] if isinstance(output, tuple) else output.last_hidden_state

    keep_head_input_contiguous(base)
    handle = decoder.register_forward_hook(keep)
    try:
        out = model(**kwargs)
    finally:
        handle.remove()
    return caught["hidden"], out


def keep_head_input_contiguous(model: Any) -> None:
    """Make ``model``'s output head always get a contiguous input (:func:`_contiguous_input`): scoring asks for
    ``logits_to_keep=1``, and ``generate``'s first step projects ``hidden[:, -1:, :]`` of the whole prompt batch.
    The values are unchanged; only the copy of the weight goes. Idempotent."""
    head = base_model(model).get_output_embeddings()
    if head is not None and not getattr(head, "_mmpo_contiguous_input", False):
        head.register_forward_pre_hook(_contiguous_input)
        head._mmpo_contiguous_input = True


def _contiguous_input(module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """The head's input made contiguous. The model hands it ``hidden[:, -1:, :]``, a strided view; a linear layer
    on a 3-d input it cannot flatten without a copy falls back to a batched matmul against the weight expanded to
    ``[rows, hidden, vocab]``, a copy of the whole head per row: 12 of the 16 s of a 32-pair evaluation batch of
    the embedded model, where the contiguous input makes it a plain ``[rows, hidden] x [hidden, vocab]`` product."""
    if args and isinstance(args[0], torch.Tensor) and not args[0].is_contiguous():
        return (args[0].contiguous(), *args[1:])
    return args


def _head_matches(head: torch.nn.Module, last_hidden: torch.Tensor, model_logits: torch.Tensor, softcap: float | None) -> bool:
    """Does projecting the final hidden state ourselves reproduce the model's own logits at that position?"""
    with torch.no_grad():
        ours = head(last_hidden).float()
        if softcap:
            ours = torch.tanh(ours / softcap) * softcap
        theirs = model_logits.float()
        scale = theirs.abs().max().clamp(min=1.0)
        return bool(((ours - theirs).abs().max() <= 1e-2 * scale).item())


_WARNED: set[str] = set()


def _warn_head_mismatch(name: str) -> None:
    if name not in _WARNED:
        _WARNED.add(name)
        warnings.warn(
            f"{name}: logits are not head(final hidden state); scoring with full logits (more memory)", stacklevel=3
        )
