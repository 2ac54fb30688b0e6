"""`mmpo online` on a tiny model: rounds end to end, pairs carry the grades' margins, a kill mid-round and a
rerun end where an uninterrupted run ends, and a failing grader is retried and then counted as missing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mmpo.graders import ScoreItem
from mmpo.io import read_jsonl
from mmpo.training.online import OnlineConfig, OnlineRun, graded_pairs, grade_with_retries, train_online


# A checker the subprocess runs import by name: the grade is the number of distinct characters (0..10), so
# random answers of the tiny model get different grades; an answer without letters gets no grade.
CHECKER = '''
import time

def grade(row, answer):
    time.sleep(float(row.get("sleep", 0)))
    if not any(c.isalpha() for c in answer):
        return None
    return float(min(10, len(set(answer))))
'''


def distinct_chars(row, answer):
    return float(min(10, len(set(answer))))


def _prompts(path: Path, n: int, start: int = 0, sleep: float = 0.0) -> Path:
    with path.open("w") as f:
        for i in range(start, start + n):
            f.write(json.dumps({"prompt": f"Say something about the number {i}.", "sleep": sleep}) + "\n")
    return path


def _overrides(model: Path, tmp: Path, out: Path, rounds: int = 2, sleep: float = 0.0) -> dict:
    return {
        "model": str(model), "prompts": str(_prompts(tmp / "prompts.jsonl", 6, sleep=sleep)),
        "eval_prompts": str(_prompts(tmp / "eval.jsonl", 3, start=100)), "rounds": rounds, "prompts_per_round": 4,
        "samples_per_prompt": 3, "max_new_tokens": 8, "generation_batch_size": 2, "steps_per_round": 2,
        "per_device_train_batch_size": 2, "learning_rate": 1e-3, "max_length": 96, "logging_steps": 1, "save_steps": 1,
        "reference": "precomputed", "gamma": 0.5, "output_dir": str(out), "grader_retry_wait": 0.0, "seed": 3,
    }


def test_graded_pairs_all_and_best_worst():
    answers = ["a", "b", "c", "d"]
    pairs, counts = graded_pairs(answers, [3.0, 7.0, 3.0, None], "all")
    assert sorted(pairs) == [(1, 0), (1, 2)]  # (chosen, rejected): the higher grade first
    assert (counts.candidates, counts.kept, counts.ties, counts.missing) == (3, 2, 1, 1)
    pairs, counts = graded_pairs(answers, [3.0, 7.0, 1.0, 5.0], "best_worst")
    assert pairs == [(1, 2)] and (counts.candidates, counts.kept) == (1, 1)
    pairs, counts = graded_pairs(answers, [4.0, 4.0, 4.0, 4.0], "best_worst")
    assert pairs == [] and counts.ties == 1


def test_failing_grader_is_retried_then_counted_missing():
    calls = []

    def flaky(requests):
        calls.append(len(requests))
        if len(calls) == 1:
            raise ConnectionError("endpoint down")
        return [None if r.response == "bad" else 5.0 for r in requests]

    reqs = [ScoreItem([{"role": "user", "content": "q"}], a, {}) for a in ("ok", "bad", "fine")]
    grades, failed = grade_with_retries(flaky, reqs, retries=2, wait_s=0.0)
    assert grades == [5.0, None, 5.0]
    assert failed == 1
    # First call raised; the second graded all three; the third asked again only for the one still missing.
    assert calls == [3, 3, 1]

    def down(requests):
        raise TimeoutError("no answer")

    grades, failed = grade_with_retries(down, reqs, retries=1, wait_s=0.0)
    assert grades == [None, None, None] and failed == 2


def test_grading_after_a_torn_last_line_keeps_every_row(tmp_path):
    """A crash mid-append leaves half a line; the rerun appends after cutting it, so every graded prompt is read
    back and a second rerun grades nothing again."""
    samples = [{"batch": 0, "i": i, "prompt": f"q{i}", "meta": {}, "answers": ["ab", "abc"]} for i in range(4)]
    path = tmp_path / "graded.jsonl"
    path.write_text("".join(json.dumps({**s, "grades": [2.0, 3.0]}) + "\n" for s in samples[:2])
                    + json.dumps({**samples[2], "grades": [2.0, 3.0]})[:25])  # the crash cut this line short
    calls = []

    def grader(requests):
        calls.append(len(requests))
        return [float(len(r.response)) for r in requests]

    run = OnlineRun(OnlineConfig(prompts="unused", grader_retry_wait=0.0), grader, [], [], tmp_path)
    graded, _ = run.grade(samples, path, "grade")
    assert [g["i"] for g in graded] == [0, 1, 2, 3] and calls == [2, 2]  # prompts 2 and 3 graded, once each
    assert [g["i"] for g in read_jsonl(path)] == [0, 1, 2, 3]
    calls.clear()
    run.grade(samples, path, "grade")
    assert calls == []


def _index_grades(requests):
    return [float(j) for j in range(len(requests))]  # every prompt's answers graded 0, 1, ...: always a pair


# (reference, round_reference, lora_r) -> the mode round 1 and round 2 train with.
REFERENCE_CASES = {
    ("auto", "initial", 0): ("precomputed", "precomputed"),
    ("auto", "previous", 0): ("precomputed", "precomputed"),
    ("auto", "initial", 4): ("adapter", "precomputed"),  # round 2: the adapter's base is round 1's policy
    ("auto", "previous", 4): ("adapter", "adapter"),
    ("model", "initial", 0): ("model", "model"),
    ("model", "previous", 0): ("model", "model"),
    ("model", "initial", 4): ("model", "model"),
    ("model", "previous", 4): ("model", "model"),
    ("precomputed", "initial", 0): ("precomputed", "precomputed"),
    ("precomputed", "previous", 0): ("precomputed", "precomputed"),
    ("precomputed", "initial", 4): ("precomputed", "precomputed"),
    ("precomputed", "previous", 4): ("precomputed", "precomputed"),
    ("adapter", "previous", 4): ("adapter", "adapter"),
}


@pytest.mark.parametrize("reference,round_reference,lora_r", list(REFERENCE_CASES))
def test_every_reference_trains_two_rounds(tiny_model_dir, tmp_path, monkeypatch, reference, round_reference, lora_r):
    monkeypatch.setenv("MMPO_CACHE", str(tmp_path / "cache"))
    from mmpo.config import load_config

    out = tmp_path / "run"
    overrides = {**_overrides(tiny_model_dir, tmp_path, out), "eval_prompts": None, "prompts_per_round": 1,
                 "samples_per_prompt": 2, "max_new_tokens": 4, "steps_per_round": 1, "save_steps": None,
                 "reference": reference, "round_reference": round_reference, "lora_r": lora_r}
    records = train_online(load_config(OnlineConfig, None, overrides), grader=_index_grades).details["rounds"]
    assert [r.get("train_steps") for r in records[1:]] == [1, 1]
    assert (records[1]["reference"], records[2]["reference"]) == REFERENCE_CASES[(reference, round_reference, lora_r)]
    import yaml

    cfg2 = yaml.safe_load((out / "round-2" / "policy" / "config.yaml").read_text())
    assert cfg2["model"] == str(out / "round-1" / "policy")
    # initial: round 2 is scored against the starting model; previous: against round 1's policy (its own start).
    assert cfg2["ref_model"] == (str(tiny_model_dir) if round_reference == "initial" else None)


@pytest.mark.parametrize("keys,problem", [
    ({"reference": "adapter", "round_reference": "initial", "lora_r": 4}, "round_reference: previous"),
    ({"reference": "adapter", "round_reference": "previous", "lora_r": 0}, "needs LoRA"),
    ({"reference": "adapter", "round_reference": "initial", "lora_r": 0}, "needs LoRA"),
    ({"reference": "none", "loss": "mmpo"}, "reference-free losses"),
    ({"reference": "adapter", "round_reference": "initial", "lora_r": 4, "ref_model": "other"}, "ref_model"),
    ({"round_reference": "previous", "ref_model": "other"}, "ref_model"),
])
def test_impossible_reference_settings_are_refused_before_any_work(tmp_path, keys, problem):
    from mmpo.errors import UserError

    config = OnlineConfig(prompts=str(tmp_path / "never-read.jsonl"), output_dir=str(tmp_path / "run"), **keys)
    with pytest.raises(UserError, match=problem):
        train_online(config, grader=_index_grades)
    assert not (tmp_path / "run").exists()


def test_reference_free_loss_trains_rounds_without_a_reference(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("MMPO_CACHE", str(tmp_path / "cache"))
    from mmpo.config import load_config

    overrides = {**_overrides(tiny_model_dir, tmp_path, tmp_path / "run"), "eval_prompts": None, "prompts_per_round": 1,
                 "samples_per_prompt": 2, "max_new_tokens": 4, "steps_per_round": 1, "save_steps": None,
                 "reference": "none", "loss": "simpo_mmpo", "lora_r": 4}
    records = train_online(load_config(OnlineConfig, None, overrides), grader=_index_grades).details["rounds"]
    assert [(r["train_steps"], r["reference"]) for r in records[1:]] == [(1, "none"), (1, "none")]


def test_two_rounds_end_to_end_pairs_carry_grade_margins(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("MMPO_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    from mmpo.config import load_config

    config = load_config(OnlineConfig, None, _overrides(tiny_model_dir, tmp_path, out))
    records = train_online(config, grader=lambda reqs: [distinct_chars(r.meta, r.response) for r in reqs]).details["rounds"]
    assert [r["round"] for r in records] == [0, 1, 2]
    assert [json.loads(x)["round"] for x in (out / "log.jsonl").read_text().splitlines()] == [0, 1, 2]
    for r in (1, 2):
        rd = out / f"round-{r}"
        graded = read_jsonl(rd / "graded.jsonl")
        assert len(graded) == 4 and all(len(g["answers"]) == 3 == len(g["grades"]) for g in graded)
        by_answer = {(g["i"], a): s for g in graded for a, s in zip(g["answers"], g["grades"])}
        pairs = read_jsonl(rd / "pairs.jsonl")
        assert len(pairs) == records[r]["pairs_kept"] > 0
        for p in pairs:
            # The pair's scores are the grades of its two answers, chosen strictly higher.
            assert p["score_chosen"] == by_answer[(p["i"], p["chosen"])]
            assert p["score_rejected"] == by_answer[(p["i"], p["rejected"])]
            assert p["score_chosen"] > p["score_rejected"]
        assert records[r]["pairs_kept"] + records[r]["pairs_ties"] == records[r]["pairs_candidates"]
        assert records[r]["train_steps"] == 2
        assert records[r]["eval_n"] == 3 and 0 <= records[r]["eval_mean_grade"] <= 10
        # The trainer turned the grade margins into MMPO targets sigmoid(gamma * margin).
        report = json.loads((rd / "policy" / "data_report.json").read_text())
        assert report["train"]["kept"] == len(pairs)
    # Round 2 started from round 1's policy and kept the initial model as its reference.
    import yaml

    cfg2 = yaml.safe_load((out / "round-2" / "policy" / "config.yaml").read_text())
    assert cfg2["model"] == str(out / "round-1" / "policy")
    assert cfg2["ref_model"] == str(tiny_model_dir)


def _run_cli(args: list[str], env: dict, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mmpo.cli.main", "online", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def _cli_args(overrides: dict) -> list[str]:
    return [tok for k, v in overrides.items() for tok in (f"--{k}", str(v))]


@pytest.mark.slow
def test_kill_mid_round_and_rerun_matches_uninterrupted(tiny_model_dir, tmp_path, subprocess_env):
    (tmp_path / "checkers").mkdir()
    (tmp_path / "checkers" / "online_test_checker.py").write_text(CHECKER)
    env = {**subprocess_env, "MMPO_CACHE": str(tmp_path / "cache"),
           "PYTHONPATH": os.pathsep.join([str(tmp_path / "checkers"), os.environ.get("PYTHONPATH", "")])}
    common = {"grader": "checker:online_test_checker:grade", "grader_retries": 0}

    full = tmp_path / "full"
    (tmp_path / "a").mkdir()
    proc = _run_cli(_cli_args({**_overrides(tiny_model_dir, tmp_path / "a", full, sleep=0.0), **common}), env, cwd=tmp_path)
    log_full = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, log_full[-3000:]

    killed = tmp_path / "killed"
    (tmp_path / "b").mkdir()
    args = _cli_args({**_overrides(tiny_model_dir, tmp_path / "b", killed, sleep=0.3), **common})
    proc = _run_cli(args, env, cwd=tmp_path)
    graded = killed / "round-1" / "graded.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if graded.exists() and len(read_jsonl(graded)) >= 1:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed mid-round"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "round-1" / "round.json").exists()
    rerun = _run_cli(args, env, cwd=tmp_path)
    log_rerun = rerun.communicate(timeout=600)[0]
    assert rerun.returncode == 0, log_rerun[-3000:]

    # The same samples, grades, pairs and held-out results in every round, and the same final weights.
    for r in (1, 2):
        for name in ("samples.jsonl", "graded.jsonl", "pairs.jsonl"):
            a = [{k: v for k, v in x.items() if k != "meta"} for x in read_jsonl(full / f"round-{r}" / name)]
            b = [{k: v for k, v in x.items() if k != "meta"} for x in read_jsonl(killed / f"round-{r}" / name)]
            assert a == b, f"round {r} {name} differs"
        ra = json.loads((full / f"round-{r}" / "round.json").read_text())
        rb = json.loads((killed / f"round-{r}" / "round.json").read_text())
        for key in ("samples_mean_grade", "pairs_kept", "eval_mean_grade", "train_steps"):
            assert ra[key] == rb[key], key
        assert ra["train_loss"] == pytest.approx(rb["train_loss"], rel=1e-5)
    from safetensors.torch import load_file

    wa = load_file(str(full / "round-2" / "policy" / "model.safetensors"))
    wb = load_file(str(killed / "round-2" / "policy" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert (wa[k] - wb[k]).abs().max().item() <= 1e-6, k


def _log(path: Path, grades: list[float], full: list[float]) -> None:
    path.mkdir(parents=True)
    path.joinpath("log.jsonl").write_text("".join(
        json.dumps({"round": r, "eval_mean_grade": g, "eval_full_marks": f, "eval_n": 4}) + "\n"
        for r, (g, f) in enumerate(zip(grades, full))))


def test_online_comparison_on_recorded_rounds_by_hand(tmp_path):
    """Gains over the starting model and the paired difference, against a hand calculation."""
    from mmpo.experiments.compare import render_table, summarize_online

    finals = {"mmpo": [3.0, 4.0, 5.0], "dpo": [2.0, 2.5, 4.5]}
    dirs = {}
    for loss, values in finals.items():
        dirs[loss] = {}
        for seed, final in enumerate(values):
            _log(tmp_path / f"{loss}-seed{seed}", [1.0, (1.0 + final) / 2, final], [0.0, 0.0, 0.25])
            dirs[loss][seed] = tmp_path / f"{loss}-seed{seed}"
    c = summarize_online(dirs, ["mmpo", "dpo"], [0, 1, 2], tmp_path / "cmp")
    assert c["base_grade"] == 1.0
    gain = c["gain_over_base"]["mmpo"]  # gains 2, 3, 4: mean 3, sd 1, half-width t(0.975, 2) / sqrt(3), t = 4.303 (the table)
    assert gain["mean"] == pytest.approx(3.0)
    assert gain["high"] - gain["mean"] == pytest.approx(4.303 / 3 ** 0.5, rel=1e-5)
    assert gain["distinguishable"]  # 3 - 2.484 > 0
    diff = c["metrics"]["mean_grade"]  # paired differences 1, 1.5, 0.5: mean 1, sd 0.5
    assert diff["diff"] == pytest.approx(1.0)
    assert diff["high"] - diff["diff"] == pytest.approx(4.303 * 0.5 / 3 ** 0.5, rel=1e-5)
    assert diff["distinguishable"] is False  # 1 - 1.242 < 0
    table = render_table(c)
    assert "mmpo: +3.000 [+0.516, +5.484]: above the starting model" in table
    assert (tmp_path / "cmp" / "curves.png").exists() and (tmp_path / "cmp" / "comparison.json").exists()

    _log(tmp_path / "other-start", [2.0, 3.0], [0.0, 0.0])  # another starting grade: not the same comparison
    with pytest.raises(Exception, match="different held-out grades"):
        summarize_online({"mmpo": {0: dirs["mmpo"][0]}, "dpo": {0: tmp_path / "other-start"}}, ["mmpo", "dpo"], [0], tmp_path / "x")


def test_compare_runs_online_rounds_per_loss_and_seed_and_refuses_changed_settings(tiny_model_dir, tmp_path, monkeypatch):
    (tmp_path / "checkers").mkdir()
    (tmp_path / "checkers" / "online_cmp_checker.py").write_text(CHECKER)
    monkeypatch.syspath_prepend(str(tmp_path / "checkers"))
    monkeypatch.setenv("MMPO_CACHE", str(tmp_path / "cache"))
    import yaml

    from mmpo.cli.main import main
    from mmpo.config import load_config

    recipe = _overrides(tiny_model_dir, tmp_path, tmp_path / "unused", rounds=1)
    recipe.update(prompts_per_round=2, samples_per_prompt=2, steps_per_round=1, max_new_tokens=4,
                  grader="checker:online_cmp_checker:grade")
    del recipe["output_dir"], recipe["seed"]
    (tmp_path / "online.yaml").write_text(yaml.safe_dump(recipe))
    out = tmp_path / "cmp"
    assert main(["compare", str(tmp_path / "online.yaml"), "--losses", "mmpo,dpo", "--seeds", "0,1", "--out", str(out)]) == 0
    c = json.loads((out / "comparison.json").read_text())
    assert c["kind"] == "online" and c["losses"] == ["mmpo", "dpo"] and c["seeds"] == [0, 1]
    for loss in ("mmpo", "dpo"):
        for seed in (0, 1):
            log = [json.loads(x) for x in (out / f"{loss}-seed{seed}" / "log.jsonl").read_text().splitlines()]
            assert [r["round"] for r in log] == [0, 1]
            assert c["metrics"]["gain"]["per_seed"][loss][seed] == pytest.approx(log[1]["eval_mean_grade"] - log[0]["eval_mean_grade"])
            cfg = yaml.safe_load((out / f"{loss}-seed{seed}" / "config.yaml").read_text())
            assert (cfg["loss"], cfg["seed"]) == (loss, seed)
    # The same directory with other settings is refused in one line, not silently reused.
    config = load_config(OnlineConfig, tmp_path / "online.yaml", {"output_dir": str(out / "mmpo-seed0"), "loss": "mmpo",
                                                                  "seed": 0, "gamma": 2.0})
    with pytest.raises(Exception, match="other settings .*gamma 0.5 -> 2.0"):
        train_online(config)
