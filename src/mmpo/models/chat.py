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

:func:`generate_batch` is the batched generation of training loops: k samples per prompt, or one greedy answer
per prompt. The prompts are rendered as :meth:`ChatModel.prompt_ids` renders them, left-padded into one batch
and passed to ``model.generate``. Each batch is seeded on its own (``torch.manual_seed(seed)`` right before
``generate``), so a batch regenerated after a crash gives the same tokens as the first time, whatever ran
before it in the process.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from mmpo.data.records import Message
from mmpo.errors import UserError

# FastChat treats temperatures below 1e-4 as greedy decoding; so do we.
GREEDY_BELOW = 1e-4
ROLES = ("system", "user", "assistant")


class PromptTooLong(ValueError):
    """The rendered prompt leaves no room for a single generated token within the model's context."""


class ContextOverflow(ValueError):
    """Prompt tokens + the requested ``max_new_tokens`` exceed the model's context (OpenAI and vLLM answer 400)."""

    def __init__(self, prompt_tokens: int, max_new_tokens: int, context: int):
        super().__init__(
            f"This model's maximum context length is {context} tokens. However, you requested "
            f"{prompt_tokens + max_new_tokens} tokens ({prompt_tokens} in the messages, {max_new_tokens} in the "
            "completion). Please reduce the length of the messages or completion."
        )
        self.prompt_tokens, self.max_new_tokens, self.context = prompt_tokens, max_new_tokens, context


@dataclass
class Completion:
    """One generated answer: its text, token counts, why generation stopped ("stop", "length", or, when the
    caller's limits cut it, "timeout" / "cancelled"), and per-token log-probabilities when asked for."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    logprobs: list[dict[str, Any]] | None = None


class TextTracker:
    """Follows generation token by token: the answer text so far (decoded, stripped, cut at the first stop
    string), what of it is safe to send (nothing a stop string or an incomplete UTF-8 character could still
    change), and whether a stop string has ended the answer.

    The same object serves plain and streamed requests, so a stream's pieces join to exactly the text a plain
    request returns.
    """

    def __init__(self, tokenizer: Any, eos_ids: list[int], stop: list[str] | None, on_text: Callable[[str], None] | None = None):
        self.tokenizer = tokenizer
        self.eos_ids = set(eos_ids)
        self.stop = [s for s in (stop or []) if s]
        self.on_text = on_text
        self.ids: list[int] = []
        self.saw_eos = False
        self.stopped = False  # a stop string was generated
        self.sent = 0

    def text(self) -> str:
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True).strip()
        for s in self.stop:
            if s in text:
                text = text[: text.index(s)]
                self.stopped = True
        return text

    def add(self, token_id: int) -> None:
        if self.saw_eos or self.stopped:
            return
        if token_id in self.eos_ids:
            self.saw_eos = True
            return
        self.ids.append(token_id)
        text = self.text()
        if self.stopped:
            self._send(text)
            return
        safe = len(text)
        hold = max((len(s) for s in self.stop), default=1) - 1
        safe -= hold
        while safe > 0 and text[safe - 1] == "\ufffd":  # an incomplete UTF-8 character
            safe -= 1
        # Trailing blanks may be stripped at the end; keep them until more text follows.
        safe = min(safe, len(text[:safe].rstrip()))
        if safe > self.sent:
            self._send(text[:safe])

    def _send(self, text: str) -> None:
        if self.on_text is not None and len(text) > self.sent:
            self.on_text(text[self.sent :])
        self.sent = max(self.sent, len(text))

    def finish(self) -> str:
        text = self.text()
        self._send(text)
        return text


def token_budget(max_positions: int | None, prompt_tokens: int, max_new_tokens: int | None, strict_length: bool) -> int:
    """New tokens an answer may have: ``max_new_tokens`` or, when None, all the context leaves.

    Raises :class:`PromptTooLong` when the prompt fills the context, :class:`ContextOverflow` when
    ``strict_length`` and prompt + ``max_new_tokens`` exceed it; otherwise the budget is cut to fit.
    """
    if max_new_tokens is not None and max_new_tokens < 1:
        raise ValueError("max_new_tokens must be at least 1")
    if not max_positions:
        if max_new_tokens is None:
            raise ValueError("this model does not say its context length: give max_new_tokens")
        return max_new_tokens
    room = max_positions - prompt_tokens
    if room < 1:
        raise PromptTooLong(f"prompt of {prompt_tokens} tokens does not fit the model's context of {max_positions}")
    if max_new_tokens is None:
        return room
    if strict_length and max_new_tokens > room:
        raise ContextOverflow(prompt_tokens, max_new_tokens, max_positions)
    return min(max_new_tokens, room)


def _row_stops(trackers: list[TextTracker], deadline: float | None, cancelled: Callable[[], bool] | None, why: dict[str, str]) -> Any:
    """A stopping criterion that feeds each row's newest token to its tracker and ends a row at its EOS or stop
    string; every row past ``deadline`` (time.monotonic) or once ``cancelled()`` is true (``why["reason"]``
    records which)."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class _Stop(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            for tracker, token_id in zip(trackers, input_ids[:, -1].tolist()):
                tracker.add(int(token_id))  # a finished row's padding is ignored: its tracker saw EOS or a stop
            done = [t.stopped for t in trackers]
            if deadline is not None and time.monotonic() > deadline:
                why["reason"], done = "timeout", [True] * len(done)
            elif cancelled is not None and cancelled():
                why["reason"], done = "cancelled", [True] * len(done)
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([_Stop()])


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
        from mmpo.models.logps import keep_head_input_contiguous

        self.model = model.eval()
        keep_head_input_contiguous(model)
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
        from mmpo.models.loading import is_adapter_dir, load_tokenizer

        path = resolve_model_path(name_or_path)
        device, torch_dtype = _pick_device_and_dtype(device, dtype)
        tokenizer = load_tokenizer(name_or_path)
        try:
            if is_adapter_dir(path):
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
        max_new_tokens: int | None = 512,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: list[str] | None = None,
        model_defaults: bool = False,
        strict_length: bool = False,
        deadline: float | None = None,
        cancelled: Callable[[], bool] | None = None,
        on_text: Callable[[str], None] | None = None,
        logprobs: int | None = None,
    ) -> Completion:
        """The assistant's next message for ``messages``.

        Generation ends at an EOS id, after ``max_new_tokens`` tokens, at the first of the ``stop`` strings (cut
        from the text, as OpenAI does), past ``deadline`` (a ``time.monotonic()`` value; finish_reason
        "timeout") or once ``cancelled()`` returns true (checked every token; "cancelled"). ``max_new_tokens``
        None means "what the context leaves". With ``strict_length`` a prompt + ``max_new_tokens`` over the
        model's context raises :class:`ContextOverflow`; without it the budget is cut to fit. ``on_text``
        receives the answer piece by piece as it is generated (the pieces join to ``Completion.text``).
        ``logprobs`` = k >= 0 adds each generated token's log-probability under the model (before temperature
        and top-p) with its ``k`` most likely alternatives, in OpenAI's ``logprobs.content`` shape.
        """
        return self.generate_n(messages, 1, max_new_tokens, temperature, top_p, seed, stop, model_defaults, strict_length,
                               deadline, cancelled, on_text, logprobs)[0]

    def generate_n(
        self,
        messages: list[Message],
        n: int,
        max_new_tokens: int | None = 512,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: list[str] | None = None,
        model_defaults: bool = False,
        strict_length: bool = False,
        deadline: float | None = None,
        cancelled: Callable[[], bool] | None = None,
        on_text: Callable[[str], None] | None = None,
        logprobs: int | None = None,
    ) -> list[Completion]:
        """``n`` answers to ``messages`` (OpenAI's ``n``) from one batched ``generate``
        (``num_return_sequences = n``), each ended and scored per row as :meth:`generate` ends one answer; the
        deadline and ``cancelled`` stop the whole batch. ``seed`` seeds the batch (``torch.manual_seed`` right
        before ``generate``), so the same call gives the same answers. Greedy decoding (``temperature`` below
        :data:`GREEDY_BELOW`) has one answer, returned ``n`` times. ``on_text`` streams one answer: n = 1 only.
        """
        import torch
        from transformers import GenerationConfig

        if n < 1:
            raise ValueError("n must be at least 1")
        if on_text is not None and n != 1:
            raise ValueError("on_text streams one answer: n must be 1")
        if temperature < 0 or not 0 < top_p <= 1:
            raise ValueError("temperature must be >= 0 and top_p in (0, 1]")
        ids = self.prompt_ids(messages)
        budget = token_budget(self.max_positions, len(ids), max_new_tokens, strict_length)
        sample = temperature >= GREEDY_BELOW
        rows = n if sample else 1
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else (self.eos_ids or [0])[0]
        if model_defaults:
            config = copy.deepcopy(self.model.generation_config)
            config.update(max_new_tokens=budget, do_sample=sample, eos_token_id=self.eos_ids or None, pad_token_id=pad_id)
            if sample:
                config.temperature = temperature
        else:
            config = GenerationConfig(
                max_new_tokens=budget,
                do_sample=sample,
                eos_token_id=self.eos_ids or None,
                pad_token_id=pad_id,
                **({"temperature": temperature, "top_p": top_p, "top_k": 0} if sample else {}),
            )
        config.num_return_sequences = rows
        if logprobs is not None:
            config.return_dict_in_generate = True
            config.output_logits = True
        trackers = [TextTracker(self.tokenizer, self.eos_ids, stop, on_text) for _ in range(rows)]
        why: dict[str, str] = {}
        device = next(self.model.parameters()).device
        input_ids = torch.tensor([ids], dtype=torch.long, device=device)
        with self.lock, torch.inference_mode():
            if seed is not None:
                torch.manual_seed(seed)
            out = self.model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                generation_config=config,
                stopping_criteria=_row_stops(trackers, deadline, cancelled, why),
            )
        completions = []
        for row, tracker in enumerate(trackers):
            text = tracker.finish()
            finish = "stop" if tracker.saw_eos or tracker.stopped else why.get("reason", "length")
            token_logprobs = None
            if logprobs is not None:  # the row's logits as a batch of one
                token_logprobs = self._logprobs(tuple(step[row : row + 1] for step in out.logits), tracker.ids, logprobs)
            completions.append(Completion(text=text, prompt_tokens=len(ids), completion_tokens=len(tracker.ids),
                                          finish_reason=finish, logprobs=token_logprobs))
        return completions if sample else completions * n

    def _logprobs(self, logits: tuple[Any, ...], new: list[int], top: int | None) -> list[dict[str, Any]]:
        """OpenAI's ``logprobs.content``: per generated token ``{token, logprob, bytes, top_logprobs}``."""
        import torch

        def entry(token_id: int, logprob: float) -> dict[str, Any]:
            token = self.tokenizer.decode([token_id])
            return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}

        content = []
        for step, token_id in enumerate(new):
            lp = torch.log_softmax(logits[step][0].float(), dim=-1)
            item = entry(token_id, float(lp[token_id]))
            if top:
                values, indices = torch.topk(lp, min(top, lp.shape[-1]))
                item["top_logprobs"] = [entry(int(i), float(v)) for v, i in zip(values, indices)]
            else:
                item["top_logprobs"] = []
            content.append(item)
        return content


def default_model_name(name_or_path: str) -> str:
    """The id a model is served and recorded under: ``embedded`` stays as is, a path gives its folder name."""
    from mmpo.models.embedded import EMBEDDED_NAMES

    if name_or_path in EMBEDDED_NAMES:
        return name_or_path
    return Path(name_or_path.rstrip("/")).name or name_or_path


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

    ``chat`` is a :class:`ChatModel` (model, tokenizer, ``eos_ids``, ``prompt_ids``).
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
