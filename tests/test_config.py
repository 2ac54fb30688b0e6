"""Recipes load into configs and every key can be overridden from the command line."""

import pytest

from mmpo.config import DPOConfig, RMConfig, load_config, parse_overrides
from mmpo.errors import UserError


def test_overrides_parse_types():
    got = parse_overrides(["--learning_rate", "1e-5", "--gamma", "none", "--lora-r=8", "--bf16", "--max_steps", "-1"])
    assert got == {"learning_rate": 1e-5, "gamma": None, "lora_r": 8, "bf16": True, "max_steps": -1}


def test_yaml_then_cli_override(tmp_path):
    recipe = tmp_path / "rm.yaml"
    recipe.write_text("model: embedded\ndata: train.jsonl\ngamma: 2.2\nlearning_rate: 3e-6\nloss: bt\n")
    config = load_config(RMConfig, recipe, ["--gamma", "0.3", "--max_steps", "5"])
    assert (config.gamma, config.max_steps, config.loss, config.data) == (0.3, 5, "bt", "train.jsonl")
    assert isinstance(config.learning_rate, float) and config.learning_rate == pytest.approx(3e-6)


def test_unknown_key_suggests_closest(tmp_path):
    with pytest.raises(UserError, match="did you mean 'gamma'"):
        load_config(RMConfig, overrides={"gama": 1.0, "data": "x.jsonl"})


@pytest.mark.parametrize("cls,key,value", [(RMConfig, "gamma", 0.0), (DPOConfig, "beta", -0.1), (RMConfig, "loss", "hinge")])
def test_invalid_values_are_user_errors(cls, key, value):
    with pytest.raises(UserError, match=key if key != "loss" else "loss"):
        load_config(cls, overrides={key: value, "data": "x.jsonl"})


def test_prompt_budget_defaults_to_half_the_length():
    config = load_config(DPOConfig, overrides={"data": "x.jsonl", "max_length": 300})
    assert config.prompt_budget == 150


def test_lora_layers_adapts_only_the_top_blocks(tiny_model_dir):
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from mmpo.models.loading import lora_config

    config = load_config(DPOConfig, overrides={"data": "x.jsonl", "lora_r": 4, "lora_layers": 1})
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    peft_model = get_peft_model(model, lora_config(config, "CAUSAL_LM", model=model))
    adapted = {name.split(".layers.")[1].split(".")[0] for name, _ in peft_model.named_parameters() if "lora_" in name}
    assert adapted == {"1"}  # the tiny model has blocks 0 and 1
    with pytest.raises(UserError, match="lora_layers"):
        lora_config(load_config(DPOConfig, overrides={"data": "x.jsonl", "lora_r": 4, "lora_layers": 5}), "CAUSAL_LM", model=model)


def test_gamma_none_in_yaml_means_hard_labels(tmp_path):
    # Issue 14.4: README and docs/data.md give `gamma: none` as the way to hard labels.
    recipe = tmp_path / "rm.yaml"
    recipe.write_text("data: train.jsonl\ngamma: none\n")
    assert load_config(RMConfig, recipe).gamma is None
    recipe.write_text("data: train.jsonl\ngamma: null\n")
    assert load_config(RMConfig, recipe).gamma is None


@pytest.mark.parametrize("text,key", [
    ("gamma: true", "gamma"),        # a boolean is not a number
    ("lora_r: 2.5", "lora_r"),       # nor an integer
    ("merge_lora: 1", "merge_lora"),  # nor a boolean
    ("max_length: none", "max_length"),  # none only where the key allows it
    ("data_columns: prompt", "data_columns"),
])
def test_values_of_the_wrong_type_in_yaml_name_key_and_file(tmp_path, text, key):
    recipe = tmp_path / "dpo.yaml"
    recipe.write_text(f"data: train.jsonl\n{text}\n")
    with pytest.raises(UserError, match=rf"config key '{key}' expects .* in {recipe}"):
        load_config(DPOConfig, recipe)


@pytest.mark.parametrize("tokens", [["--lora_r"], ["--lora_r", "true"], ["--gamma", "true"], ["--gamma=yes"]])
def test_flags_without_a_usable_value_are_one_line_errors(tokens):
    with pytest.raises(UserError, match="on the command line") as err:
        load_config(RMConfig, None, ["--data", "x.jsonl", *tokens])
    assert "\n" not in str(err.value)


def test_numbers_written_as_text_still_load_as_their_field_type():
    config = load_config(RMConfig, None, ["--data", "x.jsonl", "--max_steps", "1e3", "--learning_rate", "2e-5",
                                          "--eval_split", "0", "--lora_r", "8"])
    assert (config.max_steps, config.learning_rate, config.eval_split, config.lora_r) == (1000, 2e-5, 0.0, 8)
    assert isinstance(config.eval_split, float) and isinstance(config.max_steps, int)
    assert load_config(DPOConfig, None, ["--data", "x.jsonl", "--loss", "simpo", "--reference", "none"]).reference == "none"


def test_bare_lora_r_on_the_cli_exits_with_one_line(capsys):
    from mmpo.cli.main import main

    assert main(["rm", "--data", "x.jsonl", "--lora_r"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["mmpo rm: error: config key 'lora_r' expects an integer (got true on the command line)"]


@pytest.mark.parametrize("written", ["$MMPO_CACHE/data/x.jsonl", "${MMPO_CACHE}/data/x.jsonl"])
def test_recipes_name_the_cache_directory(tmp_path, monkeypatch, written):
    # Issue 14.6: recipes must follow $MMPO_CACHE, and its default when unset.
    recipe = tmp_path / "rm.yaml"
    recipe.write_text(f"data: {written}\neval_data:\n  path: {written}\noutput_dir: $MMPO_CACHEX/run\n")
    monkeypatch.setenv("MMPO_CACHE", str(tmp_path / "cache"))
    config = load_config(RMConfig, recipe)
    assert config.data == f"{tmp_path}/cache/data/x.jsonl" and config.eval_data == {"path": config.data}
    assert config.output_dir == "$MMPO_CACHEX/run"  # another variable's name is left alone
    monkeypatch.delenv("MMPO_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert load_config(RMConfig, recipe).data == f"{tmp_path}/xdg/mmpo/data/x.jsonl"


def test_embedded_recipes_do_not_hard_code_the_cache():
    from pathlib import Path

    import mmpo

    recipes = Path(mmpo.__file__).parent / "recipes"
    for recipe in sorted(recipes.rglob("*.yaml")):
        text = recipe.read_text()
        assert ".cache/mmpo" not in "".join(line.split("#")[0] for line in text.splitlines()), recipe
        if "graded-tasks-0/" in text:  # a local data path goes through $MMPO_CACHE
            assert "$MMPO_CACHE/data/graded-tasks-0/" in text, recipe
    for name in ("rm.yaml", "dpo.yaml"):
        assert "data: alpaca_graded" in (recipes / "embedded" / name).read_text()  # the demo's real graded data
