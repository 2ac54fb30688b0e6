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


def _last_real(tokens: list[int], pad_token_id: int) -> int | None:
    """Index of the last token in ``tokens`` that is not ``pad_token_id`` (None: there is none)."""
    for t in range(len(tokens) - 1, -1, -1):
        if tokens[t] != pad_token_id:
            return t
    return None


# Segment ids of the shared layout.
PROMPT, CHOSEN, REJECTED, PADDING = 0, 1, 2, -1


@dataclass
class SharedPromptCollator:
    """Each pair as one span ``[prompt | chosen | rejected]``: each prompt is encoded once.

    Without ``pack`` every pair has its own right-padded row; with ``pack`` several pairs share a row, so
    padding mostly disappears. With ``pack_budget=None`` pairs go first-fit longest-first into rows as long as
    the longest pair, so no row is longer than that pair's would be alone. With a ``pack_budget`` of ``n``
    tokens the batch takes ``ceil(total / n)`` rows and each pair, longest first, goes to the row holding the
    fewest tokens so far: rows of near-equal length (the batch's width is its longest row).

    Returns, each ``[rows, T]``: ``input_ids``; ``segment_ids`` (0 prompt, 1 chosen, 2 rejected, -1 padding);
    ``pair_ids`` (which pair of the batch a token belongs to, -1 padding); ``position_ids`` (each pair starts at
    0 and its rejected part restarts at the prompt's length, so every response sits at the positions it has in
    its own ``prompt + response`` row); ``logp_source`` (for a scored response token, the position whose output
    predicts it, else -1: the previous position, except that the first rejected token is predicted from the
    last prompt token) and ``logp_out`` (the response it counts for: pair ``i``'s chosen is ``i``, its rejected
    ``B + i``). ``score_at`` ``[2B, 2]``: the (row, position) where a reward model reads each response's
    reward, chosen first (the rightmost non-pad token of ``prompt + response``, as transformers reads it).
    ``spans`` ``[B, 5]``: each pair's row, start and prompt / chosen / rejected lengths. Per pair: ``p``,
    ``margin``, ``row`` and reference log-probs as :class:`PairCollator`. The attention mask is built on the
    device (:func:`mmpo.models.shared_prefix.shared_forward_inputs`).
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None
    pack: bool = False
    pack_budget: int | None = None

    def _rows(self, lengths: list[int]) -> list[list[int]]:
        """Pair indices per row: one each, or packed (see the class doc)."""
        if not self.pack:
            return [[i] for i in range(len(lengths))]
        longest_first = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        rows: list[list[int]] = []
        if self.pack_budget is not None:
            n_rows = max(1, min(len(lengths), -(-sum(lengths) // self.pack_budget)))
            rows = [[] for _ in range(n_rows)]
            filled = [0] * n_rows
            for i in longest_first:
                r = min(range(n_rows), key=filled.__getitem__)
                rows[r].append(i)
                filled[r] += lengths[i]
            return rows
        budget = max(lengths)
        room: list[int] = []
        for i in longest_first:
            for r, free in enumerate(room):
                if lengths[i] <= free:
                    rows[r].append(i)
                    room[r] -= lengths[i]
                    break
            else:
                rows.append([i])
                room.append(budget - lengths[i])
        return rows

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        pairs = [(list(f["prompt_ids"]), list(f["chosen_ids"]), list(f["rejected_ids"])) for f in features]
        lengths = [len(p) + len(c) + len(r) for p, c, r in pairs]
        rows = self._rows(lengths)
        width = max(sum(lengths[i] for i in row) for row in rows)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        n_rows, n_pairs = len(rows), len(pairs)
        input_ids = torch.full((n_rows, width), self.pad_token_id, dtype=torch.long)
        segment_ids = torch.full((n_rows, width), PADDING, dtype=torch.long)
        pair_ids = torch.full((n_rows, width), -1, dtype=torch.long)
        position_ids = torch.zeros((n_rows, width), dtype=torch.long)
        logp_source = torch.full((n_rows, width), -1, dtype=torch.long)
        logp_out = torch.full((n_rows, width), -1, dtype=torch.long)
        score_at = torch.zeros((2 * n_pairs, 2), dtype=torch.long)
        spans = torch.zeros((n_pairs, 5), dtype=torch.long)
        for r, row in enumerate(rows):
            o = 0  # where the pair starts in the row
            for i in row:
                prompt, chosen, rejected = pairs[i]
                n_p, n_c, n_r = len(prompt), len(chosen), len(rejected)
                c0, r0, end = o + n_p, o + n_p + n_c, o + lengths[i]
                input_ids[r, o:end] = torch.tensor(prompt + chosen + rejected, dtype=torch.long)
                segment_ids[r, o:c0] = PROMPT
                segment_ids[r, c0:r0] = CHOSEN
                segment_ids[r, r0:end] = REJECTED
                pair_ids[r, o:end] = i
                spans[i] = torch.tensor([r, o, n_p, n_c, n_r])
                position_ids[r, o:r0] = torch.arange(n_p + n_c)
                position_ids[r, r0:end] = torch.arange(n_p, n_p + n_r)
                # Token t of a response is predicted from t - 1; the first token of a pair (empty prompt) from nothing.
                logp_source[r, c0:end] = torch.arange(c0 - 1, end - 1)
                if n_r:
                    logp_source[r, r0] = c0 - 1
                if n_p == 0:
                    logp_source[r, o] = -1
                    if n_r:
                        logp_source[r, r0] = -1
                logp_out[r, c0:r0] = i
                logp_out[r, r0:end] = n_pairs + i
                # The reward is read at the rightmost non-pad token of prompt + response (transformers' rule).
                for j, response in enumerate((chosen, rejected)):
                    at = _last_real(response, self.pad_token_id)
                    if at is not None:
                        at += r0 if j else c0
                    else:
                        at = o + (_last_real(prompt, self.pad_token_id) or 0)
                    score_at[j * n_pairs + i, 0], score_at[j * n_pairs + i, 1] = r, at
                o = end
        batch = {
            "input_ids": input_ids,
            "segment_ids": segment_ids,
            "pair_ids": pair_ids,
            "position_ids": position_ids,
            "logp_source": logp_source,
            "logp_out": logp_out,
            "score_at": score_at,
            "spans": spans,
        }
        batch.update(pair_fields(features))
        return batch
