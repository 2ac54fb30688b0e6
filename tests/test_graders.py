"""Graders (mmpo.graders), `mmpo label` with a reward model and a checker, and `mmpo fit-gamma`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from mmpo.cli.main import main
from mmpo.evaluation.gamma_fit import SeparableData, fit_gamma, gamma_information, gamma_nll, gamma_score, reliability_bins
from mmpo.graders import PairItem, ScoreItem, load_grader
from mmpo.graders.base import Grader
from mmpo.models.reward import load_reward_model


@pytest.fixture(scope="module")
def reward_dir(tiny_model_dir, tiny_tokenizer, tmp_path_factory) -> Path:
    """An untrained tiny reward model saved as `mmpo rm` saves one (random head scaled so rewards differ)."""
    path = tmp_path_factory.mktemp("tiny-rm-graders")
    torch.manual_seed(3)
    model = load_reward_model(str(tiny_model_dir), tiny_tokenizer)
    with torch.no_grad():
        model.score.weight.mul_(50)
    model.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# --- reward model ---------------------------------------------------------------------------------------

def test_label_with_reward_model_reproduces_eval_pairs_scores(reward_dir, pair_file, tmp_path):
    data = pair_file(n=21, seed=5)
    scores_file, metrics = tmp_path / "s.jsonl", tmp_path / "m.json"
    assert main(["eval", "pairs", "--model", str(reward_dir), "--data", str(data), "--out", str(metrics),
                 "--scores", str(scores_file), "--batch-size", "4", "--max-length", "96"]) == 0
    out = tmp_path / "labeled.jsonl"
    assert main(["label", "--data", str(data), "--out", str(out), "--reward-model", str(reward_dir),
                 "--batch-size", "4", "--max-length", "96"]) == 0
    expected = _read(scores_file)
    labeled = _read(out)
    original = _read(data)
    assert len(labeled) == len(expected) == 21
    for row, exp, orig in zip(labeled, expected, original):
        assert row["score_chosen"] == exp["chosen_reward"] and row["score_rejected"] == exp["rejected_reward"]
        # the input's own margin is kept under original_ and everything else is untouched
        assert row["original_score_chosen"] == orig["score_chosen"] and row["prompt"] == orig["prompt"]
    assert len({r["score_chosen"] for r in labeled}) > 10  # the rewards are not all one value
    summary = json.loads((tmp_path / "labeled.label.json").read_text())
    assert summary["labeled"] == 21 and summary["unlabeled"] == 0


def test_labeled_file_trains_and_loads_as_is(reward_dir, pair_file, tmp_path):
    from mmpo.data.pairs import PairOptions
    from mmpo.data.pipeline import load_pairs

    data = pair_file(n=6, seed=2)
    out = tmp_path / "l.jsonl"
    assert main(["label", "--data", str(data), "--out", str(out), "--reward-model", str(reward_dir), "--max-length", "96"]) == 0
    pairs, _ = load_pairs(str(out), PairOptions(gamma=1.0))
    rows = _read(out)
    assert len(pairs) == 6
    for pair, row in zip(sorted(pairs, key=lambda p: p.row), rows):
        margin = row["score_chosen"] - row["score_rejected"]
        assert pair.margin == pytest.approx(abs(margin), abs=1e-8)  # the new margin, not the input's


def test_reward_grader_score_matches_pair_scores_and_compare_is_sigmoid(reward_dir):
    grader = load_grader(str(reward_dir), progress=False, max_length=96)
    prompt = [{"role": "user", "content": "What is 2 + 2?"}]
    a, b = "2 + 2 = 4.", "It is five, I think, or maybe more than that."
    sa, sb = grader.score([ScoreItem(prompt, a), ScoreItem(prompt, b)])
    (pa, pb), = grader.score_pairs([PairItem(prompt, a, b)])
    assert sa == pytest.approx(pa, abs=1e-5) and sb == pytest.approx(pb, abs=1e-5)
    assert grader.compare(prompt, a, b) == pytest.approx(1 / (1 + math.exp(-(pa - pb))), abs=1e-6)


def test_grader_cache_resumes_and_skips_done_items(tmp_path):
    calls: list[str] = []

    class Counting(Grader):
        kind = "counting"
        fingerprint = "counting-v1"

        def _score_uncached(self, items):
            calls.extend(it.response for it in items)
            return [float(len(it.response)) if it.response != "fail" else None for it in items]

    cache = tmp_path / "c.jsonl"
    items = [ScoreItem([{"role": "user", "content": "q"}], r) for r in ("a", "bb", "fail", "a")]
    assert Counting(cache_path=cache, progress=False).score(items) == [1.0, 2.0, None, 1.0]
    assert calls == ["a", "bb", "fail"]  # the duplicate is graded once
    calls.clear()
    again = Counting(cache_path=cache, progress=False).score(items + [ScoreItem([{"role": "user", "content": "q"}], "ccc")])
    assert again == [1.0, 2.0, None, 1.0, 3.0]
    assert calls == ["fail", "ccc"]  # a missing value is retried, done ones are read back


# --- checker ----------------------------------------------------------------------------------------------

def test_checker_grader_and_label_with_graded_tasks(tmp_path, write_jsonl):
    from mmpo.graders.graded_tasks import grade

    rows = [
        {"prompt": "What is 7 + 5? Answer with just the number.", "chosen": "12", "rejected": "13", "task": "add", "answer": "12"},
        {"prompt": "What is 7 + 6? Answer with just the number.", "chosen": "The answer is 13, I believe!", "rejected": "13",
         "task": "add", "answer": "13"},
        {"prompt": "no task here", "chosen": "x", "rejected": "y"},  # the checker cannot grade this row
        {"prompt": "broken", "chosen": 5, "rejected": "y"},  # not a pair: reported, not dropped silently
    ]
    data = write_jsonl(tmp_path / "tasks.jsonl", rows[:2] + rows[3:])
    out = tmp_path / "out.jsonl"
    assert main(["label", "--data", str(data), "--out", str(out), "--checker", "graded-tasks"]) == 0
    labeled = _read(out)
    assert [r["score_chosen"] for r in labeled] == [grade(rows[0], "12"), grade(rows[1], rows[1]["chosen"])]
    assert labeled[1]["score_chosen"] < labeled[1]["score_rejected"]  # a checker disagreeing with the label says so
    unlabeled = _read(tmp_path / "out.unlabeled.jsonl")
    assert len(unlabeled) == 1 and "chosen" in unlabeled[0]["label_error"]
    g = load_grader("checker:graded-tasks", progress=False)
    assert g.compare([{"role": "user", "content": "q"}], "12", "13", {"task": "add", "answer": "12"}) == 1.0


def test_load_grader_rejects_bad_specs(tmp_path):
    from mmpo.errors import UserError

    for spec in ("judge:nomodel", "checker:nosuchmodule:fn", "something-else", {"kind": "oracle"}):
        with pytest.raises(UserError):
            load_grader(spec)


# --- fit-gamma --------------------------------------------------------------------------------------------

def _bt_sample(gamma: float, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    margins = rng.normal(0.0, 2.0, n)
    outcomes = (rng.random(n) < 1 / (1 + np.exp(-gamma * margins))).astype(float)
    return margins, outcomes


def test_gamma_functions_match_finite_differences():
    m, y = _bt_sample(0.7, 300, 1)
    g, eps = 0.9, 1e-5
    numeric = (gamma_nll(g + eps, m, y) - gamma_nll(g - eps, m, y)) / (2 * eps)
    assert gamma_score(g, m, y) == pytest.approx(numeric, rel=1e-5)
    numeric2 = (gamma_score(g + eps, m, y) - gamma_score(g - eps, m, y)) / (2 * eps)
    assert gamma_information(g, m) == pytest.approx(numeric2, rel=1e-5)


def test_fit_gamma_recovers_known_gamma_within_interval():
    # n = 2000 margins ~ N(0, 2): the 95% interval is about +-0.14 around 1.5. Over seeds 0..199 the profile
    # interval covered 1.5 in 96% of fits (checked when this test was written); seed 0 is one of them.
    m, y = _bt_sample(1.5, 2000, 0)
    fit = fit_gamma(m, y)
    assert fit.profile_low < 1.5 < fit.profile_high
    assert fit.profile_high - fit.profile_low < 0.4
    assert gamma_score(fit.gamma, m, y) == pytest.approx(0.0, abs=1e-6)
    assert fit.wald_low == pytest.approx(fit.profile_low, abs=0.02)
    # soft outcomes (the true probabilities) give nearly the same estimate
    soft = fit_gamma(m, 1 / (1 + np.exp(-1.5 * m)))
    assert soft.gamma == pytest.approx(1.5, abs=1e-6)


def test_fit_gamma_coverage_over_seeds():
    covered = sum(fit_gamma(*_bt_sample(0.8, 1000, seed)).profile_low <= 0.8 <= fit_gamma(*_bt_sample(0.8, 1000, seed)).profile_high
                  for seed in range(40))
    assert covered >= 34  # nominal 95% of 40 = 38; 34 leaves room for chance (binomial 5th percentile ~ 35)


def test_fit_gamma_separable_data_is_reported():
    with pytest.raises(SeparableData):
        fit_gamma(np.array([1.0, 2.0, -1.0]), np.array([1.0, 1.0, 0.0]))


def test_reliability_bins_at_true_gamma_are_calibrated():
    m, y = _bt_sample(1.0, 20000, 4)
    for b in reliability_bins(m, y, 1.0):
        if b["n"] > 500:
            assert b["mean_outcome"] == pytest.approx(b["mean_predicted"], abs=0.05)


def test_fit_gamma_cli(tmp_path, write_jsonl):
    m, y = _bt_sample(2.0, 1500, 7)
    rows = [{"prompt": "q", "chosen": "a", "rejected": "b", "score_chosen": float(mi), "score_rejected": 0.0, "label": bool(yi)}
            for mi, yi in zip(m, y)]
    rows.append({"prompt": "q", "chosen": "a", "rejected": "b", "score_chosen": 1.0, "score_rejected": 0.0})  # no outcome
    data = write_jsonl(tmp_path / "bt.jsonl", rows)
    out = tmp_path / "fit.json"
    assert main(["fit-gamma", "--data", str(data), "--out", str(out)]) == 0
    fit = json.loads(out.read_text())
    assert fit["outcome"] == "label" and fit["skipped_rows"] == 1 and fit["n"] == 1500
    assert fit["profile_low"] < 2.0 < fit["profile_high"]
    assert (tmp_path / "fit.png").stat().st_size > 1000
