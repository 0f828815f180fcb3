"""The bias field of the anatomical-prior likelihood: the cosine basis and the weighted least-squares fit."""

from __future__ import annotations

import math

import pytest
import torch

from monai_probseg.networks.blocks import cosine_basis, fit_log_bias, fit_tissue_gaussians


@pytest.mark.parametrize("size", [(5, 7), (4, 3, 6)])
def test_cosine_basis_is_the_orthogonal_dct_without_the_constant(size):
    basis = cosine_basis(size, 2, dtype=torch.float64)
    assert basis.shape == (3 ** len(size) - 1, *size)
    gram = basis.flatten(1) @ basis.flatten(1).T
    torch.testing.assert_close(gram, torch.diag(gram.diagonal()))  # orthogonal
    assert torch.allclose(basis.flatten(1).sum(1), torch.zeros(len(basis), dtype=torch.float64), atol=1e-9)
    # the first function varies along the last axis only: cos(pi (i + 1/2) / N)
    i = torch.arange(size[-1], dtype=torch.float64)
    expected = torch.cos(math.pi * (i + 0.5) / size[-1]).expand(*size)
    torch.testing.assert_close(basis[0], expected)


@pytest.mark.parametrize("size", [(24, 20), (12, 10, 8)])
def test_fit_log_bias_recovers_the_gain_of_a_tissue_image(size):
    """Known tissues times a smooth gain: the weighted least-squares field is that gain (up to its brain mean)."""
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(1, 4, (2, 1, *size), generator=g)
    labels[..., :2] = 0  # air
    mean = torch.tensor([[0.0], [0.3], [0.65], [1.0]])
    log_var = torch.log(torch.tensor([[1e-4], [0.03], [0.03], [0.03]]) ** 2)
    phi = cosine_basis(size, 2)
    true = torch.stack([0.2 * phi[0] - 0.1 * phi[1], -0.15 * phi[2] + 0.05 * phi[-1]])[:, None]  # (2, 1, *size)
    mask = labels > 0
    true = (
        true
        - (true * mask).flatten(1).sum(1).reshape(2, *[1] * (len(size) + 1))
        / mask.flatten(1).sum(1).reshape(2, *[1] * (len(size) + 1))
    ) * mask
    image = mean[labels, 0] * torch.exp(true) * (1 + 0.01 * torch.randn(labels.shape, generator=g))
    resp = torch.nn.functional.one_hot(labels[:, 0], 4).movedim(-1, 1).float()
    log_b = fit_log_bias(image, resp, mean, log_var, mask, order=2, bound=5.0)
    assert log_b.shape == image.shape and (log_b[~mask] == 0).all()
    assert (log_b - true).abs().max() < 0.03
    corrected = image * torch.exp(-log_b)
    for label in (1, 2, 3):  # one intensity per tissue again
        assert corrected[labels == label].std() < 0.2 * image[labels == label].std()
    with pytest.raises(ValueError, match="responsibilities"):
        fit_log_bias(image[0], resp, mean, log_var, mask)


def test_fit_log_bias_is_bounded_masked_and_centred():
    g = torch.Generator().manual_seed(1)
    size = (10, 12)
    image = torch.rand(1, 1, *size, generator=g) * 5 + 0.01  # far from any tissue mean
    mask = torch.zeros(1, 1, *size, dtype=torch.bool)
    mask[..., 2:8, 2:10] = True
    resp = torch.softmax(torch.randn(1, 3, *size, generator=g), 1)
    mean = torch.tensor([[0.0], [0.5], [1.0]])
    log_b = fit_log_bias(image, resp, mean, torch.full((3, 1), -4.0), mask, order=3, bound=0.5)
    assert torch.isfinite(log_b).all() and (log_b[~mask] == 0).all()
    assert log_b.abs().max() <= 1.0 + 1e-6  # the bound, at most doubled by the centring
    assert abs(float(log_b[mask].mean())) < 1e-6


def test_fit_tissue_gaussians_is_the_weighted_map_estimate():
    """Means and variances against a hand computation; air and an absent label keep the prior; bounds hold."""
    x = torch.tensor([[[[0.0, 0.2, 0.4], [0.6, 0.8, 1.0]]]])  # (1, 1, 2, 3)
    mask = x > 0
    r = torch.zeros(1, 3, 2, 3)
    r[0, 0] = (x[0, 0] == 0).float()  # air
    r[0, 1] = torch.tensor([[0.0, 1.0, 0.5], [0.0, 0.0, 0.0]])  # label 1: 0.2 (weight 1), 0.4 (weight 0.5)
    r[0, 2] = 1.0 - r[0, 0] - r[0, 1]
    r[0, 2, 0, 1] = 0.0
    prior_mean = torch.tensor([[0.0], [0.3], [0.7]])
    prior_log_var = torch.log(torch.tensor([[0.01], [0.04], [0.09]]))
    mean, log_var = fit_tissue_gaussians(x, r, mask, prior_mean, prior_log_var, prior_count=2.0)
    # label 1: n = 1.5; mean = (0.2 + 0.2 + 2 * 0.3) / 3.5; var = (1 (0.2 - m)^2 + 0.5 (0.4 - m)^2 + 2 * 0.04) / 3.5
    m1 = (0.2 + 0.5 * 0.4 + 2 * 0.3) / 3.5
    v1 = ((0.2 - m1) ** 2 + 0.5 * (0.4 - m1) ** 2 + 2 * 0.04) / 3.5
    # label 2: weights 0.5 (0.4), 1 (0.6), 1 (0.8), 1 (1.0)
    w2, x2 = torch.tensor([0.5, 1.0, 1.0, 1.0]), torch.tensor([0.4, 0.6, 0.8, 1.0])
    m2 = float(((w2 * x2).sum() + 2 * 0.7) / (w2.sum() + 2))
    v2 = float(((w2 * (x2 - m2) ** 2).sum() + 2 * 0.09) / (w2.sum() + 2))
    assert mean.shape == (1, 3, 1) and log_var.shape == (1, 3, 1)
    torch.testing.assert_close(mean[0, :, 0], torch.tensor([0.0, m1, m2]))
    torch.testing.assert_close(log_var[0, :, 0].exp(), torch.tensor([0.01, v1, v2]))
    # no prior weight and no voxel: the prior's values, not NaN; the variance clamped to the bounds
    r_absent = r.clone()
    r_absent[0, 2] = 0.0
    mean, log_var = fit_tissue_gaussians(x, r_absent, mask, prior_mean, prior_log_var, 0.0, (-3.0, 2.0))
    assert torch.isfinite(mean).all() and torch.isfinite(log_var).all()
    assert mean[0, 2, 0] == pytest.approx(0.7) and log_var[0, 1:].min() >= -3.0  # air keeps its prior
    # per-image priors (B, C, ch) are accepted, and the shapes are checked
    mean, _ = fit_tissue_gaussians(
        x.repeat(2, 1, 1, 1),
        r.repeat(2, 1, 1, 1),
        mask.repeat(2, 1, 1, 1),
        prior_mean.expand(2, -1, -1),
        prior_log_var.expand(2, -1, -1),
        2.0,
    )
    torch.testing.assert_close(mean[1, :, 0], torch.tensor([0.0, m1, m2]))
    with pytest.raises(ValueError, match="prior_mean"):
        fit_tissue_gaussians(x, r, mask, prior_mean[:2, None], prior_log_var, 2.0)
    with pytest.raises(ValueError, match="prior_count"):
        fit_tissue_gaussians(x, r, mask, prior_mean, prior_log_var, -1.0)


def test_fit_log_bias_takes_per_image_gaussians():
    """(B, C, ch) tissue Gaussians give each image the field of its own parameters."""
    torch.manual_seed(0)
    x = torch.rand(2, 1, 12, 10) + 0.5
    r = torch.softmax(torch.randn(2, 3, 12, 10), 1)
    mean = torch.tensor([[[0.0], [0.7], [1.1]], [[0.0], [0.5], [1.3]]])
    log_var = torch.full((2, 3, 1), -3.0)
    mask = torch.ones(2, 1, 12, 10, dtype=torch.bool)
    both = fit_log_bias(x, r, mean, log_var, mask, order=2)
    for b in range(2):
        one = fit_log_bias(x[b : b + 1], r[b : b + 1], mean[b], log_var[b], mask[b : b + 1], order=2)
        torch.testing.assert_close(both[b : b + 1], one)
