"""A checker as a grader: a Python callable ``fn(meta, response) -> float | None`` that grades a response from
what the row says about its task (``meta``: the row's other fields).

``mmpo.graders.graded_tasks.grade`` is one (the graded-tasks checker reads ``task`` and ``answer`` from the row;
name it ``graded-tasks``). A checker's grades are not logits, so ``compare`` does not take a sigmoid of their
difference: it is 1.0 when ``a`` grades higher, 0.0 when lower, 0.5 on a tie (a deterministic checker is
certain of its order), None when either grade is missing.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

from mmpo.errors import UserError
from mmpo.graders.base import Grader, PairItem, ScoreItem

Checker = Callable[[dict[str, Any], str], "float | None"]
ALIASES = {"graded-tasks": "mmpo.graders.graded_tasks:grade"}


def import_checker(name: str) -> tuple[str, Checker]:
    """``(qualified name, callable)`` for ``module:function`` or an alias (``graded-tasks``)."""
    target = ALIASES.get(name, name)
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise UserError(f"checker {name!r}: expected module:function or one of {', '.join(ALIASES)}")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise UserError(f"checker {name!r}: cannot import {target} ({e})") from None
    if not callable(fn):
        raise UserError(f"checker {name!r}: {target} is not callable")
    return target, fn


class CheckerGrader(Grader):
    """Grades with ``fn(meta, response)``; a checker that raises UserError (e.g. a row without its task) stops
    the run with that message, any other exception is a bug in the checker and propagates."""

    kind = "checker"
    uses_meta = True
    compare_from_scores = False

    def __init__(self, checker: str | Checker, **kwargs: Any):
        super().__init__(**kwargs)
        if isinstance(checker, str):
            self.name, self.fn = import_checker(checker)
        else:
            self.name, self.fn = f"{getattr(checker, '__module__', '?')}:{getattr(checker, '__qualname__', repr(checker))}", checker

    @property
    def fingerprint(self) -> str:
        return f"checker:{self.name}"

    def _score_uncached(self, items: list[ScoreItem]) -> list[float | None]:
        out: list[float | None] = []
        for item in items:
            value = self.fn(item.meta, item.response)
            out.append(None if value is None else float(value))
        return out

    def _compare_uncached(self, pairs: list[PairItem]) -> list[float | None]:
        out: list[float | None] = []
        for a, b in self._score_pairs_uncached(pairs):
            out.append(None if a is None or b is None else (1.0 if a > b else 0.0 if a < b else 0.5))
        return out
