"""`mmpo eval pairs` and mmpo.evaluation.scoring: rewards from reward models and from policies."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mmpo.cli.main import main
from mmpo.data.pairs import PairOptions
from mmpo.data.pipeline import load_pairs
from mmpo.data.tokenize import tokenize_pair
from mmpo.evaluation.metrics import pair_metrics
from mmpo.evaluation.scoring import model_kind, score_pairs
from mmpo.models.reward import load_reward_model


@pytest.fixture(scope="module")
def reward_dir(tiny_model_dir, tiny_tokenizer, tmp_path_factory) -> Path:
    """An untrained tiny reward model saved like `mmpo rm` saves one (random head: rewards differ per text)."""
    path = tmp_path_factory.mktemp("tiny-rm")
    torch.manual_seed(1)
    model = load_reward_model(str(tiny_model_dir), tiny_tokenizer)
    with torch.no_grad():
        model.score.weight.mul_(50)  # rewards of order 1, so calibration metrics are not all at q = 0.5
    model.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


def direct_reward(model, ids: list[int]) -> float:
    with torch.no_grad():
        return float(model(input_ids=torch.tensor([ids])).logits[0, 0])


def direct_logp(model, prompt_ids: list[int], response_ids: list[int]) -> float:
    """sum_t log pi(y_t | x, y_<t) over the response, from one unpadded forward pass."""
    ids = torch.tensor([prompt_ids + response_ids])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
    start = len(prompt_ids)
    return float(sum(logprobs[t - 1, ids[0, t]] for t in range(start, ids.shape[1])))


def test_model_kind_from_architectures(reward_dir, tiny_model_dir):
    assert model_kind(str(reward_dir)) == "reward"
    assert model_kind(str(tiny_model_dir)) == "policy"


def test_eval_pairs_reward_model(reward_dir, tiny_tokenizer, pair_file, tmp_path):
    from transformers import AutoModelForSequenceClassification

    data = pair_file(n=10, seed=7)
    out, scores_file = tmp_path / "m.json", tmp_path / "s.jsonl"
    rc = main(["eval", "pairs", "--model", str(reward_dir), "--data", str(data), "--gamma", "0.5",
               "--out", str(out), "--scores", str(scores_file), "--batch-size", "3", "--max-length", "96"])
    assert rc == 0
    metrics = json.loads(out.read_text())
    assert {"n", "accuracy", "ece", "soft_ece", "nll", "brier"} <= set(metrics)
    assert metrics["kind"] == "reward" and metrics["n"] == 10 and metrics["gamma"] == 0.5

    scores = [json.loads(line) for line in scores_file.read_text().splitlines()]
    pairs, _ = load_pairs(str(data), PairOptions(gamma=0.5))
    assert [s["row"] for s in scores] == [p.row for p in pairs]
    model = AutoModelForSequenceClassification.from_pretrained(reward_dir).eval()
    for s, pair in zip(scores, pairs):
        tok = tokenize_pair(tiny_tokenizer, pair, 96, 48)
        assert s["chosen_reward"] == pytest.approx(direct_reward(model, tok.prompt_ids + tok.chosen_ids), abs=1e-4)
        assert s["rejected_reward"] == pytest.approx(direct_reward(model, tok.prompt_ids + tok.rejected_ids), abs=1e-4)
        assert s["p"] == pytest.approx(1 / (1 + math.exp(-0.5 * pair.margin)))
    h = np.array([s["chosen_reward"] - s["rejected_reward"] for s in scores])
    expected = pair_metrics(h, np.array([s["p"] for s in scores]))
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value)
    assert len(set(np.sign(h))) == 2  # both right and wrong pairs: accuracy is not trivially 0 or 1


def test_scores_do_not_depend_on_batching(reward_dir, graded_rows, write_jsonl, tmp_path):
    rows = graded_rows(7, seed=8)
    rows[2]["chosen"] = rows[2]["chosen"] + " Let me explain at some length why this is the right total."
    pairs, _ = load_pairs(str(write_jsonl(tmp_path / "d.jsonl", rows)))
    one = score_pairs(pairs, str(reward_dir), batch_size=1, max_length=128, progress=False)
    many = score_pairs(pairs, str(reward_dir), batch_size=4, max_length=128, progress=False)
    assert np.allclose(np.array(one), np.array(many), atol=1e-4)


def test_policy_implicit_reward(tiny_model_dir, tiny_tokenizer, pair_file, tmp_path):
    from transformers import AutoModelForCausalLM

    data = pair_file(n=6, seed=9)
    scores_file = tmp_path / "s.jsonl"
    rc = main(["eval", "pairs", "--model", str(tiny_model_dir), "--data", str(data), "--beta", "0.5", "--ref-model", "none",
               "--out", str(tmp_path / "m.json"), "--scores", str(scores_file), "--max-length", "96"])
    assert rc == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["kind"] == "policy" and metrics["beta"] == 0.5 and metrics["ref_model"] is None
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    pairs, _ = load_pairs(str(data))
    scores = [json.loads(line) for line in scores_file.read_text().splitlines()]
    for s, pair in zip(scores, pairs):
        tok = tokenize_pair(tiny_tokenizer, pair, 96, 48)
        # Reference-free: reward = beta * summed log-probability of the response.
        assert s["chosen_reward"] == pytest.approx(0.5 * direct_logp(model, tok.prompt_ids, tok.chosen_ids), rel=1e-4)
        assert s["rejected_reward"] == pytest.approx(0.5 * direct_logp(model, tok.prompt_ids, tok.rejected_ids), rel=1e-4)


def test_policy_against_itself_as_reference_scores_zero(tiny_model_dir, pair_file):
    pairs, _ = load_pairs(str(pair_file(n=4, seed=10)))
    scores = score_pairs(pairs, str(tiny_model_dir), ref_model=str(tiny_model_dir), beta=0.1, max_length=96, progress=False)
    assert np.allclose(np.array(scores), 0.0, atol=1e-5)


def test_reference_model_with_a_reward_model_is_an_error(reward_dir, tiny_model_dir, pair_file, tmp_path, capsys):
    rc = main(["eval", "pairs", "--model", str(reward_dir), "--data", str(pair_file(n=2)),
               "--ref-model", str(tiny_model_dir), "--out", str(tmp_path / "m.json")])
    assert rc == 2
    assert "reward model" in capsys.readouterr().err
    assert not (tmp_path / "m.json").exists()


def test_missing_model_directory_is_one_line(pair_file, tmp_path, capsys):
    rc = main(["eval", "pairs", "--model", str(tmp_path / "nope"), "--data", str(pair_file(n=2)), "--out", str(tmp_path / "m.json")])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert "nope" in err and len(err.splitlines()) == 1


def test_a_policy_without_ref_model_is_a_choice_left_to_the_user(tiny_model_dir, pair_file, tmp_path, capsys):
    # Issue 14.8: reference-free and with-reference scores differ widely; no silent default.
    import shutil

    policy = tmp_path / "policy"
    shutil.copytree(tiny_model_dir, policy)
    (policy / "config.yaml").write_text("model: embedded\nbeta: 0.1\nloss: mmpo\n")
    rc = main(["eval", "pairs", "--model", str(policy), "--data", str(pair_file(n=2)), "--out", str(tmp_path / "m.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert "is a policy: pass --ref-model PATH" in err[0] and "'embedded' per its config.yaml" in err[0]
    assert "--ref-model none" in err[0] and not (tmp_path / "m.json").exists()


@pytest.mark.parametrize("over_length", ["drop", "truncate"])
def test_eval_pairs_reproduces_the_trainers_own_evaluation(tiny_model_dir, tiny_tokenizer, pair_file, tmp_path, over_length):
    """`mmpo eval pairs` on a saved (LoRA-merged) run scores what the run's final evaluation scored: the same
    tokens (its over_length: a pair that fits stays whole under drop, even with a prompt past max_prompt_length)
    and float32 even when the run trained under bf16 autocast (bf16: auto, the default, is autocast on hardware
    with native bfloat16: there this checks that the final pass left it)."""
    from mmpo.config import RMConfig, load_config
    from mmpo.training.rm import train_reward_model

    data = pair_file(n=6, seed=6)
    out = tmp_path / "run"
    config = load_config(RMConfig, None, dict(
        model=str(tiny_model_dir), data=str(data), eval_data=str(shutil.copy(data, tmp_path / "held-out.jsonl")),
        allow_eval_overlap=True, output_dir=str(out), max_length=96, max_prompt_length=12, over_length=over_length,
        max_steps=2, per_device_train_batch_size=2, per_device_eval_batch_size=6, learning_rate=5e-3, lora_r=4, logging_steps=1, bf16="auto",
    ))
    pairs, _ = load_pairs(str(data), PairOptions(gamma=1.0))
    whole = [tokenize_pair(tiny_tokenizer, p, 96, 12, over_length="drop") for p in pairs]
    assert all(t is not None and len(t.prompt_ids) > 12 for t in whole)  # every prompt is past the budget, yet fits
    train_reward_model(config)
    scores_file = tmp_path / "s.jsonl"
    assert main(["eval", "pairs", "--model", str(out), "--data", str(data), "--out", str(tmp_path / "m.json"),
                 "--scores", str(scores_file), "--batch-size", "6"]) == 0
    mine = {s["row"]: s["chosen_reward"] - s["rejected_reward"] for s in map(json.loads, scores_file.read_text().splitlines())}
    theirs = [json.loads(line) for line in (out / "eval_scores.jsonl").read_text().splitlines()]
    assert len(theirs) == 6
    for s in theirs:
        assert mine[s["row"]] == pytest.approx(s["h"], abs=1e-4)



@pytest.mark.parametrize("kind", ["reward", "policy"])
def test_shared_prompt_scoring_scores_as_two_rows(kind, reward_dir, tiny_model_dir, pair_file, monkeypatch):
    """Scoring takes the shared-prompt layout (packed on a CPU) where the model allows it; the scores equal the two-row layout's."""
    import mmpo.evaluation.scoring as scoring

    model_dir = str(reward_dir if kind == "reward" else tiny_model_dir)
    model, tokenizer, found = scoring.load_scoring_model(model_dir)
    assert found == kind
    ref = scoring.load_scoring_model(str(tiny_model_dir))[0] if kind == "policy" else None
    if ref is not None:
        with torch.no_grad():
            for p in ref.parameters():
                p.mul_(0.9)  # a reference that differs from the policy
    pairs, _ = load_pairs(str(pair_file(n=9, seed=12)))
    layouts = []
    batch_rewards = scoring._batch_rewards
    monkeypatch.setattr(scoring, "_batch_rewards", lambda bt, *a: layouts.append(type(bt.collate).__name__ == "SharedPromptCollator") or batch_rewards(bt, *a))
    args = dict(kind=kind, ref_model=ref, beta=0.5, batch_size=4, max_length=96, progress=False)
    shared = scoring.score_with_models(model, tokenizer, pairs, **args)
    two_rows = scoring.score_with_models(model, tokenizer, pairs, prefix_sharing=False, **args)
    assert layouts == [True] * 3 + [False] * 3
    assert np.allclose(np.array(shared), np.array(two_rows), rtol=1e-4, atol=1e-5)
    assert len({round(c - r, 6) for c, r in shared}) > 1  # the scores vary across pairs
