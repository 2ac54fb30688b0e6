"""Synthetic preference pairs of controlled token lengths, written for both trainers.

Every pair is a one-turn chat. Text is made of whole-word vocabulary entries (`" word"` tokens), so a text of k
words is about k tokens; each pair is then measured with the tokenizer's chat template and trimmed until

* the rendered prompt fits ``max_length // 2`` (mmpo's default prompt budget, so mmpo never truncates it) and
* prompt + response (template tokens included) fits ``max_length`` (TRL's RewardTrainer drops longer pairs
  instead of truncating them, so nothing may exceed it for the two trainers to see the same tokens).

Lengths: each full sequence (prompt + chosen, prompt + rejected) is drawn uniformly from
``[fill_low * max_length, max_length]`` and the prompt takes ``prompt_share`` of the shorter one. The same pairs
are written twice: ``mmpo.jsonl`` in mmpo's local schema (prompt / chosen / rejected strings plus
score_chosen / score_rejected) and ``trl.jsonl`` in TRL's conversational preference format (message lists), which
TRL renders with the same chat template.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

_WORD = re.compile(r"^Ġ[a-z]{3,10}$")


def word_pool(tokenizer: Any) -> list[str]:
    """Vocabulary entries that are a space plus 3-10 lowercase letters, each re-encoding to exactly one token."""
    pool = []
    for token in tokenizer.get_vocab():
        if _WORD.match(token):
            word = " " + token[1:]
            if len(tokenizer(word, add_special_tokens=False)["input_ids"]) == 1:
                pool.append(word)
    pool.sort()
    if len(pool) < 1000:
        raise RuntimeError(f"only {len(pool)} single-token words in the vocabulary")
    return pool


def _chat_lengths(tokenizer: Any, prompt: str, response: str) -> tuple[int, int]:
    """(prompt tokens, prompt + response tokens) as rendered by the chat template."""
    messages = [{"role": "user", "content": prompt}]
    prompt_text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    full_text = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": response}], tokenize=False)
    ids = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    return ids(prompt_text), ids(full_text)


def _fit(tokenizer: Any, prompt_words: list[str], response_words: list[str], budget: int) -> tuple[str, int]:
    """Drop response words until the rendered prompt + response fits ``budget`` tokens."""
    while True:
        response = "".join(response_words).strip()
        _, full = _chat_lengths(tokenizer, "".join(prompt_words).strip(), response)
        if full <= budget or len(response_words) <= 1:
            return response, full
        response_words = response_words[: len(response_words) - (full - budget)]


def make_pairs(
    tokenizer: Any,
    n_pairs: int,
    max_length: int,
    seed: int = 0,
    fill_low: float = 0.6,
    prompt_share: float = 0.3,
) -> list[dict[str, Any]]:
    """``n_pairs`` pairs whose rendered sequences fit ``max_length`` (see the module docstring for the lengths)."""
    rng = random.Random(seed)
    pool = word_pool(tokenizer)
    overhead_prompt, overhead_full = _chat_lengths(tokenizer, "", "")
    pairs = []
    for i in range(n_pairs):
        target_c = rng.randint(int(fill_low * max_length), max_length)
        target_r = rng.randint(int(fill_low * max_length), max_length)
        prompt_budget = min(max_length // 2, int(prompt_share * min(target_c, target_r)))
        n_prompt_words = max(1, prompt_budget - overhead_prompt)
        prompt_words = [rng.choice(pool) for _ in range(n_prompt_words)]
        prompt = "".join(prompt_words).strip()
        while _chat_lengths(tokenizer, prompt, "")[0] > max_length // 2:
            prompt_words = prompt_words[:-1]
            prompt = "".join(prompt_words).strip()
        prompt_tokens = _chat_lengths(tokenizer, prompt, "")[0]
        responses, lengths = [], []
        for target in (target_c, target_r):
            n_words = max(1, target - prompt_tokens - (overhead_full - overhead_prompt))
            text, full = _fit(tokenizer, prompt_words, [rng.choice(pool) for _ in range(n_words)], max_length)
            responses.append(text)
            lengths.append(full)
        score_c, score_r = sorted(rng.sample(range(1, 11), 2), reverse=True)
        pairs.append(
            {
                "prompt": prompt,
                "chosen": responses[0],
                "rejected": responses[1],
                "score_chosen": float(score_c),
                "score_rejected": float(score_r),
                "prompt_tokens": prompt_tokens,
                "chosen_tokens": lengths[0],
                "rejected_tokens": lengths[1],
            }
        )
        if i == 0 and max(lengths) > max_length:
            raise RuntimeError(f"pair 0 is {max(lengths)} tokens, over max_length {max_length}")
    return pairs


def write_pairs(pairs: list[dict[str, Any]], directory: Path) -> dict[str, Path]:
    """Write ``mmpo.jsonl`` (local schema) and ``trl.jsonl`` (conversational prompt/chosen/rejected)."""
    directory.mkdir(parents=True, exist_ok=True)
    ours, theirs = directory / "mmpo.jsonl", directory / "trl.jsonl"
    with ours.open("w") as f:
        for p in pairs:
            row = {k: p[k] for k in ("prompt", "chosen", "rejected", "score_chosen", "score_rejected")}
            f.write(json.dumps(row) + "\n")
    with theirs.open("w") as f:
        for p in pairs:
            row = {
                "prompt": [{"role": "user", "content": p["prompt"]}],
                "chosen": [{"role": "assistant", "content": p["chosen"]}],
                "rejected": [{"role": "assistant", "content": p["rejected"]}],
            }
            f.write(json.dumps(row) + "\n")
    return {"mmpo": ours, "trl": theirs}
