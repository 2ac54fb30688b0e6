"""Synthetic preference pairs of controlled token lengths, written for both trainers.

Every pair is a one-turn chat. Text is made of whole-word vocabulary entries (`" word"` tokens), so a text of k
words is about k tokens; each pair is then measured with the tokenizer's chat template and trimmed until

* the rendered prompt fits ``max_length // 2`` (mmpo's default prompt budget, so mmpo never truncates it) and
* prompt + response (template tokens included) fits ``max_length`` (TRL's RewardTrainer drops longer pairs
  instead of truncating them, so nothing may exceed it for the two trainers to see the same tokens).

Lengths: each full sequence (prompt + chosen, prompt + rejected) is drawn uniformly from
``[fill_low * max_length, fill_high * max_length]`` and the prompt takes ``prompt_share`` of the shorter one.

``real_pairs`` builds pairs from real texts instead: ../shared/data/alpaca_graded (one instruction, two real model
outputs, the one the judge rated higher is chosen; scores are logit(p_beats_reference)), read where it lies at run
time. These are not trimmed: responses longer than max length are cut by each trainer, as a user's would be,
unless ``fit=True`` cuts them first (for TRL's RewardTrainer, which drops over-long pairs instead of cutting).

The same pairs are written twice: ``mmpo.jsonl`` in mmpo's local schema (prompt / chosen / rejected strings plus
score_chosen / score_rejected) and ``trl.jsonl`` in TRL's conversational preference format (message lists), which
TRL renders with the same chat template.
"""

from __future__ import annotations

import gzip
import json
import math
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
    fill_high: float = 1.0,
) -> list[dict[str, Any]]:
    """``n_pairs`` pairs whose rendered sequences fit ``max_length`` (see the module docstring for the lengths)."""
    rng = random.Random(seed)
    pool = word_pool(tokenizer)
    overhead_prompt, overhead_full = _chat_lengths(tokenizer, "", "")
    pairs = []
    for i in range(n_pairs):
        target_c = rng.randint(int(fill_low * max_length), int(fill_high * max_length))
        target_r = rng.randint(int(fill_low * max_length), int(fill_high * max_length))
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


def _cut(tokenizer: Any, prompt: str, response: str, budget: int) -> tuple[str, int]:
    """Drop response tokens from the end until the rendered prompt + response fits ``budget`` tokens."""
    ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    keep = len(ids)
    while True:
        _, full = _chat_lengths(tokenizer, prompt, response)
        if full <= budget or keep <= 1:
            return response, full
        keep = max(1, keep - (full - budget))
        response = tokenizer.decode(ids[:keep])


def real_pairs(tokenizer: Any, path: Path, n_pairs: int, max_length: int, seed: int = 0, fit: bool = False) -> list[dict[str, Any]]:
    """``n_pairs`` pairs from alpaca_graded's ``responses.jsonl.gz`` (see the module docstring).

    Instructions are taken in a seeded order; those whose rendered prompt exceeds ``max_length // 2`` (mmpo's
    default prompt budget) are skipped: no trainer then cuts a prompt (mmpo would keep a long prompt's end, TRL the
    sequence's start), so both see the same tokens. ``chosen_tokens`` / ``rejected_tokens`` are the rendered lengths before any cut.
    """
    with gzip.open(path, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    rng = random.Random(seed)
    rng.shuffle(rows)
    logit = lambda p: math.log(min(max(p, 1e-4), 1 - 1e-4) / (1 - min(max(p, 1e-4), 1 - 1e-4)))  # noqa: E731
    pairs = []
    for row in rows:
        prompt = row["instruction"].strip()
        prompt_tokens = _chat_lengths(tokenizer, prompt, "")[0]
        outputs = sorted((o["p_beats_reference"], o["output"].strip()) for o in row["outputs"].values() if o["output"].strip())
        if prompt_tokens > max_length // 2 or len(outputs) < 2:
            continue
        (p_a, a), (p_b, b) = rng.sample(outputs, 2)
        if p_a == p_b:
            continue
        (p_c, chosen), (p_r, rejected) = sorted([(p_a, a), (p_b, b)], reverse=True)
        lengths = [_chat_lengths(tokenizer, prompt, text)[1] for text in (chosen, rejected)]
        if fit:
            chosen, _ = _cut(tokenizer, prompt, chosen, max_length)
            rejected, _ = _cut(tokenizer, prompt, rejected, max_length)
        pairs.append({"prompt": prompt, "chosen": chosen, "rejected": rejected, "score_chosen": logit(p_c),
                      "score_rejected": logit(p_r), "prompt_tokens": prompt_tokens, "chosen_tokens": lengths[0],
                      "rejected_tokens": lengths[1]})
        if len(pairs) == n_pairs:
            return pairs
    raise RuntimeError(f"{path}: only {len(pairs)} usable pairs, {n_pairs} asked")


def token_stats(pairs: list[dict[str, Any]], max_length: int) -> dict[str, float]:
    """Per pair, as the trainers see it after cutting at ``max_length`` (two rows, the prompt in each):
    mean tokens, mean prompt tokens, the prompts' share of the tokens, and the share of chosen / rejected cut."""
    seq = lambda n: min(n, max_length)  # noqa: E731
    tokens = [seq(p["chosen_tokens"]) + seq(p["rejected_tokens"]) for p in pairs]
    return {
        "mean_tokens_per_pair": sum(tokens) / len(pairs),
        "mean_prompt_tokens": sum(p["prompt_tokens"] for p in pairs) / len(pairs),
        "prompt_share": sum(2 * p["prompt_tokens"] for p in pairs) / sum(tokens),
        "chosen_cut": sum(p["chosen_tokens"] > max_length for p in pairs) / len(pairs),
        "rejected_cut": sum(p["rejected_tokens"] > max_length for p in pairs) / len(pairs),
    }


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
