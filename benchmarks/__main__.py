"""``python -m benchmarks CASE [ARGS ...]``: one entry point for the suite.

Cases:

* ``trl``: mmpo's trainers against TRL's, step time and peak memory (``bench.py``); writes ``RESULTS.md``,
  ``results.json`` and ``profiles/`` (default: beside this module, the committed results).
* ``report``: ``RESULTS.md`` again from a ``results.json`` (``report.py``), without running anything.
* ``memory``: a memory timeline of mmpo's and TRL's runs, phase by phase (``memory_profile.py``).
* ``layouts``: one training step per pair layout and attention kernel, no trainer around it (``layouts.py``;
  CUDA first, else CPU).
* ``groups``: ``layout: groups`` against the pairs made from the same responses, tokens per step and a reward
  model's step time on ``alpaca_graded`` (``groups.py``).

``python -m benchmarks CASE --help`` lists a case's options.
"""

from __future__ import annotations

import sys
from collections.abc import Callable


def _load(case: str) -> Callable[[list[str]], None]:
    if case == "trl":
        return _trl
    elif case == "report":
        from .report import main
    elif case == "memory":
        from .memory_profile import main
    elif case == "layouts":
        from .layouts import main
    elif case == "groups":
        from .groups import main
    else:
        raise SystemExit(f"unknown case {case!r}; choose from {', '.join(CASES)}")
    return main


def _trl(argv: list[str]) -> None:
    from .bench import main as run
    from .report import finish_run

    finish_run(*run(argv))


CASES = ("trl", "report", "memory", "layouts", "groups")


def main(argv: list[str]) -> None:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return
    _load(argv[0])(argv[1:])


if __name__ == "__main__":
    main(sys.argv[1:])
