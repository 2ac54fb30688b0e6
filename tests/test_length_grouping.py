"""``group_by_length``: the training order that batches pairs of similar length, its resume, and its wiring."""

from __future__ import annotations

import json
import random
import shutil

import pytest

from mmpo.data.sampler import LengthGroupedPairSampler, pair_tokens
from mmpo.errors import UserError
from mmpo.models.reward import load_reward_model
from mmpo.training.args import training_arguments
from mmpo.training.rm import RewardTrainer, train_reward_model
from test_rm import rm_config


def padded_positions(order: list[int], lengths: list[int], batch: int) -> int:
    """Positions a batch costs when its pairs are padded to its longest: sum over batches of size x longest."""
    return sum(len(chunk) * max(lengths[i] for i in chunk)
               for chunk in (order[k:k + batch] for k in range(0, len(order), batch)))


def test_sampler_groups_by_length_and_replays_each_epoch():
    rng = random.Random(0)
    lengths = [rng.randint(20, 600) for _ in range(400)]
    sampler = LengthGroupedPairSampler(lengths, batch_size=4, seed=7)
    first = list(sampler)
    assert sorted(first) == list(range(400)) and len(sampler) == 400
    assert list(sampler) == first  # the same (seed, epoch): the same order, however often it is drawn
    sampler.set_epoch(1)
    second = list(sampler)
    assert sorted(second) == list(range(400)) and second != first
    sampler.set_epoch(0)
    assert list(sampler) == first  # a resumed run asks for epoch 0 again and gets what it had
    assert max(lengths) in (lengths[i] for i in first[:4])  # the longest pair's step comes first
    shuffled = list(range(400))
    rng.shuffle(shuffled)
    # Padding to each step's longest pair: grouped order against a plain shuffle of the same pairs.
    assert padded_positions(first, lengths, 4) < 0.7 * padded_positions(shuffled, lengths, 4)
    assert padded_positions(first, lengths, 4) < 1.1 * sum(lengths)
    assert list(LengthGroupedPairSampler([], 4, 0)) == []
    with pytest.raises(ValueError, match="batch_size"):
        LengthGroupedPairSampler(lengths, 0, 0)


def test_pair_tokens_counts_prompt_and_both_answers():
    assert pair_tokens({"prompt_ids": [1, 2, 3], "chosen_ids": [4], "rejected_ids": [5, 6]}) == 6


def test_config_key_sets_the_strategy_and_trainer_uses_the_pair_sampler(tiny_model_dir, tiny_tokenizer, pair_file, tmp_path):
    data = pair_file(n=12, seed=2)
    config = rm_config(tiny_model_dir, data, tmp_path / "out", group_by_length=True, seed=5)
    args = training_arguments(config, eval_strategy="no")
    assert args.train_sampling_strategy == "group_by_length"
    assert training_arguments(rm_config(tiny_model_dir, data, tmp_path / "o2"), eval_strategy="no").train_sampling_strategy == "random"
    features = [{"prompt_ids": [1] * n, "chosen_ids": [2] * (n % 7 + 1), "rejected_ids": [3] * 2, "p": 1.0,
                 "margin": None, "row": n} for n in range(1, 21)]
    trainer = RewardTrainer(model=load_reward_model(str(tiny_model_dir), tiny_tokenizer), args=args,
                            train_dataset=features, eval_dataset=features, loss="mmpo")
    sampler = trainer._get_train_sampler()
    assert isinstance(sampler, LengthGroupedPairSampler) and sampler.seed == 5
    assert sampler.lengths == [pair_tokens(f) for f in features] and sampler.batch_size == 4
    # Held-out pairs keep file order (eval_scores.jsonl is written row by row).
    assert list(trainer._get_eval_sampler(features)) == list(range(20))
    with pytest.raises(UserError, match="contradict"):
        training_arguments(rm_config(tiny_model_dir, data, tmp_path / "o3", group_by_length=True,
                                     trainer_args={"train_sampling_strategy": "sequential"}))
    with pytest.raises(UserError, match="batch_rebalance"):
        rm_config(tiny_model_dir, data, tmp_path / "o4", trainer_args={"train_sampling_strategy": "batch_rebalance"})


def test_grouped_run_resumed_mid_epoch_logs_what_an_uninterrupted_run_logs(tiny_model_dir, pair_file, tmp_path, monkeypatch):
    data = pair_file(n=12, seed=6)  # 3 steps an epoch at 4 pairs a step: the resume lands inside epoch 2
    common = dict(max_steps=6, save_steps=2, eval_split=0.0, save_total_limit=4, group_by_length=True)
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    train_reward_model(rm_config(tiny_model_dir, data, whole, **common))
    # The kill below is made by deleting files of a finished run: keep its optimizer state, as a killed run would.
    monkeypatch.setattr("mmpo.training.run_dir.drop_optimizer_state", lambda output_dir: 0)
    train_reward_model(rm_config(tiny_model_dir, data, cut, **common))
    for name in ("model.safetensors", "config.json", "eval_results.json"):
        (cut / name).unlink()
    shutil.rmtree(cut / "checkpoint-6")
    train_reward_model(rm_config(tiny_model_dir, data, cut, **common))  # resumes from checkpoint-4

    def losses(run):
        return {r["step"]: r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r}

    ours, theirs = losses(cut), losses(whole)
    assert sorted(ours) == list(range(1, 7))
    assert all(ours[s] == pytest.approx(theirs[s], rel=1e-5) for s in range(1, 7))
    # The order is not the plain shuffle's: an ungrouped run's losses differ.
    plain = tmp_path / "plain"
    train_reward_model(rm_config(tiny_model_dir, data, plain, **{**common, "group_by_length": False}))
    assert any(abs(losses(plain)[s] - theirs[s]) > 1e-6 for s in range(1, 7))
