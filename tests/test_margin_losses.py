"""The loss registry and the margin-aware losses: each against an independent formula on fixed numbers, a
float64 gradient check, and its limits (no margin, p = 0.5, k = 2); the registry as config, dispatch and
reports read it; one new policy loss and one new reward-model loss trained through the CLI's code paths."""

from __future__ import annotations

import json
import math
from dataclasses import fields
from pathlib import Path

import pytest
import torch

from mmpo.config import DPOConfig, RMConfig, load_config
from mmpo.errors import UserError
from mmpo.losses import (
    LOSSES,
    LossSettings,
    bt_loss,
    gdpo_loss,
    listwise_soft_loss,
    losses_for,
    margin_loss,
    mmpo_loss,
    needs_reference,
    odpo_loss,
    odpo_offset,
    preference_strength,
    rating_dpo_loss,
    rpo_bwd_kl_loss,
    rpo_fwd_kl_loss,
    rpo_sq_loss,
    scaled_bt_loss,
    target_logits,
    uses_soft_targets,
)

torch.set_num_threads(1)

# Fixed pairs: chosen / rejected rewards, score margins (>= 0, as the pipeline orders pairs), soft targets.
CHOSEN = [1.2, -0.3, 2.0, 0.5, -1.5]
REJECTED = [0.2, 0.4, -1.0, 0.5, 0.7]
MARGIN = [2.0, 0.5, 4.0, 1.0, 7.0]
P = [0.8, 0.55, 0.97, 0.62, 0.999]


def _sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _logsig(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def _t(values: list[float], grad: bool = False) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64, requires_grad=grad)


def _pairs() -> list[tuple[float, float, float, float]]:
    return list(zip(CHOSEN, REJECTED, MARGIN, P))


def _check_gradients(fn, *extra: torch.Tensor) -> None:
    """``fn(chosen, rejected, *extra)`` against finite differences in float64, in both rewards."""
    assert torch.autograd.gradcheck(lambda c, r: fn(c, r, *extra), (_t(CHOSEN, True), _t(REJECTED, True)))


# --- the registry ----------------------------------------------------------------------------------------

def test_registry_kinds_and_flags():
    assert losses_for("rm") == ("mmpo", "bt", "margin", "label_smoothing", "scaled_bt", "listwise")
    assert losses_for("policy") == (
        "mmpo", "dpo", "cdpo", "ipo", "simpo", "simpo_mmpo", "odpo", "rdpo", "rpo_sq", "rpo_fwd_kl", "rpo_bwd_kl", "gdpo",
        "listwise",
    )
    assert [n for n in LOSSES if uses_soft_targets(n)] == [
        "mmpo", "simpo_mmpo", "rpo_sq", "rpo_fwd_kl", "rpo_bwd_kl", "gdpo", "listwise"]
    assert [n for n in LOSSES if LOSSES[n].group_fn is not None] == ["listwise"]
    assert not uses_soft_targets("no_such_loss")
    assert [n for n in losses_for("policy") if not needs_reference(n)] == ["simpo", "simpo_mmpo"]
    with pytest.raises(ValueError, match="kind"):
        losses_for("critic")


@pytest.mark.parametrize("name", list(LOSSES))
def test_every_registered_loss_gives_one_finite_value_per_pair(name):
    c, r = torch.tensor(CHOSEN), torch.tensor(REJECTED)
    batch = {"p": torch.tensor(P), "margin": torch.tensor(MARGIN[:-1] + [float("nan")])}
    out = LOSSES[name].fn(c, r, batch, LossSettings(beta=0.3, gamma=0.5))
    assert out.shape == (len(CHOSEN),) and out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_config_validation_and_help_read_the_registry(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("")
    for cls, kind in ((RMConfig, "rm"), (DPOConfig, "policy")):
        help_text = {f.name: f.metadata.get("help", "") for f in fields(cls)}["loss"]
        assert help_text.split(" | ") == list(losses_for(kind))
        for name in losses_for(kind):
            load_config(cls, overrides={"data": str(data), "loss": name}).validate()
        with pytest.raises(UserError, match=f"choose {', '.join(losses_for(kind))}"):
            load_config(cls, overrides={"data": str(data), "loss": "hinge"}).validate()
    with pytest.raises(UserError, match="unknown reward-model loss 'odpo'"):
        load_config(RMConfig, overrides={"data": str(data), "loss": "odpo"}).validate()


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"loss": "odpo", "odpo_alpha": -0.5}, "odpo_alpha must be >= 0"),
        ({"loss": "odpo", "odpo_offset": "sqrt"}, "odpo_offset must be log, log1p, linear"),
        ({"loss": "rdpo", "rdpo_scale": -1}, "rdpo_scale must be >= 0"),
        ({"loss": "rpo_sq", "gamma": None}, "set gamma > 0"),
    ],
)
def test_new_loss_keys_are_checked(tmp_path, overrides, message):
    data = tmp_path / "d.jsonl"
    data.write_text("")
    with pytest.raises(UserError, match=message):
        load_config(DPOConfig, overrides={"data": str(data), **overrides}).validate()


def test_embedded_recipes_and_the_readme_list_the_registered_losses():
    root = Path(__file__).resolve().parents[1]
    recipes = root / "src" / "mmpo" / "recipes" / "embedded"
    readme = (root / "README.md").read_text().splitlines()
    for command, kind in (("rm", "rm"), ("dpo", "policy")):
        line = next(x for x in (recipes / f"{command}.yaml").read_text().splitlines() if x.startswith("loss:"))
        assert [n.strip() for n in line.split("#", 1)[1].split("|")] == list(losses_for(kind))
        row = next(x for x in readme if x.startswith(f"| `mmpo {command} [RECIPE]"))
        listed = row.split("`loss: ", 1)[1].split("`", 1)[0]
        assert [n.strip() for n in listed.split("\\|")] == list(losses_for(kind))


def test_reports_and_reference_planning_read_the_registry():
    from mmpo.models.reference import resolve_reference_mode
    from mmpo.experiments.compare import infer_kind

    assert infer_kind(["mmpo", "odpo"]) == "dpo"
    assert infer_kind(["mmpo", "scaled_bt"]) == "rm"
    assert resolve_reference_mode("gdpo", "auto", lora_r=0) == "precomputed"
    with pytest.raises(UserError, match="reference-free losses simpo, simpo_mmpo, not 'rpo_sq'"):
        resolve_reference_mode("rpo_sq", "none", lora_r=0)


# --- ODPO ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("function", ["log", "log1p", "linear"])
def test_odpo_matches_the_paper_formula(function):
    alpha = 0.7
    f = {"log": math.log, "log1p": math.log1p, "linear": lambda x: x}[function]
    expected = [-_logsig((c - r) - alpha * f(m)) for c, r, m, _ in _pairs()]
    got = odpo_loss(_t(CHOSEN), _t(REJECTED), _t(MARGIN), alpha, function)
    assert got.tolist() == pytest.approx(expected, rel=1e-12)
    _check_gradients(lambda c, r, m: odpo_loss(c, r, m, alpha, function), _t(MARGIN))


def test_odpo_limits():
    c, r, m = torch.tensor(CHOSEN), torch.tensor(REJECTED), torch.tensor(MARGIN)
    torch.testing.assert_close(odpo_loss(c, r, m, alpha=0.0), bt_loss(c, r))  # no offset: DPO
    torch.testing.assert_close(odpo_loss(c, r, m, 1.0, "linear"), margin_loss(c, r, m))  # Llama 2's margin loss
    unknown = torch.full_like(m, float("nan"))
    torch.testing.assert_close(odpo_loss(c, r, unknown, 2.0), bt_loss(c, r))  # no margin: DPO
    # A tie (margin 0, p = 0.5): log gives offset -inf, no constraint, zero loss and gradient; log1p gives DPO.
    h = torch.tensor(CHOSEN, requires_grad=True)
    tie = torch.zeros_like(m)
    loss = odpo_loss(h, torch.zeros_like(h), tie, 1.0, "log")
    loss.sum().backward()
    assert loss.tolist() == [0.0] * len(CHOSEN) and h.grad.tolist() == [0.0] * len(CHOSEN)
    torch.testing.assert_close(odpo_loss(c, r, tie, 1.0, "log1p"), bt_loss(c, r))
    with pytest.raises(ValueError):
        odpo_offset(m, -1.0)


# --- Rating-DPO ------------------------------------------------------------------------------------------

def test_rating_dpo_formula_gradient_and_limits():
    scale = 0.4
    expected = [-_logsig((c - r) - scale * m) for c, r, m, _ in _pairs()]
    assert rating_dpo_loss(_t(CHOSEN), _t(REJECTED), _t(MARGIN), scale).tolist() == pytest.approx(expected, rel=1e-12)
    _check_gradients(lambda c, r, m: rating_dpo_loss(c, r, m, scale), _t(MARGIN))
    c, r, m = torch.tensor(CHOSEN), torch.tensor(REJECTED), torch.tensor(MARGIN)
    torch.testing.assert_close(rating_dpo_loss(c, r, m, 0.0), bt_loss(c, r))
    torch.testing.assert_close(rating_dpo_loss(c, r, torch.zeros_like(m), 3.0), bt_loss(c, r))  # tie
    torch.testing.assert_close(rating_dpo_loss(c, r, torch.full_like(m, float("nan")), 3.0), bt_loss(c, r))


# --- RPO -------------------------------------------------------------------------------------------------

def test_target_logits_use_the_margin_where_known_and_the_probability_elsewhere():
    p = torch.tensor([1.0, 0.73, 0.5])  # p of the first rounded to 1 in float32
    margin = torch.tensor([40.0, float("nan"), 0.0])
    got = target_logits(p, margin, gamma=0.5)
    assert got.tolist() == pytest.approx([20.0, math.log(0.73 / 0.27), 0.0], rel=1e-6)


def test_rpo_losses_match_their_formulas():
    gamma = 0.5
    sq, fwd, bwd = [], [], []
    for c, r, m, _ in _pairs():
        h, t = c - r, gamma * m
        q, p = _sig(h), _sig(t)
        sq.append((h - t) ** 2)
        fwd.append(q * math.log(q / p) + (1 - q) * math.log((1 - q) / (1 - p)))
        bwd.append(p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q)))
    t = gamma * _t(MARGIN)
    for fn, expected in ((rpo_sq_loss, sq), (rpo_fwd_kl_loss, fwd), (rpo_bwd_kl_loss, bwd)):
        assert fn(_t(CHOSEN), _t(REJECTED), t).tolist() == pytest.approx(expected, rel=1e-9, abs=1e-12)
        _check_gradients(fn, t)


def test_rpo_bwd_kl_is_mmpo_up_to_a_constant_with_the_same_gradient():
    t = 0.5 * _t(MARGIN)
    p = torch.sigmoid(t)
    entropy = -(p * p.log() + (1 - p) * (1 - p).log())
    c1, c2 = _t(CHOSEN, True), _t(CHOSEN, True)
    bwd, mmpo = rpo_bwd_kl_loss(c1, _t(REJECTED), t), mmpo_loss(c2, _t(REJECTED), p)
    torch.testing.assert_close(bwd, mmpo - entropy)
    bwd.sum().backward()
    mmpo.sum().backward()
    torch.testing.assert_close(c1.grad, c2.grad)
    torch.testing.assert_close(c1.grad, torch.sigmoid(_t(CHOSEN) - _t(REJECTED)) - p)


def test_rpo_limits():
    h = _t(CHOSEN) - _t(REJECTED)
    zero, tie = torch.zeros_like(h), torch.zeros_like(h)  # a tie: t = 0, p = 0.5
    torch.testing.assert_close(rpo_sq_loss(h, zero, tie), h**2)
    q = torch.sigmoid(h)
    torch.testing.assert_close(rpo_fwd_kl_loss(h, zero, tie), math.log(2) + q * q.log() + (1 - q) * (1 - q).log())
    # Each is zero where the implicit gap meets the target, and finite for a target p that rounds to 1.
    for fn in (rpo_sq_loss, rpo_fwd_kl_loss, rpo_bwd_kl_loss):
        torch.testing.assert_close(fn(h, zero, h), torch.zeros_like(h))
        assert torch.isfinite(fn(torch.tensor(CHOSEN), torch.tensor(REJECTED), torch.full((5,), 40.0))).all()


# --- GDPO ------------------------------------------------------------------------------------------------

def test_gdpo_formula_gradient_and_limits():
    expected = [-_logsig((2 * p - 1) * (c - r)) for c, r, _, p in _pairs()]
    assert gdpo_loss(_t(CHOSEN), _t(REJECTED), _t(P)).tolist() == pytest.approx(expected, rel=1e-12)
    _check_gradients(gdpo_loss, _t(P))
    c, r = torch.tensor(CHOSEN), torch.tensor(REJECTED)
    torch.testing.assert_close(gdpo_loss(c, r, torch.ones(5)), bt_loss(c, r))  # hard labels: DPO
    h = torch.tensor(CHOSEN, requires_grad=True)
    half = gdpo_loss(h, torch.zeros(5), torch.full((5,), 0.5))
    half.sum().backward()
    torch.testing.assert_close(half, torch.full((5,), math.log(2)))  # p = 0.5: constant, no gradient
    assert h.grad.abs().max() == 0


# --- scaled BT -------------------------------------------------------------------------------------------

def test_scaled_bt_formula_gradient_and_limits():
    expected = [-m * _logsig(c - r) for c, r, m, _ in _pairs()]
    assert scaled_bt_loss(_t(CHOSEN), _t(REJECTED), _t(MARGIN)).tolist() == pytest.approx(expected, rel=1e-12)
    _check_gradients(scaled_bt_loss, _t(MARGIN))
    c, r = torch.tensor(CHOSEN), torch.tensor(REJECTED)
    unknown = preference_strength(torch.full((5,), float("nan")))
    torch.testing.assert_close(scaled_bt_loss(c, r, unknown), bt_loss(c, r))  # no margin: BT
    assert scaled_bt_loss(c, r, preference_strength(torch.zeros(5))).tolist() == [0.0] * 5  # a tie: nothing


# --- listwise soft target --------------------------------------------------------------------------------

def test_listwise_matches_softmax_cross_entropy_on_fixed_groups():
    rewards = [[0.3, -1.0, 2.0], [1.5, 1.5, -0.5]]
    scores = [[7.0, 4.0, 9.0], [3.0, 6.0, 6.0]]
    gamma = 0.4
    expected = []
    for r, s in zip(rewards, scores):
        zq = sum(math.exp(gamma * x) for x in s)
        zr = sum(math.exp(x) for x in r)
        expected.append(-sum(math.exp(gamma * si) / zq * (ri - math.log(zr)) for ri, si in zip(r, s)))
    got = listwise_soft_loss(_t(rewards), _t(scores), gamma)
    assert got.tolist() == pytest.approx(expected, rel=1e-12)
    assert torch.autograd.gradcheck(lambda r: listwise_soft_loss(r, _t(scores), gamma), (_t(rewards, True),))


def test_listwise_with_two_responses_is_mmpo():
    gamma = 0.7
    rewards = torch.stack([_t(CHOSEN), _t(REJECTED)], dim=1)
    scores = torch.stack([_t(MARGIN), torch.zeros(5, dtype=torch.float64)], dim=1)
    p = torch.sigmoid(gamma * _t(MARGIN))
    torch.testing.assert_close(listwise_soft_loss(rewards, scores, gamma), mmpo_loss(_t(CHOSEN), _t(REJECTED), p))


def test_listwise_limits_equal_scores_and_absent_responses():
    rewards = _t([[0.3, -1.0, 2.0]])
    # Equal scores: the uniform target, the mean negative log-softmax.
    uniform = listwise_soft_loss(rewards, _t([[5.0, 5.0, 5.0]]), 1.3)
    assert uniform.item() == pytest.approx(-torch.log_softmax(rewards, -1).mean().item(), rel=1e-12)
    # A group with an absent third response is the k = 2 loss on the two present.
    masked = listwise_soft_loss(rewards, _t([[6.0, 2.0, 0.0]]), 0.5, mask=torch.tensor([[True, True, False]]))
    pair = mmpo_loss(_t([0.3]), _t([-1.0]), torch.sigmoid(_t([0.5 * 4.0])))
    torch.testing.assert_close(masked, pair)
    with pytest.raises(ValueError, match="gamma"):
        listwise_soft_loss(rewards, rewards, 0.0)


@pytest.mark.parametrize("name", list(LOSSES))
def test_registered_losses_and_gradients_are_finite_at_extreme_logits_in_bfloat16(name):
    h = torch.tensor([-1e4, -50.0, 0.0, 50.0, 1e4], dtype=torch.bfloat16).requires_grad_()
    batch = {"p": torch.tensor([0.9, 0.5, 0.7, 1.0, 0.6]), "margin": torch.tensor([3.0, 0.0, 1.0, float("nan"), 9.0])}
    loss = LOSSES[name].fn(h, torch.zeros(5, dtype=torch.bfloat16), batch, LossSettings(beta=0.3, gamma=0.5))
    loss.sum().backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss).all() and torch.isfinite(h.grad).all()


# --- training through `mmpo dpo` / `mmpo rm` ---------------------------------------------------------------

TINY = ["--max_length", "96", "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "8",
        "--logging_steps", "1", "--bf16", "false", "--save_total_limit", "none"]


def test_odpo_policy_trains_through_mmpo_dpo(tmp_path, monkeypatch, tiny_model_dir, graded_rows, write_jsonl):
    from mmpo.cli.main import main
    from mmpo.training.dpo import PolicyTask
    from mmpo.training.run import build_run

    monkeypatch.setenv("MMPO_CACHE", str(tmp_path / "cache"))
    rows = graded_rows(16, seed=1)
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    held = write_jsonl(tmp_path / "held.jsonl", rows)  # held out = trained on, so learning shows
    values = {"model": str(tiny_model_dir), "data": str(data), "eval_data": str(held), "allow_eval_overlap": True,
              "loss": "odpo", "odpo_alpha": 0.5,
              "beta": 0.5, "learning_rate": 1e-3, "max_prompt_length": 64, "reference": "precomputed"}
    # Before training the policy is its reference (h = 0): the trainer's loss is ODPO's with h = 0, which
    # reads each pair's score margin.
    run = build_run(PolicyTask(), load_config(DPOConfig, overrides={
        **values, "output_dir": str(tmp_path / "before"), "max_length": 96, "bf16": False}))
    before = run.trainer.evaluate()["eval_loss"]
    margins = [r["score_chosen"] - r["score_rejected"] for r in rows]
    assert before == pytest.approx(sum(-_logsig(-0.5 * math.log(m)) for m in margins) / len(margins), abs=1e-4)

    out = tmp_path / "odpo"
    argv = ["dpo", *[x for k, v in values.items() for x in (f"--{k}", str(v))], "--output_dir", str(out), "--max_steps", "10", *TINY]
    assert main(argv) == 0
    results = json.loads((out / "eval_results.json").read_text())
    assert results["step"] == 10
    assert results["loss"] < before - 0.05


def test_scaled_bt_reward_model_trains_through_mmpo_rm(tmp_path, tiny_model_dir, tiny_tokenizer, graded_rows, write_jsonl):
    from test_rm import reward_direct, tokenized
    from transformers import set_seed

    from mmpo.cli.main import main
    from mmpo.models.reward import load_reward_model

    data = write_jsonl(tmp_path / "train.jsonl", graded_rows(16, seed=1))
    held = write_jsonl(tmp_path / "held.jsonl", graded_rows(16, seed=1))  # held out = trained on, so learning shows
    out = tmp_path / "scaled_bt"
    argv = ["rm", "--model", str(tiny_model_dir), "--data", str(data), "--eval_data", str(held), "--allow_eval_overlap", "true",
            "--output_dir", str(out),
            "--loss", "scaled_bt", "--learning_rate", "5e-3", "--max_steps", "20", *TINY]
    assert main(argv) == 0
    results = json.loads((out / "eval_results.json").read_text())

    set_seed(42)  # the config's seed: the same fresh head the run started from
    model = load_reward_model(str(tiny_model_dir), tiny_tokenizer).eval()
    features = tokenized(data, tiny_tokenizer)
    chosen = torch.tensor([reward_direct(model, f["prompt_ids"] + f["chosen_ids"]) for f in features])
    rejected = torch.tensor([reward_direct(model, f["prompt_ids"] + f["rejected_ids"]) for f in features])
    before = scaled_bt_loss(chosen, rejected, torch.tensor([f["margin"] for f in features])).mean().item()
    assert results["step"] == 20
    assert results["loss"] < before - 0.05
    assert results["accuracy"] > 0.5


def test_policy_dispatch_passes_margins_targets_and_keys_to_the_new_losses():
    from mmpo.training.dpo import policy_loss

    c, r, p = torch.tensor(CHOSEN), torch.tensor(REJECTED), torch.tensor(P)
    m = torch.tensor(MARGIN[:-1] + [float("nan")])
    s = LossSettings(gamma=0.5, odpo_alpha=0.3, odpo_offset="log1p", rdpo_scale=0.2)
    t = target_logits(p, m, 0.5)
    expected = {
        "odpo": odpo_loss(c, r, m, 0.3, "log1p"),
        "rdpo": rating_dpo_loss(c, r, m, 0.2),
        "rpo_sq": rpo_sq_loss(c, r, t),
        "rpo_fwd_kl": rpo_fwd_kl_loss(c, r, t),
        "rpo_bwd_kl": rpo_bwd_kl_loss(c, r, t),
        "gdpo": gdpo_loss(c, r, p),
    }
    for name, want in expected.items():
        torch.testing.assert_close(policy_loss(name, c, r, p, 0.1, margin=m, settings=s), want)
    assert t[-1].item() == pytest.approx(math.log(P[-1] / (1 - P[-1])), rel=1e-3)  # no margin: logit(p)
