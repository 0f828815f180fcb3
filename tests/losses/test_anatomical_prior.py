"""Losses of anatomical-prior segmentation (Dalca et al., CVPR 2018) against direct float64 computations."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from monai_probseg.distributions import gaussian_log_density
from monai_probseg.losses import AnatomicalPriorELBOLoss, AnatomicalPriorVAELoss, latent_kl_divergence


def _case(seed=0, batch=2, draws=2, classes=3, channels=2, spatial=(2, 3), grid=(1, 2), latent=2):
    g = torch.Generator().manual_seed(seed)
    d = torch.float64
    return {
        "logits": torch.randn(batch, draws, classes, *spatial, generator=g, dtype=d) * 2,
        "image": torch.randn(batch, channels, *spatial, generator=g, dtype=d),
        "latent_mean": torch.randn(batch, latent, *grid, generator=g, dtype=d),
        "latent_log_var": torch.randn(batch, latent, *grid, generator=g, dtype=d),
        "intensity_mean": torch.randn(classes, channels, generator=g, dtype=d),
        "intensity_log_var": torch.randn(classes, channels, generator=g, dtype=d) * 0.5,
    }, torch.randint(0, classes, (batch, 1, *spatial), generator=g)


def _direct(case, target=None, gain=None):
    """The negative ELBO by explicit loops over items, draws, voxels, labels and channels (float64).

    With ``gain`` (a bias field ``b`` of the image's shape), ``case["image"]`` is the acquired ``x`` and the density
    of a voxel is ``N(x; b mu, b^2 sigma^2)``, written out as such.
    """
    logits, image = case["logits"], case["image"]
    gain = torch.ones_like(image) if gain is None else gain
    mu_i, lv_i = case["intensity_mean"], case["intensity_log_var"]
    batch, draws, classes = logits.shape[:3]
    spatial = image.shape[2:]
    out = []
    for b in range(batch):
        kl = 0.0
        for m, lv in zip(case["latent_mean"][b].flatten().tolist(), case["latent_log_var"][b].flatten().tolist()):
            kl += 0.5 * (math.exp(lv) + m * m - 1.0 - lv)
        expected_log_lik = 0.0
        for n in range(draws):
            for j in itertools.product(*(range(s) for s in spatial)):
                scores = [float(logits[(b, n, c, *j)]) for c in range(classes)]
                top = max(scores)
                log_norm = top + math.log(sum(math.exp(s - top) for s in scores))
                terms = []
                for c in range(classes):
                    log_px = 0.0
                    for ch in range(image.shape[1]):
                        x, mu, lv = float(image[(b, ch, *j)]), float(mu_i[c, ch]), float(lv_i[c, ch])
                        g = float(gain[(b, ch, *j)])
                        var = g * g * math.exp(lv)
                        log_px += -0.5 * math.log(2 * math.pi * var) - (x - g * mu) ** 2 / (2 * var)
                    terms.append((scores[c] - log_norm, log_px))
                if target is None:
                    expected_log_lik += math.log(sum(math.exp(lp + lx) for lp, lx in terms))
                else:
                    lp, lx = terms[int(target[(b, 0, *j)])]
                    expected_log_lik += lp + lx
        out.append(kl - expected_log_lik / draws)
    return torch.tensor(out, dtype=torch.float64)


def test_unsupervised_elbo_equals_direct_computation():
    case, _ = _case()
    terms = AnatomicalPriorELBOLoss(reduction="none")(**case)
    assert terms["loss"].dtype == torch.float64 and terms["loss"].shape == (2,)
    torch.testing.assert_close(terms["loss"], _direct(case), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(terms["loss"], terms["nll"] + terms["kl"])
    mean = AnatomicalPriorELBOLoss()(**case)["loss"]
    torch.testing.assert_close(mean, _direct(case).mean())


@pytest.mark.parametrize("supervised", [False, True])
def test_elbo_with_a_bias_field_is_the_likelihood_of_the_acquired_image(supervised):
    """``image = x / b`` and ``log_bias = log b``: the loss is the ELBO of ``x`` under ``N(b mu, b^2 sigma^2)``."""
    case, target = _case(seed=2)
    g = torch.Generator().manual_seed(3)
    gain = torch.exp(0.3 * torch.randn(case["image"].shape, generator=g, dtype=torch.float64))
    acquired = case["image"]
    corrected = dict(case, image=acquired / gain)
    kwargs = {"target": target} if supervised else {}
    terms = AnatomicalPriorELBOLoss(supervised=supervised, reduction="none")(
        **corrected, log_bias=torch.log(gain), **kwargs
    )
    expected = _direct(case, target if supervised else None, gain=gain)
    torch.testing.assert_close(terms["loss"], expected, rtol=1e-10, atol=1e-10)
    # without the Jacobian the loss would differ by sum log b
    plain = AnatomicalPriorELBOLoss(supervised=supervised, reduction="none")(**corrected, **kwargs)["loss"]
    torch.testing.assert_close(terms["loss"] - plain, torch.log(gain).flatten(1).sum(1))
    with pytest.raises(ValueError, match="log_bias"):
        AnatomicalPriorELBOLoss()(**corrected, log_bias=torch.zeros(1, 1, 2, 3))


def test_supervised_elbo_equals_direct_computation():
    case, target = _case(seed=1)
    terms = AnatomicalPriorELBOLoss(supervised=True, reduction="none")(**case, target=target)
    torch.testing.assert_close(terms["loss"], _direct(case, target), rtol=1e-10, atol=1e-10)
    # the marginal likelihood of a voxel is at least its joint with any one label: unsupervised <= supervised
    assert (AnatomicalPriorELBOLoss(reduction="none")(**case)["loss"] <= terms["loss"]).all()
    with pytest.raises(ValueError, match="label map"):
        AnatomicalPriorELBOLoss(supervised=True)(**case)


def test_elbo_single_draw_beta_and_per_voxel_reduction():
    case, _ = _case(seed=2, draws=1)
    one = dict(case, logits=case["logits"][:, 0])  # (B, C, *spatial): one draw
    full = AnatomicalPriorELBOLoss(reduction="sum")(**case)
    torch.testing.assert_close(AnatomicalPriorELBOLoss(reduction="sum")(**one)["loss"], full["loss"])
    beta = AnatomicalPriorELBOLoss(beta=0.5, reduction="sum")(**case)["loss"]
    torch.testing.assert_close(beta, full["nll"] + 0.5 * full["kl"])
    per_voxel = AnatomicalPriorELBOLoss(reconstruction="mean", reduction="sum")(**case)["loss"]
    torch.testing.assert_close(per_voxel, full["loss"] / 6)


def test_elbo_is_finite_with_air_and_extreme_intensities_in_float32():
    case, _ = _case(seed=3, spatial=(4, 4), grid=(2, 2))
    case = {k: v.float() for k, v in case.items()}
    image = torch.zeros_like(case["image"])  # air: exactly 0
    image[:, :, 0, 0], image[:, :, 1, 1] = 1e6, -1e6
    case["image"] = image
    case["intensity_mean"] = torch.tensor([[0.0, 0.0], [0.5, 0.5], [1.0, 1.0]], requires_grad=True)
    case["intensity_log_var"] = torch.full((3, 2), -9.0, requires_grad=True)  # tiny variances
    case["logits"] = (case["logits"] * 50).requires_grad_(True)  # near-zero label probabilities
    case["latent_log_var"] = torch.full_like(case["latent_log_var"], -10.0).requires_grad_(True)
    for supervised in (False, True):
        terms = AnatomicalPriorELBOLoss(supervised=supervised)(**case, target=torch.zeros(2, 1, 4, 4))
        assert terms["loss"].dtype == torch.float32 and torch.isfinite(terms["loss"])
        grads = torch.autograd.grad(terms["loss"], [case["intensity_mean"], case["intensity_log_var"], case["logits"]])
        assert all(torch.isfinite(g).all() for g in grads)


def test_gaussian_log_density_matches_torch_and_stays_finite():
    x, m, lv = (torch.randn(7, generator=torch.Generator().manual_seed(i), dtype=torch.float64) for i in range(3))
    expected = torch.distributions.Normal(m, torch.exp(0.5 * lv)).log_prob(x)
    torch.testing.assert_close(gaussian_log_density(x, m, lv), expected)
    far = gaussian_log_density(torch.tensor([1e30]), torch.tensor([0.0]), torch.tensor([-20.0]))
    assert torch.isfinite(far).all() and far.item() < -1e30


def test_vae_loss_equals_cross_entropy_plus_beta_kl():
    g = torch.Generator().manual_seed(4)
    logits, target = torch.randn(2, 3, 4, 5, generator=g), torch.randint(0, 3, (2, 1, 4, 5), generator=g)
    mu, lv = torch.randn(2, 2, 1, 2, generator=g), torch.randn(2, 2, 1, 2, generator=g)
    ce = torch.nn.functional.cross_entropy(logits, target[:, 0], reduction="none").flatten(1).sum(1)
    kl = 0.5 * (lv.exp() + mu**2 - 1 - lv).flatten(1).sum(1)
    terms = AnatomicalPriorVAELoss(beta=2.0, reduction="none")(logits, target, mu, lv)
    torch.testing.assert_close(terms["loss"], ce + 2.0 * kl)
    torch.testing.assert_close(terms["kl"], kl)
    torch.testing.assert_close(latent_kl_divergence(mu, lv), kl)
    per_voxel = AnatomicalPriorVAELoss(reconstruction="mean", reduction="none")(logits, target, mu, lv)["loss"]
    torch.testing.assert_close(per_voxel, (ce + kl) / 20)
    one_hot = torch.nn.functional.one_hot(target[:, 0], 3).permute(0, 3, 1, 2).float()
    torch.testing.assert_close(AnatomicalPriorVAELoss()(logits, one_hot, mu, lv)["loss"], (ce + kl).mean())


def test_losses_validate_inputs():
    case, _ = _case()
    with pytest.raises(ValueError, match="beta"):
        AnatomicalPriorELBOLoss(beta=-1)
    with pytest.raises(ValueError, match="reconstruction"):
        AnatomicalPriorVAELoss(reconstruction="max")
    with pytest.raises(ValueError, match="intensity_mean"):
        AnatomicalPriorELBOLoss()(**dict(case, intensity_mean=case["intensity_mean"][:, :1]))
    with pytest.raises(ValueError, match="logits"):
        AnatomicalPriorELBOLoss()(**dict(case, logits=case["logits"][..., :2]))
    with pytest.raises(ValueError, match="latent_log_var"):
        AnatomicalPriorELBOLoss()(**dict(case, latent_log_var=case["latent_log_var"][:, :1]))
