"""RewardBench: loading in the real schema, subset / section / overall aggregation against hand computations
with a scorer whose answers the test controls, Prior Sets, and resumable scoring."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmpo.errors import DataError, UserError
from mmpo.evaluation.rewardbench import (
    EXAMPLE_COUNTS,
    SECTIONS,
    format_table,
    limit_per_subset,
    load_prior_sets,
    load_rewardbench,
    rewardbench_report,
    score_rows,
)

SETUP = {"model": "fake", "kind": "reward", "ref_model": None, "beta": None, "max_length": 64, "max_prompt_length": None}


def fake_scorer(pairs):
    """The chosen response says how the pair should come out: 'right', 'wrong' or 'tie'."""
    outcome = {"right": (2.0, -1.0), "wrong": (-1.0, 2.0), "tie": (0.5, 0.5)}
    return [outcome[p.chosen[0]["content"].split()[0]] for p in pairs]


def rb_row(i: int, subset: str, outcome: str) -> dict:
    """A row in allenai/reward-bench's schema; the chosen text tells fake_scorer the outcome."""
    return {
        "prompt": f"Question {i} from {subset}?",
        "chosen": f"{outcome} answer {i}",
        "rejected": f"other answer {i}",
        "chosen_model": "model-a",
        "rejected_model": "model-b",
        "subset": subset,
        "id": 1000 + i,
    }


# Outcomes per subset, chosen so every section mixes subsets of different weights.
PLAN = {
    "alpacaeval-easy": ["right", "wrong"],  # 0.5, weight 100
    "mt-bench-easy": ["right"],  # 1.0, weight 28
    "llmbar-natural": ["tie", "right"],  # 0.5 (a tie counts wrong, as in the official scoring), weight 100
    "mt-bench-hard": ["right", "wrong", "wrong", "wrong"],  # 0.25, weight 37
    "xstest-should-refuse": ["right"],  # 1.0, weight 154
    "xstest-should-respond": ["wrong"],  # 0.0, weight 250
    "math-prm": ["right"],  # 1.0, weight 984
    "hep-python": ["wrong", "wrong"],  # 0.0, weight 164
    "some-new-subset": ["right"],  # in no section
}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def plan_rows() -> list[dict]:
    rows, i = [], 0
    for subset, outcomes in PLAN.items():
        for outcome in outcomes:
            rows.append(rb_row(i, subset, outcome))
            i += 1
    return rows


def test_sections_cover_every_weighted_subset_once():
    listed = [s for subsets in SECTIONS.values() for s in subsets]
    assert len(listed) == len(set(listed)) == 23
    assert set(listed) == set(EXAMPLE_COUNTS)


def test_section_weighting_and_overall_by_hand(tmp_path):
    rows = load_rewardbench(str(write_jsonl(tmp_path / "rb.jsonl", plan_rows())))
    scores = score_rows(rows, fake_scorer, tmp_path / "cache.jsonl", SETUP, batch_size=3, progress=False)
    report = rewardbench_report(rows, scores)

    subsets = report["subsets"]
    assert subsets["alpacaeval-easy"]["accuracy"] == 0.5 and subsets["alpacaeval-easy"]["n"] == 2
    assert subsets["llmbar-natural"]["accuracy"] == 0.5  # tie wrong + right: RewardBench counts a tie wrong
    assert subsets["mt-bench-hard"]["accuracy"] == 0.25
    chat = (0.5 * 100 + 1.0 * 28) / (100 + 28)
    chat_hard = (0.5 * 100 + 0.25 * 37) / (100 + 37)
    safety = (1.0 * 154 + 0.0 * 250) / (154 + 250)
    reasoning = (1.0 * 984 + 0.0 * 164) / (984 + 164)  # math-prm's 984 makes this 6/7, not the unweighted 1/2
    assert report["sections"] == pytest.approx({"Chat": chat, "Chat Hard": chat_hard, "Safety": safety, "Reasoning": reasoning})
    assert reasoning == pytest.approx(6 / 7)
    assert report["overall"] == pytest.approx((chat + chat_hard + safety + reasoning) / 4)
    # The subset outside the four sections is reported but changes no section.
    assert report["other_subsets"]["some-new-subset"]["accuracy"] == 1.0
    assert not report["complete"] and "hep-go" in report["missing_subsets"] and "math-prm" not in report["missing_subsets"]
    table = format_table(report)
    assert f"{100 * report['overall']:5.1f}" in table and "incomplete" in table


def test_section_without_rows_is_none_and_overall_averages_the_rest(tmp_path):
    rows = load_rewardbench(str(write_jsonl(tmp_path / "rb.jsonl", [rb_row(0, "math-prm", "right"), rb_row(1, "donotanswer", "wrong")])))
    report = rewardbench_report(rows, score_rows(rows, fake_scorer, tmp_path / "c.jsonl", SETUP, progress=False))
    assert report["sections"]["Chat"] is None and report["sections"]["Chat Hard"] is None
    assert report["overall"] == pytest.approx((1.0 + 0.0) / 2)


def test_resume_scores_each_row_once(tmp_path):
    data = write_jsonl(tmp_path / "rb.jsonl", plan_rows())
    rows = load_rewardbench(str(data))
    cache = tmp_path / "out.scores.jsonl"
    scored_first: list[str] = []

    def crashing_scorer(pairs):
        if len(scored_first) >= 6:
            raise KeyboardInterrupt  # the user stops the run after 6 rows (two batches of 3)
        scored_first.extend(f"{p.meta['subset']}/{p.meta['id']}" for p in pairs)
        return fake_scorer(pairs)

    with pytest.raises(KeyboardInterrupt):
        score_rows(rows, crashing_scorer, cache, SETUP, batch_size=3, progress=False)
    assert len(scored_first) == 6

    scored_second: list[str] = []

    def recording_scorer(pairs):
        scored_second.extend(f"{p.meta['subset']}/{p.meta['id']}" for p in pairs)
        return fake_scorer(pairs)

    scores = score_rows(rows, recording_scorer, cache, SETUP, batch_size=3, progress=False)
    assert not set(scored_first) & set(scored_second)
    assert sorted(scored_first + scored_second) == sorted(r.key for r in rows)
    cached_keys = [json.loads(line).get("key") for line in cache.read_text().splitlines()[1:]]
    assert sorted(cached_keys) == sorted(r.key for r in rows)  # each row cached exactly once

    # A third run scores nothing and gives the same report as one uninterrupted run.
    untouched = score_rows(rows, lambda pairs: pytest.fail("nothing left to score"), cache, SETUP, progress=False)
    fresh = score_rows(rows, fake_scorer, tmp_path / "fresh.jsonl", SETUP, progress=False)
    assert rewardbench_report(rows, untouched) == rewardbench_report(rows, fresh) == rewardbench_report(rows, scores)


def test_scoring_longest_first(tmp_path):
    rows = load_rewardbench(str(write_jsonl(tmp_path / "rb.jsonl", [
        {**rb_row(0, "hep-go", "right"), "chosen": "right " + "x" * 10},
        {**rb_row(1, "hep-go", "right"), "chosen": "right " + "x" * 500},
        {**rb_row(2, "hep-go", "right"), "chosen": "right " + "x" * 100},
    ])))
    seen = []

    def scorer(pairs):
        seen.extend(p.meta["id"] for p in pairs)
        return fake_scorer(pairs)

    score_rows(rows, scorer, tmp_path / "c.jsonl", SETUP, batch_size=1, progress=False)
    assert seen == ["1001", "1002", "1000"]


def test_cache_from_another_setup_is_refused(tmp_path):
    rows = load_rewardbench(str(write_jsonl(tmp_path / "rb.jsonl", plan_rows())))
    cache = tmp_path / "c.jsonl"
    score_rows(rows[:2], fake_scorer, cache, SETUP, progress=False)
    with pytest.raises(UserError, match="different setup"):
        score_rows(rows, fake_scorer, cache, {**SETUP, "model": "another"}, progress=False)


def test_local_copies_parquet_and_save_to_disk(tmp_path):
    import datasets
    import pandas as pd

    rows = plan_rows()
    pd.DataFrame(rows).to_parquet(tmp_path / "filtered.parquet")
    from_parquet = load_rewardbench(str(tmp_path / "filtered.parquet"))
    datasets.DatasetDict({"raw": datasets.Dataset.from_list(rows[:2]), "filtered": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "saved"))
    from_disk = load_rewardbench(str(tmp_path / "saved"))
    assert [r.key for r in from_parquet] == [r.key for r in from_disk] == [f"{r['subset']}/{r['id']}" for r in rows]
    assert from_disk[0].prompt == [{"role": "user", "content": rows[0]["prompt"]}]
    assert from_disk[0].chosen == [{"role": "assistant", "content": rows[0]["chosen"]}]


def test_bad_rows_name_file_row_and_field(tmp_path):
    bad = rb_row(1, "hep-go", "right")
    del bad["rejected"]
    path = write_jsonl(tmp_path / "rb.jsonl", [rb_row(0, "hep-go", "right"), bad])
    with pytest.raises(DataError) as e:
        load_rewardbench(str(path))
    assert (e.value.row, e.value.field) == (2, "rejected") and str(path) in str(e.value)
    dup = write_jsonl(tmp_path / "dup.jsonl", [rb_row(0, "hep-go", "right"), rb_row(0, "hep-go", "wrong")])
    with pytest.raises(DataError, match="duplicate id"):
        load_rewardbench(str(dup))


def test_prior_sets_from_a_directory_and_their_score(tmp_path):
    prior = tmp_path / "prior"
    prior.mkdir()
    # preference-test-sets rows: multi-turn prompts as message lists, no id, a finer `subset` column.
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}, {"role": "user", "content": "help?"}]
    plan = {
        "anthropic_helpful": ["right", "wrong"],  # 0.5
        "anthropic_hhh": ["right"],  # 1.0
        "shp": ["wrong"],  # 0.0
        "summarize": ["tie"],  # 0.0: RewardBench counts a tie wrong (chosen > rejected strictly)
        "anthropic_harmless": ["wrong", "wrong"],  # reported, not in the Prior Sets score
    }
    for name, outcomes in plan.items():
        rows = [{"prompt": chat, "chosen": f"{o} c{i}", "rejected": f"r{i}", "subset": "helpful"} for i, o in enumerate(outcomes)]
        write_jsonl(prior / f"{name}.jsonl", rows)
    (prior / "pku_better.jsonl").write_text(json.dumps({"prompt": "x", "chosen": "right", "rejected": "y"}) + "\n")
    prior_rows = load_prior_sets(str(prior))
    assert {r.subset for r in prior_rows} == set(plan)  # pku_better is not a Prior Set
    assert prior_rows[0].prompt == chat

    core = load_rewardbench(str(write_jsonl(tmp_path / "rb.jsonl", plan_rows())))
    scores = score_rows(core + prior_rows, fake_scorer, tmp_path / "c.jsonl", SETUP, progress=False)
    report = rewardbench_report(core, scores, prior_rows)
    assert report["prior_sets"]["subsets"]["anthropic_harmless"]["accuracy"] == 0.0
    assert report["prior_sets"]["subsets"]["summarize"]["accuracy"] == 0.0
    assert report["prior_sets"]["score"] == pytest.approx((0.5 + 1.0 + 0.0 + 0.0) / 4)
    assert report["overall"] == rewardbench_report(core, scores)["overall"]  # Prior Sets stay separate


def test_prior_sets_single_file_needs_set_names(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "x", "chosen": "a", "rejected": "b", "subset": "helpful"}])
    with pytest.raises(DataError, match="not a Prior Set"):
        load_prior_sets(str(path))


def test_limit_per_subset():
    rows = [type("R", (), {"subset": s})() for s in ["a", "a", "b", "a", "b", "b"]]
    assert [r.subset for r in limit_per_subset(rows, 2)] == ["a", "a", "b", "b"]


def test_cli_with_a_tiny_policy_resumes_from_its_cache(tmp_path, tiny_model_dir):
    from mmpo.cli.main import main

    model = tiny_model_dir
    data = write_jsonl(tmp_path / "rb.jsonl", plan_rows())
    out = tmp_path / "rb.json"
    args = ["eval", "rewardbench", "--model", str(model), "--data", str(data), "--out", str(out), "--batch-size", "4", "--beta", "0.5"]
    assert main(args) == 0
    report = json.loads(out.read_text())
    cache = tmp_path / "rb.scores.jsonl"
    lines = cache.read_text().splitlines()
    assert len(lines) == 1 + len(plan_rows())
    assert report["kind"] == "policy" and report["beta"] == 0.5 and set(report["sections"]) == set(SECTIONS)
    for v in report["subsets"].values():
        assert 0.0 <= v["accuracy"] <= 1.0
    # A rerun reads every score from the cache and writes the same report.
    assert main(args) == 0
    assert cache.read_text().splitlines() == lines
    assert json.loads(out.read_text())["overall"] == report["overall"]
    # Changing beta changes the setup: refused instead of mixing scores.
    assert main(args[:-1] + ["0.25"]) == 2
