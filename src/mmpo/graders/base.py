"""The grader interface: score a response, or compare two responses to one prompt.

A :class:`Grader` answers two questions about responses to a chat prompt:

* ``score(items) -> list[float | None]``: a number per :class:`ScoreItem` (higher = better);
* ``compare(prompt, response_a, response_b) -> float | None``: the probability that ``response_a`` is better
  than ``response_b``.

``None`` means *missing*: the grader could not produce a value (a judge call that failed or could not be parsed
after its retries). It is never replaced by a default; callers count and report it.

A grader whose scores are on a logit scale (a Bradley-Terry reward model) derives ``compare`` from scores:
``P(a > b) = sigmoid(score(a) - score(b))``. A grader that judges pairs directly (an LLM judge) overrides
``_compare_uncached``; one whose scores are not logits (a checker's 0-10 grade) sets ``compare_from_scores``
to False and says how it compares.

Without a ``cache_path`` nothing is kept between calls (equal items within one call are graded once).
Every result is cached on disk when the grader has a ``cache_path``: one JSON line per finished item,
``{"key", "value"}``, appended as soon as its batch is done (:mod:`mmpo.io`), keyed by a
hash of the grader's ``fingerprint`` and the item. A rerun reads the file and grades only what is missing;
missing values are not cached, so a rerun retries them.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from tqdm.auto import tqdm

from mmpo.data.records import Message
from mmpo.io import JsonlAppender, read_jsonl


@dataclass
class ScoreItem:
    """One response to grade: the chat ``prompt`` (ending with a user turn), the assistant's ``response`` text,
    and ``meta``: whatever else the row carries (a checker reads its task and answer from here)."""

    prompt: list[Message]
    response: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class PairItem:
    """Two responses to one prompt, for :meth:`Grader.compare_many` and :meth:`Grader.score_pairs`."""

    prompt: list[Message]
    response_a: str
    response_b: str
    meta: dict[str, Any] = field(default_factory=dict)


def sigmoid(x: float) -> float:
    """``1 / (1 + exp(-x))``, without overflow for large ``|x|``."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def item_key(fingerprint: str, kind: str, payload: Any) -> str:
    """The cache key: sha256 of the grader's fingerprint, the question kind and the item, as canonical JSON."""
    text = json.dumps([fingerprint, kind, payload], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class Grader:
    """Base class: caching, batching and progress around three overridable methods.

    Subclasses implement ``_score_uncached(items)`` (a batch of :class:`ScoreItem`, results in order) and may
    override ``_compare_uncached(pairs)`` and ``_score_pairs_uncached(pairs)``; ``_sort_key`` orders work so
    that a batch holds items of similar length. ``fingerprint`` names what determines the answers (model,
    prompt template, settings): results cached under another fingerprint are not reused.
    """

    kind = "grader"
    uses_meta = False  # True when ``meta`` can change an answer (a checker): it is then part of the cache key
    compare_from_scores = True  # P(a > b) = sigmoid(score(a) - score(b)) is meaningful for this grader

    def __init__(self, cache_path: str | Path | None = None, batch_size: int = 8, progress: bool = True):
        self.cache_path = Path(cache_path) if cache_path else None
        self.batch_size = max(1, int(batch_size))
        self.progress = progress
        self._cache: dict[str, Any] | None = None

    # --- to implement ---------------------------------------------------------------------------------

    @property
    def fingerprint(self) -> str:
        raise NotImplementedError

    def _score_uncached(self, items: list[ScoreItem]) -> list[float | None]:
        raise NotImplementedError

    def _compare_uncached(self, pairs: list[PairItem]) -> list[float | None]:
        if not self.compare_from_scores:
            raise NotImplementedError(f"{type(self).__name__} has no pairwise comparison")
        scores = self._score_pairs_uncached(pairs)
        return [None if a is None or b is None else sigmoid(a - b) for a, b in scores]

    def _score_pairs_uncached(self, pairs: list[PairItem]) -> list[tuple[float | None, float | None]]:
        flat = [ScoreItem(p.prompt, r, p.meta) for p in pairs for r in (p.response_a, p.response_b)]
        scores = self._score_uncached(flat)
        return [(scores[2 * i], scores[2 * i + 1]) for i in range(len(pairs))]

    def _sort_key(self, kind: str, item: Any) -> Any:
        """Work is done in ascending order of this key (stable); None = input order."""
        return None

    # --- the interface --------------------------------------------------------------------------------

    def score(self, items: Sequence[ScoreItem]) -> list[float | None]:
        """A score per item (higher = better), in order; None where the grader could not produce one."""
        return self._run("score", list(items), lambda it: [it.prompt, it.response, self._meta(it.meta)], self._score_uncached)

    def score_pairs(self, pairs: Sequence[PairItem]) -> list[tuple[float | None, float | None]]:
        """``(score(response_a), score(response_b))`` per pair, in order (graders that read pairs together,
        such as a reward model tokenized exactly as in training, are scored pair by pair)."""
        out = self._run(
            "score_pair", list(pairs), lambda p: [p.prompt, p.response_a, p.response_b, self._meta(p.meta)],
            lambda chunk: [list(v) for v in self._score_pairs_uncached(chunk)],
        )
        return [(None, None) if v is None else (v[0], v[1]) for v in out]

    def compare_many(self, pairs: Sequence[PairItem]) -> list[float | None]:
        """P(response_a is better than response_b) per pair, in order; None = missing."""
        return self._run("compare", list(pairs), lambda p: [p.prompt, p.response_a, p.response_b, self._meta(p.meta)], self._compare_uncached)

    def compare(self, prompt: list[Message], response_a: str, response_b: str, meta: dict[str, Any] | None = None) -> float | None:
        """P(``response_a`` is better than ``response_b``) for ``prompt``; None = missing."""
        return self.compare_many([PairItem(prompt, response_a, response_b, dict(meta or {}))])[0]

    # --- machinery ------------------------------------------------------------------------------------

    def _load_cache(self) -> dict[str, Any]:
        if self.cache_path is None:
            return {}  # no cache: nothing outlives the call (a server's grader must not grow without bound)
        if self._cache is None:
            self._cache = {}
            if self.cache_path is not None:
                for record in read_jsonl(self.cache_path):
                    if "key" in record and record.get("value") is not None:
                        self._cache[record["key"]] = record["value"]
        return self._cache

    def _run(self, kind: str, items: list[Any], payload: Callable[[Any], Any], compute: Callable[[list[Any]], list[Any]]) -> list[Any]:
        cache = self._load_cache()
        keys = [item_key(self.fingerprint, kind, payload(it)) for it in items]
        results: list[Any] = [cache.get(k) for k in keys]
        todo = [i for i, k in enumerate(keys) if k not in cache]
        # Equal items (same key) are graded once.
        first: dict[str, int] = {}
        for i in todo:
            first.setdefault(keys[i], i)
        unique = list(first.values())
        sort_keys = [self._sort_key(kind, items[i]) for i in unique]
        if all(s is not None for s in sort_keys):
            unique = [i for _, i in sorted(zip(sort_keys, unique), key=lambda t: t[0])]
        if not unique:
            return results
        appender = JsonlAppender(self.cache_path) if self.cache_path is not None else None
        bar = tqdm(total=len(unique), desc=f"{self.kind}: {kind}", unit="item", disable=not self.progress or None, leave=False)
        try:
            if appender is not None:
                appender.__enter__()
            for start in range(0, len(unique), self.chunk_size):
                chunk = unique[start : start + self.chunk_size]
                values = compute([items[i] for i in chunk])
                if len(values) != len(chunk):
                    raise RuntimeError(f"{type(self).__name__} returned {len(values)} results for {len(chunk)} items")
                done = []
                for i, value in zip(chunk, values):
                    if value is not None:
                        cache[keys[i]] = value
                        done.append({"key": keys[i], "value": value})
                if appender is not None and done:
                    appender.write_many(done)
                bar.update(len(chunk))
        finally:
            bar.close()
            if appender is not None:
                appender.__exit__(None, None, None)
        return [cache.get(k) for k in keys]

    def _meta(self, meta: dict[str, Any]) -> Any:
        return _meta_key(meta) if self.uses_meta else None

    @property
    def chunk_size(self) -> int:
        """Items per cache write: a multiple of ``batch_size`` so batches are the same with or without caching."""
        return self.batch_size * 16


def _meta_key(meta: dict[str, Any]) -> Any:
    """``meta`` as canonical JSON (for the cache key of a grader that reads it)."""
    try:
        return json.loads(json.dumps(meta, sort_keys=True, default=str))
    except (TypeError, ValueError):
        return repr(sorted(meta.items()))


def batched(items: Sequence[Any], size: int) -> Iterable[list[Any]]:
    """Consecutive slices of ``items`` of at most ``size``."""
    for start in range(0, len(items), size):
        yield list(items[start : start + size])
