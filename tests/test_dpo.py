"""`mmpo dpo`: losses on recorded log-probs, references (live, adapter, precomputed + cache), LoRA, resume, saving."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import build_byte_tokenizer, build_tiny_llama
from mmpo.config import DPOConfig, load_config
from mmpo.errors import UserError
from mmpo.models.logps import response_logps
from mmpo.models.reference import cached_reference_logps, model_identity, resolve_reference_mode
from mmpo.training.dpo import PolicyTask, policy_loss, policy_rewards, train_policy
from mmpo.training.run import build_run

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    # Reference-log-prob caches of one test must not leak into another (or into ~/.cache).
    monkeypatch.setenv("MMPO_CACHE", str(tmp_path / "cache"))


def dpo_config(tmp_path: Path, model_dir: Path, data: Path, name: str = "run", **overrides) -> DPOConfig:
    values = dict(
        model=str(model_dir),
        data=str(data),
        output_dir=str(tmp_path / name),
        max_length=96,
        max_prompt_length=64,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=8,
        max_steps=2,
        logging_steps=1,
        learning_rate=1e-3,
        beta=0.5,
        gamma=0.5,
        eval_split=0.25,
        save_total_limit=None,
        bf16=False,  # these tests compare with float32 arithmetic; bfloat16 runs are tested in test_precision.py
    )
    values.update(overrides)
    return load_config(DPOConfig, overrides=values)


def read_metrics(output_dir: str) -> list[dict]:
    return [json.loads(line) for line in Path(output_dir, "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def other_model_dir(tmp_path_factory) -> Path:
    """A second tiny model with different weights (same tokenizer): a reference that is not the policy."""
    path = tmp_path_factory.mktemp("tiny-llama-ref")
    tokenizer = build_byte_tokenizer()
    build_tiny_llama(len(tokenizer), seed=7).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


# --- the math --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("loss", ["mmpo", "dpo", "cdpo", "ipo", "simpo", "simpo_mmpo"])
def test_loss_equals_formula_on_recorded_logps(loss):
    g = torch.Generator().manual_seed(0)
    pw, pl, rw, rl = (-20 * torch.rand(16, generator=g) for _ in range(4))
    lw, ll = torch.randint(1, 30, (16,), generator=g), torch.randint(1, 30, (16,), generator=g)
    p = torch.rand(16, generator=g) * 0.5 + 0.5
    beta, eps, gamma_s = 0.3, 0.1, 0.4
    chosen, rejected = policy_rewards(loss, pw, pl, lw, ll, rw, rl, beta, simpo_margin=gamma_s)
    got = policy_loss(loss, chosen, rejected, p, beta, label_smoothing=eps)

    h_dpo = beta * ((pw - rw) - (pl - rl))
    h_simpo = beta * (pw / lw - pl / ll) - gamma_s
    expected = {
        "mmpo": -p * F.logsigmoid(h_dpo) - (1 - p) * F.logsigmoid(-h_dpo),
        "dpo": -F.logsigmoid(h_dpo),
        "cdpo": -(1 - eps) * F.logsigmoid(h_dpo) - eps * F.logsigmoid(-h_dpo),
        "ipo": ((pw - rw) - (pl - rl) - 1 / (2 * beta)) ** 2,
        "simpo": -F.logsigmoid(h_simpo),
        "simpo_mmpo": -p * F.logsigmoid(h_simpo) - (1 - p) * F.logsigmoid(-h_simpo),
    }[loss]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_mmpo_with_p_one_is_dpo_and_soft_targets_change_it():
    g = torch.Generator().manual_seed(1)
    pw, pl, rw, rl = (-10 * torch.rand(8, generator=g) for _ in range(4))
    n = torch.ones(8)
    chosen, rejected = policy_rewards("mmpo", pw, pl, n, n, rw, rl, beta=0.1)
    ones = torch.ones(8)
    torch.testing.assert_close(policy_loss("mmpo", chosen, rejected, ones, 0.1), policy_loss("dpo", chosen, rejected, ones, 0.1))
    soft = torch.full((8,), 0.7)
    assert not torch.allclose(policy_loss("mmpo", chosen, rejected, soft, 0.1), policy_loss("dpo", chosen, rejected, soft, 0.1))


def test_reference_mode_resolution():
    assert resolve_reference_mode("mmpo", "auto", lora_r=8) == "adapter"
    assert resolve_reference_mode("dpo", "auto", lora_r=0) == "precomputed"
    assert resolve_reference_mode("simpo", "auto", lora_r=0) == "none"
    with pytest.raises(UserError, match="reference-free"):
        resolve_reference_mode("dpo", "none", lora_r=0)
    with pytest.raises(UserError, match="needs LoRA"):
        resolve_reference_mode("mmpo", "adapter", lora_r=0)
    # The LoRA base is the starting model: another ref_model is precomputed under auto, refused under adapter.
    assert resolve_reference_mode("mmpo", "auto", lora_r=8, ref_model="other") == "precomputed"
    with pytest.raises(UserError, match="ref_model cannot be used"):
        resolve_reference_mode("mmpo", "adapter", lora_r=8, ref_model="other")
    # The config refuses these before any data or model is loaded.
    with pytest.raises(UserError, match="needs LoRA"):
        DPOConfig(data="pairs.jsonl", reference="adapter").validate()
    with pytest.raises(UserError, match="ref_model cannot be used"):
        DPOConfig(data="pairs.jsonl", reference="adapter", lora_r=8, ref_model="other").validate()


def test_trainer_loss_equals_formula_with_a_live_reference_model(tmp_path, tiny_model_dir, other_model_dir, pair_file):
    from transformers import AutoModelForCausalLM

    # Two rows per pair, to compare with response_logps (the shared layout is compared in test_prefix_sharing.py).
    config = dpo_config(tmp_path, tiny_model_dir, pair_file(24), reference="model", ref_model=str(other_model_dir), prefix_sharing=False)
    run = build_run(PolicyTask(), config)
    batch = next(iter(run.trainer.get_train_dataloader()))
    loss = run.trainer.compute_loss(run.trainer.model, batch).item()

    policy = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    reference = AutoModelForCausalLM.from_pretrained(other_model_dir)
    args = (batch["input_ids"], batch["attention_mask"], batch["response_mask"])
    with torch.no_grad():
        pi, _ = response_logps(policy, *args, full_logits=True)
        ref, _ = response_logps(reference, *args, full_logits=True)
    b = len(batch["p"])
    h = config.beta * ((pi[:b] - ref[:b]) - (pi[b:] - ref[b:]))
    p = batch["p"]
    assert not torch.allclose(p, torch.ones_like(p)), "graded data should give soft targets"
    expected = (-p * F.logsigmoid(h) - (1 - p) * F.logsigmoid(-h)).mean().item()
    assert loss == pytest.approx(expected, rel=1e-5, abs=1e-6)


# --- references -----------------------------------------------------------------------------------------

def test_precomputed_reference_gives_the_live_reference_step_one_loss(tmp_path, tiny_model_dir, other_model_dir, pair_file):
    data = pair_file(24)
    common = dict(ref_model=str(other_model_dir), max_steps=1)
    live = train_policy(dpo_config(tmp_path, tiny_model_dir, data, "live", reference="model", **common))
    pre = train_policy(dpo_config(tmp_path, tiny_model_dir, data, "pre", reference="precomputed", **common))
    same_ref = train_policy(dpo_config(tmp_path, tiny_model_dir, data, "self", reference="precomputed", max_steps=1))
    assert live.details["reference"] == "model" and pre.details["reference"] == "precomputed"
    first = {name: read_metrics(r.output_dir)[0] for name, r in (("live", live), ("pre", pre), ("self", same_ref))}
    for key in ("loss", "train_margin", "train_logratio_chosen", "train_logratio_rejected"):
        assert first["pre"][key] == pytest.approx(first["live"][key], rel=1e-4, abs=1e-5), key
    # The comparison has teeth: a different reference gives a different step-one loss.
    assert abs(first["self"]["train_margin"]) < 1e-4 < abs(first["live"]["train_margin"])
    for key in ("accuracy", "ece", "nll", "logratio_chosen"):
        assert pre.metrics[key] == pytest.approx(live.metrics[key], rel=1e-4, abs=1e-5), key


class _CountingModel(torch.nn.Module):
    """Counts forward calls of a causal LM while passing everything through."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.config, self.calls = inner, inner.config, 0

    def get_output_embeddings(self):
        return self.inner.get_output_embeddings()

    def forward(self, **kwargs):
        self.calls += 1
        return self.inner(**kwargs)


def test_precomputed_cache_is_reused_and_a_corrupt_or_stale_one_rebuilt(tmp_path, tiny_model_dir, tiny_tokenizer, pair_file):
    from transformers import AutoModelForCausalLM

    from mmpo.data.pipeline import prepare_data

    config = dpo_config(tmp_path, tiny_model_dir, pair_file(20), eval_split=0.0)
    features = prepare_data(config, tiny_tokenizer).train
    model = _CountingModel(AutoModelForCausalLM.from_pretrained(tiny_model_dir))
    loads = []

    def get_model():
        loads.append(1)
        return model

    def lookup(feats=features, identity=None):
        identity = identity or model_identity(str(tiny_model_dir))
        return cached_reference_logps(get_model, feats, identity, {"max_length": 96}, tiny_tokenizer.pad_token_id, batch_size=8)

    first = lookup()
    assert not first.from_cache and model.calls == 3 and len(loads) == 1  # 20 pairs in batches of 8
    again = lookup()
    assert again.from_cache and model.calls == 3 and len(loads) == 1
    torch.testing.assert_close(again.chosen, first.chosen)
    assert (first.chosen != first.rejected).any() and (first.chosen < 0).all()

    (first.path / "reference_logps.pt").write_bytes(b"not a tensor file")
    rebuilt = lookup()
    assert not rebuilt.from_cache and model.calls == 6
    torch.testing.assert_close(rebuilt.chosen, first.chosen)

    meta = json.loads((first.path / "meta.json").read_text())
    (first.path / "meta.json").write_text(json.dumps({**meta, "count": meta["count"] + 1}))
    assert not lookup().from_cache and model.calls == 9

    # Other data or other weights: another key, another entry.
    assert lookup(features[:10]).path != first.path
    changed = {**model_identity(str(tiny_model_dir)), "weights": [["model.safetensors", 1, 2]]}
    assert lookup(identity=changed).path != first.path


def test_train_policy_rerun_reuses_the_reference_cache(tmp_path, tiny_model_dir, pair_file):
    data = pair_file(20)
    first = train_policy(dpo_config(tmp_path, tiny_model_dir, data, "a", reference="precomputed", max_steps=1))
    second = train_policy(dpo_config(tmp_path, tiny_model_dir, data, "b", reference="precomputed", max_steps=1))
    assert {s: first.details["reference_cache"][s]["from_cache"] for s in ("train", "eval")} == {"train": False, "eval": False}
    assert {s: second.details["reference_cache"][s]["from_cache"] for s in ("train", "eval")} == {"train": True, "eval": True}
    assert second.details["reference_cache"]["train"]["path"] == first.details["reference_cache"]["train"]["path"]


# --- LoRA, resume, saving ------------------------------------------------------------------------------------

def test_lora_run_changes_only_adapter_weights_and_adapter_reference_is_the_base(tmp_path, tiny_model_dir, pair_file):
    from transformers import AutoModelForCausalLM

    config = dpo_config(tmp_path, tiny_model_dir, pair_file(24), lora_r=4, lora_alpha=8, max_steps=3, learning_rate=5e-2, prefix_sharing=False)
    run = build_run(PolicyTask(), config)
    assert run.task.reference_mode == "adapter"
    model = run.trainer.model
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    run.trainer.train()
    after = dict(model.named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n].detach())}
    assert changed, "training changed nothing"
    assert all("lora_" in n for n in changed), sorted(n for n in changed if "lora_" not in n)
    assert any("lora_B" in n for n in changed)

    # With the adapter disabled the trained policy scores exactly like the untouched base model.
    batch = run.trainer._prepare_inputs(next(iter(run.trainer.get_eval_dataloader())))
    ref_chosen, ref_rejected = run.trainer.reference_logps(model, batch)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        base_logps, _ = response_logps(base, batch["input_ids"], batch["attention_mask"], batch["response_mask"])
        policy_logps, _ = response_logps(model, batch["input_ids"], batch["attention_mask"], batch["response_mask"])
    torch.testing.assert_close(torch.cat([ref_chosen, ref_rejected]), base_logps, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(policy_logps, base_logps, atol=1e-3)


def test_kill_and_resume_continues_from_the_last_checkpoint(tmp_path, tiny_model_dir, pair_file):
    data = pair_file(24)
    first = train_policy(dpo_config(tmp_path, tiny_model_dir, data, max_steps=4, save_steps=2))
    assert first.resumed_from is None and first.global_step == 4
    assert (Path(first.output_dir) / "checkpoint-2" / "trainer_state.json").exists()
    # As if killed while step 4 was being saved: checkpoint-2 is the last complete one, no final results.
    shutil.rmtree(Path(first.output_dir) / "checkpoint-4")
    (Path(first.output_dir) / "eval_results.json").unlink()
    second = train_policy(dpo_config(tmp_path, tiny_model_dir, data, max_steps=4, save_steps=2))
    assert second.resumed_from == os.path.join(first.output_dir, "checkpoint-2")
    state = json.loads((Path(first.output_dir) / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    # Steps 1-2 were trained once (in the first run); the second run only added steps 3-4.
    train_steps = [e["step"] for e in state["log_history"] if "loss" in e]
    assert train_steps == [1, 2, 3, 4]


@pytest.mark.parametrize("merge_lora", [True, False])
def test_saved_policy_loads_with_from_pretrained(tmp_path, tiny_model_dir, pair_file, merge_lora):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = dpo_config(tmp_path, tiny_model_dir, pair_file(16), lora_r=4, max_steps=2, learning_rate=5e-2, merge_lora=merge_lora)
    summary = train_policy(config)
    out = Path(config.output_dir)
    assert summary.saved == ("merged" if merge_lora else "adapter")
    assert (out / ("model.safetensors" if merge_lora else "adapter_model.safetensors")).exists()
    for name in ("eval_results.json", "eval_scores.jsonl", "config.yaml", "data_report.json", "metrics.jsonl"):
        assert (out / name).exists(), name
    results = json.loads((out / "eval_results.json").read_text())
    for key in ("loss", "accuracy", "ece", "nll", "logratio_chosen", "margin", "step"):
        assert key in results, key
    # eval_scores.jsonl holds h per held-out pair; its mean is the reported mean margin.
    scores = [json.loads(line) for line in (out / "eval_scores.jsonl").read_text().splitlines()]
    assert len(scores) == results["n"]
    assert sum(s["h"] for s in scores) / len(scores) == pytest.approx(results["margin"], rel=1e-4, abs=1e-6)
    report = json.loads((out / "data_report.json").read_text())
    assert report["train"]["kept"] + report["eval"]["kept"] == 16
    from mmpo.evaluation.scoring import model_kind

    assert model_kind(str(out)) == "policy"  # `mmpo eval pairs` / `mmpo serve` tell an adapter's kind too

    loaded = AutoModelForCausalLM.from_pretrained(out)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(out)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "what is 2 + 2?"}], add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        logits_loaded = loaded(**prompt).logits
        logits_base = base(**prompt).logits
    assert not torch.allclose(logits_loaded, logits_base, atol=1e-4), "the saved model is the untrained base"


def test_reference_free_simpo_run(tmp_path, tiny_model_dir, pair_file):
    summary = train_policy(dpo_config(tmp_path, tiny_model_dir, pair_file(16), loss="simpo_mmpo", simpo_margin=0.2, max_steps=1))
    assert summary.details["reference"] == "none"
    assert "logratio_chosen" not in summary.metrics and "policy_chosen_logps" in summary.metrics
    assert summary.metrics["policy_chosen_logps"] < 0


def test_none_reference_with_a_reference_loss_is_a_user_error(tmp_path, tiny_model_dir, pair_file):
    with pytest.raises(UserError, match="reference-free"):
        train_policy(dpo_config(tmp_path, tiny_model_dir, pair_file(8), loss="dpo", reference="none"))


@pytest.mark.integration
def test_embedded_model_lora_dpo_end_to_end(tmp_path, pair_file):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = dpo_config(
        tmp_path, Path("embedded"), pair_file(24), model="embedded", lora_r=8, max_steps=2,
        per_device_train_batch_size=2, per_device_eval_batch_size=4, max_length=128, learning_rate=1e-4, beta=0.1,
    )
    summary = train_policy(config)
    assert summary.details["reference"] == "adapter" and summary.global_step == 2
    assert 0.0 <= summary.metrics["accuracy"] <= 1.0
    tokenizer = AutoTokenizer.from_pretrained(config.output_dir)
    model = AutoModelForCausalLM.from_pretrained(config.output_dir)
    inputs = tokenizer.apply_chat_template([{"role": "user", "content": "Say hi."}], add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert out.shape[1] > inputs["input_ids"].shape[1]


def test_reference_cache_key_sees_revision_and_quantisation(tiny_model_dir):
    from types import SimpleNamespace

    from mmpo.models.reference import reference_cache_key
    from mmpo.training.dpo import reference_identity

    def key(**overrides):
        config = SimpleNamespace(**{"model": str(tiny_model_dir), "ref_model": None, "revision": None, "load_in_4bit": False,
                                    "load_in_8bit": False, "bnb_4bit_quant_type": "nf4", **overrides})
        return reference_cache_key(reference_identity(config), [], {"max_length": 96})

    keys = [key(), key(revision="v1"), key(revision="v2"), key(load_in_4bit=True), key(load_in_4bit=True, bnb_4bit_quant_type="fp4"),
            key(load_in_8bit=True)]
    assert len(set(keys)) == len(keys) and key(revision="v1") == keys[1]
    # another ref_model is loaded without the policy's revision: that revision is not part of its key
    assert key(ref_model=str(tiny_model_dir), revision="v1") == key(ref_model=str(tiny_model_dir)) == keys[0]


def test_data_report_is_printed_by_the_first_process_only(tmp_path, tiny_model_dir, pair_file, capsys, monkeypatch):
    config = dpo_config(tmp_path, tiny_model_dir, pair_file(8), max_steps=1)
    monkeypatch.setenv("RANK", "1")  # another rank of a launch: it prepares the same data, silently
    report = re.compile(r"^data .*, kept \d+ pairs", re.M)
    build_run(PolicyTask(), config)
    assert not report.search(capsys.readouterr().out)
    monkeypatch.setenv("RANK", "0")
    build_run(PolicyTask(), config)
    assert report.search(capsys.readouterr().out)
