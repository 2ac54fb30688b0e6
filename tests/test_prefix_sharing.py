"""Prefix sharing and packing are exact: one span [prompt | chosen | rejected] per pair under the shared mask,
one pair per row or several packed in a row, gives the losses and gradients of the two-row layout, for reward models and policies, LoRA and full fine-tuning, on tiny Llama,
Qwen2, Mistral (with a sliding window shorter than the rows) and Gemma-2 configs built without a download."""

from __future__ import annotations

import copy
import random

import pytest
import torch

from mmpo.data.collate import CHOSEN, PADDING, PROMPT, REJECTED, PairCollator, SharedPromptCollator
from mmpo.models.logps import response_logps, shared_response_logps
from mmpo.models.batching import pair_batching
from mmpo.models.reward import sequence_rewards, shared_sequence_rewards
from mmpo.models.shared_prefix import (
    prefix_sharing_unsupported,
    shared_prefix_mask,
    shared_prefix_mask_mod,
    shared_prompt_collator,
)
from mmpo.training.dpo import policy_loss, policy_rewards
from mmpo.training.rm import reward_pair_loss

VOCAB, PAD = 48, 0
ARCHS = ["llama", "qwen2", "mistral", "gemma2"]


def tiny_config(arch: str, attn: str = "sdpa"):
    from transformers import AutoConfig

    # hidden 64 over 4 heads: head_dim 16, the smallest FlexAttention's CUDA kernels compile for.
    common = dict(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, pad_token_id=PAD, bos_token_id=1, eos_token_id=2,
    )
    extra = {
        "llama": {},
        "qwen2": {},
        # A window shorter than the rows, so the mask's window term is exercised.
        "mistral": {"sliding_window": 6},
        "gemma2": {"head_dim": 16, "sliding_window": 128, "query_pre_attn_scalar": 16},
    }[arch]
    config = AutoConfig.for_model(arch, **common, **extra)
    config._attn_implementation = attn
    return config


def build(arch: str, kind: str, lora: bool, attn: str = "sdpa", seed: int = 0):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    torch.manual_seed(seed)
    config = tiny_config(arch, attn)
    if kind == "rm":
        config.num_labels = 1
        model = AutoModelForSequenceClassification.from_config(config, attn_implementation=attn)
    else:
        model = AutoModelForCausalLM.from_config(config, attn_implementation=attn)
    model = model.float()
    if lora:
        from peft import LoraConfig, get_peft_model

        task = "SEQ_CLS" if kind == "rm" else "CAUSAL_LM"
        extra = {"modules_to_save": ["score"]} if kind == "rm" else {}
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type=task, init_lora_weights=False, **extra))
    return model


def make_features(n: int = 5, seed: int = 0) -> list[dict]:
    """Pairs of uneven lengths; some responses end in the pad token (the reward is then read one token earlier)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        prompt = [rng.randrange(3, VOCAB) for _ in range(rng.randint(2, 9))]
        chosen = [rng.randrange(3, VOCAB) for _ in range(rng.randint(1, 8))]
        rejected = [rng.randrange(3, VOCAB) for _ in range(rng.randint(1, 8))]
        if i >= 3:  # short pairs, which packing puts beside longer ones
            prompt, chosen, rejected = prompt[:2], chosen[:1], rejected[:2]
        if i == 1:
            rejected.append(PAD)
        if i == 2:
            chosen.append(PAD)
        out.append({"prompt_ids": prompt, "chosen_ids": chosen, "rejected_ids": rejected, "p": 0.2 + 0.15 * i, "margin": float(i), "row": i})
    return out


def grads(model) -> dict[str, torch.Tensor]:
    return {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.requires_grad and p.grad is not None}


def assert_rel_close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-4) -> None:
    scale = max(a.abs().max().item(), 1e-12)
    assert (a - b).abs().max().item() <= rel * scale, f"max diff {(a - b).abs().max().item():.3g} vs scale {scale:.3g}"


def assert_same_grads(g1: dict, g2: dict) -> None:
    assert g1.keys() == g2.keys() and g1
    nonzero = 0
    for name in g1:
        assert_rel_close(g1[name], g2[name])
        nonzero += int(g1[name].abs().max() > 0)
    assert nonzero > len(g1) // 2  # the gradients compared are real ones


def rm_loss(model, batch):
    if "segment_ids" in batch:
        rewards = shared_sequence_rewards(model, batch)
    else:
        rewards = sequence_rewards(model, batch["input_ids"], batch["attention_mask"])
    n = batch["p"].shape[0]
    return rewards, reward_pair_loss("mmpo", rewards[:n], rewards[n:], batch).mean()


def dpo_loss(model, reference, batch):
    def logps(m):
        if "segment_ids" in batch:
            return shared_response_logps(m, batch)
        return response_logps(m, batch["input_ids"], batch["attention_mask"], batch["response_mask"])

    with torch.no_grad():
        ref, _ = logps(reference)
    pol, n_tok = logps(model)
    n = batch["p"].shape[0]
    chosen, rejected = policy_rewards("mmpo", pol[:n], pol[n:], n_tok[:n], n_tok[n:], ref[:n], ref[n:], beta=0.5)
    return torch.cat([pol, ref, n_tok.float()]), policy_loss("mmpo", chosen, rejected, batch["p"], beta=0.5).mean()


COLLATORS = {
    "two_rows": PairCollator(pad_token_id=PAD),
    "shared": SharedPromptCollator(pad_token_id=PAD),
    "packed": SharedPromptCollator(pad_token_id=PAD, pack=True),
}


def run_all(arch: str, kind: str, lora: bool, attn: str = "sdpa", device: str = "cpu", two_row_attn: str | None = None):
    """(values, loss, gradients) under each layout; values are the rewards, or policy and reference log-probs.

    The two-row layout runs under ``two_row_attn`` (default: ``attn``), the shared and packed ones under ``attn``."""
    features = make_features()
    assert len(COLLATORS["packed"](features)["input_ids"]) < len(features)  # packing does pack
    results = []
    for name, collator in COLLATORS.items():
        model = build(arch, kind, lora, (two_row_attn or attn) if name == "two_rows" else attn).to(device)
        model.train()
        if name != "two_rows":  # the trainers' collator for the kernel (under flex: block-sized, packed in one row)
            collator = shared_prompt_collator(model, PAD, packing=name == "packed")
        batch = {k: v.to(device) for k, v in collator(features).items()}
        if kind == "rm":
            values, loss = rm_loss(model, batch)
        else:
            reference = copy.deepcopy(model).eval()
            values, loss = dpo_loss(model, reference, batch)
        loss.backward()
        results.append((values.detach().cpu(), loss.detach().cpu(), {k: g.cpu() for k, g in grads(model).items()}))
    return results


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("kind", ["rm", "dpo"])
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_shared_and_packed_layouts_match_two_rows(arch, kind, lora):
    # transformers 5.24 has no SDPA for Gemma-2: eager, its default.
    (v1, l1, g1), *others = run_all(arch, kind, lora, attn="eager" if arch == "gemma2" else "sdpa")
    for v2, l2, g2 in others:  # shared prompt, then packed
        assert_rel_close(v1, v2)
        assert_rel_close(l1, l2)
        assert_same_grads(g1, g2)


@pytest.mark.parametrize("arch, kind, attn", [("llama", "rm", "eager"), ("mistral", "dpo", "eager"), ("qwen2", "rm", "eager")])
def test_other_attention_implementations_match_too(arch, kind, attn):
    (v1, l1, g1), *others = run_all(arch, kind, lora=False, attn=attn)
    for v2, l2, g2 in others:
        assert_rel_close(v1, v2)
        assert_rel_close(l1, l2)
        assert_same_grads(g1, g2)


@pytest.mark.parametrize("kind", ["rm", "dpo"])
@pytest.mark.parametrize("collator", ["shared", "packed"])
def test_span_attention_is_taken_on_cpu_and_equals_the_dense_mask(monkeypatch, kind, collator):
    """On CPU under SDPA a shared batch is attended as two causal rows per pair (gathered, then gathered back);
    values and gradients equal the dense-mask computation, which is what runs without the layout."""
    import mmpo.models.shared_prefix as sp

    batch = COLLATORS[collator](make_features())
    dense_calls, results, state = [], [], {}
    sp._install_span_attention()
    original = sp._SDPA
    monkeypatch.setattr(sp, "_SDPA", lambda *a, **k: dense_calls.append(state["with_layout"]) or original(*a, **k))
    for with_layout in (True, False):
        state["with_layout"] = with_layout
        model = build("llama", kind, lora=False).train()
        b = dict(batch) if with_layout else {k: v for k, v in batch.items() if k != "spans"}
        assert (sp.SPANS_KWARG in sp.shared_forward_inputs(model, b)) == with_layout
        values = shared_sequence_rewards(model, b) if kind == "rm" else shared_response_logps(model, b)[0]
        (values * torch.linspace(-1, 2, values.shape[0])).sum().backward()
        results.append((values.detach(), grads(model)))
    assert dense_calls == [False] * 2  # two layers, only in the run without the layout
    assert_rel_close(results[1][0], results[0][0])
    assert_same_grads(results[1][1], results[0][1])


def test_two_row_gather_maps_each_response_to_its_own_causal_row():
    from mmpo.models.shared_prefix import two_row_gather

    # Row 0: pair 0 = [P P | C C C | R]; row 1: pair 1 = [P | C | R R], then a padding position.
    layout = two_row_gather([(0, 0, 2, 3, 1), (1, 0, 1, 1, 2)], rows=2, width=6, device="cpu")
    assert layout["shape"] == (4, 5)
    to_rows = layout["to_rows"].view(4, 5).tolist()
    assert to_rows[0] == [0, 1, 2, 3, 4]  # prompt + chosen of pair 0
    assert to_rows[1][:3] == [0, 1, 5]  # prompt + rejected of pair 0 (then padding)
    assert to_rows[2][:2] == [6, 7] and to_rows[3][:3] == [6, 8, 9]
    from_rows = layout["from_rows"].tolist()
    assert from_rows[:6] == [0, 1, 2, 3, 4, 5 + 2]  # the rejected token's output: row 1, slot 2
    assert from_rows[6:10] == [10, 11, 15 + 1, 15 + 2]


def test_flex_attention_block_mask_scores_as_sdpa_does():
    # FlexAttention has no backward on CPU, so here its forward is checked (rewards and log-probs under no_grad);
    # gradients under flex_attention are checked on CUDA below.
    # Each kernel gets the layout the trainers give it: under flex, all pairs in one row of whole 128-token blocks.
    features = make_features()
    for kind in ("rm", "dpo"):
        values = {}
        for attn in ("sdpa", "flex_attention"):
            model = build("llama", kind, lora=False, attn=attn).eval()
            batch = shared_prompt_collator(model, PAD, packing=True)(features)
            rows, width = batch["input_ids"].shape
            assert rows == 1 and (width % 128 == 0 or attn != "flex_attention")  # small pairs: one row either way
            with torch.no_grad():
                values[attn] = shared_sequence_rewards(model, batch) if kind == "rm" else shared_response_logps(model, batch)[0]
        assert_rel_close(values["sdpa"], values["flex_attention"])
    unpacked = shared_prompt_collator(model, PAD, packing=False)(features)["input_ids"]
    assert unpacked.shape[0] == len(features) and unpacked.shape[1] % 128 == 0


def test_the_block_mask_holds_the_dense_mask():
    from torch.nn.attention.flex_attention import BlockMask

    from mmpo.models.shared_prefix import shared_prefix_block_mask

    batch = SharedPromptCollator(pad_token_id=PAD, pack=True)(make_features(12, seed=3))
    args = (batch["segment_ids"], batch["position_ids"], 4, batch["pair_ids"])
    block_mask = shared_prefix_block_mask(*args)
    assert isinstance(block_mask, BlockMask)
    dense = shared_prefix_mask(*args)
    assert dense.any(-1).all()  # no empty softmax row
    n = dense.shape[-1]
    # to_dense() gives which blocks are visited; every allowed (q, k) must fall in a visited block.
    visited = block_mask.to_dense().bool()
    size = block_mask.BLOCK_SIZE
    for r in range(dense.shape[0]):
        q, k = dense[r, 0].nonzero(as_tuple=True)
        assert visited[r, 0, q // size[0], k // size[1]].all()
    assert shared_prefix_mask_mod(*args)(torch.tensor(0), None, torch.tensor(n - 1), torch.tensor(0)) == dense[0, 0, n - 1, 0]

    # Sparsity: one pair [prompt 4 | chosen 300 | rejected 200] spans blocks of 128 tokens. Key block 1 (tokens
    # 128-255) is all chosen, query block 3 (384-503) all rejected: below the diagonal, yet never visited.
    long = {"prompt_ids": [5] * 4, "chosen_ids": [6] * 300, "rejected_ids": [7] * 200, "p": 1.0, "row": 0}
    batch = SharedPromptCollator(pad_token_id=PAD)([long])
    args = (batch["segment_ids"], batch["position_ids"], None, batch["pair_ids"])
    block_mask, dense = shared_prefix_block_mask(*args), shared_prefix_mask(*args)
    assert block_mask.BLOCK_SIZE == (128, 128)
    visited = block_mask.to_dense().bool()[0, 0]
    assert visited.tolist() == [
        [True, False, False, False],
        [True, True, False, False],
        [True, True, True, False],
        [True, False, True, True],
    ]
    q, k = dense[0, 0].nonzero(as_tuple=True)
    assert visited[q // 128, k // 128].all()


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="GPU-only: needs a CUDA device")


@pytest.fixture
def exact_float32_on_cuda():
    """Full float32 matmuls (no TF32), so exactness is the claim; restored afterwards."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@cuda
@pytest.mark.parametrize("attn", ["sdpa", "flex_attention"])
@pytest.mark.parametrize("arch, kind, lora", [
    ("llama", "rm", False), ("llama", "dpo", False), ("llama", "rm", True), ("llama", "dpo", True),
    ("qwen2", "dpo", False), ("mistral", "rm", False), ("gemma2", "dpo", False), ("gemma2", "rm", True),
])
def test_shared_and_packed_layouts_match_two_rows_on_cuda(arch, kind, lora, attn, exact_float32_on_cuda):
    # Two rows under SDPA (eager for Gemma-2, which has no SDPA) are the reference for both kernels.
    two_row_attn = "eager" if arch == "gemma2" else "sdpa"
    attn = "eager" if arch == "gemma2" and attn == "sdpa" else attn
    (v1, l1, g1), *others = run_all(arch, kind, lora, attn=attn, device="cuda", two_row_attn=two_row_attn)
    for v2, l2, g2 in others:
        assert_rel_close(v1, v2)
        assert_rel_close(l1, l2)
        assert_same_grads(g1, g2)


@pytest.mark.parametrize("pack", [False, True])
def test_rewards_are_read_at_the_last_real_token(pack):
    """score_at against the rule spelled out on the batch itself: the rightmost non-pad position of the response's
    span, else of the prompt's, else the pair's first position (pads inside, at the end, all-pad, empty prompt)."""
    rng = random.Random(7)
    features = []
    for i in range(40):
        def tokens(n):
            return [PAD if rng.random() < 0.3 else rng.randrange(3, VOCAB) for _ in range(n)]
        features.append({"prompt_ids": tokens(rng.randint(0, 4)), "chosen_ids": tokens(rng.randint(1, 4)),
                         "rejected_ids": tokens(rng.randint(1, 4)), "p": 1.0, "row": i})
    batch = SharedPromptCollator(pad_token_id=PAD, pack=pack)(features)
    n = len(features)
    for k, (row, at) in enumerate(batch["score_at"].tolist()):
        i, segment = k % n, CHOSEN if k < n else REJECTED
        ids, seg, pair = batch["input_ids"][row], batch["segment_ids"][row], batch["pair_ids"][row]
        mine = (pair == i).nonzero().flatten().tolist()
        real = [t for t in mine if seg[t] == segment and ids[t] != PAD]
        real = real or [t for t in mine if seg[t] == PROMPT and ids[t] != PAD]
        assert at == (real[-1] if real else mine[0]), (k, features[i])


def test_shared_layout():
    f = {"prompt_ids": [5, 6, 7], "chosen_ids": [8, 9], "rejected_ids": [10, 11, PAD], "p": 1.0, "row": 0}
    g = {"prompt_ids": [5], "chosen_ids": [8], "rejected_ids": [9], "p": 1.0, "row": 1}
    batch = SharedPromptCollator(pad_token_id=PAD)([f, g])
    assert batch["input_ids"][0].tolist() == [5, 6, 7, 8, 9, 10, 11, PAD]
    assert batch["segment_ids"][0].tolist() == [PROMPT] * 3 + [CHOSEN] * 2 + [REJECTED] * 3
    assert batch["position_ids"][0].tolist() == [0, 1, 2, 3, 4, 3, 4, 5]
    # chosen 8 from 7 (pos 2), 9 from 8; rejected 10 from the prompt's last token (pos 2), then in sequence
    assert batch["logp_source"][0].tolist() == [-1, -1, -1, 2, 3, 2, 5, 6]
    assert batch["score_at"][[0, 2]].tolist() == [[0, 4], [0, 6]]  # the rejected response ends in the pad token
    assert batch["logp_out"][0].tolist() == [-1, -1, -1, 0, 0, 2, 2, 2]  # chosen of pair 0, rejected of pair 0
    assert batch["segment_ids"][1].tolist() == [PROMPT, CHOSEN, REJECTED] + [PADDING] * 5
    mask = shared_prefix_mask(batch["segment_ids"], batch["position_ids"])[0, 0]
    assert mask[5].tolist() == [True, True, True, False, False, True, False, False]  # rejected skips chosen
    assert mask[4].tolist() == [True] * 5 + [False] * 3
    windowed = shared_prefix_mask(batch["segment_ids"], batch["position_ids"], sliding_window=2)[0, 0]
    assert windowed[6].tolist() == [False, False, False, False, False, True, True, False]  # positions 3, 4 of 4
    pad_rows = shared_prefix_mask(batch["segment_ids"], batch["position_ids"])[1, 0, 3:]
    assert pad_rows.sum(-1).tolist() == [1] * 5  # padding attends to itself only: no empty softmax row


def test_unsupported_models_fall_back_with_a_notice(capsys):
    from transformers import BertConfig, BertForSequenceClassification

    bert = BertForSequenceClassification(BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, num_labels=1))
    assert prefix_sharing_unsupported(bert) is not None
    assert isinstance(pair_batching(bert, PAD, True, 64).collate, PairCollator)
    assert "prefix sharing off" in capsys.readouterr().out
    llama = build("llama", "dpo", lora=True)
    assert prefix_sharing_unsupported(llama) is None
    assert isinstance(pair_batching(llama, PAD, True, 64).collate, SharedPromptCollator)
    assert isinstance(pair_batching(llama, PAD, False, 64).collate, PairCollator)
    gemma = build("gemma2", "dpo", lora=False, attn="eager")  # sliding window 128 on alternate layers
    assert prefix_sharing_unsupported(gemma, max_length=128) is None
    assert "exceeds the window" in prefix_sharing_unsupported(gemma, max_length=512)
    llama.config._attn_implementation = "flash_attention_2"
    assert "flash_attention_2" in prefix_sharing_unsupported(llama)


def test_packing_to_a_token_budget_balances_the_rows():
    rng = random.Random(5)
    features = [{"prompt_ids": [5] * rng.randint(1, 40), "chosen_ids": [6] * rng.randint(1, 90),
                 "rejected_ids": [7] * rng.randint(1, 90), "p": 1.0, "row": i} for i in range(23)]
    lengths = [len(f["prompt_ids"]) + len(f["chosen_ids"]) + len(f["rejected_ids"]) for f in features]
    batch = SharedPromptCollator(pad_token_id=PAD, pack=True, pack_budget=500)(features)
    rows, width = batch["input_ids"].shape
    assert rows == -(-sum(lengths) // 500)
    per_row = [(batch["pair_ids"][r] >= 0).sum().item() for r in range(rows)]
    assert sum(per_row) == sum(lengths) and width == max(per_row)
    assert max(per_row) - min(per_row) <= max(lengths)  # longest first to the emptiest row
    assert sorted(set(batch["pair_ids"][batch["pair_ids"] >= 0].tolist())) == list(range(len(features)))
    # Without a budget no row outgrows the longest pair (first fit).
    first_fit = SharedPromptCollator(pad_token_id=PAD, pack=True)(features)["input_ids"]
    assert first_fit.shape[1] == max(lengths) and first_fit.shape[0] > rows


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-only check (the budget applies where training runs on the CPU); skipped on a CUDA machine")
def test_the_cpu_span_path_packs_to_its_token_budget():
    from mmpo.models.shared_prefix import SPAN_PACK_TOKENS

    model = build("llama", "dpo", lora=False)
    for packing in (True, "auto"):
        collator = shared_prompt_collator(model, PAD, packing=packing)
        assert collator.pack and collator.pack_budget == SPAN_PACK_TOKENS
    assert shared_prompt_collator(model, PAD, packing=False).pack is False
    model.config._attn_implementation = "eager"  # a dense mask: rows stay as long as the longest pair, and auto is off
    assert shared_prompt_collator(model, PAD, packing=True).pack_budget is None
    assert shared_prompt_collator(model, PAD, packing="auto").pack is False


def test_packing_setting_is_auto_true_or_false():
    from mmpo.config import RMConfig
    from mmpo.errors import UserError

    assert RMConfig(data="d.jsonl").packing == "auto"
    for given, kept in (("true", True), ("FALSE", False), (True, True), ("Auto", "auto")):
        config = RMConfig(data="d.jsonl", packing=given)
        config.validate()
        assert config.packing == kept
    with pytest.raises(UserError, match="packing must be auto, true or false"):
        RMConfig(data="d.jsonl", packing="sometimes").validate()


def test_packing_layout():
    features = [
        {"prompt_ids": [5, 6], "chosen_ids": [7, 8, 9], "rejected_ids": [10, 11], "p": 1.0},  # 7 tokens
        {"prompt_ids": [5], "chosen_ids": [8], "rejected_ids": [9], "p": 1.0},  # 3 tokens
        {"prompt_ids": [12, 13], "chosen_ids": [14], "rejected_ids": [15], "p": 1.0},  # 4 tokens
    ]
    batch = SharedPromptCollator(pad_token_id=PAD, pack=True)(features)
    # budget 7 (the longest pair): [pair 0], [pair 2 | pair 1]
    assert batch["pair_ids"].tolist() == [[0] * 7, [2] * 4 + [1] * 3]
    assert batch["position_ids"][1].tolist() == [0, 1, 2, 2, 0, 1, 1]
    assert batch["logp_source"][1].tolist() == [-1, -1, 1, 1, -1, 4, 4]  # each pair's first tokens from its own prompt
    assert batch["logp_out"][1].tolist() == [-1, -1, 2, 5, -1, 1, 4]
    assert batch["score_at"].tolist() == [[0, 4], [1, 5], [1, 2], [0, 6], [1, 6], [1, 3]]
    mask = shared_prefix_mask(batch["segment_ids"], batch["position_ids"], pair_ids=batch["pair_ids"])[1, 0]
    assert mask[5].tolist() == [False] * 4 + [True, True, False]  # pair 1's chosen sees only pair 1's prompt
    assert mask[6].tolist() == [False] * 4 + [True, False, True]


LAYOUTS = [dict(prefix_sharing=False), dict(prefix_sharing=True, packing=False), dict(prefix_sharing=True)]  # auto packs on a CPU


def test_policy_trainer_step_and_precomputed_reference_agree_across_layouts(tmp_path, tiny_model_dir, pair_file, monkeypatch):
    from mmpo.config import DPOConfig, load_config
    from mmpo.training.dpo import PolicyTask
    from mmpo.training.run import build_run

    data = pair_file(n=16, seed=5)
    losses, references, collators = [], [], []
    for i, layout in enumerate(LAYOUTS):
        monkeypatch.setenv("MMPO_CACHE", str(tmp_path / f"cache{i}"))  # each layout computes its own reference cache
        config = load_config(DPOConfig, overrides=dict(
            model=str(tiny_model_dir), data=str(data), output_dir=str(tmp_path / f"run{i}"), max_length=96,
            per_device_train_batch_size=6, max_steps=1, beta=0.5, gamma=0.5, eval_split=0.25, bf16=False,
            reference="precomputed", **layout,
        ))
        run = build_run(PolicyTask(), config)
        collate = run.trainer.data_collator.collate
        collators.append(type(collate).__name__ + ("+pack" if getattr(collate, "pack", False) else ""))
        references.append(torch.tensor([[f["reference_chosen_logps"], f["reference_rejected_logps"]] for f in run.train_features]))
        batch = run.trainer._prepare_inputs(next(iter(run.trainer.get_train_dataloader())))
        losses.append(run.trainer.compute_loss(run.trainer.model, batch).detach())
    assert collators == ["PairCollator", "SharedPromptCollator", "SharedPromptCollator+pack"]
    for loss, reference in zip(losses[1:], references[1:]):
        assert_rel_close(references[0], reference)
        assert_rel_close(losses[0], loss)


def test_reward_trainer_step_agrees_across_layouts(tmp_path, tiny_model_dir, pair_file):
    from mmpo.config import RMConfig, load_config
    from mmpo.training import rm

    data = pair_file(n=16, seed=6)
    tokenizer = None
    losses = []
    for i, layout in enumerate(LAYOUTS):
        config = load_config(RMConfig, None, dict(
            model=str(tiny_model_dir), data=str(data), output_dir=str(tmp_path / f"rm{i}"), max_length=96,
            per_device_train_batch_size=6, max_steps=1, eval_split=0.25, bf16=False, **layout,
        ))
        from mmpo.data.pipeline import prepare_data
        from mmpo.models.loading import load_tokenizer
        from mmpo.training.args import training_arguments
        from transformers import set_seed

        tokenizer = tokenizer or load_tokenizer(str(tiny_model_dir))
        prepared = prepare_data(config, tokenizer)
        set_seed(config.seed)
        model = rm.build_model(config, tokenizer)
        trainer = rm.RewardTrainer(
            model=model, args=training_arguments(config, eval_strategy="no"), train_dataset=prepared.train,
            data_collator=pair_batching(model, tokenizer.pad_token_id, config.prefix_sharing, config.max_length, packing=config.packing),
        )
        batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
        losses.append(trainer.compute_loss(trainer.model, batch).detach())
    for loss in losses[1:]:
        assert_rel_close(losses[0], loss)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-only check (the error without CUDA); skipped on a CUDA machine")
def test_flex_attention_training_on_a_cpu_is_a_one_line_error(tmp_path):
    from mmpo.config import RMConfig, load_config
    from mmpo.errors import UserError
    from mmpo.training.args import training_arguments

    config = load_config(RMConfig, overrides=dict(model="m", data="d.jsonl", output_dir=str(tmp_path), attn_implementation="flex_attention"))
    with pytest.raises(UserError, match="CUDA only"):
        training_arguments(config)
    config = load_config(RMConfig, overrides=dict(model="m", data="d.jsonl", output_dir=str(tmp_path)))
    assert training_arguments(config).output_dir == str(tmp_path)


def _causal_attention_float64(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + causal) v in float64, grouped-query heads repeated."""
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
    scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    future = torch.ones(q.shape[2], q.shape[2], dtype=torch.bool).triu(1)
    return scores.masked_fill(future, float("-inf")).softmax(-1) @ v


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_float32_backward_attention_is_closer_to_exact_than_the_bfloat16_kernel(seed):
    """Under bf16 autocast q and k reach attention in float32 (after the rotary embedding), v in bfloat16.
    Float32BackwardAttention's forward is SDPA's under autocast, bit for bit and in the same dtypes (the faster
    bfloat16 kernel), and its gradients are closer to float64 attention on the same inputs than SDPA's bfloat16
    kernel's."""
    import torch.nn.functional as F

    from mmpo.models.shared_prefix import Float32BackwardAttention

    torch.manual_seed(seed)
    q, k = torch.randn(2, 6, 96, 16), torch.randn(2, 2, 96, 16)
    v, grad_out = torch.randn(2, 2, 96, 16).bfloat16(), torch.randn(2, 6, 96, 16).bfloat16()

    def run(attention, dtype):
        inputs = [t.to(dtype, copy=True).requires_grad_() for t in (q, k)]
        inputs.append(v.to(torch.float64 if dtype == torch.float64 else v.dtype, copy=True).requires_grad_())
        out = attention(*inputs)
        out.backward(grad_out.to(out.dtype))
        return [out] + [t.grad for t in inputs]

    def sdpa_autocast(*x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return F.scaled_dot_product_attention(*x, is_causal=True, enable_gqa=True)

    exact = run(_causal_attention_float64, torch.float64)
    ours = run(lambda *x: Float32BackwardAttention.apply(*x, None), torch.float32)  # v stays bfloat16
    theirs = run(sdpa_autocast, torch.float32)
    assert [t.dtype for t in ours] == [t.dtype for t in theirs] == [torch.bfloat16, torch.float32, torch.float32, torch.bfloat16]
    assert torch.equal(ours[0], theirs[0])
    error = lambda got: [((a.double() - b).abs().max() / b.abs().max()).item() for a, b in zip(got, exact)]  # noqa: E731
    ours_err, theirs_err = error(ours), error(theirs)
    assert max(ours_err) < 5e-3  # bfloat16 outputs: one rounding (2^-8 relative) and float32 arithmetic
    assert all(o < t for o, t in zip(ours_err[1:], theirs_err[1:])), (ours_err, theirs_err)


@pytest.mark.parametrize("kind", ["rm", "dpo"])
def test_span_attention_under_bf16_autocast_runs_in_float32(monkeypatch, kind):
    """On CPU under bf16 autocast the shared batch's attention goes through Float32BackwardAttention (one call a
    layer) and gives the values and gradients of the dense-mask SDPA under the same autocast, to bfloat16
    precision."""
    import mmpo.models.shared_prefix as sp

    calls = []
    forward = sp.Float32BackwardAttention.forward
    monkeypatch.setattr(sp.Float32BackwardAttention, "forward", staticmethod(lambda ctx, *a: calls.append(1) or forward(ctx, *a)))
    batch = COLLATORS["packed"](make_features())
    results = []
    for with_layout in (True, False):
        model = build("llama", kind, lora=False).train()
        b = dict(batch) if with_layout else {k: v for k, v in batch.items() if k != "spans"}
        with torch.autocast("cpu", dtype=torch.bfloat16):
            values = shared_sequence_rewards(model, b) if kind == "rm" else shared_response_logps(model, b)[0]
        (values * torch.linspace(-1, 2, values.shape[0])).sum().backward()
        results.append((values.detach(), grads(model)))
    assert len(calls) == 2  # two layers, only in the run with the layout
    (v1, g1), (v2, g2) = results
    assert torch.allclose(v1, v2, rtol=2e-2, atol=2e-2 * v2.abs().max().item())
    for name in g2:
        scale = g2[name].abs().max().item()
        assert torch.allclose(g1[name], g2[name], rtol=5e-2, atol=5e-2 * scale), name


@pytest.mark.parametrize("kind", ["dpo", "rm"])
def test_the_chosen_layout_scores_its_own_batches_as_two_rows_do(kind, capsys):
    """The scorer comes with the collator: each layout's ``logps`` / ``rewards`` on its own batches equal the
    two-row layout's, and a model that cannot share prompts gets the two-row scorer with its collator."""
    from mmpo.models.batching import two_row_batching

    model = build("llama", kind, lora=False).eval()
    features = make_features(6, seed=5)
    plain = two_row_batching(PAD)
    with torch.no_grad():
        expected = plain.rewards(model, plain(features)) if kind == "rm" else plain.logps(model, plain(features))[0]
        for packing in (False, True):
            batching = pair_batching(model, PAD, True, 64, packing=packing)
            assert isinstance(batching.collate, SharedPromptCollator) and batching.collate.pack == packing
            batch = batching(features)
            got = batching.rewards(model, batch) if kind == "rm" else batching.logps(model, batch)[0]
            assert_rel_close(expected, got)
    eager = build("gemma2", kind, lora=False, attn="eager")
    fallback = pair_batching(eager, PAD, True, 512)  # longer than gemma2's sliding window
    assert isinstance(fallback.collate, PairCollator) and "prefix sharing off" in capsys.readouterr().out
    with torch.no_grad():
        batch = fallback(features)
        assert (fallback.rewards(eager, batch) if kind == "rm" else fallback.logps(eager, batch)[0]).shape == (12,)
