"""One saved causal LM answering chat messages: the prompt is rendered with the tokenizer's chat template
(the same rendering training uses, :func:`mmpo.data.tokenize.render_prompt`) and the answer is generated
greedily or by temperature / nucleus sampling.

``temperature`` below :data:`GREEDY_BELOW` means greedy decoding (FastChat's MT-bench convention for
temperature 0). Otherwise, by default, sampling follows OpenAI's semantics: logits divided by
``temperature``, sampled from the smallest token set with probability mass ``top_p``, and no other knob
(top-k, repetition penalty) from the model's own generation config, so a request means the same whichever
checkpoint answers it. ``model_defaults=True`` instead starts from the model's generation config (with
transformers' defaults, e.g. top-k 50) and only sets the temperature, as FastChat's MT-bench answer
generation does.
"""

from __future__ import annotations

import copy
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmpo.data.records import Message
from mmpo.errors import UserError

# FastChat treats temperatures below 1e-4 as greedy decoding; so do we.
GREEDY_BELOW = 1e-4
ROLES = ("system", "user", "assistant")


class PromptTooLong(ValueError):
    """The rendered prompt leaves no room for a single generated token within the model's context."""


@dataclass
class Completion:
    """One generated answer: its text, token counts, and why generation stopped ("stop" or "length")."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


def check_messages(messages: Any) -> list[Message]:
    """``messages`` as a list of ``{role, content}`` dicts; raises ValueError naming the bad message.

    ``content`` may be a string or a list of OpenAI content parts (``{"type": "text", "text": ...}``), whose
    texts are joined.
    """
    if not isinstance(messages, list) or not messages:
        raise ValueError("'messages' must be a non-empty list of {role, content} objects")
    out: list[Message] = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ValueError(f"messages[{i}] must be an object")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise ValueError(f"messages[{i}].role must be one of {', '.join(ROLES)}, got {role!r}")
        if isinstance(content, list):
            texts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
            if len(texts) != len(content) or not all(isinstance(t, str) for t in texts):
                raise ValueError(f"messages[{i}].content: only text parts are supported")
            content = "".join(texts)
        if not isinstance(content, str):
            raise ValueError(f"messages[{i}].content must be a string")
        out.append({"role": role, "content": content})
    return out


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    """Every id that ends a turn: the tokenizer's EOS and the generation config's (chat models often add one)."""
    ids: set[int] = set()
    for value in (tokenizer.eos_token_id, getattr(getattr(model, "generation_config", None), "eos_token_id", None)):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return sorted(ids)


def _pick_device_and_dtype(device: str | None, dtype: str) -> tuple[str, Any]:
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if dtype == "auto":
        if device.startswith("cuda") and torch.cuda.is_bf16_supported():
            return device, torch.bfloat16
        return device, torch.float32
    try:
        return device, {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    except KeyError:
        raise UserError(f"unknown dtype {dtype!r}: choose auto, float32, bfloat16 or float16") from None


class ChatModel:
    """A causal LM and its tokenizer that answer a chat. ``generate`` is serialized by a lock, so one
    instance can be shared by the threads of an HTTP server."""

    def __init__(self, model: Any, tokenizer: Any, name: str):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.eos_ids = _eos_ids(model, tokenizer)
        self.max_positions = getattr(model.config, "max_position_embeddings", None)
        self.lock = threading.Lock()

    @classmethod
    def load(cls, name_or_path: str, device: str | None = None, dtype: str = "auto", name: str | None = None) -> "ChatModel":
        """Load a saved causal LM (a directory, ``embedded``, a hub id, or a peft LoRA adapter directory,
        which is merged into its base model) with its tokenizer."""
        from transformers import AutoModelForCausalLM

        from mmpo.models.embedded import resolve_model_path
        from mmpo.models.loading import load_tokenizer

        path = resolve_model_path(name_or_path)
        device, torch_dtype = _pick_device_and_dtype(device, dtype)
        tokenizer = load_tokenizer(name_or_path)
        try:
            if (Path(path) / "adapter_config.json").exists():
                from peft import AutoPeftModelForCausalLM

                model = AutoPeftModelForCausalLM.from_pretrained(path, dtype=torch_dtype).merge_and_unload()
            else:
                model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
        except (OSError, ValueError) as e:
            raise UserError(f"cannot load a causal LM from {name_or_path!r}: {str(e).splitlines()[0]}") from None
        model.to(device)
        return cls(model, tokenizer, name or default_model_name(name_or_path))

    def prompt_ids(self, messages: list[Message]) -> list[int]:
        """Token ids of the chat rendered up to where the assistant's answer starts."""
        from mmpo.data.tokenize import render_prompt

        tok = self.tokenizer
        ids = tok(render_prompt(tok, messages), add_special_tokens=False)["input_ids"]
        # Same BOS rule as training (mmpo.data.tokenize.tokenize_pair): add it when the tokenizer wants one
        # and the template did not write it.
        if tok.bos_token_id is not None and getattr(tok, "add_bos_token", False) and (not ids or ids[0] != tok.bos_token_id):
            ids = [tok.bos_token_id] + ids
        return ids

    def generate(
        self,
        messages: list[Message],
        max_new_tokens: int = 512,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: list[str] | None = None,
        model_defaults: bool = False,
    ) -> Completion:
        """The assistant's next message for ``messages``.

        Generation ends at an EOS id, after ``max_new_tokens`` tokens (fewer if the context would overflow),
        or at the first of the ``stop`` strings (cut from the text, as OpenAI does).
        """
        import torch
        from transformers import GenerationConfig

        if max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")
        if temperature < 0 or not 0 < top_p <= 1:
            raise ValueError("temperature must be >= 0 and top_p in (0, 1]")
        ids = self.prompt_ids(messages)
        if self.max_positions:
            room = self.max_positions - len(ids)
            if room < 1:
                raise PromptTooLong(f"prompt of {len(ids)} tokens does not fit the model's context of {self.max_positions}")
            max_new_tokens = min(max_new_tokens, room)
        sample = temperature >= GREEDY_BELOW
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else (self.eos_ids or [0])[0]
        if model_defaults:
            config = copy.deepcopy(self.model.generation_config)
            config.update(max_new_tokens=max_new_tokens, do_sample=sample, eos_token_id=self.eos_ids or None, pad_token_id=pad_id)
            if sample:
                config.temperature = temperature
        else:
            config = GenerationConfig(
                max_new_tokens=max_new_tokens,
                do_sample=sample,
                eos_token_id=self.eos_ids or None,
                pad_token_id=pad_id,
                **({"temperature": temperature, "top_p": top_p, "top_k": 0} if sample else {}),
            )
        device = next(self.model.parameters()).device
        input_ids = torch.tensor([ids], dtype=torch.long, device=device)
        with self.lock, torch.inference_mode():
            if seed is not None:
                torch.manual_seed(seed)
            out = self.model.generate(
                input_ids=input_ids, attention_mask=torch.ones_like(input_ids), generation_config=config
            )
        new = out[0, len(ids):].tolist()
        finish = "length"
        for i, t in enumerate(new):
            if t in self.eos_ids:
                new, finish = new[:i], "stop"
                break
        text = self.tokenizer.decode(new, skip_special_tokens=True).strip()
        for s in stop or []:
            if s and s in text:
                text, finish = text[: text.index(s)], "stop"
        return Completion(text=text, prompt_tokens=len(ids), completion_tokens=len(new), finish_reason=finish)


def default_model_name(name_or_path: str) -> str:
    """The id a model is served and recorded under: ``embedded`` stays as is, a path gives its folder name."""
    from mmpo.models.embedded import EMBEDDED_NAMES

    if name_or_path in EMBEDDED_NAMES:
        return name_or_path
    return Path(name_or_path.rstrip("/")).name or name_or_path
