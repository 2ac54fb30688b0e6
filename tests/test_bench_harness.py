"""The benchmark harness's pure parts (benchmarks/): the case matrix, the run order, and the real-text pairs."""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench  # noqa: E402
import pairs  # noqa: E402
from conftest import build_byte_tokenizer  # noqa: E402


def test_every_comparison_names_cases_that_exist_and_trl_defaults_are_left_alone():
    for setting, _, ours, theirs, _ in bench.comparisons(list(bench.SETTINGS)):
        assert bench.CASES[ours]["trainer"] == "mmpo" and bench.CASES[theirs]["trainer"] == "trl"
        assert bench.CASES[ours]["task"] == bench.CASES[theirs]["task"]
    # "defaults": TRL gets no precision or checkpointing argument, so its own defaults apply.
    assert all(bench.CASES[c]["trl_overrides"] == {} for c in ("trl-dpo", "trl-dpo-pre", "trl-rm"))
    assert bench.CASES["trl-dpo-fp32"]["trl_overrides"] == {"bf16": False, "gradient_checkpointing": False}
    assert bench.CASES["mmpo-rm-fp32"]["mmpo_overrides"] == {"bf16": False}


def test_run_order_runs_each_case_once_alternating_libraries_and_flips():
    cases = bench.cases_for(["defaults", "bf16", "fp32"])
    assert len(cases) == 13
    order = bench.run_order(cases, 0)
    assert sorted(order) == sorted(cases)
    trainers = [bench.CASES[c]["trainer"] for c in order]
    assert not any(a == b == "mmpo" for a, b in zip(trainers, trainers[1:]))
    assert trainers[0] == "trl" and trainers[-1] == "trl"
    assert bench.run_order(cases, 1) == order[::-1]


def test_parse_mixes_reads_name_length_batch_and_rejects_garbage():
    assert bench.parse_mixes(["real:256:1", "synthetic:128:2"]) == {"real": (256, 1), "synthetic": (128, 2)}
    with pytest.raises(SystemExit, match="NAME:MAX_LENGTH:PAIRS_PER_STEP"):
        bench.parse_mixes(["real:256"])


def test_real_pairs_order_by_judge_cut_when_asked_and_count_cuts(tmp_path):
    rows = [
        {"idx": i, "instruction": f"Question {i}?", "outputs": {
            "a": {"output": "short answer", "p_beats_reference": 0.2},
            "b": {"output": "a much longer answer " * 8, "p_beats_reference": 0.9},
        }}
        for i in range(4)
    ]
    path = tmp_path / "responses.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    tokenizer = build_byte_tokenizer()
    L = 120
    raw = pairs.real_pairs(tokenizer, path, 3, L, seed=1)
    assert len(raw) == 3
    assert all(p["chosen"].startswith("a much longer") and p["score_chosen"] > p["score_rejected"] for p in raw)
    assert all(p["chosen_tokens"] > L >= p["rejected_tokens"] for p in raw)  # long answer over the budget, uncut
    fitted = pairs.real_pairs(tokenizer, path, 3, L, seed=1, fit=True)
    assert all(pairs._chat_lengths(tokenizer, p["prompt"], p["chosen"])[1] <= L for p in fitted)
    assert all(len(p["chosen"]) < len(q["chosen"]) for p, q in zip(fitted, raw))
    stats = pairs.token_stats(raw, L)
    assert stats["chosen_cut"] == 1.0 and stats["rejected_cut"] == 0.0
    assert stats["mean_tokens_per_pair"] == sum(L + p["rejected_tokens"] for p in raw) / 3
    with pytest.raises(RuntimeError, match="only 4 usable pairs"):
        pairs.real_pairs(tokenizer, path, 5, L)
