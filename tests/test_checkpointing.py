"""Gradient checkpointing, on by default: it really recomputes the blocks, and changes no loss."""

from __future__ import annotations

import json

import pytest
import torch
from transformers.models.llama import modeling_llama

from mmpo.config import DPOConfig, RMConfig, load_config
from mmpo.training.args import training_arguments
from mmpo.training.dpo import train_policy
from mmpo.training.rm import train_reward_model
from test_dpo import dpo_config
from test_rm import rm_config


def test_checkpointing_is_on_by_default_and_a_key_turns_it_off():
    for cls in (RMConfig, DPOConfig):
        assert load_config(cls, None, {"data": "x"}).gradient_checkpointing is True
    args = {True: training_arguments(load_config(RMConfig, None, {"data": "x"})),
            False: training_arguments(load_config(RMConfig, None, {"data": "x", "gradient_checkpointing": False}))}
    for enabled, arguments in args.items():
        on = getattr(arguments, "activation_checkpointing", None)
        on = arguments.gradient_checkpointing if on is None else on
        assert on is enabled


def _block_calls_with_grad(monkeypatch) -> list[int]:
    """Counts the tiny Llama's MLP forwards, one per block, that run with autograd on (training forwards and the
    backward's recomputations; not the reference model's no-grad passes). The MLP, not the block: transformers
    checkpoints only when the block's class still has its own forward."""
    calls = [0]
    forward = modeling_llama.LlamaMLP.forward

    def counted(self, *args, **kwargs):
        calls[0] += torch.is_grad_enabled()
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(modeling_llama.LlamaMLP, "forward", counted)
    return calls


def _losses(run) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r}


@pytest.mark.parametrize("task", ["rm", "dpo"])
def test_checkpointed_run_recomputes_each_block_and_logs_the_same_losses(task, monkeypatch, tiny_model_dir, pair_file, tmp_path):
    data = pair_file(n=12, seed=4)
    calls = _block_calls_with_grad(monkeypatch)
    counts, losses = {}, {}
    for enabled in (True, False):
        calls[0] = 0
        if task == "rm":
            out = tmp_path / f"rm-{enabled}"
            train_reward_model(rm_config(tiny_model_dir, data, out, max_steps=3, eval_split=0.0, gradient_checkpointing=enabled))
        else:
            config = dpo_config(tmp_path, tiny_model_dir, data, name=f"dpo-{enabled}", max_steps=3, eval_split=0.0,
                                gradient_checkpointing=enabled)
            train_policy(config)
            out = tmp_path / f"dpo-{enabled}"
        counts[enabled], losses[enabled] = calls[0], _losses(out)
    # Each block runs again in the backward when checkpointed: twice the autograd forwards.
    assert counts[False] > 0 and counts[True] == 2 * counts[False]
    assert sorted(losses[True]) == [1, 2, 3]
    assert all(losses[True][s] == pytest.approx(losses[False][s], rel=1e-5) for s in (1, 2, 3))
