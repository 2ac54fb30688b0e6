""""One prompt, several scored responses" data: alpaca_graded (AlpacaEval outputs with GPT-4-turbo's
p_beats_reference) and UltraFeedback's raw 4-completion form, on rows the tests write; where alpaca_graded is
found (path, cache, development checkout, download from a local HTTP server); held-out truth under eval_gamma."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import json
import math
import socket
import threading
from pathlib import Path

import pytest

from mmpo.config import RMConfig, load_config
from mmpo.data import alpaca_graded
from mmpo.data.pairs import PairOptions
from mmpo.data.pipeline import load_pairs, prepare_data
from mmpo.data.sources import DEFAULT_P_CLIP, probability_score
from mmpo.errors import DataError, UserError


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def graded_record(idx: int, ps: dict[str, float]) -> dict:
    return {
        "idx": idx, "instruction": f"instruction {idx}", "dataset": "test",
        "outputs": {model: {"output": f"answer of {model} to {idx}", "p_beats_reference": p} for model, p in ps.items()},
    }


def write_records(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec) + "\n")
    return path


RECORDS = [
    graded_record(0, {"m1": 0.8, "m2": 0.2, "m3": 0.0}),
    graded_record(1, {"m1": 0.5, "m2": 0.5, "m3": 0.9, "m4": 1.0}),
]


def test_every_pair_of_a_prompt_with_the_judges_implied_probability(tmp_path):
    path = write_records(tmp_path / "responses.jsonl.gz", RECORDS)
    pairs, report = load_pairs({"source": "alpaca_graded", "path": str(path)}, PairOptions(gamma=1.0))
    assert report.read == 2 and len(pairs) == 3 + 6  # C(3,2) + C(4,2)
    by_answers = {(p.chosen[0]["content"], p.rejected[0]["content"]): p for p in pairs}
    first = by_answers[("answer of m1 to 0", "answer of m2 to 0")]
    assert first.prompt == [{"role": "user", "content": "instruction 0"}]
    assert first.margin == pytest.approx(logit(0.8) - logit(0.2))
    # gamma = 1: the target is the judge's implied probability sigmoid(s_a - s_b) = 0.8*0.8 / (0.8*0.8 + 0.2*0.2)
    assert first.p == pytest.approx(0.64 / (0.64 + 0.04))
    # m3 has p = 0, clipped at DEFAULT_P_CLIP; chosen is always the higher score
    zero = by_answers[("answer of m2 to 0", "answer of m3 to 0")]
    assert zero.margin == pytest.approx(logit(0.2) - logit(DEFAULT_P_CLIP))
    assert all(p.margin >= 0 for p in pairs)
    # equal p: a tie at 0.5 (soft targets, ties: keep)
    tie = [p for p in pairs if p.margin == 0]
    assert len(tie) == 1 and tie[0].p == 0.5
    assert {p.meta["group"] for p in pairs} == {0, 1}


def test_p_clip_and_probability_score():
    assert probability_score(0.0, 1e-6) == pytest.approx(logit(1e-6))
    assert probability_score(1.0, 1e-3) == pytest.approx(logit(1 - 1e-3))
    assert probability_score(0.3, 1e-6) == pytest.approx(logit(0.3))


def test_p_clip_key_and_hard_labels_drop_ties(tmp_path):
    path = write_records(tmp_path / "r.jsonl.gz", RECORDS)
    pairs, _ = load_pairs({"source": "alpaca_graded", "path": str(path), "p_clip": 0.01}, PairOptions())
    zero = next(p for p in pairs if p.rejected[0]["content"] == "answer of m3 to 0" and p.chosen[0]["content"] == "answer of m2 to 0")
    assert zero.margin == pytest.approx(logit(0.2) - logit(0.01))
    hard, report = load_pairs({"source": "alpaca_graded", "path": str(path)}, PairOptions(gamma=None))
    assert len(hard) == 8 and all(p.p == 1.0 for p in hard)
    assert report.dropped["tie under hard labels (gamma none)"] == 1
    with pytest.raises(UserError, match="p_clip"):
        load_pairs({"source": "alpaca_graded", "path": str(path), "p_clip": 0.7})


def test_k_pairs_per_prompt_sampled_with_a_seed(tmp_path):
    path = write_records(tmp_path / "r.jsonl.gz", RECORDS)
    spec = {"source": "alpaca_graded", "path": str(path)}
    picked = lambda seed: [(p.meta["group"], p.chosen[0]["content"], p.rejected[0]["content"]) for p in
                           load_pairs(spec, PairOptions(pairs_per_prompt=2, seed=seed))[0]]
    assert len(picked(0)) == 4 and picked(0) == picked(0)
    assert len({tuple(picked(s)) for s in range(8)}) > 1


def test_a_bad_probability_names_the_model_and_row(tmp_path):
    path = write_records(tmp_path / "r.jsonl.gz", [RECORDS[0], graded_record(1, {"m1": 0.3, "m2": 1.5})])
    with pytest.raises(DataError, match=r"row 2, field 'outputs.m2.p_beats_reference': probability outside"):
        load_pairs({"source": "alpaca_graded", "path": str(path)})


def test_ultrafeedback_raw_completions(tmp_path, write_jsonl):
    row = {
        "source": "evol", "instruction": "Name a colour.", "models": ["a", "b", "c", "d"],
        "completions": [
            {"model": "a", "response": "Red.", "overall_score": 8.5, "fine-grained_score": 4.5},
            {"model": "b", "response": "Blue.", "overall_score": 6.0, "fine-grained_score": 3.0},
            {"model": "c", "response": "Green.", "overall_score": 6.0, "fine-grained_score": 3.0},
            {"model": "d", "response": "Table.", "overall_score": 2.0, "fine-grained_score": 1.0},
        ],
    }
    path = write_jsonl(tmp_path / "uf_raw.jsonl", [row])
    pairs, report = load_pairs({"source": "ultrafeedback_raw", "path": str(path)}, PairOptions(gamma=0.5, ties="drop"))
    assert report.read == 1 and len(pairs) == 5 and report.dropped["tie (no preference)"] == 1
    top = next(p for p in pairs if p.chosen[0]["content"] == "Red." and p.rejected[0]["content"] == "Table.")
    assert top.margin == 6.5 and top.p == pytest.approx(sigmoid(0.5 * 6.5))
    assert all(p.meta["group"] == "Name a colour." for p in pairs)


def rm_config(tmp_path: Path, data, **overrides) -> RMConfig:
    return load_config(RMConfig, overrides={"data": data, "output_dir": str(tmp_path / "out"), "max_length": 128, **overrides})


def test_split_by_prompt_and_held_out_truth_under_eval_gamma(tmp_path, tiny_tokenizer):
    records = [graded_record(i, {"m1": 0.1 + 0.08 * (i % 10), "m2": 0.5, "m3": 0.3}) for i in range(40)]
    path = str(write_records(tmp_path / "r.jsonl.gz", records))
    spec = {"source": "alpaca_graded", "path": path}
    data = prepare_data(rm_config(tmp_path, spec, eval_split=0.3, gamma=3.0, eval_gamma=1.0, over_length="truncate"), tiny_tokenizer)
    decode = lambda ids: tiny_tokenizer.decode(ids)
    train_prompts = {decode(f["prompt_ids"]) for f in data.train}
    held_prompts = {decode(f["prompt_ids"]) for f in data.eval}
    assert data.eval and data.train and not train_prompts & held_prompts
    # training targets use gamma = 3, held-out targets the judge's own probability (eval_gamma = 1)
    assert all(f["p"] == pytest.approx(sigmoid(3.0 * f["margin"])) for f in data.train)
    assert all(f["p"] == pytest.approx(sigmoid(f["margin"])) for f in data.eval)
    hard = prepare_data(rm_config(tmp_path, spec, eval_split=0.3, gamma=3.0, eval_gamma=None, over_length="truncate"), tiny_tokenizer)
    assert [f["p"] for f in hard.eval] == [1.0] * len(hard.eval) and len(hard.eval) <= len(data.eval)
    same = prepare_data(rm_config(tmp_path, spec, eval_split=0.3, gamma=3.0, over_length="truncate"), tiny_tokenizer)
    assert all(f["p"] == pytest.approx(sigmoid(3.0 * f["margin"])) for f in same.eval)


def test_eval_gamma_is_checked():
    with pytest.raises(UserError, match="eval_gamma"):
        load_config(RMConfig, overrides={"data": "x.jsonl", "eval_gamma": -1.0})
    assert load_config(RMConfig, overrides={"data": "x.jsonl", "eval_gamma": "none"}).eval_gamma is None
    assert load_config(RMConfig, overrides=["--data", "x.jsonl", "--eval_gamma", "1.5"]).eval_gamma == 1.5
    with pytest.raises(UserError, match="eval_gamma"):
        load_config(RMConfig, overrides={"data": "x.jsonl", "eval_gamma": "sometimes"})
    assert load_config(RMConfig, overrides={"data": "x.jsonl"}).eval_gamma == "same"


# --- where alpaca_graded is found ---------------------------------------------------------------------------

@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """An empty cache and no development copy."""
    monkeypatch.setenv("MMPO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(alpaca_graded, "development_file", lambda: tmp_path / "no-shared" / "responses.jsonl.gz")
    return tmp_path


def test_resolution_prefers_the_cache_then_the_development_copy(isolated, monkeypatch):
    dev = write_records(isolated / "shared" / "responses.jsonl.gz", [RECORDS[0]])
    monkeypatch.setattr(alpaca_graded, "development_file", lambda: dev)
    pairs, report = load_pairs("alpaca_graded")
    assert report.read == 1 and str(dev) in report.source
    write_records(alpaca_graded.cached_file(), RECORDS)
    _, report = load_pairs("alpaca_graded")
    assert report.read == 2 and str(alpaca_graded.cached_file()) in report.source


def annotation(instruction: str, output: str, model: str, preference: float | None) -> dict:
    return {"instruction": instruction, "output_1": "reference answer", "generator_1": "gpt4_1106_preview",
            "output_2": output, "generator_2": model, "preference": preference, "dataset": "koala"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_download_builds_the_records_from_annotation_files(isolated, monkeypatch):
    root = isolated / "mirror"
    files = {
        "model-a": [annotation("first?", "A1", "model-a", 1.25), annotation("second?", "A2", "model-a", 2.0),
                    annotation("third?", "A3", "model-a", 1.0)],
        "model-b": [annotation("second?", "B2", "model-b", 1.0000004), annotation("first?", "B1", "model-b", 1.9),
                    annotation("third?", "B3", "model-b", None)],
    }
    pinned = {}
    for model, records in files.items():
        target = root / model / alpaca_graded.ANNOTATOR / "annotations.json"
        target.parent.mkdir(parents=True)
        target.write_text(json.dumps(records))
        pinned[model] = (hashlib.sha256(target.read_bytes()).hexdigest(), target.stat().st_size)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setattr(alpaca_graded, "SOURCE_FILES", pinned)
        monkeypatch.setattr(alpaca_graded, "N_INSTRUCTIONS", 2)
        monkeypatch.setenv(alpaca_graded.URL_ENV, f"http://127.0.0.1:{server.server_address[1]}")
        pairs, report = load_pairs("alpaca_graded")
    finally:
        server.shutdown()
        thread.join()
    with gzip.open(alpaca_graded.cached_file(), "rt") as f:
        built = [json.loads(line) for line in f]
    assert [r["idx"] for r in built] == [0, 1] and [r["instruction"] for r in built] == ["first?", "second?"]
    assert built[0]["outputs"] == {"model-a": {"output": "A1", "p_beats_reference": 0.25},
                                   "model-b": {"output": "B1", "p_beats_reference": 0.9}}
    assert built[1]["outputs"]["model-b"]["p_beats_reference"] == 0.0 and built[1]["dataset"] == "koala"
    assert report.read == 2 and len(pairs) == 2
    assert not list(alpaca_graded.cached_file().parent.glob(".*"))  # no temporary file left behind
    # the next load reads the cache (the server is gone)
    assert load_pairs("alpaca_graded")[1].read == 2


def test_a_file_that_differs_from_the_pinned_checksum_is_one_line_naming_it(isolated, monkeypatch):
    root = isolated / "mirror"
    target = root / "model-a" / alpaca_graded.ANNOTATOR / "annotations.json"
    target.parent.mkdir(parents=True)
    target.write_text(json.dumps([annotation("first?", "A1", "model-a", 1.25)]))
    size = target.stat().st_size
    monkeypatch.setattr(alpaca_graded, "SOURCE_FILES", {"model-a": ("0" * 64, size)})  # right size, other content
    monkeypatch.setenv(alpaca_graded.URL_ENV, root.as_uri())  # a local copy of results/, as file://
    with pytest.raises(UserError) as e:
        load_pairs("alpaca_graded")
    message = str(e.value)
    assert "\n" not in message and f"{root.as_uri()}/model-a/{alpaca_graded.ANNOTATOR}/annotations.json" in message
    assert "not the pinned file" in message and "0" * 64 in message
    assert not alpaca_graded.cached_file().exists()


def test_the_pinned_source_is_a_full_commit_and_the_default_url_uses_it():
    assert len(alpaca_graded.COMMIT) == 40 and int(alpaca_graded.COMMIT, 16) >= 0
    assert f"/{alpaca_graded.COMMIT}/" in alpaca_graded.DEFAULT_BASE_URL
    assert len(alpaca_graded.SOURCE_FILES) == 18
    assert all(len(sha) == 64 and size > 0 for sha, size in alpaca_graded.SOURCE_FILES.values())


def test_nothing_reachable_is_one_line(isolated, monkeypatch):
    monkeypatch.setenv(alpaca_graded.URL_ENV, f"http://127.0.0.1:{free_port()}")
    with pytest.raises(UserError) as e:
        load_pairs("alpaca_graded")
    message = str(e.value)
    assert "\n" not in message and "cannot download" in message and "path" in message
    assert not alpaca_graded.cached_file().exists()


def test_memoized_tokens_equal_tokenizing_each_pair_alone(tmp_path, tiny_tokenizer):
    from mmpo.data.report import DataReport
    from mmpo.data.pipeline import tokenize_pairs
    from mmpo.data.tokenize import tokenize_pair

    path = write_records(tmp_path / "r.jsonl.gz", RECORDS)
    pairs, _ = load_pairs({"source": "alpaca_graded", "path": str(path)})
    for over_length, max_length in (("truncate", 48), ("drop", 96)):
        memo = tokenize_pairs(pairs, tiny_tokenizer, max_length, 24, DataReport(source="x"), over_length=over_length)
        alone = [t.__dict__ for p in pairs if (t := tokenize_pair(tiny_tokenizer, p, max_length, 24, over_length=over_length)) is not None]
        assert memo == alone and memo
