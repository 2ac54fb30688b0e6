"""Every config key is checked for type and range before any work: one line naming the key, nothing written."""

import pytest

from mmpo.config import DPOConfig, RMConfig, load_config
from mmpo.errors import UserError
from mmpo.training.online import OnlineConfig

BAD_TRAIN_VALUES = [
    ("max_steps", -3), ("max_steps", 0), ("bf16", "maybe"), ("lora_r", -4), ("learning_rate", -1.0),
    ("learning_rate", 0.0), ("per_device_train_batch_size", 0), ("per_device_eval_batch_size", 0),
    ("gradient_accumulation_steps", 0), ("eval_split", 1.5), ("eval_split", -0.1), ("num_train_epochs", 0.0),
    ("lora_alpha", 0), ("lora_dropout", 1.0), ("lora_layers", 0), ("max_pairs", 0), ("max_eval_pairs", -1),
    ("pairs_per_prompt", -2), ("margin_bins", -1), ("max_length", 0), ("max_prompt_length", 0),
    ("label_smoothing", 0.5), ("weight_decay", -0.1), ("max_grad_norm", -1.0), ("seed", -1),
    ("logging_steps", 0), ("eval_steps", 0), ("save_steps", -5), ("save_total_limit", 0),
    ("dataloader_num_workers", -1), ("learning_rate", float("nan")),
]


@pytest.mark.parametrize("cls", [RMConfig, DPOConfig])
@pytest.mark.parametrize("key,value", BAD_TRAIN_VALUES)
def test_out_of_range_values_name_their_key(cls, key, value):
    with pytest.raises(UserError) as e:
        load_config(cls, overrides={key: value, "data": "x.jsonl"})
    message = str(e.value)
    assert message.startswith(f"{key} must be") and "\n" not in message


@pytest.mark.parametrize("key,value", [
    ("rounds", 0), ("samples_per_prompt", 1), ("steps_per_round", 0), ("prompts_per_round", 0),
    ("max_eval_prompts", 0), ("temperature", -1.0), ("top_p", 0.0), ("top_p", 1.5), ("max_new_tokens", 0),
    ("generation_batch_size", 0), ("grader_retries", -1), ("grader_retry_wait", -0.5), ("lora_r", -4),
])
def test_online_keys_are_range_checked(key, value):
    with pytest.raises(UserError, match=f"^{key} must be"):
        load_config(OnlineConfig, overrides={key: value, "prompts": "p.jsonl"})


@pytest.mark.parametrize("key,value", [("max_steps", -1), ("max_steps", 1), ("lora_r", 0), ("eval_split", 0.0),
                                       ("pairs_per_prompt", 0), ("max_grad_norm", 0.0), ("save_total_limit", None)])
def test_boundary_values_are_accepted(key, value):
    config = load_config(DPOConfig, overrides={key: value, "data": "x.jsonl"})
    assert getattr(config, key) == value


@pytest.mark.parametrize("text,expected", [("auto", "auto"), ("true", True), ("false", False), ("AUTO", "auto")])
def test_bf16_takes_auto_true_or_false(text, expected):
    config = load_config(DPOConfig, None, ["--data", "x.jsonl", "--bf16", text])
    assert config.bf16 == expected or (expected == "auto" and str(config.bf16).lower() == "auto")


@pytest.mark.parametrize("command", ["rm", "dpo"])
@pytest.mark.parametrize("flag,value", [("--max_steps", "0"), ("--learning_rate", "-1"),
                                        ("--per_device_train_batch_size", "0"), ("--bf16", "maybe"),
                                        ("--eval_split", "1.5")])
def test_cli_refuses_before_writing_anything(tmp_path, pair_file, tiny_model_dir, capsys, command, flag, value):
    from mmpo.cli.main import main

    out = tmp_path / "run"
    code = main([command, "--model", str(tiny_model_dir), "--data", str(pair_file()), "--output_dir", str(out), flag, value])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and flag[2:] in err[0]
    assert not out.exists()
