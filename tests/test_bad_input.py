"""Bad input (issue 7): each case ends in a one-line error naming file, row and field, or a counted fix-up."""

from __future__ import annotations

import json

import pytest

from mmpo.cli.main import main
from mmpo.config import DPOConfig, RMConfig, load_config
from mmpo.data.pipeline import tokenize_pairs
from mmpo.data.records import PreferencePair
from mmpo.data.report import DataReport
from mmpo.data.pairs import PairOptions
from mmpo.data.pipeline import load_pairs
from mmpo.errors import DataError, UserError
from mmpo.models.embedded import resolve_model_path

GOOD = {"prompt": "What is 2 + 2?", "chosen": "4", "rejected": "5", "score_chosen": 9, "score_rejected": 2}


def rows_with(bad: dict, drop: str | None = None) -> list[dict]:
    """Two good rows around one bad one (line 2 of the file)."""
    row = {**GOOD, **bad}
    if drop:
        row.pop(drop)
    return [GOOD, row, GOOD]


def cli_error(capsys, argv: list[str]) -> str:
    """Run the CLI, check it failed as a user error, and return its single stderr line."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip("\n").split("\n")
    assert len(lines) == 1, err
    return lines[0]


# --- errors naming file, row and field -------------------------------------------------------------------

@pytest.mark.parametrize(
    "bad, drop, fieldname, problem",
    [
        ({}, "rejected", "rejected", "missing column"),
        ({"score_chosen": float("nan")}, None, "score_chosen", "not a finite number"),
        ({"score_rejected": float("inf")}, None, "score_rejected", "not a finite number"),
        ({"score_chosen": "high"}, None, "score_chosen", "not a number"),
        ({"score_rejected": None}, None, "score_rejected", "missing value"),
        ({"chosen": 42}, None, "chosen", "expected a string or a list"),
    ],
)
def test_bad_rows_name_file_row_and_field(tmp_path, write_jsonl, capsys, bad, drop, fieldname, problem):
    path = write_jsonl(tmp_path / "bad.jsonl", rows_with(bad, drop))  # json.dumps writes NaN / Infinity literals
    with pytest.raises(DataError) as err:
        load_pairs(str(path))
    assert (err.value.source, err.value.row, err.value.field) == (str(path), 2, fieldname)
    assert problem in str(err.value)
    line = cli_error(capsys, ["data", str(path)])
    assert str(path) in line and "row 2" in line and f"field '{fieldname}'" in line and problem in line


def test_missing_column_in_a_hub_schema_says_which_schema(tmp_path, write_jsonl):
    path = write_jsonl(tmp_path / "shp.jsonl", [{"history": "h", "human_ref_A": "a", "human_ref_B": "b", "score_A": 3}])
    with pytest.raises(DataError, match=r"row 1, field 'score_B': missing column \(the shp schema needs it\)"):
        load_pairs({"source": "shp", "path": str(path)})


def test_missing_column_with_a_known_schema_suggests_the_source(tmp_path, write_jsonl):
    row = {"context": [{"role": "user", "content": "hi"}], "response1": "a", "response2": "b", "overall_preference": 1}
    path = write_jsonl(tmp_path / "hs3.jsonl", [row])
    with pytest.raises(DataError, match="field 'chosen'.*use source: helpsteer3"):
        load_pairs(str(path))


def test_remapped_missing_column_names_the_users_column(tmp_path, write_jsonl):
    path = write_jsonl(tmp_path / "r.jsonl", [GOOD])
    with pytest.raises(DataError, match=r"row 1, field 'question': missing column \(columns maps it to 'prompt'\)"):
        load_pairs({"path": str(path), "columns": {"prompt": "question", "chosen": "answer_good"}})


def test_nan_in_a_csv_cell_is_an_error(tmp_path):
    (tmp_path / "bad.csv").write_text("prompt,chosen,rejected,score_chosen,score_rejected\nq,a,b,5,1\nq,a,b,,1\n")
    with pytest.raises(DataError, match=r"bad.csv, row 1, field 'score_chosen': not a finite number"):
        load_pairs(str(tmp_path / "bad.csv"))


def test_malformed_jsonl_line_gives_its_line_number(tmp_path, capsys):
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps(GOOD) + "\n\n" + '{"prompt": "x", "chosen": ' + "\n" + json.dumps(GOOD) + "\n")
    with pytest.raises(DataError) as err:
        load_pairs(str(path))
    assert err.value.row == 3 and "malformed JSON line" in str(err.value)
    line = cli_error(capsys, ["data", str(path)])
    assert str(path) in line and "row 3" in line


def test_out_of_range_preferences_are_errors(tmp_path, write_jsonl):
    hs3 = {"context": [{"role": "user", "content": "hi"}], "response1": "a", "response2": "b", "overall_preference": 5}
    with pytest.raises(DataError, match="field 'overall_preference': preference outside -3..3"):
        load_pairs({"source": "helpsteer3", "path": str(write_jsonl(tmp_path / "h.jsonl", [hs3]))})
    with pytest.raises(DataError, match="field 'p_chosen': probability outside"):
        load_pairs(str(write_jsonl(tmp_path / "p.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b", "p_chosen": 1.5}])))


# --- score_chosen below score_rejected: swap (default), drop, error --------------------------------------

def test_order_conflict_swap_drop_error(tmp_path, write_jsonl, capsys):
    path = write_jsonl(tmp_path / "flip.jsonl", rows_with({"score_chosen": 1, "score_rejected": 8}))
    pairs, report = load_pairs(str(path))
    assert pairs[1].chosen[0]["content"] == "5" and pairs[1].margin == 7
    assert report.fixed == {"chosen rated below rejected: swapped": 1} and report.kept == 3

    pairs, report = load_pairs(str(path), PairOptions(order_conflict="drop"))
    assert len(pairs) == 2 and report.dropped == {"chosen rated below rejected": 1}

    with pytest.raises(DataError, match=r"row 2, field 'score_chosen': chosen is rated below rejected"):
        load_pairs(str(path), PairOptions(order_conflict="error"))
    line = cli_error(capsys, ["data", str(path), "--order-conflict", "error"])
    assert str(path) in line and "row 2" in line and "field 'score_chosen'" in line


# --- dropped and counted ---------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "bad, reason",
    [
        ({"chosen": "same answer", "rejected": "same answer"}, "chosen identical to rejected"),
        ({"rejected": "   "}, "empty response"),
        ({"chosen": [{"role": "assistant", "content": ""}]}, "empty response"),
    ],
)
def test_dropped_rows_are_counted(tmp_path, write_jsonl, capsys, bad, reason):
    path = write_jsonl(tmp_path / "d.jsonl", rows_with(bad))
    pairs, report = load_pairs(str(path))
    assert len(pairs) == 2 and report.read == 3 and report.dropped == {reason: 1}
    assert main(["data", str(path)]) == 0
    assert f"dropped 1 pair: {reason}" in capsys.readouterr().out


# --- a prompt that leaves no room for the response at max_length -----------------------------------------

def word_tokenizer():
    """A tiny word-level tokenizer (no chat template), built in-process."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = "User Assistant : ? what is the answer 4 5 2 + yes no".split()
    vocab = {tok: i for i, tok in enumerate(["[UNK]", "[PAD]", "<s>", "</s>", *words])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]", bos_token="<s>", eos_token="</s>")


def test_long_prompt_is_cut_from_the_left_and_counted(tmp_path, write_jsonl):
    long_prompt = "what is the answer ? " * 20 + "2 + 2 ?"
    path = write_jsonl(tmp_path / "long.jsonl", [GOOD, {**GOOD, "prompt": long_prompt, "chosen": "yes " * 30}])
    pairs, report = load_pairs(str(path))
    # The short prompt renders to 10 tokens ("User : [UNK] is 2 + 2 ? Assistant :"), so it fits exactly.
    tokenized = tokenize_pairs(pairs, word_tokenizer(), max_length=18, max_prompt_length=10, report=report)
    assert len(tokenized) == 2
    long = tokenized[1]
    assert len(long["prompt_ids"]) == 10 and len(long["prompt_ids"]) + len(long["chosen_ids"]) == 18
    assert report.truncation["prompt_truncated"] == 1 and report.truncation["response_truncated"] == 1
    assert "prompt truncated: 1" in report.render()


def test_pair_with_no_response_tokens_is_dropped_and_counted():
    tokenizer = word_tokenizer()
    tokenizer.eos_token = None  # so an empty response renders to no tokens at all
    prompt = [{"role": "user", "content": "what is 2 + 2 ?"}]
    pairs = [
        PreferencePair(prompt, [{"role": "assistant", "content": "4"}], [{"role": "assistant", "content": "5"}]),
        PreferencePair(prompt, [{"role": "assistant", "content": "4"}], [{"role": "assistant", "content": ""}], row=7),
    ]
    report = DataReport(source="api", read=2)
    tokenized = tokenize_pairs(pairs, tokenizer, max_length=32, max_prompt_length=16, report=report)
    assert [t["row"] for t in tokenized] == [-1]
    assert report.dropped["no room for the response at max_length"] == 1 and report.kept == 1


def test_truncation_keeps_a_leading_bos():
    from mmpo.data.tokenize import tokenize_pair

    tokenizer = word_tokenizer()
    tokenizer.add_bos_token = True
    pair = PreferencePair([{"role": "user", "content": "what is the answer ? " * 10}], [{"role": "assistant", "content": "yes"}], [{"role": "assistant", "content": "no"}])
    out = tokenize_pair(tokenizer, pair, max_length=12, max_prompt_length=6)
    assert len(out.prompt_ids) == 6 and out.prompt_ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(out.prompt_ids[-1:]) == ":"  # the end of the prompt ("Assistant:") survives


# --- names, gamma, config ---------------------------------------------------------------------------------

def test_unknown_data_set_name(capsys):
    with pytest.raises(UserError, match="did you mean 'helpsteer2'"):
        load_pairs("helpsteer_2")
    line = cli_error(capsys, ["data", "nosuchset"])
    assert "unknown data set 'nosuchset'" in line
    with pytest.raises(UserError, match="unknown data source 'hh'"):
        load_pairs({"source": "hh"})
    with pytest.raises(UserError, match="unknown data key 'colums'"):
        load_pairs({"source": "shp", "colums": {}})
    with pytest.raises(UserError, match="margin_from applies to the shp source only"):
        load_pairs({"source": "helpsteer2", "margin_from": "log_score_ratio"})


def test_missing_data_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="data path not found"):
        load_pairs({"source": "shp", "path": str(tmp_path / "nope")})
    with pytest.raises(UserError, match="data path not found"):
        load_pairs(str(tmp_path / "nope.jsonl"))


@pytest.mark.parametrize("gamma", ["0", "-1.5"])
def test_gamma_must_be_positive_on_the_cli(tmp_path, write_jsonl, capsys, gamma):
    path = write_jsonl(tmp_path / "x.jsonl", [GOOD])
    line = cli_error(capsys, ["data", str(path), "--gamma", gamma])
    assert "gamma must be > 0" in line
    assert main(["data", str(path), "--gamma", "none"]) == 0  # hard labels are the documented alternative


def test_gamma_must_be_positive_in_config_and_options():
    with pytest.raises(UserError, match="gamma must be > 0"):
        load_config(RMConfig, overrides={"gamma": 0, "data": "x.jsonl"})
    with pytest.raises(UserError, match="gamma must be > 0"):
        PairOptions(gamma=-0.1)


def test_beta_must_be_positive():
    with pytest.raises(UserError, match="beta must be > 0"):
        load_config(DPOConfig, overrides={"beta": 0, "data": "x.jsonl"})


def test_unknown_config_key_suggests_the_closest():
    with pytest.raises(UserError, match="did you mean 'learning_rate'"):
        load_config(RMConfig, overrides={"learning_rat": 1e-5})


def test_missing_model_path_is_a_user_error():
    with pytest.raises(UserError, match="model path does not exist: ./nope"):
        resolve_model_path("./nope")
