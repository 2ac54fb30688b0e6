"""Batched generation for training loops: k samples per prompt, or one greedy answer per prompt.

The prompts are rendered exactly as training renders them (:meth:`mmpo.serving.chat_model.ChatModel.prompt_ids`),
left-padded into one batch and passed to ``model.generate``. Each batch is seeded on its own
(``torch.manual_seed(seed)`` right before ``generate``), so a batch regenerated after a crash gives the same
tokens as the first time, whatever ran before it in the process.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mmpo.data.records import Message
from mmpo.serving.chat_model import GREEDY_BELOW


def generate_batch(
    chat: Any,
    prompts: Sequence[list[Message]],
    num_samples: int = 1,
    *,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    autocast_dtype: Any = None,
) -> list[list[str]]:
    """``num_samples`` answers to each prompt, as ``out[i][j]`` = the j-th answer to ``prompts[i]``.

    ``chat`` is a :class:`mmpo.serving.chat_model.ChatModel` (model, tokenizer, ``eos_ids``, ``prompt_ids``).
    Sampling uses ``temperature`` and nucleus ``top_p`` (``top_k`` off); ``temperature`` below
    :data:`GREEDY_BELOW` decodes greedily (then all samples of a prompt are the same, so ask for one).
    Each answer is cut at the first EOS id and decoded without special tokens. ``autocast_dtype``
    (``torch.bfloat16``) runs the model under that autocast, as training does under ``bf16``.
    """
    import torch
    from transformers import GenerationConfig

    if num_samples < 1 or max_new_tokens < 1:
        raise ValueError("num_samples and max_new_tokens must be at least 1")
    if not prompts:
        return []
    ids = [chat.prompt_ids(p) for p in prompts]
    width = max(len(x) for x in ids)
    tok = chat.tokenizer
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else (chat.eos_ids or [0])[0]
    # Left padding: every prompt ends at the same column, so new tokens start at ``width`` for all rows.
    input_ids = torch.tensor([[pad_id] * (width - len(x)) + x for x in ids], dtype=torch.long)
    attention_mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids], dtype=torch.long)
    device = next(chat.model.parameters()).device
    sample = temperature >= GREEDY_BELOW
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=sample,
        num_return_sequences=num_samples,
        eos_token_id=chat.eos_ids or None,
        pad_token_id=pad_id,
        **({"temperature": temperature, "top_p": top_p, "top_k": 0} if sample else {}),
    )
    precision = torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None)
    with torch.inference_mode(), precision:
        torch.manual_seed(seed)
        out = chat.model.generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), generation_config=config)
    texts: list[list[str]] = []
    for i in range(len(prompts)):
        answers = []
        for j in range(num_samples):
            new = out[i * num_samples + j, width:].tolist()
            for k, t in enumerate(new):
                if t in chat.eos_ids or t == pad_id:
                    new = new[:k]
                    break
            answers.append(tok.decode(new, skip_special_tokens=True).strip())
        texts.append(answers)
    return texts
