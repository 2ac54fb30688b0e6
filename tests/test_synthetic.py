"""The graded-tasks data set: deterministic generation, the checker, pairs, splits, and loading."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mmpo.data.pairs import PairOptions
from mmpo.data.pipeline import load_pairs
from mmpo.data.synthetic import (
    FILES,
    RESPONSE_KINDS,
    SyntheticConfig,
    build,
    make_dataset,
    write,
)
from mmpo.graders.graded_tasks import TASKS, Task, grade, grade_details
from mmpo.errors import UserError

SMALL = SyntheticConfig(seed=3, prompts=80)


@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> Path:
    out, _ = make_dataset(SMALL, tmp_path_factory.mktemp("graded") / "set")
    return out


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# --- determinism ---------------------------------------------------------------------------------------

def test_same_seed_gives_same_bytes_and_another_seed_does_not(tmp_path, small_set):
    again, _ = make_dataset(SMALL, tmp_path / "again")
    for name in FILES:
        assert (again / name).read_bytes() == (small_set / name).read_bytes(), name
    other, _ = make_dataset(SyntheticConfig(seed=4, prompts=80), tmp_path / "other")
    assert (other / "train.jsonl").read_bytes() != (small_set / "train.jsonl").read_bytes()


def test_same_bytes_in_a_fresh_process_with_another_hash_seed(tmp_path, small_set):
    # str hashing is randomised per process; generation must not depend on it (e.g. via set order).
    code = (
        "import sys; from mmpo.data.synthetic import SyntheticConfig, make_dataset;"
        "make_dataset(SyntheticConfig(seed=3, prompts=80), sys.argv[1])"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "fresh")], check=True, env=env)
    for name in ("train.jsonl", "eval.jsonl", "prompts_eval.jsonl"):
        assert (tmp_path / "fresh" / name).read_bytes() == (small_set / name).read_bytes(), name


# --- the checker ---------------------------------------------------------------------------------------

# task, answer, exact, verbose-correct, near miss, wrong
CASES = [
    ("add", "42", "42", "Let me add them: 17 + 25 = 42", "41", "52"),
    ("subtract", "13", "13", "The answer is 13, since 20 - 7 = 13.", "14", "27"),
    ("multiply", "36", "36.", "Sure! Multiplying 4 by 9 gives 36", "35", "13"),
    ("count_letter", "3", "3", "There are 3 r's in strawberry.", "2", "10"),
    ("count_items", "5", "**5**", "Answer: 5 items", "6", "9"),
    ("km_to_m", "3500", "3,500", "3.5 km = 3500 m", "3450", "350"),
    ("hours_to_minutes", "150", "150", "2.5 hours is 150 minutes.", "148", "250"),
    ("kg_to_g", "1250", "1250", "That is 1250 grams.", "1240", "125"),
    ("sort", "3, 7, 19, 25, 42", "[3, 7, 19, 25, 42]", "Sorting 42, 7, 19, 3, 25 gives 3, 7, 19, 25, 42.",
     "3, 7, 25, 19, 42", "42, 25, 19, 7, 3"),
    ("upper_case", "GARDEN", "'GARDEN'", "The word garden in upper case is GARDEN.", "GARDN", "Garden"),
    ("date_format", "05/03/2024", "05/03/2024.", "The date is 05/03/2024", "05-03-2024", "2024-03-05"),
]


def test_cases_cover_every_task():
    assert {c[0] for c in CASES} == set(TASKS)


@pytest.mark.parametrize("name,answer,exact,verbose,near,wrong", CASES, ids=[c[0] for c in CASES])
def test_checker_orders_exact_verbose_near_wrong_empty(name, answer, exact, verbose, near, wrong):
    task = Task(name, "", answer)
    assert grade(task, exact) == 10.0
    assert 6.0 <= grade(task, verbose) < 10.0
    assert 0.0 < grade(task, near) <= 5.0
    assert grade(task, wrong) == 0.0
    assert grade(task, "") == 0.0
    assert grade(task, "   \n") == 0.0
    assert grade(task, "I'm sorry, I can't help with that.") == 0.0


def test_checker_formulas():
    add = Task("add", "", "42")
    # near miss: 10 * 0.5 * (1 - |41 - 42| / max(2, 4.2))
    assert grade(add, "41") == round(10 * 0.5 * (1 - 1 / 4.2), 1)
    # right answer with 3 extra words: 10 * (0.9 - 0.03)
    assert grade(add, "The answer is 42.") == 8.7
    # the padding penalty bottoms out at 6 points, still above the best near miss
    assert grade(add, "word " * 200 + "so the answer is 42") == 6.0
    # one adjacent swap in a list of five: 10 * 0.5 * (1 - 1 / 10)
    assert grade(Task("sort", "", "1, 2, 3, 4, 5"), "1, 3, 2, 4, 5") == 4.5
    # one deletion in a six-letter word: 10 * 0.5 * (1 - 2 / 6)
    assert grade(Task("upper_case", "", "GARDEN"), "GARDN") == round(10 * 0.5 * (1 - 2 / 6), 1)


def test_checker_reads_free_form_generations():
    add = Task("add", "", "42")
    # the number after the last "answer is" marker wins over later working
    details = grade_details(add, "The answer is 42.\n\nExplanation: 17 + 25 = 42 and 1 + 1 = 2.")
    assert details.extracted == "42" and details.score > 6
    # without a marker the last number is the answer
    assert grade_details(add, "17 + 25 makes 43").extracted == "43"
    # a far-off number earns nothing; a list task reads the last run of numbers
    assert grade(add, "4200") == 0.0
    sort = Task("sort", "", "1, 2, 3")
    assert grade_details(sort, "From 3, 1, 2 we get 1, 2, 3. Done.").extracted == "1, 2, 3"
    # a mapping row from the generated files works as a task
    assert grade({"task": "add", "answer": "42", "prompt": "What is 17 + 25?"}, "42") == 10.0


def test_checker_rejects_unknown_task():
    with pytest.raises(UserError, match="unknown task"):
        grade({"task": "poetry", "answer": "x"}, "x")


# --- pairs and splits --------------------------------------------------------------------------------------

def test_pairs_are_ordered_by_the_checker_with_varied_margins(small_set):
    rows = read_jsonl(small_set / "train.jsonl") + read_jsonl(small_set / "eval.jsonl")
    assert rows
    margins = set()
    for row in rows:
        assert row["score_chosen"] > row["score_rejected"]
        # the stored scores are the checker's, not the generator's intent
        assert row["score_chosen"] == grade(row, row["chosen"])
        assert row["score_rejected"] == grade(row, row["rejected"])
        assert row["kind_chosen"] in RESPONSE_KINDS and row["kind_rejected"] in RESPONSE_KINDS
        margins.add(round(row["score_chosen"] - row["score_rejected"], 1))
    assert len(margins) >= 4
    assert min(margins) <= 1.0  # close calls exist
    assert max(margins) >= 8.0  # and clear ones


def test_train_and_eval_prompts_are_disjoint(small_set):
    train = read_jsonl(small_set / "train.jsonl")
    evals = read_jsonl(small_set / "eval.jsonl")
    prompts_eval = read_jsonl(small_set / "prompts_eval.jsonl")
    prompts_train = read_jsonl(small_set / "prompts_train.jsonl")
    assert {r["prompt"] for r in train}.isdisjoint({r["prompt"] for r in evals})
    assert {r["prompt"] for r in evals} <= {r["prompt"] for r in prompts_eval}
    assert {r["prompt"] for r in prompts_train}.isdisjoint({r["prompt"] for r in prompts_eval})
    assert len(prompts_train) + len(prompts_eval) == SMALL.prompts
    assert len(prompts_eval) == round(SMALL.eval_fraction * SMALL.prompts)
    for row in prompts_eval:  # enough metadata to grade a generation
        assert grade(row, row["answer"]) == 10.0


def test_sizes_follow_the_config():
    data = build(SyntheticConfig(seed=1, prompts=50, eval_fraction=0.2, pairs_per_prompt=2))
    assert len(data.train_prompts) == 40 and len(data.eval_prompts) == 10
    per_prompt: dict[str, int] = {}
    for row in data.train_pairs + data.eval_pairs:
        per_prompt[row["prompt_id"]] = per_prompt.get(row["prompt_id"], 0) + 1
    assert max(per_prompt.values()) <= 2
    assert len(data.responses) == 50 * 5


def test_bad_config_is_a_user_error():
    with pytest.raises(UserError, match="eval_fraction"):
        build(SyntheticConfig(eval_fraction=1.5))
    with pytest.raises(UserError, match="responses_per_prompt"):
        build(SyntheticConfig(responses_per_prompt=1))


def test_write_refuses_a_file_as_directory(tmp_path):
    target = tmp_path / "afile"
    target.write_text("x")
    with pytest.raises(UserError, match="is a file"):
        write(build(SyntheticConfig(prompts=4)), target)


# --- loading ------------------------------------------------------------------------------------------------

def test_loads_with_soft_targets_from_the_grades(small_set):
    rows = read_jsonl(small_set / "train.jsonl")
    gamma = 0.5
    pairs, report = load_pairs(str(small_set / "train.jsonl"), PairOptions(gamma=gamma))
    assert len(pairs) == len(rows) and report.kept == len(rows) and not report.dropped
    for pair, row in zip(pairs, rows):
        expected = 1.0 / (1.0 + math.exp(-gamma * (row["score_chosen"] - row["score_rejected"])))
        assert pair.p == pytest.approx(expected, abs=1e-5)
        assert pair.prompt[-1]["content"] == row["prompt"]
        assert pair.chosen[-1]["content"] == row["chosen"]
    ps = [p.p for p in pairs]
    assert min(ps) > 0.5 and min(ps) < 0.65 and max(ps) > 0.99


def test_cli_writes_and_prints_a_summary(tmp_path, capsys):
    from mmpo.cli.main import main

    assert main(["make-data", "--out", str(tmp_path / "cli"), "--seed", "2", "--prompts", "40"]) == 0
    printed = capsys.readouterr().out
    assert "margin histogram (train)" in printed and "near_chatty" in printed
    summary = json.loads((tmp_path / "cli" / "summary.json").read_text())
    assert summary["prompts"] == {"train": 34, "eval": 6}
    assert summary["pairs"]["train"] == len(read_jsonl(tmp_path / "cli" / "train.jsonl"))


def test_reuse_keeps_a_matching_set_and_rebuilds_a_different_one(tmp_path):
    out, _ = make_dataset(SyntheticConfig(seed=5, prompts=20), tmp_path / "set")
    (out / "train.jsonl").write_text("")  # a reused set is returned as it is, not rewritten
    make_dataset(SyntheticConfig(seed=5, prompts=20), out, reuse=True)
    assert (out / "train.jsonl").read_text() == ""
    make_dataset(SyntheticConfig(seed=5, prompts=24), out, reuse=True)
    assert read_jsonl(out / "train.jsonl")


def test_the_recipes_graded_tasks_set_is_written_on_first_use(tmp_path, monkeypatch, capsys):
    # Issue 14.6: a fresh cache plus an embedded recipe's data path: the set is made, as `mmpo make-data` would.
    from mmpo.config import RMConfig, load_config
    from mmpo.data.pipeline import load_pairs
    from mmpo.data.synthetic import SyntheticConfig, generate_if_default_and_missing, make_dataset

    monkeypatch.setenv("MMPO_CACHE", str(tmp_path / "cache"))
    # The demo recipes read alpaca_graded; a recipe naming the graded-tasks set in the cache, as users write it:
    recipe = tmp_path / "rm.yaml"
    recipe.write_text("data: $MMPO_CACHE/data/graded-tasks-0/train.jsonl\neval_data: $MMPO_CACHE/data/graded-tasks-0/eval.jsonl\n")
    config = load_config(RMConfig, recipe)
    assert not Path(config.data).exists()
    assert generate_if_default_and_missing(config.data) == tmp_path / "cache" / "data" / "graded-tasks-0"
    assert f"made the graded-tasks data set (seed 0) at {tmp_path / 'cache' / 'data' / 'graded-tasks-0'}" in capsys.readouterr().out
    pairs, _ = load_pairs(config.eval_data)
    expected, _ = make_dataset(SyntheticConfig(seed=0), tmp_path / "by-hand")
    assert Path(config.data).read_bytes() == (expected / "train.jsonl").read_bytes() and len(pairs) > 0
    # Anything else that is missing stays missing (and the loader says so).
    assert generate_if_default_and_missing(str(tmp_path / "cache" / "data" / "mine" / "train.jsonl")) is None
    assert generate_if_default_and_missing(str(tmp_path / "graded-tasks-0" / "train.jsonl")) is None
