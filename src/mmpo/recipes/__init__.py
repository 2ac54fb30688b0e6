"""Packaged recipes: ``mmpo rm embedded/rm`` finds ``embedded/rm.yaml`` here, in an installed wheel as in a checkout.

The YAML files ship as package data; the repository's ``recipes/`` is a link to this directory.
"""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path

from mmpo.errors import UserError

RECIPES_DIR = Path(__file__).resolve().parent


def packaged_recipes() -> list[str]:
    """Names of the packaged recipes (``embedded/rm``, ``paper/rm-gemma-2b-ultrafeedback``, ...), sorted."""
    return sorted(p.relative_to(RECIPES_DIR).with_suffix("").as_posix() for p in RECIPES_DIR.rglob("*.yaml"))


def resolve_recipe(name_or_path: str | Path) -> Path:
    """An existing file as given, else the packaged recipe of that name (``.yaml`` optional).

    A leading ``recipes/`` is accepted too, so the repository paths of the README work from any directory.
    Neither: a one-line error naming the closest packaged recipe.
    """
    given = Path(name_or_path).expanduser()
    if given.is_file():
        return given
    name = str(name_or_path).replace("\\", "/")
    if name.startswith("recipes/"):
        name = name[len("recipes/"):]
    if name.endswith((".yaml", ".yml")):
        name = name.rsplit(".", 1)[0]
    packaged = RECIPES_DIR / f"{name}.yaml"
    if name and packaged.is_file():
        return packaged
    if given.is_dir():
        from mmpo.training.run_dir import RunFiles

        saved = RunFiles(given).config  # a run directory keeps its settings there
        hint = f"; the run's settings are in {saved}" if saved.is_file() else ""
        raise UserError(f"{name_or_path} is a directory, not a recipe: give a recipe file (.yaml) or a packaged recipe name{hint}")
    known = packaged_recipes()
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else f"; packaged recipes: {', '.join(known)}"
    raise UserError(f"config file not found: {name_or_path} (neither a file nor a packaged recipe{hint})")


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
    from mmpo.config import DPOConfig, RMConfig, read_recipe
    from mmpo.losses import losses_for
    from mmpo.training.online import OnlineConfig

    keys = read_recipe(name_or_path)
    rm_keys = {f.name for f in dataclasses.fields(RMConfig)}
    dpo_keys = {f.name for f in dataclasses.fields(DPOConfig)}
    online_keys = {f.name for f in dataclasses.fields(OnlineConfig)}
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
