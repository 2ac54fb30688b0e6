"""The one reader of a gamma setting (the MMPO target scale in p = sigmoid(gamma * margin)).

Spellings, the same for every command-line option and config key:

* a number > 0 (``1``, ``2.2``, ``0.3``): soft targets p = sigmoid(gamma * margin);
* ``none`` or ``hard`` (any case; YAML's ``null`` too): hard labels, p = 1 for the chosen response (the
  limit gamma -> infinity).
"""

from __future__ import annotations

from typing import Any

from mmpo.errors import UserError

HARD_LABEL_SPELLINGS = ("none", "hard", "null")


def parse_gamma(value: Any, option: str = "--gamma", where: str = "") -> float | None:
    """``value`` as a gamma: a float > 0, or None for hard labels (``None``, ``"none"``, ``"hard"``, ``"null"``).

    Anything else is a one-line :class:`mmpo.errors.UserError` naming ``option`` (an option such as ``--gamma``
    or a config key) and, when given, ``where`` the value came from (``in recipe.yaml``).
    """
    if value is None or (isinstance(value, str) and value.strip().lower() in HARD_LABEL_SPELLINGS):
        return None
    if isinstance(value, bool):
        gamma = float("nan")
    else:
        try:
            gamma = float(value)
        except (TypeError, ValueError):
            gamma = float("nan")
    if not gamma > 0 or gamma == float("inf"):
        raise UserError(f"{option} must be > 0, or none / hard for hard labels (got {value!r}{' ' + where if where else ''})")
    return gamma


def parse_gamma_list(text: str, option: str = "--gamma") -> list[float | None]:
    """``"0.3,1,2.2,none"`` -> ``[0.3, 1.0, 2.2, None]``: comma-separated :func:`parse_gamma` values, at least one."""
    out = [parse_gamma(item, option) for item in text.split(",") if item.strip()]
    if not out:
        raise UserError(f"{option}: give at least one value, e.g. 0.3,1,2.2,none")
    return out


def gamma_text(gamma: float | None) -> str:
    """How a gamma is written back: ``"none"`` for hard labels, else the number (``"2.2"``)."""
    return "none" if gamma is None else f"{gamma:g}"
