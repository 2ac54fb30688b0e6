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


def lora_config(config: Any, task_type: str, modules_to_save: list[str] | None = None) -> Any:
    """peft LoraConfig from the run config's lora_r / lora_alpha / lora_dropout / lora_target_modules."""
    from peft import LoraConfig

    return LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=config.lora_target_modules,
        task_type=task_type,
        modules_to_save=modules_to_save,
    )
