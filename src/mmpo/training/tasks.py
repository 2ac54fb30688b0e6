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
        from mmpo.recipes import check_recipe_kind

        check_recipe_kind(config, f"mmpo.{entry.train.__name__}", (name,))
        loaded = load_config(cls, config, values)
    elif isinstance(config, dict):
        loaded = load_config(cls, None, {**config, **values})
    elif dataclasses.is_dataclass(config) and isinstance(config, cls):
        loaded = load_config(cls, None, {**dataclasses.asdict(config), **values})
    else:
        raise UserError(f"config: expected a recipe name, a YAML path, a dict or a {cls.__name__} (got {type(config).__name__})")
    return entry.train(loaded)
