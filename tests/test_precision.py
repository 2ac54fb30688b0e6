"""bfloat16 where the hardware has it: detection, the bf16 setting, and a bfloat16 run on this CPU."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import mmpo.precision as precision
from mmpo.errors import UserError
from mmpo.training.args import use_bf16


@pytest.fixture
def cpu_only(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def fake_cpuinfo(monkeypatch, tmp_path, flags: str):
    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\nflags\t\t: fpu sse2 {flags}\n\nprocessor\t: 1\nflags\t\t: fpu sse2 {flags}\n")
    real_open = open
    monkeypatch.setattr(precision.platform, "system", lambda: "Linux")
    monkeypatch.setattr("builtins.open", lambda path, *a, **k: real_open(info if path == "/proc/cpuinfo" else path, *a, **k))
    precision.cpu_has_native_bf16.cache_clear()


@pytest.mark.parametrize("flags, native", [("avx2 avx512f avx512_bf16", True), ("avx2 amx_tile amx_bf16", True), ("avx2 avx512f", False)])
def test_cpu_bf16_detection_and_settings(monkeypatch, tmp_path, cpu_only, flags, native):
    fake_cpuinfo(monkeypatch, tmp_path, flags)
    try:
        assert precision.cpu_has_native_bf16() is native
        assert use_bf16("auto") is native
        assert use_bf16(False) is False
        if native:
            assert use_bf16(True) is True
        else:
            with pytest.raises(UserError, match="no native bfloat16"):
                use_bf16(True)
    finally:
        precision.cpu_has_native_bf16.cache_clear()


needs_native_bf16 = pytest.mark.skipif(
    torch.cuda.is_available() or not precision.cpu_has_native_bf16(),
    reason="needs a CPU with native bfloat16 (hardware); checks the CPU path, so skipped on a CUDA machine",
)


@needs_native_bf16
def test_bf16_reward_model_run_autocasts_and_saves_float32(tiny_model_dir, pair_file, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from mmpo.config import RMConfig, load_config
    from mmpo.training import rm

    seen: list[tuple[bool, torch.dtype]] = []
    real_build = rm.build_model

    def build_and_watch(config, tokenizer):
        model = real_build(config, tokenizer)
        decoder = model.model  # inside the model's forward, where accelerate applies autocast
        decoder.register_forward_pre_hook(lambda m, a: seen.append((torch.is_autocast_enabled("cpu"), next(m.parameters()).dtype)))
        return model

    rm.build_model = build_and_watch
    try:
        data = pair_file(n=12, seed=3)
        config = load_config(RMConfig, None, dict(
            model=str(tiny_model_dir), data=str(data), eval_data=str(shutil.copy(data, tmp_path / "held-out.jsonl")),
            allow_eval_overlap=True, output_dir=str(tmp_path / "out"),
            max_length=96, per_device_train_batch_size=4, per_device_eval_batch_size=8, max_steps=2,
            logging_steps=1, learning_rate=1e-3, bf16=True,
        ))
        results = rm.train_reward_model(config).metrics
    finally:
        rm.build_model = real_build
    # training ran under bfloat16 autocast over float32 weights; the final held-out pass (12 pairs, 2 batches),
    # which eval_scores.jsonl and eval_results.json come from, in float32 like `mmpo eval pairs` on the saved model
    assert len(seen) >= 4 and all(dtype == torch.float32 for _, dtype in seen)
    assert seen[0][0] and seen[1][0] and not seen[-1][0] and not seen[-2][0]
    saved = AutoModelForSequenceClassification.from_pretrained(tmp_path / "out")
    assert all(p.dtype == torch.float32 for p in saved.parameters())
    assert 0 <= results["accuracy"] <= 1 and results["nll"] == results["nll"]
    assert json.loads((tmp_path / "out" / "eval_results.json").read_text())["n"] == 12


@needs_native_bf16
def test_bf16_lora_policy_is_saved_in_float32(tiny_model_dir, pair_file, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    from mmpo.config import DPOConfig, load_config
    from mmpo.training.dpo import train_policy

    monkeypatch.setenv("MMPO_CACHE", str(tmp_path / "cache"))
    data = pair_file(n=12, seed=4)
    config = load_config(DPOConfig, overrides=dict(
        model=str(tiny_model_dir), data=str(data), output_dir=str(tmp_path / "pol"), max_length=96,
        per_device_train_batch_size=4, per_device_eval_batch_size=8, max_steps=2, logging_steps=1,
        learning_rate=1e-3, eval_split=0.25, lora_r=4, lora_alpha=8, bf16=True, reference="precomputed",
    ))
    summary = train_policy(config)
    assert summary.saved == "merged"
    # the precomputed reference ran under the same autocast (it is part of the cache key)
    meta = json.loads(next((tmp_path / "cache" / "reference_logps").glob("*/meta.json")).read_text())
    assert meta["settings"]["autocast_bf16"] is True
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "pol")
    assert all(p.dtype == torch.float32 for p in saved.parameters())


def _tiny_lora(model: torch.nn.Module, task_type: str, modules_to_save=None):
    """LoRA r=4 on every linear layer of ``model`` with a tiny but nonzero update: ``B`` set to 1e-4 * noise, so
    ``B @ A * scale`` is far below one bfloat16 step of the weights it is added to."""
    from types import SimpleNamespace

    from mmpo.models.loading import get_lora_model, lora_config

    settings = SimpleNamespace(lora_r=4, lora_alpha=8, lora_dropout=0.0, lora_target_modules="all-linear", lora_layers=None)
    peft_model = get_lora_model(model, lora_config(settings, task_type, modules_to_save=modules_to_save, model=model))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(1e-4 * torch.randn(p.shape, generator=generator))
    return peft_model


def _lora_updates(peft_model) -> dict[str, torch.Tensor]:
    """``B @ A * scale`` in float32 for every adapted layer, keyed by the layer's name in the merged model."""
    updates = {}
    for name, module in peft_model.named_modules():
        if hasattr(module, "lora_A") and "default" in module.lora_A:
            a, b = module.lora_A["default"].weight.float(), module.lora_B["default"].weight.float()
            updates[name.removeprefix("base_model.model.") + ".weight"] = (b @ a * module.scaling["default"]).detach()
    return updates


def _relative_update_errors(saved: torch.nn.Module, original: torch.nn.Module, updates: dict[str, torch.Tensor]) -> list[float]:
    saved_w, original_w = saved.state_dict(), original.state_dict()
    return [
        float((saved_w[k].float() - original_w[k].float() - u).norm() / u.norm()) for k, u in updates.items()
    ]


def test_lora_over_a_bfloat16_base_is_merged_into_the_float32_checkpoint(tiny_model_dir, tiny_tokenizer, tmp_path):
    """The saved weight is the float32 checkpoint's weight plus ``B @ A * scale``: a bfloat16 merge would round
    the update away (one bfloat16 step of a weight ~0.02 is ~1e-4, the update here ~1e-7)."""
    from transformers import AutoModelForCausalLM

    from mmpo.models.policy import save_policy

    original = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model = _tiny_lora(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16), "CAUSAL_LM")
    updates = _lora_updates(model)
    assert updates and all(u.abs().max() > 0 for u in updates.values())
    assert save_policy(model, tiny_tokenizer, tmp_path / "pol") == "merged"
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "pol")
    assert all(p.dtype == torch.float32 for p in saved.parameters())
    assert max(_relative_update_errors(saved, original, updates)) < 1e-3
    # weights without an adapter are the checkpoint's own float32 values, not their bfloat16 roundings
    assert torch.equal(saved.model.embed_tokens.weight, original.model.embed_tokens.weight)


def test_lora_reward_model_over_a_bfloat16_base_keeps_its_update_and_head(tiny_model_dir, tiny_tokenizer):
    """The reward model's save path merges the same way, and keeps its fully trained head."""
    from mmpo.models.loading import merge_lora_float32
    from mmpo.models.reward import head_module_names, load_reward_model

    original = load_reward_model(str(tiny_model_dir), tiny_tokenizer, dtype=torch.float32)
    base = load_reward_model(str(tiny_model_dir), tiny_tokenizer, dtype=torch.bfloat16)
    model = _tiny_lora(base, "SEQ_CLS", modules_to_save=head_module_names(base))
    with torch.no_grad():
        trained_head = torch.randn_like(model.base_model.model.score.modules_to_save["default"].weight, dtype=torch.float32)
        model.base_model.model.score.modules_to_save["default"].weight.copy_(trained_head)
    updates = {k: u for k, u in _lora_updates(model).items() if not k.startswith("score")}
    merged = merge_lora_float32(model)
    assert all(p.dtype == torch.float32 for p in merged.parameters())
    assert max(_relative_update_errors(merged, original, updates)) < 1e-3
    assert torch.equal(merged.score.weight, trained_head.to(torch.bfloat16).float())
    assert merged.config.pad_token_id == tiny_tokenizer.pad_token_id
