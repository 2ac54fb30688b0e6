"""`mmpo eval pairs|rewardbench|mtbench ...`. Each evaluation lives in its own module with
``add_arguments(parser)`` and ``run(args)``; this file only routes."""

from __future__ import annotations

import argparse
import importlib

# (name, module, help). Modules are imported lazily when their command runs.
EVALUATIONS = [
    ("pairs", "mmpo.cli.eval_pairs", "score a pair file with a reward model or a policy (implicit reward)"),
    ("rewardbench", "mmpo.cli.eval_rewardbench", "RewardBench: section and overall scores (plus optional Prior Sets)"),
    ("mtbench", "mmpo.cli.eval_mtbench", "MT-bench: generate answers, then grade them with an LLM judge over HTTP"),
]


def add_arguments(name: str, p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="evaluation", metavar="EVALUATION", required=True)
    for ev, module, help_text in EVALUATIONS:
        q = sub.add_parser(ev, help=help_text)
        q.set_defaults(_eval_module=module)
        importlib.import_module(module).add_arguments(q)


def run(args: argparse.Namespace) -> int:
    return int(importlib.import_module(args._eval_module).run(args) or 0)
