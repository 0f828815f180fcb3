"""SmoothBiasField: the cosine basis, masking and centring, and a field that learns a known gain."""

from __future__ import annotations

import math

import pytest
import torch

from monai_probseg.networks.blocks import SmoothBiasField, cosine_basis


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


def test_field_starts_at_zero_and_is_masked_and_centred():
    torch.manual_seed(0)
    field = SmoothBiasField(2, in_features=3, channels=2, order=2, bound=0.5)
    features = torch.randn(2, 3, 4, 4)
    mask = torch.zeros(2, 1, 12, 10, dtype=torch.bool)
    mask[:, :, 2:10, 1:9] = True
    assert torch.equal(field(features, (12, 10), mask), torch.zeros(2, 2, 12, 10))  # zero-initialised
    with torch.no_grad():
        field.coefficients.weight.normal_()
        field.coefficients.bias.normal_()
    log_bias = field(features, (12, 10), mask)
    assert log_bias.shape == (2, 2, 12, 10) and torch.isfinite(log_bias).all()
    assert (log_bias[~mask.expand(-1, 2, -1, -1)] == 0).all()
    inside = (log_bias * mask).flatten(2).sum(2) / mask.flatten(2).sum(2)
    torch.testing.assert_close(inside, torch.zeros(2, 2), atol=1e-6, rtol=0)
    assert log_bias.abs().max() <= 2 * 0.5  # the bound before centring, at most doubled by it
    with pytest.raises(ValueError, match="bound"):
        SmoothBiasField(2, 3, 1, bound=0.0)
    with pytest.raises(ValueError, match="order"):
        SmoothBiasField(2, 3, 1, order=0)


def test_field_learns_a_smooth_gain():
    """Fitting the coefficients to a known smooth log-gain of the basis recovers it (the field can express it)."""
    torch.manual_seed(0)
    size = (16, 16)
    target = 0.3 * cosine_basis(size, 3)[1] - 0.2 * cosine_basis(size, 3)[5]
    mask = torch.ones(1, 1, *size, dtype=torch.bool)
    field = SmoothBiasField(2, in_features=1, channels=1, order=3)
    opt = torch.optim.Adam(field.parameters(), lr=0.05)
    features = torch.ones(1, 1, 2, 2)
    for _ in range(300):
        loss = (field(features, size, mask)[0, 0] - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 1e-4
