"""Turn preference pairs into token ids with the tokenizer's chat template.

A pair becomes ``prompt_ids`` + ``chosen_ids`` / ``rejected_ids``. The prompt is cut from the left (the end
of a conversation matters most), responses from the right, so ``len(prompt) + len(response) <= max_length``.
Every cut is counted in :class:`TruncationStats` for the data report. With ``over_length="drop"`` a pair that
would need any cut is dropped (and counted) instead: a reward model reads its score at the last token, so a cut
answer is scored mid-sentence (see docs/data.md, "Over-length pairs").
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from mmpo.data.records import Message, PreferenceGroup, PreferencePair
from mmpo.errors import DataError

# Used when a tokenizer has no chat template (tiny test tokenizers, encoder backbones).
_PLAIN_ROLES = {"system": "System", "user": "User", "assistant": "Assistant"}

OVER_LENGTH = ("truncate", "drop")


@dataclass
class TokenizedPair:
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    p: float
    margin: float | None
    row: int


@dataclass
class TruncationStats:
    pairs: int = 0
    prompt_truncated: int = 0
    response_truncated: int = 0
    dropped_no_room: int = 0
    dropped_over_length: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def _plain_chat(messages: list[Message], add_generation_prompt: bool) -> str:
    text = "".join(f"{_PLAIN_ROLES.get(m['role'], m['role'])}: {m['content']}\n" for m in messages)
    return text + ("Assistant:" if add_generation_prompt else "")


def render_prompt(tokenizer: Any, prompt: list[Message]) -> str:
    """The prompt as text, ending where the assistant's answer starts."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    return _plain_chat(prompt, add_generation_prompt=True)


def render_response(tokenizer: Any, prompt: list[Message], response: list[Message], prompt_text: str) -> str:
    """The response's own text: the rendered full chat minus the rendered prompt."""
    if getattr(tokenizer, "chat_template", None):
        full = tokenizer.apply_chat_template(prompt + response, tokenize=False)
    else:
        full = prompt_text + " " + " ".join(m["content"] for m in response) + (tokenizer.eos_token or "")
    if not full.startswith(prompt_text):
        # Templates that rewrite earlier turns (e.g. drop reasoning) break the prefix property.
        raise ValueError("chat template does not render the prompt as a prefix of prompt + response")
    return full[len(prompt_text):]


def _ids(tokenizer: Any, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _encode(tokenizer: Any, prompt: list[Message], responses: list[list[Message]], source: str, row: int,
            cache: dict | None) -> tuple[list[int], list[list[int]]]:
    """Prompt ids and each response's ids before any cut. ``cache`` memoizes them by prompt and by (prompt,
    answer): scored-response data repeats each answer in many pairs (17 for 18 answers), so each is tokenized once."""
    prompt_key = json.dumps(prompt, sort_keys=True)
    if cache is not None and prompt_key in cache:
        prompt_text, prompt_ids = cache[prompt_key]
    else:
        prompt_text = render_prompt(tokenizer, prompt)
        prompt_ids = _ids(tokenizer, prompt_text)
        if tokenizer.bos_token_id is not None and getattr(tokenizer, "add_bos_token", False) and (
            not prompt_ids or prompt_ids[0] != tokenizer.bos_token_id
        ):
            prompt_ids = [tokenizer.bos_token_id] + prompt_ids
        if cache is not None:
            cache[prompt_key] = (prompt_text, prompt_ids)
    out = []
    for response in responses:
        key = (prompt_key, json.dumps(response, sort_keys=True))
        if cache is not None and key in cache:
            out.append(list(cache[key]))
            continue
        try:
            ids = _ids(tokenizer, render_response(tokenizer, prompt, response, prompt_text))
        except ValueError as e:
            raise DataError(source or "data", row, "prompt", str(e)) from None
        if cache is not None:
            cache[key] = ids
        out.append(list(ids))
    return list(prompt_ids), out


def _cut_prompt(tokenizer: Any, prompt_ids: list[int], max_prompt_length: int) -> list[int]:
    """The prompt's last ``max_prompt_length`` tokens, keeping a leading BOS: models expect it at position 0."""
    if len(prompt_ids) <= max_prompt_length:
        return prompt_ids
    head = prompt_ids[:1] if prompt_ids[0] == tokenizer.bos_token_id else []
    return head + prompt_ids[len(prompt_ids) - (max_prompt_length - len(head)):]


def tokenize_pair(
    tokenizer: Any,
    pair: PreferencePair,
    max_length: int,
    max_prompt_length: int,
    stats: TruncationStats | None = None,
    over_length: str = "truncate",
    cache: dict | None = None,
) -> TokenizedPair | None:
    """Token ids for one pair, truncated to fit ``max_length``; None when the pair cannot fit at all.

    The prompt keeps its last ``max_prompt_length`` tokens; each response keeps its first
    ``max_length - len(prompt_ids)`` tokens. ``over_length="drop"``: a pair whose prompt + longer answer exceeds ``max_length`` is None
    (counted); one that fits is kept whole. ``cache``: a dict shared across calls memoizes the ids (one tokenizer).
    """
    if max_prompt_length >= max_length:
        raise ValueError(f"max_prompt_length ({max_prompt_length}) must be below max_length ({max_length})")
    stats = stats if stats is not None else TruncationStats()
    stats.pairs += 1
    prompt_ids, (chosen_ids, rejected_ids) = _encode(tokenizer, pair.prompt, [pair.chosen, pair.rejected], pair.source, pair.row, cache)
    if over_length == "drop":
        # Whole sequences only: a pair that fits in max_length is kept uncut (its prompt may pass the prompt budget).
        if len(prompt_ids) + max(len(chosen_ids), len(rejected_ids)) > max_length:
            stats.dropped_over_length += 1
            return None
        if not chosen_ids or not rejected_ids:
            stats.dropped_no_room += 1
            return None
        return TokenizedPair(prompt_ids, chosen_ids, rejected_ids, pair.p, pair.margin, pair.row)
    if len(prompt_ids) > max_prompt_length:
        prompt_ids = _cut_prompt(tokenizer, prompt_ids, max_prompt_length)
        stats.prompt_truncated += 1
    room = max_length - len(prompt_ids)
    if room <= 0 or not chosen_ids or not rejected_ids:
        stats.dropped_no_room += 1
        return None
    if len(chosen_ids) > room or len(rejected_ids) > room:
        stats.response_truncated += 1
    return TokenizedPair(prompt_ids, chosen_ids[:room], rejected_ids[:room], pair.p, pair.margin, pair.row)


def tokenize_group(
    tokenizer: Any, group: PreferenceGroup, max_length: int, max_prompt_length: int, over_length: str = "truncate",
    cache: dict | None = None,
) -> dict[str, Any] | None:
    """A group's feature ``{prompt_ids, response_ids, scores, row}`` under :func:`tokenize_pair`'s rule, response
    by response, so every pair of the group is tokenized as its pair would be: ``over_length="drop"`` leaves out a
    response whose prompt + response exceeds ``max_length`` (kept whole otherwise); ``truncate`` cuts the prompt
    to its last ``max_prompt_length`` tokens and each response to the room left. None when fewer than two
    responses remain."""
    prompt_ids, responses = _encode(tokenizer, group.prompt, group.responses, group.source, group.row, cache)
    if over_length == "drop":
        kept = [(ids, s) for ids, s in zip(responses, group.scores) if ids and len(prompt_ids) + len(ids) <= max_length]
    else:
        prompt_ids = _cut_prompt(tokenizer, prompt_ids, max_prompt_length)
        room = max_length - len(prompt_ids)
        kept = [(ids[:room], s) for ids, s in zip(responses, group.scores) if ids] if room > 0 else []
    if len(kept) < 2:
        return None
    return {"prompt_ids": prompt_ids, "response_ids": [ids for ids, _ in kept], "scores": [s for _, s in kept], "row": group.row}
