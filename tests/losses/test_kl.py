from __future__ import annotations

import math

import pytest
import torch

from monai_probseg.losses import KLDivergenceLoss, gaussian_kl_divergence


def test_hand_computed_value():
    # KL(N(0, 1) || N(1, 2^2)) = log 2 + (1 + (0 - 1)^2) / (2 * 4) - 1/2
    zero = torch.zeros(1, 1)
    kl = gaussian_kl_divergence(zero, zero, zero + 1.0, zero + math.log(2.0))
    assert kl.item() == pytest.approx(math.log(2.0) + 2.0 / 8.0 - 0.5, abs=1e-6)
    # the loss sums over the latent dimensions: 3 identical dims give 3x
    three = torch.zeros(1, 3)
    loss = KLDivergenceLoss()(three, three, three + 1.0, three + math.log(2.0))
    assert loss.item() == pytest.approx(3 * (math.log(2.0) - 0.25), abs=1e-5)


def test_identical_distributions_give_zero():
    g = torch.Generator().manual_seed(0)
    mean, log_sigma = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    kl = KLDivergenceLoss(reduction="none")(mean, log_sigma, mean, log_sigma)
    assert kl.shape == (4,)
    assert torch.allclose(kl, torch.zeros(4), atol=1e-6)


def test_matches_torch_distributions():
    g = torch.Generator().manual_seed(1)
    mq, lq, mp, lp = (torch.randn(5, 4, generator=g) for _ in range(4))
    q = torch.distributions.Independent(torch.distributions.Normal(mq, lq.exp()), 1)
    p = torch.distributions.Independent(torch.distributions.Normal(mp, lp.exp()), 1)
    expected = torch.distributions.kl_divergence(q, p)
    assert torch.allclose(KLDivergenceLoss(reduction="none")(mq, lq, mp, lp), expected, atol=1e-5)
    assert KLDivergenceLoss(reduction="sum")(mq, lq, mp, lp).item() == pytest.approx(expected.sum().item(), rel=1e-5)
    assert KLDivergenceLoss()(mq, lq, mp, lp).item() == pytest.approx(expected.mean().item(), rel=1e-5)


def test_monte_carlo_estimate():
    g = torch.Generator().manual_seed(2)
    mq, lq, mp, lp = (0.5 * torch.randn(2, 3, generator=g) for _ in range(4))
    exact = KLDivergenceLoss(reduction="none")(mq, lq, mp, lp)
    mc_loss = KLDivergenceLoss(reduction="none", analytic=False, num_mc_samples=20000)
    mc = mc_loss(mq, lq, mp, lp, generator=0)
    assert torch.allclose(mc, exact, rtol=0.05, atol=0.02)  # standard error ~1% here
    # same seed, same estimate; another seed, another estimate
    assert torch.equal(mc, mc_loss(mq, lq, mp, lp, generator=0))
    assert not torch.equal(mc, mc_loss(mq, lq, mp, lp, generator=1))
    # reparameterised: gradients reach every parameter
    params = [t.clone().requires_grad_(True) for t in (mq, lq, mp, lp)]
    KLDivergenceLoss(analytic=False, num_mc_samples=4)(*params, generator=0).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)


def test_extreme_values_stay_finite():
    mq = torch.tensor([[1e3, -1e3]], requires_grad=True)
    lq = torch.tensor([[10.0, -10.0]], requires_grad=True)
    mp = torch.tensor([[-1e3, 1e3]])
    lp = torch.tensor([[-10.0, 10.0]])
    kl = KLDivergenceLoss()(mq, lq, mp, lp)
    assert torch.isfinite(kl) and kl > 0
    kl.backward()
    assert torch.isfinite(mq.grad).all() and torch.isfinite(lq.grad).all()


def test_input_errors():
    a = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="same shape"):
        KLDivergenceLoss()(a, a, a, torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"\(B, D"):
        KLDivergenceLoss()(torch.zeros(3), torch.zeros(3), torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError, match="num_mc_samples"):
        KLDivergenceLoss(num_mc_samples=0)
    with pytest.raises(ValueError):
        KLDivergenceLoss(reduction="median")
