"""One gamma parser: the same spellings for every option and config key."""

import pytest

from mmpo.cli.main import main
from mmpo.config import RMConfig, load_config
from mmpo.errors import UserError
from mmpo.gamma import parse_gamma, parse_gamma_list


@pytest.mark.parametrize("text,expected", [("2.2", 2.2), (1, 1.0), ("none", None), ("hard", None), ("HARD", None),
                                           ("null", None), (None, None)])
def test_spellings(text, expected):
    assert parse_gamma(text) == expected


@pytest.mark.parametrize("bad", ["0", "-1", "x", "inf", True, ""])
def test_bad_values_are_one_line_errors_naming_the_option(bad):
    with pytest.raises(UserError, match="--scale must be > 0") as err:
        parse_gamma(bad, "--scale")
    assert "\n" not in str(err.value)


def test_list():
    assert parse_gamma_list("0.3, 1,hard") == [0.3, 1.0, None]


def test_config_and_data_accept_hard(tmp_path, write_jsonl, capsys):
    assert load_config(RMConfig, None, ["--data", "x.jsonl", "--gamma", "hard"]).gamma is None
    assert load_config(RMConfig, None, ["--data", "x.jsonl", "--eval_gamma", "hard"]).eval_gamma is None
    rows = [{"prompt": f"q{i}", "chosen": "a", "rejected": "b", "score_chosen": 2, "score_rejected": 1} for i in range(3)]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    assert main(["data", str(path), "--gamma", "hard"]) == 0
