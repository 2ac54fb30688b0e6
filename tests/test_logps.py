"""response_logps against a brute-force per-sequence computation, for both code paths and both paddings."""

from __future__ import annotations

import types

import pytest
import torch
from conftest import build_tiny_llama

from mmpo.models.logps import position_ids_from_mask, response_logps

VOCAB = 61
PAD = 0


def tiny_causal_lm(seed: int = 0, tie: bool = False) -> torch.nn.Module:
    return build_tiny_llama(VOCAB, seed=seed, tie=tie, pad_token_id=PAD).float()


# (prompt length, response length): prompts and responses of different lengths in one batch.
SHAPES = [(3, 5), (7, 2), (1, 6), (5, 4)]


def make_sequences(seed: int = 1) -> list[tuple[list[int], int]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(1, VOCAB, (p + r,), generator=g).tolist(), r) for p, r in SHAPES]


def pad_batch(sequences: list[tuple[list[int], int]], side: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    width = max(len(s) for s, _ in sequences) + 2  # extra padding on every row
    n = len(sequences)
    ids = torch.full((n, width), PAD, dtype=torch.long)
    attention = torch.zeros((n, width), dtype=torch.long)
    response = torch.zeros((n, width), dtype=torch.long)
    for i, (seq, r) in enumerate(sequences):
        start = 0 if side == "right" else width - len(seq)
        ids[i, start : start + len(seq)] = torch.tensor(seq)
        attention[i, start : start + len(seq)] = 1
        response[i, start + len(seq) - r : start + len(seq)] = 1
    return ids, attention, response


def brute_force_logps(model: torch.nn.Module, sequences: list[tuple[list[int], int]]) -> torch.Tensor:
    """One unpadded forward per sequence; sum log_softmax at the response tokens."""
    out = []
    for seq, r in sequences:
        ids = torch.tensor([seq])
        logprobs = torch.log_softmax(model(input_ids=ids).logits.float()[0], dim=-1)
        # token t is predicted at position t - 1; the response is the last r tokens.
        positions = range(len(seq) - r, len(seq))
        out.append(sum(logprobs[t - 1, seq[t]] for t in positions))
    return torch.stack(out)


def test_position_ids_skip_left_padding():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0]])
    assert position_ids_from_mask(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 2, 2]]


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("full_logits, keep_logits", [(False, True), (False, False), (True, True)],
                         ids=["kept-logits", "recomputed-logits", "full-logits"])
def test_response_logps_match_brute_force_values_and_gradients(monkeypatch, side, full_logits, keep_logits):
    import mmpo.models.logps as logps_module

    # The trained head either keeps its logits for backward or recomputes them chunk by chunk (4 rows a chunk).
    monkeypatch.setattr(logps_module, "LOGIT_CHUNK_ROWS", 4)
    monkeypatch.setattr(logps_module, "KEEP_LOGITS_ELEMENTS", 10**9 if keep_logits else 0)
    recomputed = []
    original_checkpoint = logps_module.checkpoint
    monkeypatch.setattr(logps_module, "checkpoint", lambda *a, **k: recomputed.append(1) or original_checkpoint(*a, **k))
    model = tiny_causal_lm()
    sequences = make_sequences()
    weights = torch.tensor([0.3, -1.2, 0.7, 2.0])  # a generic linear functional, so every row's gradient counts

    model.zero_grad()
    expected = brute_force_logps(model, sequences)
    (expected * weights).sum().backward()
    expected_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    model.zero_grad()
    ids, attention, response = pad_batch(sequences, side)
    logps, n_tokens = response_logps(model, ids, attention, response, full_logits=full_logits)
    (logps * weights).sum().backward()

    assert n_tokens.tolist() == [r for _, r in SHAPES]
    assert len(recomputed) == (0 if keep_logits else -(-sum(r for _, r in SHAPES) // 4))
    torch.testing.assert_close(logps, expected.detach(), rtol=1e-5, atol=1e-5)
    assert expected_grads, "the brute-force pass produced no gradients"
    for name, grad in expected_grads.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad, rtol=1e-4, atol=1e-6, msg=name)


def test_tied_embeddings_and_no_grad_path():
    model = tiny_causal_lm(seed=3, tie=True)
    sequences = make_sequences(seed=4)
    ids, attention, response = pad_batch(sequences, "right")
    with torch.no_grad():
        logps, _ = response_logps(model, ids, attention, response)
        expected = brute_force_logps(model, sequences)
    torch.testing.assert_close(logps, expected, rtol=1e-5, atol=1e-5)


def test_rows_without_response_tokens_score_zero():
    model = tiny_causal_lm()
    ids, attention, response = pad_batch(make_sequences(), "right")
    response[1] = 0
    with torch.no_grad():
        logps, n_tokens = response_logps(model, ids, attention, response)
    assert n_tokens[1].item() == 0 and logps[1].item() == 0.0
    assert logps[0].item() < 0


class _ScaledLogits(torch.nn.Module):
    """A model whose logits are NOT head(final hidden state): it doubles them, like a logit_scale config."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner
        self.config = inner.config

    def get_output_embeddings(self):
        return self.inner.get_output_embeddings()

    def forward(self, **kwargs):
        out = self.inner(**kwargs)
        return types.SimpleNamespace(logits=out.logits * 2.0, hidden_states=out.hidden_states)


def test_hidden_state_path_falls_back_when_the_head_is_not_the_whole_story():
    model = _ScaledLogits(tiny_causal_lm())
    sequences = make_sequences()
    ids, attention, response = pad_batch(sequences, "right")
    with torch.no_grad(), pytest.warns(UserWarning, match="full logits"):
        logps, _ = response_logps(model, ids, attention, response)
    with torch.no_grad():
        expected = brute_force_logps(model, sequences)
        unscaled = brute_force_logps(model.inner, sequences)
    torch.testing.assert_close(logps, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(logps, unscaled, atol=1e-3)


@pytest.mark.parametrize("softcap", [None, 3.0])
@pytest.mark.parametrize("chunk_rows", [4, 1024])
def test_frozen_head_gradient_in_forward_matches_brute_force(monkeypatch, softcap, chunk_rows):
    """A frozen head (the adapter case) takes FrozenHeadTokenLogps; values and every trained gradient match."""
    import mmpo.models.logps as logps_module

    monkeypatch.setattr(logps_module, "LOGIT_CHUNK_ROWS", chunk_rows)  # 4: the 17 response tokens span 5 chunks
    model = tiny_causal_lm(seed=5)
    model.config.final_logit_softcapping = softcap
    if softcap:
        # Llama has no soft-capping of its own: wrap the head so the model's logits carry it, as Gemma-2's do.
        head = model.lm_head

        class CappedHead(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.inner = head

            def forward(self, x):
                return torch.tanh(self.inner(x) / softcap) * softcap

        model.lm_head = CappedHead()
        model.get_output_embeddings = lambda: head  # the plain Linear, as Gemma-2 returns it
    for p in model.lm_head.parameters():
        p.requires_grad_(False)
    sequences = make_sequences(seed=6)
    weights = torch.tensor([1.1, -0.4, 0.9, -2.0])

    model.zero_grad()
    expected = brute_force_logps(model, sequences)
    (expected * weights).sum().backward()
    expected_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    model.zero_grad()
    calls = []
    original = logps_module.FrozenHeadTokenLogps.forward
    monkeypatch.setattr(logps_module.FrozenHeadTokenLogps, "forward", staticmethod(lambda *a: calls.append(1) or original(*a)))
    ids, attention, response = pad_batch(sequences, "left")
    logps, _ = response_logps(model, ids, attention, response)
    (logps * weights).sum().backward()

    assert calls, "the frozen-head path was not taken"
    torch.testing.assert_close(logps, expected.detach(), rtol=1e-5, atol=1e-5)
    assert expected_grads and all("lm_head" not in n for n in expected_grads)
    for name, grad in expected_grads.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad, rtol=1e-4, atol=1e-6, msg=name)


def test_the_head_gets_a_contiguous_input_in_scoring_and_generation(tiny_model_dir):
    """The model projects ``hidden[:, -1:, :]``, a strided view; on it a linear layer copies its whole weight once
    per row (a batched matmul against the expanded weight). Scoring and generation hand the head a contiguous input."""
    from transformers import AutoModelForCausalLM

    from mmpo.models.chat import ChatModel, generate_batch
    from mmpo.models.loading import load_tokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    head = model.get_output_embeddings()
    seen: list[bool] = []
    original = head.forward
    # A 2-d strided input is fine (a matrix product takes its strides); a 3-d one is what falls off the cliff.
    head.forward = lambda x: seen.append(x.dim() < 3 or x.is_contiguous()) or original(x)
    ids, attention, response = pad_batch(make_sequences(), "right")
    model(input_ids=ids, attention_mask=attention, logits_to_keep=1)
    assert seen == [False], "the model itself hands the head a strided view (what this test guards against)"

    seen.clear()
    with torch.no_grad():
        response_logps(model, ids, attention, response)
    assert seen and all(seen)
    seen.clear()
    chat = ChatModel(model, load_tokenizer(str(tiny_model_dir)), "tiny")
    generate_batch(chat, [[{"role": "user", "content": "hi"}], [{"role": "user", "content": "hello there"}]], 2,
                   max_new_tokens=3, temperature=1.0, seed=0)
    assert seen and all(seen)


def test_unwrap_strips_run_wrappers_and_base_model_strips_peft_too():
    from mmpo.models.unwrap import base_model, unwrap_model

    inner = torch.nn.Linear(2, 2)

    class Peft(torch.nn.Module):  # the part of peft's interface the rule reads
        def __init__(self, model):
            super().__init__()
            self.base = model

        def get_base_model(self):
            return self.base

    class DataParallelLike(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.module = model

    peft = Peft(inner)
    wrapped = DataParallelLike(torch.compile(peft))
    assert unwrap_model(wrapped) is peft
    assert base_model(wrapped) is inner
    assert unwrap_model(inner) is inner and base_model(inner) is inner
