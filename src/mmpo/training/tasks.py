"""The training tasks by name: ``rm`` (reward model), ``dpo`` (policy from pairs), ``online`` (rounds of
sample -> grade -> pair -> train). The CLI, ``mmpo compare``, ``mmpo sweep``, the benchmarks and the Python
API (:func:`train_task`) pick a task's config class and entry point here. Importing this module is light: the
classes and entry points are imported when asked for.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from mmpo.errors import UserError


@dataclass(frozen=True)
class TaskEntry:
    """One task: ``config`` and ``entry`` as ``module:attribute``; ``loss_kind`` is the loss registry's kind of
    the model it trains (``rm`` / ``policy``)."""

    name: str
    config: str
    entry: str
    loss_kind: str

    @property
    def config_class(self) -> type:
        return _attribute(self.config)

    @property
    def train(self) -> Callable[..., Any]:
        return _attribute(self.entry)


def _attribute(path: str) -> Any:
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


TASKS: dict[str, TaskEntry] = {
    "rm": TaskEntry("rm", "mmpo.config:RMConfig", "mmpo.training.rm:train_reward_model", "rm"),
    "dpo": TaskEntry("dpo", "mmpo.config:DPOConfig", "mmpo.training.dpo:train_policy", "policy"),
    "online": TaskEntry("online", "mmpo.training.online:OnlineConfig", "mmpo.training.online:train_online", "policy"),
}
"""Every training task by name (``mmpo rm``, ``mmpo dpo``, ``mmpo online``, ``mmpo compare --kind``)."""


def task(name: str) -> TaskEntry:
    """The task called ``name``; a ValueError naming the choices for any other."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}: choose {', '.join(TASKS)}")
    return TASKS[name]


def inline_data_file(rows: list[dict[str, Any]]) -> str:
    """Rows given in memory, written once as JSONL under ``<cache>/data/inline-<hash>.jsonl``; returns the path.

    The name is the hash of the rows, so the same rows give the same ``data`` setting and a rerun resumes or
    reuses its run directory (whose files a fresh start deletes, so the rows cannot live there).
    """
    from mmpo.io import write_jsonl_atomic
    from mmpo.paths import cache_dir

    text = "".join(json.dumps(row, sort_keys=True, default=str) + "\n" for row in rows)
    path = cache_dir() / "data" / f"inline-{hashlib.sha256(text.encode()).hexdigest()[:16]}.jsonl"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_jsonl_atomic(path, rows)
    return str(path)


def data_setting(data: Any) -> Any:
    """The ``data`` config value for ``data``: a path or data spec as it is, a ``datasets.Dataset`` or a list of
    dicts (one pair or one scored response a row, as in a JSONL file) written by :func:`inline_data_file`."""
    if isinstance(data, (str, os.PathLike)):
        return str(data)
    if isinstance(data, dict):
        return data  # a data spec ({path: ..., columns: ...})
    rows = [dict(row) for row in data]
    if not rows:
        raise UserError("data: no rows given")
    for i, row in enumerate(rows):
        if not all(isinstance(k, str) for k in row):
            raise UserError(f"data row {i}: keys must be column names (strings)")
    return inline_data_file(rows)


def train_task(name: str, config: Any, data: Any = None, **overrides: Any) -> Any:
    """Train task ``name`` from ``config``: a recipe name (``embedded/rm``), a YAML path, a dict of config keys
    or a config object; ``data`` (see :func:`data_setting`) and ``overrides`` replace those keys. Returns the
    entry point's result."""
    entry = task(name)
    cls = entry.config_class
    from mmpo.config import load_config

    values = dict(overrides)
    if data is not None:
        values["data"] = data_setting(data)
    if isinstance(config, (str, Path)):
        check_recipe_kind(config, f"mmpo.{entry.train.__name__}", (name,))
        loaded = load_config(cls, config, values)
    elif isinstance(config, dict):
        loaded = load_config(cls, None, {**config, **values})
    elif dataclasses.is_dataclass(config) and isinstance(config, cls):
        loaded = load_config(cls, None, {**dataclasses.asdict(config), **values})
    else:
        raise UserError(f"config: expected a recipe name, a YAML path, a dict or a {cls.__name__} (got {type(config).__name__})")
    return entry.train(loaded)


# A recipe kind as messages name it, with its article.
KIND_NAMES = {"rm": "a reward-model recipe", "dpo": "a policy recipe", "online": "an `mmpo online` recipe"}


def recipe_kind(name_or_path: str | Path) -> tuple[str | None, str]:
    """``(kind, reason)``: what a recipe trains, ``rm`` | ``dpo`` | ``online``, or ``None`` when it fits any.

    The first rule that applies decides: a key only :class:`~mmpo.training.online.OnlineConfig` has (``prompts``,
    ``rounds``, ...) makes it ``online``; a key only :class:`~mmpo.config.DPOConfig` has (``beta``, ``reference``,
    ...) makes it ``dpo``; a ``loss`` that exists for one kind only (``bt`` / ``dpo``, ...) makes it that kind; a
    packaged recipe whose name starts with ``rm``, ``dpo`` or ``online`` (``embedded/rm``,
    ``paper/dpo-gemma-7b-shp``) is that kind. ``reason`` says which rule applied, for messages.
    """
    from mmpo.config import read_recipe
    from mmpo.losses import losses_for
    from mmpo.recipes import RECIPES_DIR, resolve_recipe

    keys = read_recipe(name_or_path)
    rm_keys, dpo_keys, online_keys = ({f.name for f in dataclasses.fields(task(name).config_class)} for name in ("rm", "dpo", "online"))
    for kind, own in (("online", online_keys - dpo_keys), ("dpo", dpo_keys - rm_keys)):
        found = sorted(k for k in keys if k in own)
        if found:
            return kind, f"it sets {found[0]}"
    loss = keys.get("loss")
    rm_losses, policy_losses = set(losses_for("rm")), set(losses_for("policy"))
    if loss in rm_losses - policy_losses:
        return "rm", f"its loss {loss} is a reward-model loss"
    if loss in policy_losses - rm_losses:
        return "dpo", f"its loss {loss} is a policy loss"
    given = Path(name_or_path).expanduser()
    if not given.is_file():  # a packaged recipe, by name
        stem = resolve_recipe(name_or_path).stem
        for kind in ("online", "dpo", "rm"):
            if stem.startswith(kind):
                return kind, f"packaged as {resolve_recipe(name_or_path).relative_to(RECIPES_DIR).with_suffix('').as_posix()}"
    return None, "its keys fit any kind"


def check_recipe_kind(name_or_path: str | Path, command: str, accepts: tuple[str, ...]) -> None:
    """Refuse, in one line, a recipe whose :func:`recipe_kind` is not in ``accepts`` (before anything is written)."""
    kind, reason = recipe_kind(name_or_path)
    if kind is not None and kind not in accepts:
        runner = {"rm": "mmpo rm", "dpo": "mmpo dpo", "online": "mmpo online"}[kind]
        raise UserError(f"{name_or_path} is {KIND_NAMES[kind]} ({reason}), not one for {command}: "
                        f"train it with `{runner} {name_or_path}`")
