"""Batching tokenized pairs: chosen and rejected go into one padded batch so one forward pass scores both."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class PairCollator:
    """Stack B pairs into 2B right-padded rows: rows [0, B) are chosen, rows [B, 2B) rejected.

    Returns ``input_ids``, ``attention_mask`` and ``response_mask`` (1 on response tokens, 0 on prompt and
    padding), each ``[2B, T]``, plus per-pair ``p``, ``margin`` (NaN where unknown) and ``row``.
    Optional per-pair fields such as ``reference_chosen_logps`` pass through as tensors.
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        sequences, response_lengths = [], []
        for key in ("chosen_ids", "rejected_ids"):
            for f in features:
                sequences.append(list(f["prompt_ids"]) + list(f[key]))
                response_lengths.append(len(f[key]))
        width = max(len(s) for s in sequences)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        n = len(sequences)
        input_ids = torch.full((n, width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((n, width), dtype=torch.long)
        response_mask = torch.zeros((n, width), dtype=torch.long)
        for i, (seq, r) in enumerate(zip(sequences, response_lengths)):
            input_ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            attention_mask[i, : len(seq)] = 1
            response_mask[i, len(seq) - r : len(seq)] = 1
        batch = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "response_mask": response_mask,
            "p": torch.tensor([float(f["p"]) for f in features], dtype=torch.float32),
            "margin": torch.tensor(
                [float("nan") if f.get("margin") is None else float(f["margin"]) for f in features], dtype=torch.float32
            ),
            "row": torch.tensor([int(f.get("row", -1)) for f in features], dtype=torch.long),
        }
        for key in ("reference_chosen_logps", "reference_rejected_logps"):
            if key in features[0]:
                batch[key] = torch.tensor([float(f[key]) for f in features], dtype=torch.float32)
        return batch
