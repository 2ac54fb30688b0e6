"""The command line's help: every parser renders, every option says what it does, and the top level
answers --help and --version."""

from __future__ import annotations

import argparse
import re

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


def eval_pairs_missing_data(model_dir) -> list[str]:
    """`mmpo eval pairs` on a real model and a data file that does not exist."""
    return ["eval", "pairs", "--model", str(model_dir), "--ref-model", "none", "--data", "no-such-pairs.jsonl", "--out", "o.json"]


def test_errors_name_the_full_subcommand(tmp_path, monkeypatch, capsys, tiny_model_dir):
    monkeypatch.delenv("MMPO_DEBUG", raising=False)
    monkeypatch.chdir(tmp_path)
    assert main(eval_pairs_missing_data(tiny_model_dir)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["mmpo eval pairs: error: data path not found: no-such-pairs.jsonl"]
    assert not (tmp_path / "o.json").exists()


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_works_before_and_after_a_nested_subcommand(tmp_path, monkeypatch, where, tiny_model_dir):
    from mmpo.errors import UserError

    monkeypatch.delenv("MMPO_DEBUG", raising=False)
    monkeypatch.chdir(tmp_path)
    missing = eval_pairs_missing_data(tiny_model_dir)
    argv = ["--debug", *missing] if where == "before" else [*missing, "--debug"]
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


@pytest.mark.parametrize("argv,says", [
    (["rm", "embedded/dpo"], "embedded/dpo is a policy recipe (it sets beta), not one for mmpo rm: train it with `mmpo dpo embedded/dpo`"),
    (["dpo", "embedded/rm"], "embedded/rm is a reward-model recipe (packaged as embedded/rm), not one for mmpo dpo"),
    (["dpo", "paper/rm-gemma-2b-ultrafeedback"], "is a reward-model recipe"),
    (["rm", "embedded/online"], "embedded/online is an `mmpo online` recipe"),
    (["online", "embedded/rm"], "embedded/rm is a reward-model recipe"),
])
def test_training_refuses_a_recipe_of_another_kind(argv, says, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MMPO_DEBUG", raising=False)
    monkeypatch.chdir(tmp_path)
    assert main([*argv, "--output_dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0]
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_training_refuses_a_directory_as_recipe(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MMPO_DEBUG", raising=False)
    run_dir = tmp_path / "old-run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("loss: bt\n")
    monkeypatch.chdir(tmp_path)
    assert main(["rm", "old-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["mmpo rm: error: old-run is a directory, not a recipe: give a recipe file (.yaml) or a packaged "
                   "recipe name; the run's settings are in old-run/config.yaml"]
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["config.yaml", "old-run"]


def test_recipe_kind_rules(tmp_path):
    from mmpo.training.tasks import recipe_kind

    def kind_of(text):
        path = tmp_path / "r.yaml"
        path.write_text(text)
        return recipe_kind(path)[0]

    assert kind_of("prompts: p.jsonl\nbeta: 0.1\n") == "online"
    assert kind_of("data: d.jsonl\nreference: none\n") == "dpo"
    assert kind_of("loss: bt\n") == "rm"
    assert kind_of("loss: ipo\n") == "dpo"
    assert kind_of("loss: mmpo\nlearning_rate: 1.0e-5\n") is None  # fits both: a file's name decides nothing
    assert recipe_kind("embedded/rm")[0] == "rm" and recipe_kind("embedded/dpo")[0] == "dpo"
    assert recipe_kind("paper/dpo-gemma-7b-shp")[0] == "dpo" and recipe_kind("embedded/online")[0] == "online"


def test_compare_kind_comes_from_the_recipe_then_the_losses(tmp_path):
    from mmpo.errors import UserError
    from mmpo.experiments.compare import choose_kind

    assert choose_kind(None, "embedded/rm", ["mmpo", "bt"]) == ("rm", "embedded/rm is a reward-model recipe (packaged as embedded/rm)")
    assert choose_kind(None, "embedded/dpo", ["mmpo", "dpo"])[0] == "dpo"
    assert choose_kind(None, "embedded/online", ["mmpo", "dpo"])[0] == "online"
    with pytest.raises(UserError, match=r"^embedded/rm is a reward-model recipe .*; loss dpo is not one of its losses .*--kind dpo"):
        choose_kind(None, "embedded/rm", ["mmpo", "dpo"])
    with pytest.raises(UserError, match="embedded/dpo is a policy recipe .*; loss bt is not one"):
        choose_kind(None, "embedded/dpo", ["mmpo", "bt"])
    # an explicit --kind decides, whatever the recipe
    assert choose_kind("dpo", "embedded/rm", ["mmpo", "dpo"]) == ("dpo", "--kind dpo")
    # a recipe that fits either kind: the losses decide
    neutral = tmp_path / "mine.yaml"
    neutral.write_text("loss: mmpo\n")
    kind, why = choose_kind(None, str(neutral), ["mmpo", "ipo"])
    assert kind == "dpo" and "fits either kind" in why and "ipo trains policies only" in why
    assert choose_kind(None, None, ["mmpo", "bt"])[0] == "rm"
    with pytest.raises(UserError, match="bt .* and dpo .* train different kinds"):
        choose_kind(None, None, ["bt", "dpo"])


def test_compare_says_its_kind_and_refuses_a_loss_of_another_kind(tmp_path, monkeypatch, capsys):
    import mmpo.experiments.compare as comparison
    from mmpo.errors import UserError
    from mmpo.losses import losses_for

    monkeypatch.delenv("MMPO_DEBUG", raising=False)
    monkeypatch.chdir(tmp_path)
    assert main(["compare", "embedded/rm", "--losses", "mmpo,dpo", "--out", "cmp"]) == 2
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines() == [
        "mmpo compare: error: embedded/rm is a reward-model recipe (packaged as embedded/rm); loss dpo is not one of its "
        f"losses ({', '.join(losses_for('rm'))}); pass --kind dpo to train policies from this recipe anyway"]
    assert list(tmp_path.iterdir()) == []

    seen = []

    def no_training(kind, *args, **kwargs):
        seen.append(kind)
        raise UserError("stopped before training")

    monkeypatch.setattr(comparison, "run_compare", no_training)
    assert main(["compare", "embedded/rm", "--losses", "mmpo,bt", "--out", "cmp"]) == 2
    assert seen == ["rm"]
    assert "kind rm for losses mmpo, bt: embedded/rm is a reward-model recipe" in capsys.readouterr().out
    assert main(["compare", "embedded/rm", "--kind", "dpo", "--losses", "mmpo,dpo", "--out", "cmp"]) == 2
    assert seen == ["rm", "dpo"] and "kind dpo for losses mmpo, dpo: --kind dpo" in capsys.readouterr().out


# Measurements (a range of percentages, a speed ratio, a memory size, "measured ...") belong in the benchmarks'
# results, not in help, which says what a key or option does.
MEASURED = re.compile(r"\d+(\.\d+)?\s*(-\s*\d+(\.\d+)?\s*)?%\s*(less|more|faster|slower)|\d+\.\d+x|~\s*\d|\bmeasured\b|"
                      r"RESULTS\.md|\d\s*[MG]iB")


def test_help_holds_no_measurements():
    import dataclasses

    from mmpo.config import DPOConfig, RMConfig
    from mmpo.training.online import OnlineConfig

    texts = {f"{cls.__name__}.{f.name}": f.metadata.get("help", "")
             for cls in (RMConfig, DPOConfig, OnlineConfig) for f in dataclasses.fields(cls)}
    for parser in _parsers():
        for action in _documented_actions(parser):
            texts[f"{parser.prog} {'/'.join(action.option_strings) or action.dest}"] = action.help or ""
    assert {where: text for where, text in texts.items() if MEASURED.search(text)} == {}
