"""The MMPO math against independent formulas, its gradient identity, its limits and its numerical range."""

import math

import pytest
import torch

from mmpo import bt_loss, dpo_logits, ipo_loss, label_smoothing_loss, margin_loss, mmpo_loss, simpo_logits, soft_targets


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_soft_targets_match_bradley_terry_on_random_scores():
    g = torch.Generator().manual_seed(0)
    sc, sr = torch.rand(100, generator=g) * 10, torch.rand(100, generator=g) * 10
    for gamma in (0.3, 1.1, 2.2):
        p = soft_targets(sc, sr, gamma)
        expected = [_sigmoid(gamma * (a - b)) for a, b in zip(sc.tolist(), sr.tolist())]
        assert p.tolist() == pytest.approx(expected, rel=1e-6, abs=1e-7)


def test_soft_targets_accept_margin_probability_and_hard_labels():
    assert soft_targets(margin=torch.tensor([2.0]), gamma=0.5).item() == pytest.approx(_sigmoid(1.0))
    assert soft_targets(probability=torch.tensor([0.73])).item() == pytest.approx(0.73)
    assert soft_targets(7.0, 3.0, None).item() == 1.0
    assert soft_targets(margin=torch.tensor([-5.0, 0.0, 5.0]), gamma=None).tolist() == [1.0, 1.0, 1.0]
    assert soft_targets(4.0, 4.0, 2.2).item() == pytest.approx(0.5)


@pytest.mark.parametrize("bad", [0.0, -1.0])
def test_soft_targets_reject_non_positive_gamma(bad):
    with pytest.raises(ValueError, match="gamma"):
        soft_targets(1.0, 0.0, bad)


def test_soft_targets_reject_probability_out_of_range():
    with pytest.raises(ValueError):
        soft_targets(probability=torch.tensor([1.2]))


def test_mmpo_loss_matches_cross_entropy_formula_on_random_inputs():
    g = torch.Generator().manual_seed(1)
    chosen, rejected = torch.randn(200, generator=g) * 3, torch.randn(200, generator=g) * 3
    p = torch.rand(200, generator=g)
    got = mmpo_loss(chosen, rejected, p)
    for c, r, t, value in zip(chosen.tolist(), rejected.tolist(), p.tolist(), got.tolist()):
        q = _sigmoid(c - r)
        assert value == pytest.approx(-t * math.log(q) - (1 - t) * math.log(1 - q), rel=1e-5, abs=1e-6)


def test_mmpo_gradient_in_h_is_sigmoid_h_minus_p():
    g = torch.Generator().manual_seed(2)
    h = (torch.randn(64, generator=g) * 4).requires_grad_()
    p = torch.rand(64, generator=g)
    mmpo_loss(h, torch.zeros(64), p).sum().backward()
    assert torch.allclose(h.grad, torch.sigmoid(h.detach()) - p, atol=1e-6)


def test_mmpo_with_hard_targets_is_bradley_terry_and_large_gamma_approaches_it():
    h = torch.linspace(-6, 6, 25)
    zeros = torch.zeros_like(h)
    assert torch.allclose(mmpo_loss(h, zeros, torch.ones_like(h)), bt_loss(h, zeros), atol=1e-6)
    margin = torch.full_like(h, 1.0)
    gaps = [float((mmpo_loss(h, zeros, soft_targets(margin=margin, gamma=g)) - bt_loss(h, zeros)).abs().max()) for g in (1, 4, 16, 64)]
    assert gaps == sorted(gaps, reverse=True) and gaps[-1] < 1e-6


def test_p_one_half_is_symmetric_and_minimised_at_zero():
    h = torch.linspace(-5, 5, 21)
    half = torch.full_like(h, 0.5)
    zeros = torch.zeros_like(h)
    assert torch.allclose(mmpo_loss(h, zeros, half), mmpo_loss(-h, zeros, half), atol=1e-6)
    assert int(mmpo_loss(h, zeros, half).argmin()) == 10


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_losses_are_finite_at_extreme_logits(dtype):
    h = torch.tensor([-1e4, -50.0, 0.0, 50.0, 1e4], dtype=dtype).requires_grad_()
    zeros = torch.zeros(5, dtype=dtype)
    p = torch.tensor([0.0, 0.3, 0.5, 0.9, 1.0])
    for loss in (mmpo_loss(h, zeros, p), bt_loss(h, zeros), margin_loss(h, zeros, torch.full((5,), 3.0)), label_smoothing_loss(h, zeros, 0.1)):
        assert torch.isfinite(loss).all()
        (grad,) = torch.autograd.grad(loss.sum(), h)
        assert torch.isfinite(grad.float()).all()
    # A confident wrong answer costs about |h|; a confident right one costs ~0.
    loss = mmpo_loss(h, zeros, torch.ones(5))
    assert loss[0].item() == pytest.approx(-h[0].float().item(), rel=1e-6)  # bf16 stores 1e4 as 9984
    assert loss[-1].item() == pytest.approx(0.0, abs=1e-6)


def test_margin_loss_is_llama2_offset():
    h = torch.tensor([0.5, 2.0, -1.0])
    m = torch.tensor([1.0, 0.0, 2.0])
    expected = [-math.log(_sigmoid(a - b)) for a, b in zip(h.tolist(), m.tolist())]
    assert margin_loss(h, torch.zeros(3), m).tolist() == pytest.approx(expected, rel=1e-6)


def test_label_smoothing_is_cross_entropy_with_fixed_target():
    h = torch.tensor([-2.0, 0.0, 3.0])
    eps = 0.2
    expected = [-(1 - eps) * math.log(_sigmoid(x)) - eps * math.log(_sigmoid(-x)) for x in h.tolist()]
    assert label_smoothing_loss(h, torch.zeros(3), eps).tolist() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError):
        label_smoothing_loss(h, torch.zeros(3), 0.7)


def test_dpo_logits_are_beta_scaled_log_ratios():
    pc, pr, rc, rr = torch.tensor([-10.0]), torch.tensor([-12.0]), torch.tensor([-11.0]), torch.tensor([-11.5])
    chosen, rejected = dpo_logits(pc, pr, rc, rr, beta=0.1)
    assert chosen.item() == pytest.approx(0.1 * (-10 + 11))
    assert rejected.item() == pytest.approx(0.1 * (-12 + 11.5))
    # DPO's loss is -log sigmoid(beta * ((pc - rc) - (pr - rr))).
    assert bt_loss(chosen, rejected).item() == pytest.approx(-math.log(_sigmoid(0.1 * (1.0 + 0.5))), rel=1e-6)
    with pytest.raises(ValueError):
        dpo_logits(pc, pr, rc, rr, beta=0.0)


def test_ipo_loss_targets_half_inverse_beta():
    beta = 0.5
    chosen, rejected = dpo_logits(torch.tensor([-1.0]), torch.tensor([-2.0]), torch.tensor([0.0]), torch.tensor([0.0]), beta)
    assert ipo_loss(chosen, rejected, beta).item() == pytest.approx((1.0 - 1 / (2 * beta)) ** 2)
    # Zero loss exactly at log-ratio difference 1/(2 beta).
    chosen, rejected = dpo_logits(torch.tensor([1.0]), torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([0.0]), beta)
    assert ipo_loss(chosen, rejected, beta).item() == pytest.approx(0.0, abs=1e-7)


def test_simpo_logits_are_length_normalised():
    chosen, rejected = simpo_logits(torch.tensor([-6.0]), torch.tensor([-6.0]), torch.tensor([3]), torch.tensor([2]), beta=2.0, target_margin=0.5)
    assert chosen.item() == pytest.approx(2.0 * -2.0 - 0.5)
    assert rejected.item() == pytest.approx(2.0 * -3.0)


def test_score_margin_is_one_rule_for_floats_and_tensors():
    from mmpo.losses import score_margin

    assert score_margin(0.3, 0.1 + 0.2) == 0 and score_margin(8.7, 4.5) == score_margin(4.2, 0.0) == 4.2
    chosen = torch.tensor([0.3, 8.7, 1.0000000004, 1.0000000006, -2.5], dtype=torch.float64)
    rejected = torch.tensor([0.1 + 0.2, 4.5, 1.0, 1.0, 0.75], dtype=torch.float64)
    margins = score_margin(chosen, rejected)
    assert margins.tolist() == [score_margin(c, r) for c, r in zip(chosen.tolist(), rejected.tolist())]
    assert margins.tolist() == [0.0, 4.2, 0.0, 1e-9, -3.25]


def test_a_policys_response_rewards_are_the_pair_rewards_of_dpo_and_simpo():
    from mmpo.training.dpo import response_rewards

    logps, ref = torch.tensor([-6.0, -3.5, -9.0]), torch.tensor([-5.0, -4.0, -9.5])
    lengths = torch.tensor([3, 0, 4])
    chosen, rejected = dpo_logits(logps, logps.flip(0), ref, ref.flip(0), beta=0.3)
    assert torch.equal(response_rewards("mmpo", logps, lengths, ref, beta=0.3), chosen)
    assert torch.equal(response_rewards("mmpo", logps.flip(0), lengths, ref.flip(0), beta=0.3), rejected)
    chosen, rejected = simpo_logits(logps, logps.flip(0), lengths, lengths.flip(0), beta=2.0, target_margin=0.5)
    assert torch.equal(response_rewards("simpo", logps, lengths, None, beta=2.0), chosen + 0.5)
    assert torch.equal(response_rewards("simpo", logps.flip(0), lengths.flip(0), None, beta=2.0), rejected)
    assert torch.allclose(chosen, torch.tensor([-4.0, -7.0, -4.5]) - 0.5)
