"""Gradient clipping on the host: torch's result, without a pass over the gradients when nothing is clipped."""

from __future__ import annotations

import pytest
import torch

import mmpo.training.base as base
from mmpo.training.base import clip_gradients


def grads_of(seed: int, scale: float) -> list[torch.nn.Parameter]:
    torch.manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(shape)) for shape in ((7, 5), (5,), (3, 4, 2))]
    for p in params:
        p.grad = scale * torch.randn_like(p)
    params.append(torch.nn.Parameter(torch.randn(2)))  # no gradient: skipped, as torch skips it
    return params


@pytest.mark.parametrize("max_norm", [0.01, 1.0, 1e6])
def test_same_norm_and_gradients_as_clip_grad_norm(max_norm):
    ours, theirs = grads_of(0, 0.3), grads_of(0, 0.3)
    norm = clip_gradients(ours, max_norm)
    expected = torch.nn.utils.clip_grad_norm_(theirs, max_norm)
    assert torch.equal(norm, expected)
    for a, b in zip(ours[:3], theirs[:3]):
        assert torch.equal(a.grad, b.grad)


def test_gradients_are_written_only_when_clipped():
    params = grads_of(1, 0.01)  # norm ~0.05
    versions = [p.grad._version for p in params[:3]]
    norm = clip_gradients(params, 1.0)
    assert norm < 1.0 and [p.grad._version for p in params[:3]] == versions  # untouched: no multiply by 1
    clip_gradients(params, 0.01)
    assert all(p.grad._version > v for p, v in zip(params[:3], versions))
    assert float(torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in params[:3]]))) == pytest.approx(0.01, rel=1e-4)


def test_non_finite_norm_as_torch():
    ours, theirs = grads_of(2, 1.0), grads_of(2, 1.0)
    for params in (ours, theirs):
        params[0].grad[0, 0] = float("inf")
    assert torch.isinf(clip_gradients(ours, 1.0)) and torch.isinf(torch.nn.utils.clip_grad_norm_(theirs, 1.0))
    for a, b in zip(ours[:3], theirs[:3]):
        assert torch.equal(a.grad.isnan(), b.grad.isnan())


def test_cpu_trainer_clips_through_it(tiny_model_dir, graded_rows, write_jsonl, tmp_path, monkeypatch):
    from tests.test_rm import rm_config
    from mmpo.training.rm import train_reward_model

    norms = []
    monkeypatch.setattr(base, "clip_gradients", lambda params, max_norm: norms.append(max_norm) or clip_gradients(params, max_norm))
    data = write_jsonl(tmp_path / "train.jsonl", graded_rows(8, seed=1))
    train_reward_model(rm_config(tiny_model_dir, data, tmp_path / "out", max_steps=2, eval_split=0.0, max_grad_norm=0.5))
    assert norms == [0.5, 0.5]
