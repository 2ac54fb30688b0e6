"""Reward models: a backbone with a one-output head, ``r(x, y) = head(hidden state at the last token)``.

Any checkpoint that ``AutoModelForSequenceClassification`` can build works: a causal LM (the head, ``score``,
is new and randomly initialised), an encoder (``classifier``), or a saved reward model. The reward is read the
way transformers reads it, so a saved model scores identically in plain transformers code:

* decoder models: the head's output at the rightmost token that is not ``config.pad_token_id``. With right
  padding that is the last real token, unless the text itself ends with the pad token (tokenizers that reuse
  EOS as padding and templates ending in EOS): then the reward is read one token earlier, the same way in
  training, in :mod:`mmpo.evaluation.scoring` and in anyone's transformers code.
* encoder models: the head on the pooled first (``[CLS]``) token.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator
from typing import Any

import torch

from mmpo.errors import UserError
from mmpo.models.embedded import resolve_model_path
from mmpo.models.shared_prefix import shared_forward_inputs
from mmpo.models.unwrap import base_model

# Attribute names transformers uses for the classification head (decoders: score; encoders: classifier).
HEAD_NAMES = ("score", "classifier")


def head_module_names(model: Any) -> list[str]:
    """Names of the classification-head submodules present on ``model`` (trained fully under LoRA)."""
    return [name for name in HEAD_NAMES if isinstance(getattr(model, name, None), torch.nn.Module)]


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_REPORT_ROW = re.compile(r"^\s*(\S+)\s*\|\s*(MISSING|UNEXPECTED|MISMATCH|CONVERSION|\w+)\s*\|", re.MULTILINE)


def _expected_for_new_head(report: str) -> bool:
    """True when a transformers load report lists only what building a reward model from a causal LM implies:
    the new head missing (``score.*`` / ``classifier.*``) and the language-model head unused (``lm_head.*``)."""
    rows = [(key, status) for key, status in _REPORT_ROW.findall(_ANSI.sub("", report)) if key != "Key"]
    return bool(rows) and all(
        (status == "MISSING" and key.split(".")[0] in HEAD_NAMES) or (status == "UNEXPECTED" and key.startswith("lm_head."))
        for key, status in rows
    )


class _NewHeadReportFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("LOAD REPORT" in message and _expected_for_new_head(message))


@contextlib.contextmanager
def _quiet_new_head_report() -> Iterator[None]:
    """Drop transformers' load report while it only says the reward head is new (rm.py's docstring says so);
    any other missing, unexpected or mismatched weight is still reported."""
    from transformers.utils import logging as hf_logging

    logger = hf_logging.get_logger("transformers.modeling_utils")
    quiet = _NewHeadReportFilter()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def load_reward_model(name_or_path: str, tokenizer: Any, dtype: torch.dtype | None = torch.float32, **load_kwargs: Any) -> Any:
    """``AutoModelForSequenceClassification`` with one output and ``config.pad_token_id`` from ``tokenizer``.

    ``name_or_path`` is a hub id, a local directory or ``embedded``. A causal-LM checkpoint gets a fresh
    scalar head; a reward model saved by mmpo loads unchanged. A peft adapter directory (``adapter_config.json``,
    as ``mmpo rm`` saves a LoRA run under ``merge_lora: false``) is installed on its base, loaded in float32, with
    its trained head and merged: ``W = W0 + B @ A * scale``, the same weights the merged save of the run holds
    (:func:`mmpo.models.loading.merge_lora_float32`). ``dtype=None`` keeps the checkpoint's dtype.
    ``load_kwargs`` go to ``from_pretrained`` (see :func:`mmpo.models.loading.model_load_kwargs`).
    """
    from transformers import AutoModelForSequenceClassification

    from mmpo.models.loading import is_adapter_dir
    from mmpo.models.loading import adapter_base

    path = resolve_model_path(name_or_path, load_kwargs.get("revision"))
    adapter = is_adapter_dir(path)
    source = adapter_base(path) if adapter else path
    kwargs: dict[str, Any] = {"num_labels": 1, **load_kwargs}
    if adapter:
        kwargs["dtype"] = torch.float32  # the merge is computed in float32; cast to ``dtype`` after
    elif dtype is not None:
        kwargs.setdefault("dtype", dtype)
    try:
        with _quiet_new_head_report():
            model = AutoModelForSequenceClassification.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as e:
        what = f"the base {source!r} of the adapter {name_or_path!r}" if adapter else repr(name_or_path)
        raise UserError(f"cannot load {what} as a reward model: {str(e).splitlines()[0]}") from None
    if adapter:
        model = _merged_adapter(model, path, name_or_path)
        if dtype is not None:
            model = model.to(dtype)
    if tokenizer is not None and tokenizer.pad_token_id is not None:
        # Without it, batches larger than one cannot find each row's last token.
        model.config.pad_token_id = tokenizer.pad_token_id
        text_config = model.config.get_text_config()
        if text_config is not model.config:
            text_config.pad_token_id = tokenizer.pad_token_id
    return model


def _merged_adapter(base: Any, adapter_dir: str, name: str) -> Any:
    """The adapter in ``adapter_dir`` (LoRA weights and its ``modules_to_save`` head) on ``base``, merged."""
    from peft import PeftModel

    from mmpo.models.loading import merge_lora_float32, quiet_peft_wrapping

    try:
        with quiet_peft_wrapping():
            wrapped = PeftModel.from_pretrained(base, adapter_dir)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load the adapter {name!r} as a reward model: {str(e).splitlines()[0]}") from None
    return merge_lora_float32(wrapped)


def sequence_rewards(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """One float32 reward per row: ``model(input_ids, attention_mask).logits[:, 0]``.

    The single place a reward is read, shared by training and scoring.
    """
    # Decoders would otherwise build a key/value cache nobody reads; encoders take no such argument.
    extra = {"use_cache": False} if getattr(base_model(model).config, "use_cache", None) is not None else {}
    out = model(input_ids=input_ids, attention_mask=attention_mask, **extra)
    return out.logits[:, 0].float()


def add_lora(model: Any, config: Any) -> Any:
    """Wrap ``model`` in a peft LoRA adapter (task SEQ_CLS); the classification head is trained in full.

    A 4/8-bit base (QLoRA) is prepared for training first."""
    from mmpo.models.loading import get_lora_model, lora_config, prepare_quantized_for_lora

    model = prepare_quantized_for_lora(model, config)
    return get_lora_model(model, lora_config(config, "SEQ_CLS", modules_to_save=head_module_names(model), model=model))


def shared_sequence_rewards(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Rewards for a prefix-shared batch (:class:`mmpo.data.collate.SharedPromptCollator`): float32 ``[2B]``,
    chosen first then rejected, equal to :func:`sequence_rewards` on the two-row layout (a batch of groups:
    ``[k * B]``, response ``j`` of group ``i`` at ``j * B + i``).

    The model runs its own forward (so wrappers' hooks run); the head's per-position output is caught and
    read at each response's ``score_at`` (row, position), since the model itself would pool only each row's
    last token.
    """
    base = base_model(model)
    names = head_module_names(base)
    if not names:
        raise ValueError(f"{type(base).__name__} has no classification head named {' or '.join(HEAD_NAMES)}")
    caught: dict[str, torch.Tensor] = {}

    def keep(module, args, output):
        caught["scores"] = output

    handle = getattr(base, names[0]).register_forward_hook(keep)
    try:
        model(**shared_forward_inputs(model, batch), use_cache=False)
    finally:
        handle.remove()
    scores = caught["scores"][..., 0]  # [rows, T]
    at = batch["score_at"]
    return scores[at[:, 0], at[:, 1]].float()
