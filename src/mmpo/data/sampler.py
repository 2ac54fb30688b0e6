"""Training order that puts pairs of similar length in the same step (``group_by_length: true``).

Where a step's pairs are padded to a common width (two rows per pair, or one shared row per pair without
packing), a batch costs its longest pair times the number of rows. Grouping by length keeps that close to the
pairs' own tokens. The order is transformers' length grouping (a random permutation, cut into mega-batches of up
to 50 steps, each sorted by length), drawn from a generator seeded by ``(seed, epoch)`` so that a resumed run
replays the same order as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import Sampler
from transformers.trainer_pt_utils import get_length_grouped_indices

from mmpo.data.collate import feature_responses


def pair_tokens(feature: dict[str, Any]) -> int:
    """A pair's tokens in the shared layout: ``len(prompt) + len(chosen) + len(rejected)`` (a group's: the prompt
    and every response); the sort key."""
    return len(feature["prompt_ids"]) + sum(len(r) for r in feature_responses(feature))


class LengthGroupedPairSampler(Sampler[int]):
    """Indices of ``lengths`` in length-grouped order: consecutive runs of ``batch_size`` hold pairs of similar length.

    Contract: every epoch yields a permutation of ``range(len(lengths))``; the same ``(seed, epoch)`` yields the
    same order (``set_epoch`` is called by Trainer at each epoch, resumes included); within each mega-batch the
    pairs come longest first, and the step holding the longest pair of all comes first (a run that runs out of
    memory does so at once).
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1 (got {batch_size})")
        self.lengths = [int(n) for n in lengths]
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        if not self.lengths:
            return iter([])
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=generator))
