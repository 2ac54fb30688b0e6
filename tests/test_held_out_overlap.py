"""Held-out data must not be the training data: an identical source is refused, held-out prompts that also
occur in training are counted in the data report and refused unless `allow_eval_overlap: true`, for
`mmpo rm` / `mmpo dpo` (data vs eval_data) and `mmpo online` (prompts vs eval_prompts)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mmpo.config import DPOConfig, RMConfig, load_config
from mmpo.data.pipeline import prepare_data
from mmpo.data.sources import held_out_split, source_identity
from mmpo.errors import UserError
from mmpo.training.online import OnlineConfig, check_eval_prompts, load_prompt_rows, train_online


def _rows(prompts: list[str]) -> list[dict]:
    return [{"prompt": p, "chosen": "good", "rejected": "bad", "score_chosen": 8, "score_rejected": 2} for p in prompts]


def _config(kind, tmp_path: Path, data: Path, eval_data, **keys):
    return load_config(kind, overrides={"data": str(data), "eval_data": eval_data, "output_dir": str(tmp_path / "run"), **keys})


@pytest.mark.parametrize("kind", [RMConfig, DPOConfig])
def test_eval_data_naming_the_training_file_is_refused(tmp_path, write_jsonl, tiny_tokenizer, kind):
    data = write_jsonl(tmp_path / "pairs.jsonl", _rows(["q1", "q2", "q3"]))
    for same in (str(data), {"path": str(data)}, str(tmp_path / "." / "pairs.jsonl")):
        with pytest.raises(UserError, match="eval_data reads the same data as data"):
            prepare_data(_config(kind, tmp_path, data, same), tiny_tokenizer)


def test_a_source_without_a_test_split_is_the_same_data_on_both_sides(tmp_path, monkeypatch):
    # alpaca_graded has no test split: eval_data alpaca_graded reads the very rows data alpaca_graded reads.
    from mmpo.data import alpaca_graded

    monkeypatch.setattr(alpaca_graded, "locate", lambda: tmp_path / "responses.jsonl.gz")
    (tmp_path / "responses.jsonl.gz").write_bytes(b"")
    assert held_out_split("alpaca_graded") is None
    assert source_identity("alpaca_graded") == source_identity("alpaca_graded", held_out_split("alpaca_graded"))
    # A hub source's test split is other data.
    assert source_identity("ultrafeedback") != source_identity("ultrafeedback", held_out_split("ultrafeedback"))


@pytest.mark.parametrize("kind", [RMConfig, DPOConfig])
def test_shared_prompts_are_counted_and_refused_unless_allowed(tmp_path, write_jsonl, tiny_tokenizer, kind):
    data = write_jsonl(tmp_path / "train.jsonl", _rows(["q1", "q2", "q3", "q4"]))
    held = write_jsonl(tmp_path / "held.jsonl", _rows(["q2", "q4", "q4", "q9"]))  # q4 twice: counted once
    with pytest.raises(UserError, match="2 of 3 held-out prompts .* also occur in the training data.*allow_eval_overlap"):
        prepare_data(_config(kind, tmp_path, data, str(held)), tiny_tokenizer)
    prepared = prepare_data(_config(kind, tmp_path, data, str(held), allow_eval_overlap=True), tiny_tokenizer)
    report = prepared.reports["eval"]
    assert (report.prompts, report.prompts_in_training) == (3, 2)
    assert report.to_dict()["prompts_in_training"] == 2
    assert "held-out prompts also in the training data: 2 of 3" in report.render()
    # A copy with other prompts passes, with zero in the report.
    other = write_jsonl(tmp_path / "other.jsonl", _rows(["q7", "q8"]))
    assert prepare_data(_config(kind, tmp_path, data, str(other)), tiny_tokenizer).reports["eval"].prompts_in_training == 0


def test_eval_split_holds_out_prompts_with_zero_overlap(tmp_path, write_jsonl, tiny_tokenizer):
    # Repeated prompts: every pair of a prompt lands on the same side of the split.
    data = write_jsonl(tmp_path / "train.jsonl", _rows([f"q{i % 10}" for i in range(40)]))
    prepared = prepare_data(load_config(RMConfig, overrides={"data": str(data), "eval_split": 0.5}), tiny_tokenizer)
    report = prepared.reports["eval"]
    assert report.prompts > 0 and report.prompts_in_training == 0


def test_max_eval_pairs_samples_the_held_out_split(tmp_path, write_jsonl, tiny_tokenizer):
    # max_eval_pairs caps the held-out pairs of an eval_split as it caps eval_data's: a seeded sample, counted.
    data = write_jsonl(tmp_path / "train.jsonl", _rows([f"q{i}" for i in range(40)]))
    settings = {"data": str(data), "eval_split": 0.5}
    whole = prepare_data(load_config(RMConfig, overrides=settings), tiny_tokenizer)
    capped = [prepare_data(load_config(RMConfig, overrides={**settings, "max_eval_pairs": 5}), tiny_tokenizer) for _ in range(2)]
    assert len(whole.eval) > 5 and len(capped[0].eval) == 5
    assert [p["row"] for p in capped[0].eval] == [p["row"] for p in capped[1].eval]  # seeded
    assert {p["row"] for p in capped[0].eval} < {p["row"] for p in whole.eval}
    assert len(capped[0].train) == len(whole.train)  # the training side is untouched
    assert capped[0].reports["eval"].dropped["over max_pairs=5"] == len(whole.eval) - 5


def test_online_refuses_eval_prompts_that_are_the_training_prompts(tmp_path, write_jsonl):
    train = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": p} for p in "abc"])
    out = tmp_path / "run"

    def never(requests):
        raise AssertionError("graded before the check")

    for same in (str(train), str(tmp_path / "." / "prompts.jsonl")):
        with pytest.raises(UserError, match="eval_prompts names the training prompts"):
            train_online(OnlineConfig(prompts=str(train), eval_prompts=same, output_dir=str(out)), grader=never)
    shared = str(shutil.copy(train, tmp_path / "held.jsonl"))
    with pytest.raises(UserError, match="3 of 3 held-out prompts in eval_prompts also occur in prompts"):
        train_online(OnlineConfig(prompts=str(train), eval_prompts=shared, output_dir=str(out)), grader=never)
    assert not out.exists()  # refused before any work


def test_online_counts_shared_prompts_when_allowed(tmp_path, write_jsonl):
    train = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": p} for p in "abc"])
    held = write_jsonl(tmp_path / "held.jsonl", [{"prompt": p} for p in "bz"])
    rows, held_rows = load_prompt_rows(str(train), "prompts"), load_prompt_rows(str(held), "eval_prompts")
    allowed = OnlineConfig(prompts=str(train), eval_prompts=str(held), allow_eval_overlap=True)
    assert check_eval_prompts(allowed, rows, held_rows) == 1
    with pytest.raises(UserError, match="1 of 2 held-out prompts"):
        check_eval_prompts(OnlineConfig(prompts=str(train), eval_prompts=str(held)), rows, held_rows)
    # The text form and the message form of a prompt are the same prompt.
    as_messages = tmp_path / "held-messages.jsonl"
    as_messages.write_text(json.dumps({"prompt": [{"role": "user", "content": "c"}]}) + "\n")
    assert check_eval_prompts(allowed, rows, load_prompt_rows(str(as_messages), "eval_prompts")) == 1
