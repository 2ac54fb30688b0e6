"""Packaged recipes: ``mmpo rm embedded/rm`` finds ``embedded/rm.yaml`` here, in an installed wheel as in a checkout.

The YAML files ship as package data; the repository's ``recipes/`` is a link to this directory.
"""

from __future__ import annotations

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
        from mmpo.training.files import RunFiles

        saved = RunFiles(given).config  # a run directory keeps its settings there
        hint = f"; the run's settings are in {saved}" if saved.is_file() else ""
        raise UserError(f"{name_or_path} is a directory, not a recipe: give a recipe file (.yaml) or a packaged recipe name{hint}")
    known = packaged_recipes()
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else f"; packaged recipes: {', '.join(known)}"
    raise UserError(f"config file not found: {name_or_path} (neither a file nor a packaged recipe{hint})")
