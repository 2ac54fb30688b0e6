"""Loading a causal LM to train as a policy, and saving the trained one so ``from_pretrained`` just works."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mmpo.errors import UserError
from mmpo.models.embedded import resolve_model_path
from mmpo.models.loading import merge_lora_float32

# The prompt format mmpo.data.tokenize uses for tokenizers without a chat template, as a chat template, so a
# saved policy is prompted at generation time exactly as it was in training.
PLAIN_CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}System{% elif m['role'] == 'user' %}User"
    "{% elif m['role'] == 'assistant' %}Assistant{% else %}{{ m['role'] }}{% endif %}"
    ": {{ m['content'] }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)


def load_causal_lm(name_or_path: str, dtype: torch.dtype = torch.float32, **load_kwargs: Any) -> Any:
    """``AutoModelForCausalLM`` from a hub id, a local path or ``embedded``; a failure is one UserError line.

    ``load_kwargs`` go to ``from_pretrained`` (see :func:`mmpo.models.loading.model_load_kwargs`)."""
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(name_or_path, load_kwargs.get("revision"))
    load_kwargs.setdefault("dtype", dtype)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **load_kwargs)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load a causal LM from {name_or_path!r}: {str(e).splitlines()[0]}") from None
    return model


def freeze(model: torch.nn.Module) -> torch.nn.Module:
    """Eval mode and no gradients: a reference model is never trained."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def save_policy(
    model: Any, tokenizer: Any, output_dir: str | Path, merge_lora: bool = True, revision: str | None = None,
    trust_remote_code: bool = False,
) -> str:
    """Write the final policy to ``output_dir``; returns ``"merged"``, ``"adapter"`` or ``"full"``.

    A peft model is merged into the float32 weights of its starting checkpoint (``merge_lora``, see
    :func:`mmpo.models.loading.merge_lora_float32`; ``revision`` and ``trust_remote_code`` reload that checkpoint)
    and saved in float32, or saved as an adapter whose config points at the base; both load with ``AutoModelForCausalLM.from_pretrained(output_dir)`` (an adapter needs peft).
    The tokenizer is saved beside it with a chat template (the plain one used in training if it had none)
    and left padding, which is what batched generation wants.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    kind = "full"
    if hasattr(model, "merge_and_unload"):
        if merge_lora:
            model = merge_lora_float32(model, revision, trust_remote_code)
            kind = "merged"
        else:
            kind = "adapter"
    quantized = getattr(model, "hf_quantizer", None) is not None
    if kind != "adapter" and not quantized and any(p.dtype in (torch.bfloat16, torch.float16) for p in model.parameters()):
        # A LoRA base held in bfloat16 for mixed-precision training: the saved model is float32, like its masters.
        model = model.to(torch.float32)
    model.save_pretrained(output_dir)
    if kind == "adapter":
        # The base's generation settings (eos ids) travel with the adapter.
        base = model.get_base_model()
        if getattr(base, "generation_config", None) is not None:
            base.generation_config.save_pretrained(output_dir)
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = PLAIN_CHAT_TEMPLATE
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        tokenizer.save_pretrained(output_dir)
    finally:
        tokenizer.padding_side = padding_side
    return kind
