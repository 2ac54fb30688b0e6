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
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "response_mask": response_mask}
        batch.update(pair_fields(features))
        return batch


def pair_fields(features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Per-pair tensors: ``p``, ``margin`` (NaN where unknown), ``row`` and any reference log-probs."""
    batch = {
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


# Segment ids of the shared layout.
PROMPT, CHOSEN, REJECTED, PADDING = 0, 1, 2, -1


@dataclass
class SharedPromptCollator:
    """One row per pair, ``[prompt | chosen | rejected]``, right-padded: each prompt is encoded once.

    Returns, each ``[B, T]``: ``input_ids``; ``segment_ids`` (0 prompt, 1 chosen, 2 rejected, -1 padding);
    ``position_ids`` (the rejected part restarts at the prompt's length, so each response sits at the positions
    it has in its own ``prompt + response`` row); ``logp_source`` (for a scored response token, the position
    whose output predicts it, else -1: the previous position, except that the first rejected token is
    predicted from the last prompt token). Per pair: ``score_index`` ``[B, 2]``, the positions where a reward
    model reads the chosen and the rejected reward (the rightmost non-pad token of ``prompt + response``, as
    transformers reads it), and ``p``, ``margin``, ``row`` and reference log-probs as :class:`PairCollator`.
    The attention mask is built from ``segment_ids`` on the device (:func:`mmpo.models.shared_prefix.shared_prefix_mask`).
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        rows = [(list(f["prompt_ids"]), list(f["chosen_ids"]), list(f["rejected_ids"])) for f in features]
        width = max(len(p) + len(c) + len(r) for p, c, r in rows)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        n = len(rows)
        input_ids = torch.full((n, width), self.pad_token_id, dtype=torch.long)
        segment_ids = torch.full((n, width), PADDING, dtype=torch.long)
        position_ids = torch.zeros((n, width), dtype=torch.long)
        logp_source = torch.full((n, width), -1, dtype=torch.long)
        score_index = torch.zeros((n, 2), dtype=torch.long)
        for i, (prompt, chosen, rejected) in enumerate(rows):
            n_p, n_c, n_r = len(prompt), len(chosen), len(rejected)
            end = n_p + n_c + n_r
            input_ids[i, :end] = torch.tensor(prompt + chosen + rejected, dtype=torch.long)
            segment_ids[i, n_p : n_p + n_c] = CHOSEN
            segment_ids[i, :n_p] = PROMPT
            segment_ids[i, n_p + n_c : end] = REJECTED
            position_ids[i, : n_p + n_c] = torch.arange(n_p + n_c)
            position_ids[i, n_p + n_c : end] = torch.arange(n_p, n_p + n_r)
            # Token t of a response is predicted from t - 1; the first token of a row (empty prompt) from nothing.
            logp_source[i, n_p:end] = torch.arange(n_p - 1, end - 1)
            if n_r:
                logp_source[i, n_p + n_c] = n_p - 1
            # The reward is read at the rightmost non-pad token of prompt + response (transformers' rule).
            for j, (lo, hi) in enumerate(((n_p, n_p + n_c), (n_p + n_c, end))):
                positions = [t for t in range(lo, hi) if input_ids[i, t] != self.pad_token_id]
                positions = positions or [t for t in range(n_p) if input_ids[i, t] != self.pad_token_id]
                score_index[i, j] = positions[-1] if positions else 0
        batch = {
            "input_ids": input_ids,
            "segment_ids": segment_ids,
            "position_ids": position_ids,
            "logp_source": logp_source,
            "score_index": score_index,
        }
        batch.update(pair_fields(features))
        return batch
