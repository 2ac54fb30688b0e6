"""The benchmark suite's pure parts (the ``benchmarks`` package): the case matrix, the run order, the real-text
pairs, the memory timeline, the path redaction and the entry point."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import build_byte_tokenizer

from benchmarks import bench, memory_profile, pairs

REPO = Path(__file__).resolve().parents[1]


def test_every_comparison_names_cases_that_exist_and_trl_defaults_are_left_alone():
    for setting, _, ours, theirs, _ in bench.comparisons(list(bench.SETTINGS)):
        assert bench.CASES[ours]["trainer"] == "mmpo" and bench.CASES[theirs]["trainer"] == "trl"
        assert bench.CASES[ours]["task"] == bench.CASES[theirs]["task"]
    # "defaults": TRL gets no precision or checkpointing argument, so its own defaults apply.
    assert all(bench.CASES[c]["trl_overrides"] == {} for c in ("trl-dpo", "trl-dpo-pre", "trl-rm"))
    assert bench.CASES["trl-dpo-fp32"]["trl_overrides"] == {"bf16": False, "gradient_checkpointing": False}
    # mmpo's defaults checkpoint (as TRL's do); the like-for-like settings turn it off for both.
    assert bench.CASES["mmpo-rm"]["mmpo_overrides"] == {}
    assert bench.CASES["mmpo-rm-fp32"]["mmpo_overrides"] == {"bf16": False, "gradient_checkpointing": False}
    assert bench.CASES["mmpo-dpo-bf16"]["mmpo_overrides"] == {"gradient_checkpointing": False}
    assert {c for _, _, c, _, _ in bench.comparisons(["bf16"])} == {"mmpo-dpo-bf16", "mmpo-rm-bf16"}
    assert len(bench.cases_for(["defaults", "bf16", "fp32"])) == 15


def test_run_order_runs_each_case_once_alternating_libraries_and_flips():
    cases = bench.cases_for(["defaults", "bf16", "fp32"])
    assert len(cases) == 15
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
    with pytest.raises(SystemExit, match="unknown mix 'long'"):
        bench.parse_mixes(["long:256:1"])


def test_a_mix_kind_can_run_at_several_lengths():
    mixes = bench.parse_mixes(["prompt-heavy-512:512:4", "prompt-heavy-1024:1024:4"])
    assert mixes == {"prompt-heavy-512": (512, 4), "prompt-heavy-1024": (1024, 4)}
    assert {bench.mix_kind(m) for m in mixes} == {"prompt-heavy"}
    with pytest.raises(SystemExit, match="unknown mix 'realistic'"):
        bench.mix_kind("realistic")


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


def test_case_spec_gives_mmpo_keys_to_mmpo_cases_only():
    data = {"max_length": 128, "batch": 1, "files": {t: {"mmpo": f"{t}.jsonl", "trl": f"{t}-trl.jsonl"} for t in ("rm", "dpo")}}
    ours = bench.case_spec("mmpo-rm-fp32", "synthetic", data, 2, 5, 1, "model", 2, {"keep_host_memory": False})
    assert ours["mmpo_overrides"] == {"bf16": False, "gradient_checkpointing": False, "keep_host_memory": False} and ours["data_mmpo"] == "rm.jsonl"
    assert (ours["repeat"], ours["timed_steps"], ours["warmup_steps"], ours["threads"]) == (2, 5, 1, 2)
    theirs = bench.case_spec("trl-dpo-pre-bf16", "synthetic", data, 0, 5, 1, "model", 2, {"keep_host_memory": False})
    assert theirs["mmpo_overrides"] == {} and theirs["variant"] == "precompute" and theirs["data_trl"] == "dpo-trl.jsonl"


def test_memory_timeline_is_split_into_each_steps_phases():
    assert all(case in bench.CASES for _, case, _ in memory_profile.CASES)
    # (time, resident MiB, in use MiB, file-backed MiB); step 1: forward to t=2, backward to 4, optimizer to 5.
    samples = [(0.0, 100, 50, 10), (1.5, 130, 60, 10), (3.0, 180, 90, 11), (4.5, 170, 95, 12), (6.0, 175, 70, 12),
               (7.0, 200, 99, 12), (8.5, 190, 80, 12)]
    marks = [("backward", 2.0), ("backward_end", 4.0), ("optimizer", 4.2), ("optimizer_end", 5.0),
             ("backward", 6.5), ("backward_end", 7.5), ("optimizer", 8.0), ("optimizer_end", 9.0)]
    steps = memory_profile.phases({"samples": samples, "marks": marks})
    assert [s["forward"]["rss_mib"] for s in steps] == [130, 175]
    assert [s["backward"]["rss_mib"] for s in steps] == [180, 200]
    assert [s["optimizer"]["rss_mib"] for s in steps] == [170, 190]
    assert steps[0]["backward"]["in_use_mib"] == 90 and steps[1]["backward"]["file_mib"] == 12
    row = memory_profile.summarize("x", {"case": "mmpo-rm", "peak_rss_mib": 201, "step_seconds": [3, 1, 1, 2]},
                                   {"samples": samples, "marks": marks})
    assert (row["peak_step"], row["peak_phase"], row["peak_in_use_mib"], row["median_step_s"]) == (2, "backward", 99, 1.5)


def test_redact_paths_replaces_machine_prefixes_everywhere_in_nested_results():
    blob = {"meta": {"model": "/home/me/.cache/mmpo/models/x", "out": ["/srv/repo/benchmarks", 3]},
            "results": [{"data": "/home/me/.cache/mmpo/bench/a.jsonl", "n": 1.5}]}
    out = bench.redact_paths(blob, {"/home/me": "~", "/home/me/.cache/mmpo": "$MMPO_CACHE", "/srv/repo": "."})
    assert out == {"meta": {"model": "$MMPO_CACHE/models/x", "out": ["./benchmarks", 3]},
                   "results": [{"data": "$MMPO_CACHE/bench/a.jsonl", "n": 1.5}]}


def test_committed_results_hold_no_path_of_the_machine_they_ran_on():
    for path in (REPO / "benchmarks").rglob("*"):
        if path.is_file() and path.suffix in (".md", ".json", ".jsonl", ".txt") and path.name != "README.md":
            text = path.read_text()
            for prefix in ("/root/", "/work/", "/home/", "/tmp/"):
                assert prefix not in text, f"{path.relative_to(REPO)} holds a machine path ({prefix})"


def test_entry_point_lists_the_cases_and_rejects_an_unknown_one():
    run = [sys.executable, "-m", "benchmarks"]
    listed = subprocess.run(run + ["--help"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert all(f"``{case}``" in listed for case in ("trl", "report", "memory", "layouts", "groups"))
    bad = subprocess.run(run + ["nope"], cwd=REPO, capture_output=True, text=True)
    assert bad.returncode != 0 and "unknown case 'nope'" in bad.stderr


def test_report_renders_the_committed_results_unchanged(tmp_path):
    """RESULTS.md is what ``python -m benchmarks report`` makes of results.json: the two never drift apart."""
    out = tmp_path / "RESULTS.md"
    from benchmarks import report

    report.write_report(REPO / "benchmarks" / "results.json", out)
    assert out.read_text() == (REPO / "benchmarks" / "RESULTS.md").read_text()
