"""Mapping an mmpo run config onto `transformers.TrainingArguments`, and choosing where to resume."""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

import torch
from transformers import TrainingArguments

from mmpo.errors import UserError
from mmpo.precision import native_bf16

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def use_bf16(setting: Any) -> bool:
    """Mixed precision (bfloat16 autocast over float32 master weights) or not.

    ``auto``: on where the device has native bfloat16 (a CUDA GPU that supports it, or a CPU with AVX512-BF16 /
    AMX / ARM BF16), float32 elsewhere. ``true`` on hardware without it is an error; ``false`` is float32.
    """
    if isinstance(setting, str) and setting.lower() == "auto":
        return native_bf16()
    if setting and not native_bf16():
        where = "this GPU" if torch.cuda.is_available() else "this CPU (no AVX512-BF16, AMX or ARM BF16)"
        raise UserError(f"bf16: true, but {where} has no native bfloat16; use bf16: auto or false (float32)")
    return bool(setting)


def _checkpointing_arguments(enabled: bool) -> dict[str, Any]:
    # transformers 5.x renamed gradient_checkpointing* to activation_checkpointing* (the old names warn).
    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    prefix = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    return {prefix: enabled, f"{prefix}_kwargs": {"use_reentrant": False} if enabled else None}


def check_trackers(report_to: Any) -> Any:
    """``report_to`` for TrainingArguments (none = ``"none"``); a named tracker that is not installed is a
    one-line error here rather than a traceback from inside Trainer."""
    if report_to is None:
        return "none"
    names = [report_to] if isinstance(report_to, str) else list(report_to)
    if any(n in ("none", "all") for n in names):
        return report_to
    from transformers.integrations import get_available_reporting_integrations

    available = get_available_reporting_integrations()
    missing = [n for n in names if n not in available]
    if missing:
        raise UserError(
            f"report_to: {', '.join(missing)} not installed (pip install {' '.join(missing)}); "
            f"installed trackers: {', '.join(available) or 'none'}"
        )
    return report_to


def passthrough_arguments(config: Any) -> dict[str, Any]:
    """The run's ``trainer_args`` (any other TrainingArguments key), numbers given as text made numbers."""
    from mmpo.config import check_trainer_args

    given = dict(getattr(config, "trainer_args", None) or {})
    check_trainer_args(given)
    defaults = {f.name: f.default for f in dataclasses.fields(TrainingArguments)}
    return {k: _as_number(k, v, defaults.get(k)) for k, v in given.items()}


def _as_number(key: str, value: Any, default: Any) -> Any:
    # YAML 1.1 reads `adam_epsilon: 1e-8` as a string; a key whose default is a number gets a number.
    if not isinstance(value, str) or isinstance(default, bool) or not isinstance(default, (int, float)):
        return value
    try:
        return int(value) if isinstance(default, int) and value.strip().lstrip("-").isdigit() else float(value)
    except ValueError:
        raise UserError(f"{key} expects a number (got {value!r})") from None


def training_arguments(config: Any, **extra: Any) -> TrainingArguments:
    """TrainingArguments for a run: epoch or step-based eval/save, the chosen trackers, our metrics file.

    Order of precedence: mmpo's mapping of its own keys, then ``trainer_args`` (any TrainingArguments key
    from a recipe or the command line), then ``extra`` (what the caller must force, e.g. no evaluation
    without held-out pairs).
    """
    if getattr(config, "attn_implementation", None) == "flex_attention" and not torch.cuda.is_available():
        # Else torch raises from deep inside the first backward pass.
        raise UserError("attn_implementation: flex_attention trains on CUDA only (torch has no CPU backward for "
                        "FlexAttention); leave attn_implementation unset (sdpa) on this machine")
    eval_strategy = "steps" if config.eval_steps else "epoch"
    save_strategy = "steps" if config.save_steps else "epoch"
    kwargs = dict(
        output_dir=config.output_dir,
        learning_rate=config.learning_rate,
        num_train_epochs=config.num_train_epochs,
        max_steps=config.max_steps,
        per_device_train_batch_size=config.per_device_train_batch_size,
        per_device_eval_batch_size=config.per_device_eval_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        lr_scheduler_type=config.lr_scheduler_type,
        # transformers 5 folds warmup_ratio into warmup_steps: a float in [0, 1) is a share of all steps.
        warmup_steps=float(config.warmup_ratio),
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        seed=config.seed,
        data_seed=config.seed,
        bf16=use_bf16(config.bf16),
        **_checkpointing_arguments(config.gradient_checkpointing),
        logging_steps=config.logging_steps,
        logging_first_step=True,
        eval_strategy=eval_strategy,
        eval_steps=config.eval_steps,
        save_strategy=save_strategy,
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        report_to=check_trackers(config.report_to),
        # Without a GPU, say so: then `torchrun`/`accelerate launch` processes form a gloo group (MULTI_CPU)
        # instead of each training alone.
        use_cpu=not torch.cuda.is_available(),
        dataloader_pin_memory=torch.cuda.is_available(),
        remove_unused_columns=False,  # our collator builds the batch from token-id fields
        label_names=["p"],
        dataloader_num_workers=config.dataloader_num_workers,
        torch_compile=config.torch_compile,
        disable_tqdm=False,
    )
    given = passthrough_arguments(config)
    if getattr(config, "group_by_length", False):
        if given.get("train_sampling_strategy", "group_by_length") != "group_by_length":
            raise UserError(f"group_by_length: true and trainer_args train_sampling_strategy: "
                            f"{given['train_sampling_strategy']} contradict each other; keep one")
        kwargs["train_sampling_strategy"] = "group_by_length"
    kwargs.update(given)
    kwargs.update(extra)
    try:
        return TrainingArguments(**kwargs)
    except (ValueError, TypeError, ImportError) as e:
        # e.g. an unknown optim or scheduler name: transformers' own message, on one line
        raise UserError(f"training arguments: {str(e).strip().splitlines()[0]}") from None


def last_complete_checkpoint(output_dir: str) -> str | None:
    """The newest ``checkpoint-N`` in ``output_dir`` that has its trainer state (written last), or None."""
    if not os.path.isdir(output_dir):
        return None
    found = []
    for name in os.listdir(output_dir):
        m = _CHECKPOINT.match(name)
        path = os.path.join(output_dir, name)
        if m and os.path.isfile(os.path.join(path, "trainer_state.json")):
            found.append((int(m.group(1)), path))
    return max(found)[1] if found else None


def resume_checkpoint(config: Any) -> str | None:
    """What to pass as ``resume_from_checkpoint``: ``auto`` finds the last complete one, a path is checked."""
    setting = config.resume
    if setting in (False, None) or (isinstance(setting, str) and setting.lower() in ("false", "no", "never")):
        return None
    if isinstance(setting, str) and setting.lower() == "auto" or setting is True:
        return last_complete_checkpoint(config.output_dir)
    if not os.path.isdir(str(setting)):
        raise UserError(f"resume checkpoint does not exist: {setting}")
    return str(setting)
