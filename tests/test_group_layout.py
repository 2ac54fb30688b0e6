"""``layout: groups``: a prompt's k graded responses in one row ``[prompt | r_1 | ... | r_k]``.

The group row is the pair row extended (k = 2 is the pair layout, tensor for tensor, loss for loss, gradient for
gradient); under its mask every response scores as in its own unpacked ``prompt + response`` row; the listwise
loss on two responses is MMPO; a pairwise loss on a group is the mean over the same pairs in the pair layout; the
data keep the pair layout's held-out prompts; and a tiny reward model trains and saves through the group layout.
"""

from __future__ import annotations

import gzip
import itertools
import json
import math
import random

import pytest
import torch

from mmpo.config import RMConfig, load_config
from mmpo.data.collate import SharedPromptCollator
from mmpo.errors import DataError, UserError
from mmpo.losses import LOSSES, LossSettings, group_losses, group_pairs, listwise_soft_loss, mmpo_loss
from mmpo.models.logps import response_logps, shared_response_logps
from mmpo.models.reward import shared_sequence_rewards
from mmpo.training.rm import reward_pair_loss
from tests.test_prefix_sharing import PAD, VOCAB, build, grads

SETTINGS = LossSettings(gamma=0.7)


def group_features(n: int = 4, k: int = 3, seed: int = 0, ties: bool = False) -> list[dict]:
    """Groups of up to ``k`` responses of uneven lengths (the last groups smaller), scores on a logit scale."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        size = k if i < n - 1 else 2
        prompt = [rng.randrange(3, VOCAB) for _ in range(rng.randint(2, 8))]
        responses = [[rng.randrange(3, VOCAB) for _ in range(rng.randint(1, 7))] for _ in range(size)]
        scores = [round(rng.uniform(-3, 3), 3) for _ in range(size)]
        if ties:
            scores[-1] = scores[0]
        out.append({"prompt_ids": prompt, "response_ids": responses, "scores": scores, "row": i})
    return out


def pairs_of(groups: list[dict], gamma: float | None, drop_ties: bool) -> list[dict]:
    """Every pair of every group as the pair pipeline makes it (chosen = higher score, ties dropped if asked)."""
    out = []
    for g in groups:
        for a, b in itertools.combinations(range(len(g["scores"])), 2):
            s_a, s_b = g["scores"][a], g["scores"][b]
            if s_b > s_a:
                a, b, s_a, s_b = b, a, s_b, s_a
            margin = s_a - s_b
            if margin == 0 and (drop_ties or gamma is None):
                continue
            p = 1.0 if gamma is None else 1.0 / (1.0 + math.exp(-gamma * margin))
            out.append({"prompt_ids": g["prompt_ids"], "chosen_ids": g["response_ids"][a], "rejected_ids": g["response_ids"][b],
                        "p": p, "margin": margin, "row": g["row"]})
    return out


def group_rewards(model, batch) -> torch.Tensor:
    return shared_sequence_rewards(model, batch).view(batch["group_mask"].shape[1], -1).t()


# --- (a) k = 2 is the pair layout --------------------------------------------------------------------------------

@pytest.mark.parametrize("pack", [False, True])
def test_two_response_groups_collate_to_the_pair_layout_exactly(pack):
    from tests.test_prefix_sharing import make_features

    pairs = make_features(6, seed=1)
    as_groups = [{"prompt_ids": f["prompt_ids"], "response_ids": [f["chosen_ids"], f["rejected_ids"]],
                  "scores": [f["margin"], 0.0], "row": f["row"]} for f in pairs]
    collate = SharedPromptCollator(pad_token_id=PAD, pack=pack)
    pair_batch, group_batch = collate(pairs), collate(as_groups)
    for key in ("input_ids", "segment_ids", "pair_ids", "position_ids", "logp_source", "logp_out", "score_at", "spans", "row"):
        assert torch.equal(pair_batch[key], group_batch[key]), key
    assert group_batch["group_mask"].all() and group_batch["scores"].shape == (6, 2)


@pytest.mark.parametrize("loss", ["mmpo", "bt", "listwise"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_two_response_groups_give_the_pair_layouts_loss_and_gradients(loss, attn):
    groups = group_features(n=5, k=2, seed=2)
    pairs = pairs_of(groups, SETTINGS.gamma, drop_ties=loss == "bt")
    collate = SharedPromptCollator(pad_token_id=PAD, pack=True)
    model = build("llama", "rm", lora=False, attn=attn)

    pair_batch = collate(pairs)
    rewards = shared_sequence_rewards(model, pair_batch)
    n = len(pairs)
    pair_loss = reward_pair_loss(loss, rewards[:n], rewards[n:], pair_batch, settings=SETTINGS).mean()
    pair_loss.backward()
    pair_grads = grads(model)
    model.zero_grad()

    group_batch = collate(groups)
    losses, _, _ = group_losses(loss, group_rewards(model, group_batch), group_batch["scores"], group_batch["group_mask"], SETTINGS)
    group_loss = losses.mean()
    group_loss.backward()
    assert abs(group_loss.item() - pair_loss.item()) <= 1e-5
    for name, g in grads(model).items():
        assert torch.allclose(g, pair_grads[name], atol=1e-5), name


@pytest.mark.parametrize("loss", ["mmpo", "dpo", "ipo", "simpo_mmpo", "listwise"])
def test_two_response_groups_give_the_pair_layouts_policy_loss_and_gradients(loss):
    from mmpo.training.dpo import policy_loss, policy_rewards, response_rewards

    groups = group_features(n=5, k=2, seed=5)
    pairs = pairs_of(groups, SETTINGS.gamma, drop_ties=loss in ("dpo", "ipo"))
    collate = SharedPromptCollator(pad_token_id=PAD, pack=True)
    model, reference = build("llama", "policy", lora=False), build("llama", "policy", lora=False, seed=1)
    settings = LossSettings(gamma=SETTINGS.gamma, beta=0.5, label_smoothing=0.0)

    pair_batch = collate(pairs)
    with torch.no_grad():
        ref, _ = shared_response_logps(reference, pair_batch)
    logps, n_tokens = shared_response_logps(model, pair_batch)
    n = len(pairs)
    chosen, rejected = policy_rewards(loss, logps[:n], logps[n:], n_tokens[:n], n_tokens[n:], ref[:n], ref[n:], beta=0.5)
    pair_loss = policy_loss(loss, chosen, rejected, pair_batch["p"], 0.5, margin=pair_batch["margin"], settings=settings).mean()
    pair_loss.backward()
    pair_grads = grads(model)
    model.zero_grad()

    group_batch = collate(groups)
    with torch.no_grad():
        ref, _ = shared_response_logps(reference, group_batch)
    logps, n_tokens = shared_response_logps(model, group_batch)
    rewards = response_rewards(loss, logps, n_tokens, ref, beta=0.5).view(2, -1).t()
    losses, _, _ = group_losses(loss, rewards, group_batch["scores"], group_batch["group_mask"], settings)
    group_loss = losses.mean()
    group_loss.backward()
    assert abs(group_loss.item() - pair_loss.item()) <= 1e-5
    for name, g in grads(model).items():
        assert torch.allclose(g, pair_grads[name], atol=1e-5), name


def test_length_grouping_counts_a_groups_prompt_once_and_every_response():
    from mmpo.data.sampler import pair_tokens

    group = {"prompt_ids": [1, 2, 3], "response_ids": [[4], [5, 6], [7, 8, 9]], "scores": [0.0, 1.0, 2.0]}
    assert pair_tokens(group) == 3 + 1 + 2 + 3
    assert pair_tokens({"prompt_ids": [1, 2], "chosen_ids": [3], "rejected_ids": [4, 5]}) == 5


# --- (b) the mask isolates a group's responses -------------------------------------------------------------------

@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("pack", [False, True])
def test_each_response_of_a_packed_group_scores_as_its_own_row(attn, pack):
    groups = group_features(n=4, k=3, seed=3)
    batch = SharedPromptCollator(pad_token_id=PAD, pack=pack)(groups)
    assert batch["group_mask"].sum().item() == 3 * 3 + 2
    rm, policy = build("llama", "rm", lora=False, attn=attn), build("llama", "policy", lora=False, attn=attn, seed=1)
    with torch.no_grad():
        rewards = group_rewards(rm, batch)
        logps, n_tokens = shared_response_logps(policy, batch)
        logps = logps.view(3, -1).t()
        for i, g in enumerate(groups):
            for j, response in enumerate(g["response_ids"]):
                ids = torch.tensor([g["prompt_ids"] + response])
                alone = rm(input_ids=ids).logits[0, 0]
                assert abs(rewards[i, j].item() - alone.item()) <= 1e-5, (i, j)
                mask = torch.ones_like(ids)
                response_mask = torch.zeros_like(ids)
                response_mask[0, len(g["prompt_ids"]):] = 1
                lp, nt = response_logps(policy, ids, mask, response_mask)
                assert abs(logps[i, j].item() - lp.item()) <= 1e-4 and n_tokens[j * len(groups) + i] == nt[0], (i, j)


# --- (c), (d) the losses ------------------------------------------------------------------------------------------

def test_listwise_on_two_responses_is_mmpo():
    rewards, scores = torch.randn(6, 2, dtype=torch.float64), torch.randn(6, 2, dtype=torch.float64)
    p = torch.sigmoid(0.7 * (scores[:, 0] - scores[:, 1]))
    assert torch.allclose(listwise_soft_loss(rewards, scores, 0.7), mmpo_loss(rewards[:, 0], rewards[:, 1], p))
    # The registered pair form is mmpo too, so held-out pairs score the same under either name.
    batch = {"p": p.float(), "margin": (scores[:, 0] - scores[:, 1]).float()}
    assert torch.allclose(LOSSES["listwise"].fn(rewards[:, 0].float(), rewards[:, 1].float(), batch, SETTINGS),
                          LOSSES["mmpo"].fn(rewards[:, 0].float(), rewards[:, 1].float(), batch, SETTINGS))


def test_listwise_under_hard_labels_targets_the_top_scored_responses():
    rewards = torch.tensor([[1.0, 0.0, -1.0, 5.0]])
    scores = torch.tensor([[2.0, 2.0, 1.0, 0.0]])
    mask = torch.tensor([[True, True, True, False]])
    log_model = torch.log_softmax(rewards[:, :3], dim=-1)
    expected = -(0.5 * log_model[0, 0] + 0.5 * log_model[0, 1])
    assert torch.allclose(listwise_soft_loss(rewards, scores, None, mask), expected.view(1))


@pytest.mark.parametrize("loss", ["mmpo", "bt", "margin", "scaled_bt", "label_smoothing"])
@pytest.mark.parametrize("gamma", [0.7, None])
def test_pairwise_loss_on_groups_is_the_mean_over_the_same_pairs(loss, gamma):
    groups = group_features(n=5, k=4, seed=4, ties=True)
    settings = LossSettings(gamma=gamma)
    drop = gamma is None or loss != "mmpo"
    pairs = pairs_of(groups, gamma, drop_ties=drop)
    # Arbitrary rewards per response, looked up by (group, response).
    torch.manual_seed(0)
    table = torch.randn(len(groups), 4)
    batch = SharedPromptCollator(pad_token_id=PAD)(groups)
    losses, chosen, rejected = group_losses(loss, table, batch["scores"], batch["group_mask"], settings)
    assert losses.shape == chosen.shape == (len(pairs),)

    index = {(g["row"], tuple(r)): table[i, j] for i, g in enumerate(groups) for j, r in enumerate(g["response_ids"])}
    c = torch.stack([index[(f["row"], tuple(f["chosen_ids"]))] for f in pairs])
    r = torch.stack([index[(f["row"], tuple(f["rejected_ids"]))] for f in pairs])
    pair_batch = SharedPromptCollator(pad_token_id=PAD)(pairs)
    expected = LOSSES[loss].fn(c, r, pair_batch, settings)
    assert torch.allclose(losses.mean(), expected.mean(), atol=1e-6)
    assert torch.equal(batch["scores"].isnan(), ~batch["group_mask"])


# --- (f) data ----------------------------------------------------------------------------------------------------

def alpaca_rows(n: int = 24, models: int = 5, seed: int = 0) -> list[dict]:
    """Rows in the alpaca_graded schema: an instruction and several models' outputs with p_beats_reference."""
    rng = random.Random(seed)
    return [{"idx": i, "instruction": f"Question {i}: what is {i} + {i}?", "dataset": "t",
             "outputs": {f"m{m}": {"output": f"answer {m} to {i}: " + "x" * rng.randint(1, 20),
                                   "p_beats_reference": round(rng.random(), 3)} for m in range(models)}}
            for i in range(n)]


def write_alpaca(path, rows) -> str:
    with gzip.open(path, "wt") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return str(path)


def data_config(data, layout: str, **overrides) -> RMConfig:
    values = {"model": "unused", "data": data, "output_dir": "unused", "max_length": 96, "eval_split": 0.25, "layout": layout, **overrides}
    return load_config(RMConfig, None, values)


def group_run_config(kind, tmp_path, model_dir, rows: list[dict], **keys):
    """A tiny training run under ``layout: groups`` on ``rows`` of alpaca_graded, into ``tmp_path / "run"``."""
    data = {"source": "alpaca_graded", "path": write_alpaca(tmp_path / "a.jsonl.gz", rows)}
    values = dict(model=str(model_dir), data=data, output_dir=str(tmp_path / "run"), max_length=96, layout="groups",
                  per_device_eval_batch_size=8, learning_rate=5e-3, eval_split=0.25, bf16=False)
    return load_config(kind, None, {**values, **keys})


def test_groups_keep_the_pair_layouts_held_out_prompts_and_pairs(tiny_tokenizer, tmp_path):
    from mmpo.data.pipeline import prepare_data

    data = {"source": "alpaca_graded", "path": write_alpaca(tmp_path / "a.jsonl.gz", alpaca_rows())}
    pairs = prepare_data(data_config(data, "pairs"), tiny_tokenizer)
    groups = prepare_data(data_config(data, "groups", group_size=3), tiny_tokenizer)
    assert groups.eval == pairs.eval and pairs.eval  # the same held-out pairs, hence the same prompts
    train_prompts = {tuple(f["prompt_ids"]) for f in pairs.train}
    assert {tuple(f["prompt_ids"]) for f in groups.train} == train_prompts
    # 5 responses per prompt split into near-equal groups of at most 3: sizes 3 and 2, every response once.
    assert sorted({len(f["response_ids"]) for f in groups.train}) == [2, 3]
    assert len(groups.train) == 2 * len(train_prompts)
    for prompt in train_prompts:
        responses = [r for f in groups.train if tuple(f["prompt_ids"]) == prompt for r in f["response_ids"]]
        assert len(responses) == len({tuple(r) for r in responses}) == 5
    # Each response's score is its logit(p): the pair margins are score differences.
    f = groups.train[0]
    by_response = {tuple(r): s for r, s in zip(f["response_ids"], f["scores"])}
    for pair in pairs.train:
        if tuple(pair["chosen_ids"]) in by_response and tuple(pair["rejected_ids"]) in by_response:
            assert abs(by_response[tuple(pair["chosen_ids"])] - by_response[tuple(pair["rejected_ids"])] - pair["margin"]) < 1e-9
    assert f"layout groups: {len(groups.train)} training groups of 2-3 responses" in groups.render()
    # The split is seeded: the same groups again.
    assert prepare_data(data_config(data, "groups", group_size=3), tiny_tokenizer).train == groups.train


def test_a_response_scored_twice_differently_is_a_one_line_error(tiny_tokenizer, write_jsonl, tmp_path):
    from mmpo.data.pipeline import prepare_data

    rows = [{"prompt": "q", "chosen": "a", "rejected": "b", "score_chosen": 5, "score_rejected": 1},
            {"prompt": "q", "chosen": "a", "rejected": "c", "score_chosen": 4, "score_rejected": 2}]
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError) as err:
        prepare_data(data_config(str(path), "groups", eval_split=0.0), tiny_tokenizer)
    message = str(err.value)
    assert "\n" not in message and str(path) in message and "row 2" in message and "'score_chosen'" in message


def test_margin_only_pairs_cannot_be_grouped_but_a_lone_pair_can(tiny_tokenizer, write_jsonl, tmp_path):
    from mmpo.data.pipeline import prepare_data

    rows = [{"prompt": "q", "chosen": "a", "rejected": "b", "margin": 2},
            {"prompt": "q", "chosen": "a", "rejected": "c", "margin": 1},
            {"prompt": "r", "chosen": "a", "rejected": "b", "margin": 3}]
    path = write_jsonl(tmp_path / "margins.jsonl", rows)
    with pytest.raises(DataError, match=r"row 1, field 'margin': layout: groups needs each response's own score"):
        prepare_data(data_config(str(path), "groups", eval_split=0.0), tiny_tokenizer)
    path = write_jsonl(tmp_path / "lone.jsonl", rows[2:])
    (group,) = prepare_data(data_config(str(path), "groups", eval_split=0.0), tiny_tokenizer).train
    assert group["scores"] == [3.0, 0.0]


@pytest.mark.parametrize("loss", ["bt", "mmpo"])
def test_scores_equal_up_to_float_error_tie_in_both_layouts(tiny_tokenizer, write_jsonl, tmp_path, loss):
    """0.3 and 0.1 + 0.2 are one score: a tie as a pair and in a group (bt drops it, mmpo keeps it at p = 0.5)."""
    from mmpo.data.pipeline import prepare_data

    rows = [{"prompt": "q", "chosen": "a", "rejected": "b", "score_chosen": 0.3, "score_rejected": 0.1 + 0.2},
            {"prompt": "q", "chosen": "c", "rejected": "a", "score_chosen": 1.0, "score_rejected": 0.3},
            {"prompt": "q", "chosen": "c", "rejected": "b", "score_chosen": 1.0, "score_rejected": 0.1 + 0.2}]
    path = str(write_jsonl(tmp_path / "ties.jsonl", rows))
    pairs = prepare_data(data_config(path, "pairs", eval_split=0.0, loss=loss), tiny_tokenizer).train
    groups = prepare_data(data_config(path, "groups", eval_split=0.0, loss=loss), tiny_tokenizer).train
    batch = SharedPromptCollator(pad_token_id=PAD)(groups)
    rewards = torch.zeros(batch["group_mask"].shape)
    drop = loss == "bt"
    chosen, _, pair_batch = group_pairs(rewards, batch["scores"], batch["group_mask"], 1.0, drop_ties=drop)
    assert len(pairs) == chosen.numel() == (2 if drop else 3)
    assert sorted(pair_batch["margin"].tolist()) == sorted(torch.tensor([f["margin"] for f in pairs]).tolist())
    ties = pair_batch["margin"] == 0
    assert ties.sum() == sum(f["margin"] == 0 for f in pairs) == (0 if drop else 1)
    assert (pair_batch["p"][ties] == 0.5).all() and all(f["p"] == 0.5 for f in pairs if f["margin"] == 0)


def test_layout_keys_are_checked(tmp_path):
    from mmpo.config import DPOConfig

    for overrides, message in (({"layout": "lists"}, "layout must be pairs or groups"),
                               ({"layout": "groups", "group_size": 1}, "group_size must be a whole number >= 2"),
                               ({"layout": "groups", "prefix_sharing": False}, "needs prefix_sharing: true"),
                               ({"layout": "groups", "trunk_cache": True}, "trunk cache")):
        layout = overrides.pop("layout")
        with pytest.raises(UserError, match=message):
            data_config("d.jsonl", layout, **overrides).validate()
    with pytest.raises(UserError, match="use simpo_margin: 0 with layout: groups"):
        load_config(DPOConfig, None, {"data": "d.jsonl", "layout": "groups", "loss": "simpo", "simpo_margin": 0.5}).validate()


# --- (e) training ------------------------------------------------------------------------------------------------

def test_reward_model_trains_on_groups_with_the_listwise_loss(tiny_model_dir, tmp_path, monkeypatch):
    from transformers import AutoModelForSequenceClassification

    from mmpo.training.rm import RewardTrainer, train_reward_model

    shapes = []
    scored = RewardTrainer.group_rewards
    monkeypatch.setattr(RewardTrainer, "group_rewards", lambda self, model, batch: shapes.append(tuple(batch["group_mask"].shape)) or scored(self, model, batch))

    out = tmp_path / "run"
    config = group_run_config(RMConfig, tmp_path, tiny_model_dir, alpaca_rows(16, models=4), group_size=4, loss="listwise",
                              per_device_train_batch_size=2, max_steps=3, logging_steps=1)
    summary = train_reward_model(config)
    assert summary.global_step == 3 and summary.metrics["n"] > 0 and math.isfinite(summary.metrics["loss"])
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in logged if "loss" in r and "eval_loss" not in r]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    assert shapes == [(2, 4)] * 3  # every step trained on 2 groups of 4 responses, one forward each
    assert AutoModelForSequenceClassification.from_pretrained(out).config.num_labels == 1


@pytest.mark.parametrize("reference", ["precomputed", "model"])
def test_policy_trains_on_groups_with_the_listwise_loss(tiny_model_dir, tmp_path, monkeypatch, reference):
    """At the first step the policy is its reference, so every implicit reward is 0 and the listwise loss of a
    group of k responses is log k: the reference log-probs reached the right responses (precomputed ones through
    the cache's pairs, an odd group's last response paired with its first)."""
    from mmpo.config import DPOConfig
    from mmpo.training.dpo import PolicyTrainer, train_policy

    seen = []
    scored = PolicyTrainer.group_rewards

    def spy(self, model, batch):
        rewards = scored(self, model, batch)
        seen.append((rewards.detach().clone(), batch["group_mask"].clone()))
        return rewards

    monkeypatch.setattr(PolicyTrainer, "group_rewards", spy)
    monkeypatch.setenv("MMPO_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    config = group_run_config(DPOConfig, tmp_path, tiny_model_dir, alpaca_rows(12, models=5), group_size=3, loss="listwise",
                              reference=reference, per_device_train_batch_size=4, max_steps=2, logging_steps=1, seed=3)
    summary = train_policy(config)
    assert summary.global_step == 2 and summary.details["reference"] == reference and summary.metrics["n"] > 0
    (first, mask), (second, _) = seen
    # Groups of 5 responses split as 3 + 2; at the first step the policy is the reference: every reward is 0.
    assert mask.shape[1] == 3 and not mask.all() and mask.sum() > 4
    assert first[mask].abs().max() < 1e-4 and second[mask].abs().max() > 1e-3
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    k = mask.sum(dim=1).double()
    assert abs(next(r["loss"] for r in logged if "loss" in r) - k.log().mean().item()) < 1e-4
    assert (out / "config.json").is_file()


def test_steps_of_tied_groups_add_nothing_to_the_logged_pair_statistics(tiny_model_dir, tmp_path, monkeypatch):
    """Steps 2 and 3 train on groups whose responses all tie (bt leaves ties out: no pair). The logs come at steps
    1, 2 and 4: step 2's holds no pair statistics, step 4's (steps 3-4) the means over step 4's pairs; none is NaN."""
    from mmpo.training.rm import RewardTrainer, train_reward_model

    steps = []
    real = RewardTrainer.group_loss

    def tie_steps_2_and_3(self, rewards, batch):
        if len(steps) in (1, 2):
            batch = {**batch, "scores": torch.where(batch["group_mask"], 1.0, batch["scores"])}
        losses, chosen, rejected = real(self, rewards, batch)
        steps.append((chosen.detach().clone(), rejected.detach().clone()))
        return losses, chosen, rejected

    monkeypatch.setattr(RewardTrainer, "group_loss", tie_steps_2_and_3)
    out = tmp_path / "run"
    config = group_run_config(RMConfig, tmp_path, tiny_model_dir, alpaca_rows(16, models=4), group_size=4, loss="bt",
                              per_device_train_batch_size=2, max_steps=4, logging_steps=2)
    train_reward_model(config)
    assert [c.numel() > 0 for c, _ in steps] == [True, False, False, True]
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_logs = {r["step"]: r for r in logged if "loss" in r and "eval_loss" not in r}
    assert sorted(train_logs) == [1, 2, 4]
    assert not any(key.startswith("train_") for key in train_logs[2])
    for step, (chosen, rejected) in ((1, steps[0]), (4, steps[3])):
        h = chosen - rejected
        expected = {"train_accuracy": ((h > 0).float() + 0.5 * (h == 0).float()).mean(), "train_margin": h.mean(),
                    "train_chosen_reward": chosen.mean(), "train_rejected_reward": rejected.mean()}
        for key, value in expected.items():
            assert train_logs[step][key] == pytest.approx(value.item(), abs=1e-5)
    assert all(math.isfinite(v) for r in train_logs.values() for v in r.values() if isinstance(v, float))
