"""``n`` answers to one chat request (the ``n`` of OpenAI's chat completions) from one batched ``generate``.

The prompt is rendered and checked against the context exactly as :meth:`mmpo.models.chat.ChatModel.generate`
does it, then generated ``n`` times in one batch (``num_return_sequences = n``), sampled with the request's
``temperature`` and ``top_p`` (``top_k`` off). Each row follows its own :class:`mmpo.models.chat.TextTracker`,
so stop strings, the EOS ids and the finish reason work per answer as they do for one answer; the server's time
limit and a client that hangs up stop the whole batch. ``seed`` seeds the batch (``torch.manual_seed`` right
before ``generate``), so the same request with the same seed gives the same ``n`` answers. Greedy decoding
(``temperature`` below :data:`mmpo.models.chat.GREEDY_BELOW`) has one answer, returned ``n`` times.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from mmpo.data.records import Message
from mmpo.models.chat import GREEDY_BELOW, ChatModel, Completion, ContextOverflow, PromptTooLong, TextTracker


def token_budget(chat: ChatModel, prompt_tokens: int, max_new_tokens: int | None, strict_length: bool) -> int:
    """New tokens the answer may have: ``max_new_tokens`` or, when None, all the context leaves.

    Raises :class:`PromptTooLong` when the prompt fills the context, :class:`ContextOverflow` when
    ``strict_length`` and prompt + ``max_new_tokens`` exceed it (the rules of ``ChatModel.generate``).
    """
    if not chat.max_positions:
        if max_new_tokens is None:
            raise ValueError("this model does not say its context length: give max_new_tokens")
        return max_new_tokens
    room = chat.max_positions - prompt_tokens
    if room < 1:
        raise PromptTooLong(f"prompt of {prompt_tokens} tokens does not fit the model's context of {chat.max_positions}")
    if max_new_tokens is None:
        return room
    if strict_length and max_new_tokens > room:
        raise ContextOverflow(prompt_tokens, max_new_tokens, chat.max_positions)
    return min(max_new_tokens, room)


def _row_stops(trackers: list[TextTracker], deadline: float | None, cancelled: Callable[[], bool] | None, why: dict[str, str]) -> Any:
    """A stopping criterion that feeds each row's newest token to its tracker and ends a row at its stop string;
    every row at the deadline or once ``cancelled()`` (``why["reason"]`` records which)."""
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


def generate_choices(
    chat: ChatModel,
    messages: list[Message],
    n: int,
    max_new_tokens: int | None = 512,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int | None = None,
    stop: list[str] | None = None,
    strict_length: bool = False,
    deadline: float | None = None,
    cancelled: Callable[[], bool] | None = None,
    logprobs: int | None = None,
) -> list[Completion]:
    """``n`` answers to ``messages``, each a :class:`Completion` as ``ChatModel.generate`` returns one (the
    arguments mean what they mean there). ``prompt_tokens`` is the prompt's length in every answer."""
    import torch
    from transformers import GenerationConfig

    if n < 1:
        raise ValueError("n must be at least 1")
    if temperature < 0 or not 0 < top_p <= 1:
        raise ValueError("temperature must be >= 0 and top_p in (0, 1]")
    ids = chat.prompt_ids(messages)
    budget = token_budget(chat, len(ids), max_new_tokens, strict_length)
    sample = temperature >= GREEDY_BELOW
    rows = n if sample else 1
    pad_id = chat.tokenizer.pad_token_id if chat.tokenizer.pad_token_id is not None else (chat.eos_ids or [0])[0]
    config = GenerationConfig(
        max_new_tokens=budget,
        do_sample=sample,
        num_return_sequences=rows,
        eos_token_id=chat.eos_ids or None,
        pad_token_id=pad_id,
        **({"temperature": temperature, "top_p": top_p, "top_k": 0} if sample else {}),
    )
    if logprobs is not None:
        config.return_dict_in_generate = True
        config.output_logits = True
    trackers = [TextTracker(chat.tokenizer, chat.eos_ids, stop) for _ in range(rows)]
    why: dict[str, str] = {}
    device = next(chat.model.parameters()).device
    input_ids = torch.tensor([ids], dtype=torch.long, device=device)
    with chat.lock, torch.inference_mode():
        if seed is not None:
            torch.manual_seed(seed)
        out = chat.model.generate(
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
        if logprobs is not None:
            # The row's logits as a batch of one: the shape ChatModel's logprobs reader takes.
            token_logprobs = chat._logprobs(tuple(step[row : row + 1] for step in out.logits), tracker.ids, logprobs)
        completions.append(Completion(text=text, prompt_tokens=len(ids), completion_tokens=len(tracker.ids),
                                      finish_reason=finish, logprobs=token_logprobs))
    return completions if sample else completions * n
