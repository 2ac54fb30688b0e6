"""The frozen-trunk cache reproduces the plain path: losses and adapter gradients, reward models and policies."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import pytest
import torch

from mmpo.data.collate import PairCollator
from mmpo.errors import UserError
from mmpo.losses import mmpo_loss
from mmpo.models.logps import response_logps
from mmpo.models.trunk_cache import TrunkCache, frozen_depth, resolve_trunk_cache
from mmpo.training.dpo import policy_loss, policy_rewards

PAD = 0
VOCAB = 64
LORA = SimpleNamespace(lora_r=4, lora_alpha=8, lora_dropout=0.0, lora_target_modules="all-linear", lora_layers=2)


def tiny_config(model_type: str):
    from transformers import AutoConfig

    common = dict(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, pad_token_id=PAD, bos_token_id=1, eos_token_id=2,
    )
    if model_type == "qwen2":
        # Sliding windows on the top blocks only: layer types differ by index, which the cache must keep.
        common.update(use_sliding_window=True, sliding_window=5, max_window_layers=2)
    if model_type == "mistral":
        common.update(sliding_window=6)
    if model_type == "qwen3":
        common.update(head_dim=8)
    return AutoConfig.for_model(model_type, **common)


def tiny_model(model_type: str, kind: str):
    """A 4-block model with LoRA on the top 2 blocks, every adapter weight random (so all gradients are non-zero)."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from mmpo.models.loading import lora_config

    torch.manual_seed(0)
    config = tiny_config(model_type)
    if kind == "rm":
        config.num_labels = 1
        model = AutoModelForSequenceClassification.from_config(config)
        peft_config = lora_config(LORA, "SEQ_CLS", modules_to_save=["score"], model=model)
    else:
        model = AutoModelForCausalLM.from_config(config)
        peft_config = lora_config(LORA, "CAUSAL_LM", model=model)
    model = get_peft_model(model.float(), peft_config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.normal_(0.0, 0.05)
    return model


def features(n: int, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)

    def ids(lo, hi):
        return torch.randint(3, VOCAB, (int(torch.randint(lo, hi, (1,), generator=g)),), generator=g).tolist()

    return [
        {"prompt_ids": ids(3, 9), "chosen_ids": ids(2, 8), "rejected_ids": ids(2, 8), "p": 0.7, "margin": 1.0, "row": i}
        for i in range(n)
    ]


def left_padded(batch: dict) -> dict:
    """The same rows with the padding moved to the left."""
    out = dict(batch)
    lengths = batch["attention_mask"].sum(-1)
    width = batch["input_ids"].shape[1]
    for key in ("input_ids", "attention_mask", "response_mask"):
        rows = []
        for row, n in zip(batch[key], lengths.tolist()):
            rows.append(torch.roll(row, width - n))
        out[key] = torch.stack(rows)
    return out


def rm_rows(model, batch):
    from mmpo.models.reward import sequence_rewards

    return sequence_rewards(model, batch["input_ids"], batch["attention_mask"])


def policy_rows(model, batch):
    return response_logps(model, batch["input_ids"], batch["attention_mask"], batch["response_mask"])


def loss_of(kind: str, out, batch) -> torch.Tensor:
    if kind == "rm":
        b = batch["p"].shape[0]
        return mmpo_loss(out[:b], out[b:], batch["p"]).mean()
    logps, n_tokens = out
    b = logps.shape[0] // 2
    # A stand-in reference (the loss only needs numbers that do not move with the adapter).
    ref = torch.linspace(-30.0, -10.0, 2 * b)
    chosen, rejected = policy_rewards("mmpo", logps[:b], logps[b:], n_tokens[:b], n_tokens[b:], ref[:b], ref[b:], 0.5)
    return policy_loss("mmpo", chosen, rejected, batch["p"], 0.5).mean()


def loss_and_grads(model, kind, batch, cache: TrunkCache | None):
    forward = rm_rows if kind == "rm" else policy_rows
    model.zero_grad()
    out = cache.run(model, forward, batch) if cache is not None else forward(model, batch)
    loss = loss_of(kind, out, batch)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), grads


def assert_close(a, b, rtol=1e-5):
    scale = b.abs().max().clamp(min=1e-12)
    assert (a - b).abs().max() <= rtol * scale, f"max diff {(a - b).abs().max().item():.3g} vs scale {scale.item():.3g}"


@pytest.mark.parametrize("kind", ["rm", "policy"])
@pytest.mark.parametrize("model_type", ["llama", "qwen2", "mistral", "qwen3"])
def test_cached_trunk_matches_plain_path(model_type, kind, tmp_path):
    model = tiny_model(model_type, kind)
    model.train()
    assert frozen_depth(model) == 2
    collate = PairCollator(pad_token_id=PAD)
    train = features(12, seed=1)
    forward = rm_rows if kind == "rm" else policy_rows
    cache = TrunkCache(frozen_depth(model), {"test": model_type}, {"kind": kind})
    path, from_disk = cache.prefill(model, forward, train, collate, batch_size=5, root=tmp_path)
    assert not from_disk and (path / "meta.json").exists()
    assert len(cache.states) == 24
    assert model.training  # prefill restores the mode

    # Batches of another composition and width than the prefill's, right- and left-padded.
    for batch in (collate(train[:4]), collate(train[7:10]), left_padded(collate(train[2:6]))):
        plain_loss, plain_grads = loss_and_grads(model, kind, batch, None)
        hits = cache.hits
        cached_loss, cached_grads = loss_and_grads(model, kind, batch, cache)
        assert cache.hits == hits + batch["input_ids"].shape[0]  # served from the cache, nothing recomputed
        assert_close(cached_loss, plain_loss)
        assert set(cached_grads) == set(plain_grads) and any("lora_A" in n for n in plain_grads)
        for name in plain_grads:
            assert plain_grads[name].abs().max() > 0, name
            assert_close(cached_grads[name], plain_grads[name])

    # Sequences never prefilled are computed from their own batch (a miss) and then served. With the states
    # from the very batch, skipping the trunk is bit-for-bit the plain path: the differences above are only
    # the float rounding of computing the trunk in batches of another shape.
    fresh = collate(features(3, seed=9))
    plain_loss, plain_grads = loss_and_grads(model, kind, fresh, None)
    misses = cache.misses
    for _ in range(2):  # a miss, then a hit
        cached_loss, cached_grads = loss_and_grads(model, kind, fresh, cache)
        assert cache.misses == misses + 6
        assert torch.equal(cached_loss, plain_loss)
        for name in plain_grads:
            assert torch.equal(cached_grads[name], plain_grads[name]), name
    # The skipped blocks are whole again afterwards.
    assert all("forward" not in layer.__dict__ for layer in model.get_base_model().model.layers)


def test_cache_entry_reused_and_damaged_entry_rebuilt(tmp_path):
    model = tiny_model("llama", "rm")
    collate = PairCollator(pad_token_id=PAD)
    train = features(6, seed=2)
    first = TrunkCache(2, {"m": 1}, {"kind": "rm"})
    path, from_disk = first.prefill(model, rm_rows, train, collate, root=tmp_path)
    assert not from_disk
    second = TrunkCache(2, {"m": 1}, {"kind": "rm"})
    path2, from_disk = second.prefill(model, rm_rows, train, collate, root=tmp_path)
    assert from_disk and path2 == path
    assert second.states.keys() == first.states.keys()
    for k in first.states:
        assert torch.equal(first.states[k], second.states[k])
    # Another depth, model or token set is another entry.
    other, _ = TrunkCache(1, {"m": 1}, {"kind": "rm"}).prefill(model, rm_rows, train, collate, root=tmp_path)
    assert other != path
    # A damaged values file or a meta with another key is rebuilt, never trusted.
    (path / "trunk_states.pt").write_bytes(b"not a tensor file")
    third = TrunkCache(2, {"m": 1}, {"kind": "rm"})
    _, from_disk = third.prefill(model, rm_rows, train, collate, root=tmp_path)
    assert not from_disk and len(third.states) == 12
    meta = json.loads((path / "meta.json").read_text())
    (path / "meta.json").write_text(json.dumps({**meta, "key": "stale"}))
    _, from_disk = TrunkCache(2, {"m": 1}, {"kind": "rm"}).prefill(model, rm_rows, train, collate, root=tmp_path)
    assert not from_disk


def test_auto_turns_itself_off_where_not_exact(capsys):
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from mmpo.models.loading import lora_config

    model = tiny_model("llama", "policy")
    assert resolve_trunk_cache("auto", model) == 2
    assert resolve_trunk_cache(False, model) == 0
    assert resolve_trunk_cache("auto", model, processes=2) == 0
    assert "several processes" in capsys.readouterr().out
    with pytest.raises(UserError, match="packed"):
        resolve_trunk_cache(True, model, packed=True)
    # Adapters on every block: nothing to cache.
    every = get_peft_model(
        AutoModelForCausalLM.from_config(tiny_config("llama")),
        lora_config(SimpleNamespace(**{**vars(LORA), "lora_layers": None}), "CAUSAL_LM"),
    )
    assert frozen_depth(every) == 0 and resolve_trunk_cache("auto", every) == 0
    with pytest.raises(UserError, match="no frozen block"):
        resolve_trunk_cache(True, every)
    # Dropout in the trunk makes its output random.
    config = tiny_config("llama")
    config.attention_dropout = 0.1
    dropped = get_peft_model(AutoModelForCausalLM.from_config(config), lora_config(LORA, "CAUSAL_LM", model=AutoModelForCausalLM.from_config(config)))
    assert resolve_trunk_cache("auto", dropped) == 0
    assert "dropout" in capsys.readouterr().out


# --- whole runs: `mmpo rm` / `mmpo dpo` with and without the cache ----------------------------------------------

@pytest.fixture(scope="module")
def four_block_dir(tmp_path_factory):
    """The shared tiny Llama (byte tokenizer) with 4 blocks instead of 2."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from conftest import build_byte_tokenizer

    path = tmp_path_factory.mktemp("tiny-llama-4")
    tokenizer = build_byte_tokenizer()
    torch.manual_seed(0)
    LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=3,
        )
    ).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def run_values(kind, model_dir, data, out, **overrides):
    values = dict(
        model=str(model_dir), data=str(data), output_dir=str(out), max_length=96, max_prompt_length=64,
        per_device_train_batch_size=2, gradient_accumulation_steps=2, per_device_eval_batch_size=8,
        learning_rate=2e-2, logging_steps=1, eval_split=0.25, gamma=0.5, max_steps=3, save_steps=2,
        lora_r=4, lora_alpha=8, lora_layers=2, save_total_limit=None,
        # Exactness is a float32 claim: under bf16 autocast (the default on CPUs with native bf16) the plain and
        # cached runs round differently, and a binned metric such as ECE can jump by a whole pair.
        bf16=False,
    )
    if kind == "policy":
        values.update(beta=0.5)
    values.update(overrides)
    return values


@pytest.mark.parametrize("kind", ["rm", "policy"])
def test_runs_with_and_without_the_cache_agree_and_resume_reloads_it(kind, four_block_dir, pair_file, tmp_path, monkeypatch, capsys):
    from mmpo.config import DPOConfig, RMConfig, load_config
    from mmpo.training.dpo import train_policy
    from mmpo.training.rm import train_reward_model

    monkeypatch.setenv("MMPO_CACHE", str(tmp_path / "cache"))
    data = pair_file(24)

    def run(name, **overrides):
        if kind == "rm":
            results = train_reward_model(load_config(RMConfig, None, run_values(kind, four_block_dir, data, tmp_path / name, **overrides))).metrics
        else:
            results = train_policy(load_config(DPOConfig, None, run_values(kind, four_block_dir, data, tmp_path / name, **overrides))).metrics
        return results, capsys.readouterr().out

    plain, out = run("plain", trunk_cache=False, prefix_sharing=False)  # the same rows as the cached run
    assert "trunk cache: on" not in out
    # The crash below is made by deleting files of a finished run: keep its optimizer state, as a killed run would.
    monkeypatch.setattr("mmpo.training.run_dir.drop_optimizer_state", lambda output_dir: 0)
    cached, out = run("cached", trunk_cache=True)
    assert "trunk cache: on: blocks 0..1 of 4" in out and "computed and cached" in out
    for key in ("loss", "nll", "accuracy", "ece", "brier"):
        k = key if key in plain else f"eval_{key}"
        assert cached[k] == pytest.approx(plain[k], rel=1e-4, abs=1e-6), key
    # A crash after checkpoint-2: the rerun resumes from it and reads the trunk states back from disk.
    shutil.rmtree(tmp_path / "cached" / "checkpoint-3", ignore_errors=True)
    (tmp_path / "cached" / "eval_results.json").unlink()
    cached, out = run("cached", trunk_cache="auto")  # a bookkeeping key: changing it does not block the resume
    assert "resuming from" in out and "reused" in out and "computed and cached" not in out
    for key in ("loss", "nll", "accuracy", "ece", "brier"):
        k = key if key in plain else f"eval_{key}"
        assert cached[k] == pytest.approx(plain[k], rel=1e-4, abs=1e-6), key


def test_under_bf16_autocast_the_cache_holds_the_autocast_states(tmp_path):
    """Prefilled under autocast, the states are those the plain path computes under the same autocast."""
    from mmpo.models.trunk_cache import capture_trunk, decoder_layers

    model = tiny_model("llama", "policy").eval()
    collate = PairCollator(pad_token_id=PAD)
    train = features(4, seed=3)
    cache = TrunkCache(2, {"m": "bf16"}, {"kind": "policy", "autocast_bf16": True})
    cache.prefill(model, policy_rows, train, collate, batch_size=8, autocast_dtype=torch.bfloat16, root=tmp_path)
    batch = collate(train)
    real = batch["attention_mask"].bool()
    layers = decoder_layers(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = capture_trunk(model, policy_rows, batch, layers, 2)
    full_precision = capture_trunk(model, policy_rows, batch, layers, 2)
    from mmpo.models.trunk_cache import sequence_key

    cached = torch.cat([cache.states[sequence_key(batch["input_ids"][i][real[i]])] for i in range(len(real))])
    assert cached.dtype == under_autocast.dtype
    assert_close(cached.float(), under_autocast[real].float(), rtol=1e-6)
    assert (cached.float() - full_precision[real].float()).abs().max() > 1e-4  # autocast did change them
    # And a step under autocast from the cache gives the plain path's loss under autocast.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain_loss, _ = loss_and_grads(model, "policy", batch, None)
        cached_loss, _ = loss_and_grads(model, "policy", batch, cache)
    assert_close(cached_loss, plain_loss, rtol=1e-5)


def test_cache_key_sees_revision_and_quantisation(tmp_path):
    from mmpo.models.trunk_cache import build_trunk_cache, trunk_cache_key

    model = tiny_model("llama", "policy")

    def key(**overrides):
        config = SimpleNamespace(**{"model": str(tmp_path), "trunk_cache": "auto", "revision": None, "load_in_4bit": False,
                                    "load_in_8bit": False, "bnb_4bit_quant_type": "nf4", **overrides})
        cache = build_trunk_cache(config, model, "policy", bf16=False)
        return trunk_cache_key(cache.identity, "same tokens", cache.settings)

    keys = [key(), key(revision="v1"), key(revision="v2"), key(load_in_4bit=True), key(load_in_4bit=True, bnb_4bit_quant_type="fp4"),
            key(load_in_8bit=True)]
    assert len(set(keys)) == len(keys) and key(revision="v1") == keys[1]


def test_a_batch_holding_several_sequences_a_row_takes_the_plain_path(capsys):
    from mmpo.data.collate import SharedPromptCollator

    model = tiny_model("llama", "dpo").eval()
    cache = TrunkCache(frozen_depth(model), {"test": "llama"}, {"kind": "dpo"})
    batch = SharedPromptCollator(pad_token_id=PAD, pack=True)(features(4, seed=2))
    assert "attention_mask" not in batch  # the shared layout's mask is built on the device
    calls = []
    assert cache.run(model, lambda m, b: calls.append(b) or "plain", batch) == "plain"
    assert calls == [batch] and cache.hits == cache.misses == 0
    assert "takes the plain path" in capsys.readouterr().out
