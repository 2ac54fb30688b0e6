"""Loading backbones, tokenizers and LoRA adapters for mmpo runs."""

from __future__ import annotations

from typing import Any

from mmpo.errors import UserError
from mmpo.models.embedded import resolve_model_path


def load_tokenizer(name_or_path: str) -> Any:
    """The model's tokenizer with a pad token (falls back to EOS) and right padding for training."""
    from transformers import AutoTokenizer

    path = resolve_model_path(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except OSError as e:
        raise UserError(f"cannot load a tokenizer from {name_or_path!r}: {str(e).splitlines()[0]}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def lora_config(config: Any, task_type: str, modules_to_save: list[str] | None = None, model: Any = None) -> Any:
    """peft LoraConfig from the run config's lora_r / lora_alpha / lora_dropout / lora_target_modules.

    ``lora_layers: N`` puts adapters on the linear layers of the last N transformer blocks only (``model``
    is needed to find them). Nothing below those blocks needs a gradient, so backward stops there: on a CPU
    that roughly halves the cost of a step, at some cost in what the adapter can learn.
    """
    import re

    import torch
    from peft import LoraConfig

    target = config.lora_target_modules
    n_adapted = getattr(config, "lora_layers", None)
    if n_adapted:
        n_blocks = getattr(getattr(model, "config", None), "num_hidden_layers", None)
        if not n_blocks:
            raise UserError("lora_layers needs a model with a known number of blocks (config.num_hidden_layers)")
        if not 0 < n_adapted <= n_blocks:
            raise UserError(f"lora_layers must lie in 1..{n_blocks} for this model (got {n_adapted})")
        top = {str(i) for i in range(n_blocks - n_adapted, n_blocks)}
        wanted = None if target == "all-linear" else set([target] if isinstance(target, str) else target)
        target = []
        for name, module in model.named_modules():
            m = re.search(r"\.layers\.(\d+)\.", name)
            if m and m.group(1) in top and isinstance(module, torch.nn.Linear):
                if wanted is None or name.rsplit(".", 1)[-1] in wanted:
                    target.append(name)
        if not target:
            raise UserError(f"lora_layers: no linear layers found in the last {n_adapted} blocks")
    return LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=target,
        task_type=task_type,
        modules_to_save=modules_to_save,
    )
