"""This process's place in a multi-process run (``torchrun`` / ``accelerate launch``)."""

from __future__ import annotations

from typing import Any


def process_state() -> Any:
    """accelerate's ``PartialState`` for this process, created as transformers' Trainer creates it here.

    accelerate keeps one state per process and its first creation decides it. Its default (``cpu=False``) does not
    see a ``torchrun`` launch on a machine without a GPU: every rank would report one process, compute the whole
    reference pass or trunk cache on its own and write the same cache entry as the others (a race that failed one
    2-process test run in seven with "Directory not empty"). Training passes ``use_cpu`` there
    (:func:`mmpo.training.args.training_arguments`), so this asks for the CPU state the same way.
    """
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())
