from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from monai_probseg.networks.blocks import ConvEncoder, GaussianLatentEncoder, LatentCombiner, soft_clamp


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_conv_encoder_levels(spatial_dims):
    enc = ConvEncoder(spatial_dims, 3, channels=(4, 8, 16), num_convs_per_block=2)
    feats = enc(torch.rand(2, 3, *([16] * spatial_dims)))
    assert [tuple(f.shape) for f in feats] == [
        (2, 4, *([16] * spatial_dims)),
        (2, 8, *([8] * spatial_dims)),
        (2, 16, *([4] * spatial_dims)),
    ]
    # 2 convolutions per level, average pooling between levels
    assert (
        sum(isinstance(m, torch.nn.AvgPool2d if spatial_dims == 2 else torch.nn.AvgPool3d) for m in enc.modules()) == 2
    )


def test_soft_clamp():
    x = torch.tensor([-1e30, -1e3, -0.01, 0.0, 0.01, 1e3, 1e30])
    y = soft_clamp(x, 5.0)
    assert torch.allclose(y[2:5], x[2:5], atol=1e-6)  # the identity near 0
    assert torch.allclose(y[[0, 1]], torch.tensor([-5.0, -5.0])) and torch.allclose(y[[5, 6]], torch.tensor([5.0, 5.0]))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_gaussian_latent_encoder_shapes_and_init(spatial_dims):
    enc = GaussianLatentEncoder(spatial_dims, 2, latent_dim=5, channels=(4, 8), num_convs_per_block=1)
    mean, log_sigma = enc(torch.rand(3, 2, *([8] * spatial_dims)))
    assert mean.shape == (3, 5) and log_sigma.shape == (3, 5)
    # small head initialisation: starts near N(0, I)
    assert mean.abs().max() < 0.1 and log_sigma.abs().max() < 0.1


def test_gaussian_latent_encoder_bounds_with_extreme_outputs():
    enc = GaussianLatentEncoder(2, 1, latent_dim=3, channels=(4, 8), num_convs_per_block=1, max_log_sigma=4.0)
    with torch.no_grad():
        enc.head.weight.fill_(1e4)
        enc.head.bias[3:].fill_(-1e12)  # log-sigma raw outputs hugely negative, means hugely positive
    x = (1e6 * torch.rand(2, 1, 8, 8)).requires_grad_(True)
    mean, log_sigma = enc(x)
    assert torch.isfinite(mean).all() and torch.isfinite(log_sigma).all()
    assert (mean <= 100.0).all() and (log_sigma >= -4.0).all() and (log_sigma <= 4.0).all()
    assert torch.isfinite(torch.exp(log_sigma)).all() and (torch.exp(log_sigma) > 0).all()
    (mean.sum() + torch.exp(log_sigma).sum()).backward()
    assert torch.isfinite(x.grad).all()


def _concat_reference(fcomb: LatentCombiner, features: torch.Tensor, z_map: torch.Tensor) -> torch.Tensor:
    """The paper's form: one 1x1 conv over concat(features, tiled z), then the remaining layers."""
    sd = features.dim() - 2
    weight = torch.cat([fcomb.feature_proj.weight, fcomb.latent_proj.weight], dim=1)
    conv = F.conv2d if sd == 2 else F.conv3d
    h = conv(torch.cat([features, z_map], dim=1), weight, fcomb.feature_proj.bias)
    return fcomb.head(h)


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("num_layers", [1, 3])
def test_latent_combiner_equals_concatenation_form(spatial_dims, num_layers):
    torch.manual_seed(0)
    fcomb = LatentCombiner(spatial_dims, feature_channels=5, latent_dim=3, out_channels=4, num_layers=num_layers)
    spatial = (6,) * spatial_dims
    features = torch.randn(2, 5, *spatial)
    z = torch.randn(2, 3)
    z_tiled = z.view(2, 3, *([1] * spatial_dims)).expand(2, 3, *spatial)
    expected = _concat_reference(fcomb, features, z_tiled)
    out = fcomb(features, z)
    assert out.shape == (2, 4, *spatial)
    assert torch.allclose(out, expected, atol=1e-5)
    # a latent map that varies over space
    z_map = torch.randn(2, 3, *spatial)
    assert torch.allclose(fcomb(features, z_map), _concat_reference(fcomb, features, z_map), atol=1e-5)


def test_latent_combiner_combine_many_samples():
    torch.manual_seed(0)
    fcomb = LatentCombiner(2, feature_channels=6, latent_dim=2, out_channels=3)
    features = torch.randn(2, 6, 5, 5)
    z = torch.randn(2, 7, 2)
    out = fcomb.combine(fcomb.project_features(features), z)
    assert out.shape == (2, 7, 3, 5, 5)
    for k in range(7):
        assert torch.allclose(out[:, k], fcomb(features, z[:, k]), atol=1e-5)


def test_latent_combiner_shape_errors():
    fcomb = LatentCombiner(2, feature_channels=6, latent_dim=2, out_channels=3)
    with pytest.raises(ValueError, match="features must have shape"):
        fcomb(torch.randn(2, 5, 4, 4), torch.randn(2, 2))
    with pytest.raises(ValueError, match="z must have shape"):
        fcomb(torch.randn(2, 6, 4, 4), torch.randn(2, 3))
    with pytest.raises(ValueError, match="num_layers"):
        LatentCombiner(2, 6, 2, 3, num_layers=0)
