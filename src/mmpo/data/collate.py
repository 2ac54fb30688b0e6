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


# Segment ids of the shared layout: response j of a span (0-based) is segment j + 1, so a pair's chosen is 1 and its
# rejected 2.
PROMPT, CHOSEN, REJECTED, PADDING = 0, 1, 2, -1


def feature_responses(feature: dict[str, Any]) -> list[list[int]]:
    """A feature's responses in span order: a group's ``response_ids``, or a pair's chosen then rejected."""
    if "response_ids" in feature:
        return [list(r) for r in feature["response_ids"]]
    return [list(feature["chosen_ids"]), list(feature["rejected_ids"])]


def group_fields(features: list[dict[str, Any]], k: int) -> dict[str, torch.Tensor]:
    """Per-group tensors: ``scores`` ``[G, k]`` float64 (the responses' scores, NaN where a group has fewer than
    ``k``; float64 so pair margins and targets round as the pair pipeline's do), ``group_mask`` ``[G, k]`` (True
    where a response is present), ``row`` (the group's source row) and, where the features carry them,
    ``reference_logps`` ``[G, k]`` (0 where absent)."""
    scores = torch.full((len(features), k), float("nan"), dtype=torch.float64)
    mask = torch.zeros((len(features), k), dtype=torch.bool)
    reference = torch.zeros((len(features), k), dtype=torch.float32) if "reference_logps" in features[0] else None
    for i, f in enumerate(features):
        n = len(f["scores"])
        scores[i, :n] = torch.tensor([float(s) for s in f["scores"]], dtype=torch.float64)
        mask[i, :n] = True
        if reference is not None:
            reference[i, :n] = torch.tensor([float(x) for x in f["reference_logps"]], dtype=torch.float32)
    out = {"scores": scores, "group_mask": mask, "row": torch.tensor([int(f.get("row", -1)) for f in features], dtype=torch.long)}
    if reference is not None:
        out["reference_logps"] = reference
    return out


@dataclass
class SharedPromptCollator:
    """Each pair as one span ``[prompt | chosen | rejected]``, each group as one span ``[prompt | r_1 | ... | r_k]``:
    each prompt is encoded once.

    A feature is a pair (``prompt_ids``, ``chosen_ids``, ``rejected_ids``) or a group of responses to one prompt
    (``prompt_ids``, ``response_ids``, ``scores``; :func:`mmpo.data.pipeline.tokenize_groups`); a pair is the group
    ``[chosen, rejected]``, laid out the same way. A batch holds one kind. Below, ``B`` is the number of spans and
    ``k`` the most responses a span has (2 for pairs).

    Without ``pack`` every span has its own right-padded row; with ``pack`` several spans share a row, so
    padding mostly disappears. With ``pack_budget=None`` spans go first-fit longest-first into rows as long as
    the longest span, so no row is longer than that span's would be alone. With a ``pack_budget`` of ``n``
    tokens the batch takes ``ceil(total / n)`` rows and each span, longest first, goes to the row holding the
    fewest tokens so far: rows of near-equal length (the batch's width is its longest row).

    Returns, each ``[rows, T]``: ``input_ids``; ``segment_ids`` (0 prompt, ``j + 1`` response ``j``: 1 chosen,
    2 rejected; -1 padding); ``pair_ids`` (which span of the batch a token belongs to, -1 padding);
    ``position_ids`` (each span starts at 0 and every response restarts at the prompt's length, so every
    response sits at the positions it has in its own ``prompt + response`` row); ``logp_source`` (for a scored
    response token, the position whose output predicts it, else -1: the previous position, except that a
    response's first token is predicted from the last prompt token) and ``logp_out`` (the response it counts
    for: span ``i``'s response ``j`` is ``j * B + i``, so a pair's chosen is ``i``, its rejected ``B + i``).
    ``score_at`` ``[k * B, 2]``: the (row, position) where a reward model reads each response's reward, in the
    ``logp_out`` order (the rightmost non-pad token of ``prompt + response``, as transformers reads it; an
    absent response of a smaller group reads its prompt's last token, never used). ``spans`` ``[B, 3 + k]``:
    each span's row, start, prompt length and response lengths (0 for an absent response). Pairs add ``p``,
    ``margin``, ``row`` and reference log-probs as :class:`PairCollator`; groups add :func:`group_fields`. The
    attention mask is built on the device (:func:`mmpo.models.shared_prefix.shared_forward_inputs`).
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None
    pack: bool = False
    pack_budget: int | None = None

    def _rows(self, lengths: list[int]) -> list[list[int]]:
        """Span indices per row: one each, or packed (see the class doc)."""
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
        spans_in = [(list(f["prompt_ids"]), feature_responses(f)) for f in features]
        k = max(len(responses) for _, responses in spans_in)
        lengths = [len(p) + sum(len(r) for r in responses) for p, responses in spans_in]
        rows = self._rows(lengths)
        width = max(sum(lengths[i] for i in row) for row in rows)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        n_rows, n_spans = len(rows), len(spans_in)
        input_ids = torch.full((n_rows, width), self.pad_token_id, dtype=torch.long)
        segment_ids = torch.full((n_rows, width), PADDING, dtype=torch.long)
        pair_ids = torch.full((n_rows, width), -1, dtype=torch.long)
        position_ids = torch.zeros((n_rows, width), dtype=torch.long)
        logp_source = torch.full((n_rows, width), -1, dtype=torch.long)
        logp_out = torch.full((n_rows, width), -1, dtype=torch.long)
        score_at = torch.zeros((k * n_spans, 2), dtype=torch.long)
        spans = torch.zeros((n_spans, 3 + k), dtype=torch.long)
        for r, row in enumerate(rows):
            o = 0  # where the span starts in the row
            for i in row:
                prompt, responses = spans_in[i]
                n_p, end = len(prompt), o + lengths[i]
                prompt_end = _last_real(prompt, self.pad_token_id) or 0
                input_ids[r, o:end] = torch.tensor(prompt + [t for response in responses for t in response], dtype=torch.long)
                segment_ids[r, o : o + n_p] = PROMPT
                pair_ids[r, o:end] = i
                spans[i, :3] = torch.tensor([r, o, n_p])
                position_ids[r, o : o + n_p] = torch.arange(n_p)
                start = o + n_p  # where response j starts
                for j in range(k):
                    response = responses[j] if j < len(responses) else []
                    n_j, out = len(response), j * n_spans + i
                    spans[i, 3 + j] = n_j
                    segment_ids[r, start : start + n_j] = j + 1
                    position_ids[r, start : start + n_j] = torch.arange(n_p, n_p + n_j)
                    # Token t of a response is predicted from t - 1, its first from the prompt's last token; the
                    # first token of an empty prompt's response from nothing.
                    if n_j:
                        logp_source[r, start : start + n_j] = torch.arange(start - 1, start + n_j - 1)
                        logp_source[r, start] = o + n_p - 1 if n_p else -1
                    logp_out[r, start : start + n_j] = out
                    # The reward is read at the rightmost non-pad token of prompt + response (transformers' rule).
                    at = _last_real(response, self.pad_token_id)
                    score_at[out, 0], score_at[out, 1] = r, (start + at) if at is not None else o + prompt_end
                    start += n_j
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
        batch.update(group_fields(features, k) if "response_ids" in features[0] else pair_fields(features))
        return batch
