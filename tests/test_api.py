"""The Python training API: mmpo.train_reward_model / mmpo.train_policy and the task registry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import mmpo
from conftest import make_graded_rows
from mmpo.config import DPOConfig, RMConfig
from mmpo.errors import UserError
from mmpo.training.run import TrainSummary
from mmpo.training.tasks import TASKS, data_setting, task

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MMPO_CACHE", str(tmp_path / "cache"))


def common(model_dir: Path, out: Path) -> dict:
    return dict(model=str(model_dir), output_dir=str(out), max_length=96, max_prompt_length=64, max_steps=2,
                per_device_train_batch_size=4, per_device_eval_batch_size=8, logging_steps=1, eval_split=0.25,
                learning_rate=1e-3, bf16=False)


def test_train_reward_model_from_a_dict_and_rows_returns_the_summary(tiny_model_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification

    rows = make_graded_rows(16)
    summary = mmpo.train_reward_model(common(tiny_model_dir, tmp_path / "rm"), data=rows, gamma=1.0)
    assert isinstance(summary, TrainSummary)
    assert summary.kind == "reward_model" and summary.global_step == 2 and summary.saved == "full"
    assert summary.output_dir == str(tmp_path / "rm") and not summary.reused
    assert summary.metrics == pytest.approx(json.loads((tmp_path / "rm" / "eval_results.json").read_text()))
    assert summary.metrics["n"] + json.loads((tmp_path / "rm" / "data_report.json").read_text())["train"]["kept"] == 16
    AutoModelForSequenceClassification.from_pretrained(summary.output_dir)  # the output dir holds the model
    # The rows live in a file named by their content: the same call reuses the finished run.
    again = mmpo.train_reward_model(common(tiny_model_dir, tmp_path / "rm"), data=rows, gamma=1.0)
    assert again.reused and again.metrics == summary.metrics and again.global_step == 2


def test_train_policy_from_a_config_object_and_a_dataset(tiny_model_dir, tmp_path):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    config = DPOConfig(**common(tiny_model_dir, tmp_path / "policy"))
    summary = mmpo.train_policy(config, data=Dataset.from_list(make_graded_rows(16)), beta=0.5)
    assert summary.kind == "policy" and summary.global_step == 2 and summary.saved == "full"
    assert summary.details["reference"] == "precomputed" and 0.0 <= summary.metrics["accuracy"] <= 1.0
    assert "loss" in summary.train_metrics or "train_loss" in summary.train_metrics
    AutoModelForCausalLM.from_pretrained(summary.output_dir)


def test_config_of_the_wrong_kind_and_empty_rows_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="RMConfig"):
        mmpo.train_reward_model(DPOConfig(output_dir=str(tmp_path / "x")))
    with pytest.raises(UserError, match="no rows"):
        data_setting([])
    with pytest.raises(UserError, match="not one for mmpo.train_policy"):
        mmpo.train_policy("embedded/rm")


def test_the_registry_names_each_task_once():
    from mmpo.training.online import OnlineConfig, train_online
    from mmpo.training.rm import train_reward_model

    assert set(TASKS) == {"rm", "dpo", "online"}
    assert task("rm").config_class is RMConfig and task("rm").train is train_reward_model
    assert task("online").config_class is OnlineConfig and task("online").train is train_online
    assert [TASKS[n].loss_kind for n in ("rm", "dpo", "online")] == ["rm", "policy", "policy"]
    with pytest.raises(ValueError, match="rm, dpo, online"):
        task("ppo")
