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


def _kl_float64(mq, lq, mp, lp):
    """Direct closed form in float64 (exp(+-160) is representable there)."""
    mq, lq, mp, lp = (t.double() for t in (mq, lq, mp, lp))
    return (lp - lq) + (torch.exp(2 * lq) + (mq - mp) ** 2) / (2 * torch.exp(2 * lp)) - 0.5


@pytest.mark.parametrize("log_sigma", [-80.0, -60.0, -45.0, 0.0, 45.0, 60.0, 80.0])
def test_extreme_log_sigma_finite_and_exact(log_sigma):
    """exp(-2 log_sigma) overflows float32 beyond |log_sigma| ~ 44 (then 0 * inf = NaN); the log-space form does not."""
    inward = -1.0 if log_sigma > 0 else 1.0  # offsets point towards 0 so that every |log sigma| stays <= 80
    # (log_sigma_q, log_sigma_p) offsets and the mean difference in units of sigma_p: equal, close, e-folds apart
    cases = [(0.0, 0.0, 0.0), (0.0, 0.0, 2.0), (0.5, 0.0, 0.0), (3.0, 0.0, 1.0), (0.0, 10.0, 0.5), (20.0, 0.0, 0.0)]
    lq = torch.tensor([[log_sigma + inward * c[0] for c in cases]])
    lp = torch.tensor([[log_sigma + inward * c[1] for c in cases]])
    mp = torch.full_like(lq, 3.0 * math.exp(log_sigma))
    mq = (mp.double() + torch.tensor([[c[2] for c in cases]]).double() * lp.double().exp()).float()
    mq, lq = mq.requires_grad_(True), lq.requires_grad_(True)
    kl = gaussian_kl_divergence(mq, lq, mp, lp)
    assert kl.dtype == torch.float32 and torch.isfinite(kl).all()
    torch.testing.assert_close(kl.double(), _kl_float64(mq.detach(), lq.detach(), mp, lp), rtol=1e-5, atol=1e-5)
    assert kl[0, 0].item() == 0.0  # identical distributions
    kl.sum().backward()
    assert torch.isfinite(mq.grad).all() and torch.isfinite(lq.grad).all()
    # the loss (sum over the latent axis) and the Monte Carlo estimate stay finite as well
    assert torch.isfinite(KLDivergenceLoss()(mq, lq, mp, lp))
    assert torch.isfinite(KLDivergenceLoss(analytic=False, num_mc_samples=8)(mq, lq, mp, lp, generator=0))


def test_kl_beyond_float32_range_saturates_finite():
    """sigma_q / sigma_p = e^160 gives KL ~ e^320 / 2: not representable in float32, returned finite and huge."""
    lq = torch.tensor([[80.0, -80.0]], requires_grad=True)
    lp = torch.tensor([[-80.0, 80.0]])
    kl = gaussian_kl_divergence(torch.zeros(1, 2), lq, torch.zeros(1, 2), lp)
    assert torch.isfinite(kl).all()
    assert kl[0, 0].item() > 1e37
    assert kl[0, 1].item() == pytest.approx(160.0 - 0.5, rel=1e-6)  # ratio term e^-320 underflows to 0 correctly
    kl.sum().backward()
    assert torch.isfinite(lq.grad).all()


def test_half_precision_inputs_computed_in_float32():
    g = torch.Generator().manual_seed(3)
    mq, lq, mp, lp = (torch.randn(2, 5, generator=g).half() for _ in range(4))
    kl = gaussian_kl_divergence(mq, lq, mp, lp)
    assert kl.dtype == torch.float32
    torch.testing.assert_close(kl, gaussian_kl_divergence(mq.float(), lq.float(), mp.float(), lp.float()))
