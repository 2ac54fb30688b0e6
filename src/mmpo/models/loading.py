"""Loading backbones, tokenizers and LoRA adapters for mmpo runs."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mmpo.errors import UserError
from mmpo.models.embedded import resolve_model_path


def load_tokenizer(name_or_path: str, revision: str | None = None, trust_remote_code: bool = False) -> Any:
    """The model's tokenizer with a pad token (falls back to EOS) and right padding for training."""
    from transformers import AutoTokenizer

    path = resolve_model_path(name_or_path, revision)
    extra: dict[str, Any] = {"revision": revision} if revision else {}
    if trust_remote_code:
        extra["trust_remote_code"] = True
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **extra)
    except OSError as e:
        raise UserError(f"cannot load a tokenizer from {name_or_path!r}: {str(e).splitlines()[0]}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def is_adapter_dir(path: str | Path) -> bool:
    """True when ``path`` is a peft adapter directory (it holds ``adapter_config.json``)."""
    return (Path(path) / "adapter_config.json").is_file()


def adapter_config(adapter_dir: str | Path) -> dict[str, Any]:
    """A peft adapter directory's ``adapter_config.json`` (``base_model_name_or_path``, ``task_type``, ...)."""
    import json

    config_file = Path(adapter_dir) / "adapter_config.json"
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{config_file}: cannot read it ({e})") from None
    if not isinstance(config, dict):
        raise UserError(f"{config_file}: not a JSON object")
    return config


def adapter_base(adapter_dir: str | Path) -> str | None:
    """The model a peft adapter directory was trained on (``adapter_config.json``'s ``base_model_name_or_path``),
    resolved like any model; None when ``adapter_dir`` holds no ``adapter_config.json``."""
    if not is_adapter_dir(adapter_dir):
        return None
    base = adapter_config(adapter_dir).get("base_model_name_or_path")
    if not base:
        raise UserError(f"{Path(adapter_dir) / 'adapter_config.json'}: no base_model_name_or_path (the model the adapter was trained on)")
    return resolve_model_path(base)


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


_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def model_load_kwargs(config: Any, default_dtype: Any) -> dict[str, Any]:
    """``from_pretrained`` keyword arguments from the run config's model-loading keys.

    ``dtype`` (none = ``default_dtype``, the caller's choice), ``revision``, ``trust_remote_code``,
    ``attn_implementation``, and for ``load_in_4bit`` / ``load_in_8bit`` a bitsandbytes quantisation config
    (4 bit: ``bnb_4bit_quant_type``, compute in bfloat16 where the GPU has it, else float16) with the model
    placed on this process's GPU. Quantised loading needs CUDA and bitsandbytes: else one UserError line.
    """
    import torch

    name = getattr(config, "dtype", None)
    dtype = default_dtype if name is None else ("auto" if name == "auto" else getattr(torch, _DTYPES[name]))
    kwargs: dict[str, Any] = {}
    if dtype is not None:
        kwargs["dtype"] = dtype
    if getattr(config, "revision", None):
        kwargs["revision"] = config.revision
    if getattr(config, "trust_remote_code", False):
        kwargs["trust_remote_code"] = True
    if getattr(config, "attn_implementation", None):
        kwargs["attn_implementation"] = config.attn_implementation
    four, eight = bool(getattr(config, "load_in_4bit", False)), bool(getattr(config, "load_in_8bit", False))
    if four or eight:
        kwargs.update(_quantized_loading(config, four))
    return kwargs


def quantization_setting(config: Any) -> str | None:
    """How the run config's ``load_in_4bit`` / ``load_in_8bit`` quantise the base: ``"4bit-<bnb_4bit_quant_type>"``,
    ``"8bit"`` or None (full precision); part of the cache keys of states computed from the model."""
    if getattr(config, "load_in_4bit", False):
        return f"4bit-{getattr(config, 'bnb_4bit_quant_type', 'nf4')}"
    if getattr(config, "load_in_8bit", False):
        return "8bit"
    return None


def _quantized_loading(config: Any, four_bit: bool) -> dict[str, Any]:
    import importlib.util

    import torch

    key = "load_in_4bit" if four_bit else "load_in_8bit"
    if not torch.cuda.is_available():
        raise UserError(f"{key} needs a CUDA GPU (bitsandbytes); this machine has none: drop {key} to train in full precision")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise UserError(f"{key} needs the bitsandbytes package: pip install bitsandbytes")
    from transformers import BitsAndBytesConfig

    from mmpo.distributed import process_state

    if four_bit:
        compute = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        quantization = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type=config.bnb_4bit_quant_type, bnb_4bit_compute_dtype=compute,
            bnb_4bit_quant_storage=compute,
        )
    else:
        quantization = BitsAndBytesConfig(load_in_8bit=True)
    # Each process holds its own quantised copy on its own GPU (DDP); Trainer must not move it.
    return {"quantization_config": quantization, "device_map": {"": process_state().local_process_index}}


def prepare_quantized_for_lora(model: Any, config: Any) -> Any:
    """peft's preparation of a 4/8-bit base for LoRA (norms in float32, input gradients on); others unchanged."""
    if not (getattr(config, "load_in_4bit", False) or getattr(config, "load_in_8bit", False)):
        return model
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training(
        model, use_gradient_checkpointing=bool(config.gradient_checkpointing),
        gradient_checkpointing_kwargs={"use_reentrant": False},
    )


@contextlib.contextmanager
def quiet_peft_wrapping() -> Iterator[None]:
    """Drop the FutureWarning peft triggers when it wraps a model, by reading transformers' deprecated
    ``is_gradient_checkpointing`` property (a peft / transformers version skew, not something a user set)."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def get_lora_model(model: Any, lora: Any) -> Any:
    """peft's ``get_peft_model`` (quietly, see :func:`quiet_peft_wrapping`)."""
    from peft import get_peft_model

    with quiet_peft_wrapping():
        return get_peft_model(model, lora)


def continue_lora(model: Any, adapter_dir: str) -> Any:
    """``model`` (the adapter's base, loaded) with the LoRA adapter of ``adapter_dir`` on it, trainable: training
    goes on from that adapter, so the result is still one adapter on the same base (what a LoRA server loads)."""
    from peft import PeftModel

    with quiet_peft_wrapping():
        return PeftModel.from_pretrained(model, adapter_dir, is_trainable=True)


def trainable_summary(model: Any, config: Any) -> str:
    """``LoRA r=16: training 1,303,104 of 135,818,688 parameters (0.96%)``: the line rm and dpo both print."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return f"LoRA r={config.lora_r}: training {trainable:,} of {total:,} parameters ({trainable / max(total, 1):.2%})"


def merge_lora_float32(model: Any, revision: str | None = None, trust_remote_code: bool = False) -> Any:
    """The peft LoRA ``model`` merged into a float32 copy of its starting checkpoint: ``W = W0 + B @ A * scale``.

    ``W0`` is the starting model's own weights read in float32 and the update is computed in float32, so an
    update smaller than one bfloat16 step of ``W0`` survives the merge. A base held in float32 is merged in
    place; one held in bfloat16/float16 (rounded at load) is not used: the starting checkpoint
    (``base_model_name_or_path``, at ``revision``) is loaded again in float32 with the trained model's config,
    the trained adapter and fully trained modules (a reward head) are installed on it, and that is merged.
    A 4/8-bit (QLoRA) base is merged as peft merges it. Returns the merged (unwrapped) model.
    """
    import copy

    import torch
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    base = model.get_base_model()
    quantized = getattr(base, "hf_quantizer", None) is not None
    adapter_names = ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B", "modules_to_save")
    frozen_float32 = all(
        p.dtype == torch.float32 for name, p in model.named_parameters() if not any(part in name for part in adapter_names)
    )
    if quantized or frozen_float32:
        return model.merge_and_unload()
    adapter = model.active_adapter
    peft_config = copy.deepcopy(model.peft_config[adapter])
    source = peft_config.base_model_name_or_path or base.name_or_path
    extra: dict[str, Any] = {"revision": revision} if revision else {}
    if trust_remote_code:
        extra["trust_remote_code"] = True
    config = copy.deepcopy(base.config)
    try:
        fresh = type(base).from_pretrained(source, config=config, dtype=torch.float32, **extra)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot reload {source!r} in float32 to merge the LoRA adapter: {str(e).splitlines()[0]}") from None
    if getattr(base, "generation_config", None) is not None:
        fresh.generation_config = copy.deepcopy(base.generation_config)
    trained = {k: v.detach().to("cpu", torch.float32) for k, v in get_peft_model_state_dict(model, adapter_name=adapter).items()}
    rewrapped = get_lora_model(fresh, peft_config)
    result = set_peft_model_state_dict(rewrapped, trained)
    missing = [k for k in result.missing_keys if "lora_" in k or "modules_to_save" in k]
    if result.unexpected_keys or missing:
        raise RuntimeError(f"reloading the LoRA adapter for a float32 merge left keys unmatched: {(result.unexpected_keys + missing)[:3]}")
    return rewrapped.merge_and_unload()
