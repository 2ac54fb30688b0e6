"""The command line's help: every parser renders, every option says what it does, and the top level
answers --help and --version."""

from __future__ import annotations

import argparse

import pytest

from mmpo.cli.main import build_parser, iter_parsers, main


def _parsers() -> list[argparse.ArgumentParser]:
    return list(iter_parsers(build_parser()))


def test_the_walk_reaches_nested_subcommands():
    progs = {p.prog for p in _parsers()}
    assert {"mmpo", "mmpo rm", "mmpo eval", "mmpo eval pairs", "mmpo eval mtbench", "mmpo eval mtbench generate",
            "mmpo eval mtbench judge", "mmpo fit-gamma"} <= progs


@pytest.mark.parametrize("parser", _parsers(), ids=lambda p: p.prog)
def test_every_parser_renders_its_help(parser):
    text = parser.format_help()
    assert text.startswith("usage:") and parser.prog in text


def test_top_level_help_and_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "usage: mmpo" in out and "fit-gamma" in out

    assert main([]) == 0  # bare `mmpo` prints the same help
    assert "usage: mmpo" in capsys.readouterr().out

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith("mmpo ") and out.split()[1][0].isdigit()


EVAL_PAIRS_MISSING_DATA = ["eval", "pairs", "--model", "no-such-model-dir", "--data", "no-such-pairs.jsonl", "--out", "o.json"]


def test_errors_name_the_full_subcommand(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MMPO_DEBUG", raising=False)
    monkeypatch.chdir(tmp_path)
    assert main(EVAL_PAIRS_MISSING_DATA) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["mmpo eval pairs: error: data path not found: no-such-pairs.jsonl"]
    assert not (tmp_path / "o.json").exists()


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_works_before_and_after_a_nested_subcommand(tmp_path, monkeypatch, where):
    from mmpo.errors import UserError

    monkeypatch.delenv("MMPO_DEBUG", raising=False)
    monkeypatch.chdir(tmp_path)
    argv = ["--debug", *EVAL_PAIRS_MISSING_DATA] if where == "before" else [*EVAL_PAIRS_MISSING_DATA, "--debug"]
    with pytest.raises(UserError, match="data path not found"):
        main(argv)


def _documented_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The parser's shown options and positionals, and its subcommands' one-line entries."""
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            out.extend(action._choices_actions)
        elif action.help is not argparse.SUPPRESS:
            out.append(action)
    return out


@pytest.mark.parametrize("parser", _parsers(), ids=lambda p: p.prog)
def test_every_option_says_what_it_does(parser):
    undocumented = [a.option_strings or [a.dest] for a in _documented_actions(parser) if not (a.help or "").strip()]
    assert undocumented == []
    # a help line stands on its own: nothing above it in the listing explains it
    assert [a.dest for a in _documented_actions(parser) if "see above" in (a.help or "")] == []


@pytest.mark.parametrize("command,own,other", [("rm", "embedded/rm", "dpo"), ("dpo", "embedded/dpo", "rm"),
                                               ("online", "embedded/online", "rm")])
def test_training_help_names_recipes_of_its_own_kind(command, own, other, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    epilog = capsys.readouterr().out.split("...and any transformers.TrainingArguments key")[1]
    assert own in epilog
    assert f"embedded/{other}" not in epilog and f"/{other}-" not in epilog
