from __future__ import annotations

from unittest import mock

import pytest
import torch
from monai.inferers import sliding_window_inference

from monai_probseg.losses import ELBOLoss, gaussian_kl_divergence
from monai_probseg.networks.nets import ProbabilisticUNet

SMALL = {"latent_dim": 3, "channels": (4, 8, 16), "num_convs_per_block": 1}


def _net(spatial_dims=2, in_channels=1, out_channels=2, **kwargs):
    torch.manual_seed(0)
    return ProbabilisticUNet(spatial_dims, in_channels, out_channels, **{**SMALL, **kwargs})


def _data(spatial_dims=2, in_channels=1, out_channels=2, batch=2, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    spatial = (size,) * spatial_dims
    x = torch.randn(batch, in_channels, *spatial, generator=g)
    y = torch.randint(0, out_channels, (batch, 1, *spatial), generator=g)
    return x, y


CASES = [(sd, cin, cout) for sd in (2, 3) for cin in (1, 4) for cout in (2, 4)]


@pytest.mark.parametrize("spatial_dims,in_channels,out_channels", CASES)
def test_shapes(spatial_dims, in_channels, out_channels):
    net = _net(spatial_dims, in_channels, out_channels)
    x, y = _data(spatial_dims, in_channels, out_channels)
    spatial = x.shape[2:]
    out = net(x, y)
    assert isinstance(out, dict)
    assert out["logits"].shape == (2, out_channels, *spatial)
    for key in ("prior_mean", "prior_log_sigma", "posterior_mean", "posterior_log_sigma", "z"):
        assert out[key].shape == (2, 3), key
    assert out["kl"].shape == (2,)
    expected_kl = gaussian_kl_divergence(
        out["posterior_mean"], out["posterior_log_sigma"], out["prior_mean"], out["prior_log_sigma"]
    ).sum(1)
    assert torch.allclose(out["kl"], expected_kl)

    net.eval()
    with torch.no_grad():
        logits = net(x)
        maps = net.distribution(x)
        samples = net.sample(maps, 3, generator=0)
    assert type(logits) is torch.Tensor and logits.shape == (2, out_channels, *spatial)
    assert maps["features"].shape == (2, 4, *spatial)
    assert maps["latent_mean"].shape == (2, 3, *spatial) and maps["latent_std"].shape == (2, 3, *spatial)
    assert samples.shape == (2, 3, out_channels, *spatial)


def test_eval_forward_is_prior_mean():
    net = _net().eval()
    x, _ = _data()
    with torch.no_grad():
        mean, _ = net.prior_net(x)
        expected = net.fcomb(net.unet(x), mean)
        logits = net(x)
    assert torch.allclose(logits, expected)
    # also a plain tensor in training mode when no label is given
    net.train()
    assert type(net(x)) is torch.Tensor
    # the maps are the prior's parameters tiled over space
    maps = net.distribution(x)
    assert torch.allclose(net.mean_logits(maps), expected, atol=1e-5)
    _, log_sigma = net.prior_net(x)
    assert torch.allclose(maps["latent_mean"][:, :, 3, 5], mean)
    assert torch.allclose(maps["latent_std"][:, :, 0, 0], log_sigma.exp())


def test_training_forward_is_stochastic_eval_forward_with_label_is_posterior_mean():
    net = _net()
    x, y = _data()
    torch.manual_seed(1)
    a = net(x, y)
    b = net(x, y)
    assert not torch.allclose(a["z"], b["z"])  # reparameterised posterior samples
    assert torch.allclose(a["posterior_mean"], b["posterior_mean"])
    net.eval()
    c = net(x, y)
    assert torch.equal(c["z"], c["posterior_mean"])
    assert torch.equal(c["logits"], net(x, y)["logits"])


def test_label_map_and_one_hot_give_the_same_posterior():
    net = _net(out_channels=4).eval()
    x, y = _data(out_channels=4)
    one_hot = torch.zeros(2, 4, 8, 8).scatter_(1, y, 1.0)
    a, b = net(x, y), net(x, one_hot)
    assert torch.allclose(a["posterior_mean"], b["posterior_mean"])
    # float label maps (as MONAI loaders give) are accepted too
    assert torch.allclose(net(x, y.float())["posterior_mean"], a["posterior_mean"])
    # the posterior does depend on the label
    other = (y + 1) % 4
    assert not torch.allclose(net(x, other)["posterior_mean"], a["posterior_mean"])


def test_same_seed_same_samples_different_seed_different_samples():
    net = _net().eval()
    x, _ = _data()
    with torch.no_grad():
        maps = net.distribution(x)
        a = net.sample(maps, 5, generator=3)
        b = net.sample(maps, 5, generator=3)
        c = net.sample(maps, 5, generator=4)
        d = net.sample(maps, 5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and torch.equal(a, d)
    assert not torch.allclose(a, c)
    # the samples differ from each other
    assert not torch.allclose(a[:, 0], a[:, 1])


def test_noise_is_global_constant_maps():
    """Sample k is fcomb(features, z_k) with one z_k = mean + std * eps_k for the whole image."""
    net = _net().eval()
    x, _ = _data()
    with torch.no_grad():
        maps = net.distribution(x)
        samples, eps = net.sample(maps, 4, generator=0, return_noise=True)
        assert eps.shape == (2, 4, 3)
        mean, std = maps["latent_mean"][:, :, 0, 0], maps["latent_std"][:, :, 0, 0]
        for k in range(4):
            expected = net.fcomb(maps["features"], mean + std * eps[:, k])
            assert torch.allclose(samples[:, k], expected, atol=1e-5)


def test_noise_is_global_stitched_maps():
    """With maps that vary over space (stitched windows), every voxel uses the same eps_k."""
    net = _net().eval()
    x, _ = _data()
    with torch.no_grad():
        maps = net.distribution(x)
        mean = maps["latent_mean"].clone()
        std = maps["latent_std"].clone()
        mean[..., 4:] += 1.5  # right half: another window's prior
        std[..., 4:] *= 2.0
        stitched = {"features": maps["features"], "latent_mean": mean, "latent_std": std}
        samples, eps = net.sample(stitched, 3, generator=5, return_noise=True)
        for k in range(3):
            z_map = mean + std * eps[:, k].view(2, 3, 1, 1)
            assert torch.allclose(samples[:, k], net.fcomb(maps["features"], z_map), atol=1e-5)
        # chunking does not change the result
        assert torch.allclose(net.sample(stitched, 3, generator=5, chunk_size=1), samples, atol=1e-6)
        assert torch.allclose(net.sample(maps, 7, generator=1, chunk_size=2), net.sample(maps, 7, generator=1))


def test_sliding_window_stitched_maps():
    net = _net().eval()
    x, _ = _data(size=16)
    with torch.no_grad():
        maps = sliding_window_inference(x, (8, 8), 4, net.distribution, overlap=0.5, mode="gaussian")
        assert maps["features"].shape == (2, 4, 16, 16) and maps["latent_mean"].shape == (2, 3, 16, 16)
        # every window has its own prior: the stitched latent maps vary over space (a weighted average of windows)
        assert not torch.allclose(maps["latent_mean"][..., 0, 0], maps["latent_mean"][..., -1, -1])
        samples, eps = net.sample(maps, 3, generator=0, return_noise=True)
        z_map = maps["latent_mean"] + maps["latent_std"] * eps[:, 1].view(2, 3, 1, 1)
        assert torch.allclose(samples[:, 1], net.fcomb(maps["features"], z_map), atol=1e-5)
        # one window covering the image gives exactly the maps of distribution(x)
        whole = sliding_window_inference(x, (16, 16), 1, net.distribution)
        for key, value in net.distribution(x).items():
            assert torch.allclose(whole[key], value, atol=1e-6), key


def test_sampling_runs_only_fcomb():
    net = _net().eval()
    calls = {"unet": 0, "prior_net": 0, "posterior_net": 0, "fcomb.feature_proj": 0}
    hooks = []
    for name in calls:
        module = net.get_submodule(name)
        hooks.append(module.register_forward_hook(lambda *_, n=name: calls.__setitem__(n, calls[n] + 1)))
    x, _ = _data()
    with torch.no_grad(), mock.patch.object(net.fcomb, "combine", wraps=net.fcomb.combine) as combine:
        maps = net.distribution(x)
        samples = net.sample(maps, 16, generator=0, chunk_size=4)
    assert samples.shape[:2] == (2, 16)
    assert calls["unet"] == 1 and calls["prior_net"] == 1 and calls["posterior_net"] == 0
    assert calls["fcomb.feature_proj"] == 1  # the feature part of fcomb's first layer: once for all samples
    assert combine.call_count == 4  # the rest of fcomb: 16 samples in chunks of 4
    for h in hooks:
        h.remove()


def test_no_nan_with_extreme_encoder_outputs():
    net = _net(out_channels=3)
    with torch.no_grad():
        for enc in (net.prior_net, net.posterior_net):
            enc.head.weight.normal_(0.0, 1e4)
    x, y = _data(out_channels=3)
    x = 1e6 * x
    out = net(x, y)
    for key, value in out.items():
        assert torch.isfinite(value).all(), key
    assert out["prior_log_sigma"].abs().max() <= 5.0 and out["posterior_mean"].abs().max() <= 100.0
    terms = ELBOLoss()(out, y)
    assert torch.isfinite(terms["loss"])
    terms["loss"].backward()
    for name, p in net.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), name
    net.eval()
    with torch.no_grad():
        assert torch.isfinite(net.sample(net.distribution(x), 4, generator=0)).all()


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")
def test_trace_and_export_of_eval_forward():
    net = _net().eval()
    x, _ = _data()
    x2, _ = _data(seed=1)
    with torch.no_grad():
        traced = torch.jit.trace(net, x)
        assert torch.allclose(traced(x2), net(x2), atol=1e-6)
    exported = torch.export.export(net, (x,))
    with torch.no_grad():
        assert torch.allclose(exported.module()(x2), net(x2), atol=1e-6)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_script_of_eval_forward(spatial_dims):
    torch.manual_seed(0)
    net = ProbabilisticUNet(spatial_dims, 1, 3, latent_dim=2, channels=(4, 8), num_convs_per_block=1, norm="instance")
    scripted = torch.jit.script(net.eval())
    x = torch.randn(2, 1, *([8] * spatial_dims))
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x), atol=1e-6, rtol=0)
        with pytest.raises(torch.jit.Error, match="eval forward"):
            scripted(x, torch.zeros(2, 1, *([8] * spatial_dims)))


def test_input_errors():
    net = _net()
    x, y = _data()
    with pytest.raises(ValueError, match="channels, expected in_channels=1"):
        net(torch.randn(2, 3, 8, 8))
    with pytest.raises(ValueError, match="spatial dims"):
        net(torch.randn(2, 1, 8, 8, 8))
    with pytest.raises(ValueError, match="divisible by 4"):
        net(torch.randn(2, 1, 10, 8))
    with pytest.raises(ValueError, match=r"label values must lie in \[0, 1\]"):
        net(x, y + 1)
    with pytest.raises(ValueError, match="non-integer"):
        net(x, y.float() + 0.5)
    with pytest.raises(ValueError, match="to match x"):
        net(x, y[:, :, :4])
    with pytest.raises(ValueError, match="expected 1 .label map. or 2"):
        net(x, torch.zeros(2, 3, 8, 8))
    with pytest.raises(KeyError, match="latent_std"):
        net.sample({"features": torch.zeros(2, 4, 8, 8), "latent_mean": torch.zeros(2, 3, 8, 8)}, 2)
    with pytest.raises(ValueError, match="latent_mean"):
        net.sample({"features": torch.zeros(2, 4, 8, 8), "latent_mean": torch.zeros(2, 2, 8, 8),
                    "latent_std": torch.ones(2, 3, 8, 8)}, 2)  # fmt: skip
    with pytest.raises(ValueError, match="channels must have at least 2"):
        ProbabilisticUNet(2, 1, 2, channels=(8,))


def test_paper_defaults():
    net = ProbabilisticUNet(2, 1, 2)
    assert net.latent_dim == 6 and net.channels == (32, 64, 128, 192)
    assert net.fcomb.num_layers == 3 and net.fcomb.projected_channels == 32
    convs = [m for m in net.unet.encoder.levels[0].modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 3
    assert net.posterior_net.encoder.levels[0][0].conv.in_channels == 1 + 2  # image + one-hot label
