"""Graders: one interface to score responses or compare two, from a reward model, an LLM judge or a checker.

``load_grader(spec)`` builds one from

* a mapping ``{"kind": "reward_model", "path": DIR, ...}``, ``{"kind": "judge", "url": URL, "model": NAME, ...}``
  or ``{"kind": "checker", "checker": "graded-tasks" | "module:function"}``; other keys go to the grader's
  constructor (``cache_path``, ``batch_size``, ``progress``, ``samples``, ``verdict_from``, ``averaging``, ...);
* a string ``reward_model:DIR``, ``judge:MODEL@URL``, ``checker:NAME``, or a bare existing directory
  (a reward model). A judge's URL may be several, separated by commas (``judge:MODEL@URL1,URL2``; in a
  mapping also a list): its requests are spread over them.

See :mod:`mmpo.graders.base` for the contract (``score``, ``compare``, missing values, caching).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmpo.errors import UserError
from mmpo.graders.base import Grader, PairItem, ScoreItem, sigmoid

__all__ = ["Grader", "PairItem", "ScoreItem", "grader_kind", "load_grader", "sigmoid"]

KINDS = ("reward_model", "judge", "checker")


def _parse_string(spec: str) -> dict[str, Any]:
    kind, sep, rest = spec.partition(":")
    if sep and kind == "reward_model":
        return {"kind": kind, "path": rest}
    if sep and kind == "checker":
        return {"kind": kind, "checker": rest}
    if sep and kind == "judge":
        model, at, url = rest.partition("@")
        if not at or not model or not url:
            raise UserError(f"grader {spec!r}: a judge is written judge:MODEL@URL")
        return {"kind": kind, "model": model, "url": url}
    if Path(spec).expanduser().is_dir():
        return {"kind": "reward_model", "path": spec}
    raise UserError(f"grader {spec!r}: expected reward_model:DIR, judge:MODEL@URL, checker:NAME or a model directory")


def grader_kind(spec: str | dict[str, Any]) -> Any:
    """The kind (one of :data:`KINDS`, as written) a grader spec names, without loading the grader."""
    return _parse_string(spec)["kind"] if isinstance(spec, str) else dict(spec).get("kind")


def load_grader(spec: str | dict[str, Any], **overrides: Any) -> Grader:
    """A grader from ``spec`` (see the module docstring); ``overrides`` are added to its settings."""
    settings = _parse_string(spec) if isinstance(spec, str) else dict(spec)
    settings.update(overrides)
    kind = settings.pop("kind", None)
    if kind not in KINDS:
        raise UserError(f"grader kind must be one of {', '.join(KINDS)} (got {kind!r})")
    try:
        if kind == "reward_model":
            from mmpo.graders.reward_model import RewardModelGrader

            return RewardModelGrader(settings.pop("path"), **settings)
        if kind == "judge":
            from mmpo.graders.judge import JudgeGrader

            return JudgeGrader(settings.pop("url"), settings.pop("model"), **settings)
        from mmpo.graders.checker import CheckerGrader

        return CheckerGrader(settings.pop("checker"), **settings)
    except KeyError as e:
        raise UserError(f"grader {kind}: missing setting {e.args[0]!r}") from None
    except TypeError as e:
        raise UserError(f"grader {kind}: {e}") from None
