"""The bias field of the anatomical-prior likelihood: the cosine basis and the weighted least-squares fit."""

from __future__ import annotations

import math

import pytest
import torch

from monai_probseg.networks.blocks import cosine_basis, fit_log_bias


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
