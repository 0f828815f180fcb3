# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

from __future__ import annotations

import unittest
import warnings

import pytest
import torch
import torch.nn as nn
from monai.networks.nets import BasicUNet, DynUNet, SegResNet, UNet
from parameterized import parameterized

from monai_probseg.losses import LowRankMVNNLLLoss
from monai_probseg.networks.nets import StochasticSegmentationNetwork

from ...toy import classify_two_mode, two_mode_toy

FEATS = 6


class _NaNOnSecond(nn.Module):
    """A 2D backbone whose features are NaN for every batch item but the first."""

    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(1, channels, 3, padding=1)

    def forward(self, x):
        out = self.conv(x)
        return torch.cat([out[:1], out[1:] * float("nan")])


def _backbone(name, dims, in_channels):
    if name == "default":
        return None
    if name == "UNet":
        return UNet(dims, in_channels, FEATS, channels=(4, 8), strides=(2,), num_res_units=0)
    if name == "BasicUNet":
        return BasicUNet(dims, in_channels, FEATS, features=(4, 4, 8, 8, 8, 4))
    if name == "DynUNet":
        return DynUNet(
            dims,
            in_channels,
            FEATS,
            kernel_size=[3, 3, 3],
            strides=[1, 2, 2],
            upsample_kernel_size=[2, 2],
            filters=[4, 8, 8],
        )
    if name == "SegResNet":
        return SegResNet(
            dims, init_filters=4, in_channels=in_channels, out_channels=FEATS, blocks_down=(1, 1), blocks_up=(1,),
            norm=("GROUP", {"num_groups": 2}),
        )  # fmt: skip
    raise ValueError(name)


def _tiny_ssn(dims, in_channels=2, out_channels=3, rank=3, **kwargs):
    return StochasticSegmentationNetwork(
        dims, in_channels, out_channels, rank=rank, channels=(4, 8), strides=(2,), num_res_units=1,
        backbone_channels=4, **kwargs,
    )  # fmt: skip


CASES = [
    [name, dims, spatial]
    for name in ("default", "UNet", "BasicUNet", "DynUNet", "SegResNet")
    for dims, spatial in ((2, (32, 16)), (3, (32, 16, 16)))  # BasicUNet: 4 poolings, > 1 voxel left
]


class TestStochasticSegmentationNetwork(unittest.TestCase):
    @parameterized.expand(CASES)
    def test_backbones_shapes(self, name, dims, spatial):
        backbone = _backbone(name, dims, 2)
        if backbone is None:
            net = _tiny_ssn(dims)
        else:
            net = StochasticSegmentationNetwork(dims, 2, 3, rank=3, backbone=backbone, backbone_channels=FEATS)
        x = torch.randn(2, 2, *spatial)
        net.train()
        out = net(x, torch.zeros(2, 1, *spatial))
        self.assertEqual(set(out), {"logits", "mean", "cov_factor", "cov_diag"})
        self.assertEqual(tuple(out["logits"].shape), (2, 3, *spatial))
        self.assertEqual(tuple(out["cov_factor"].shape), (2, 9, *spatial))
        self.assertEqual(tuple(out["cov_diag"].shape), (2, 3, *spatial))
        self.assertGreaterEqual(float(out["cov_diag"].detach().min()), 1e-5)
        net.eval()
        with torch.no_grad():
            logits = net(x)
            maps = net.distribution(x)
            samples = net.sample(maps, 4, generator=0)
        self.assertIsInstance(logits, torch.Tensor)
        self.assertEqual(tuple(logits.shape), (2, 3, *spatial))
        torch.testing.assert_close(logits, maps["mean"])
        torch.testing.assert_close(logits, out["mean"].detach())  # no train/eval difference in these norms
        self.assertEqual(tuple(samples.shape), (2, 4, 3, *spatial))
        self.assertTrue(torch.isfinite(samples).all())
        self.assertGreater(float((samples - logits.unsqueeze(1)).abs().mean()), 1e-3)

    @parameterized.expand([[2, (8, 8)], [3, (8, 8, 8)]])
    def test_same_seed_same_samples(self, dims, spatial):
        net = _tiny_ssn(dims).eval()
        with torch.no_grad():
            maps = net.distribution(torch.randn(1, 2, *spatial))
            a = net.sample(maps, 5, generator=11)
            b = net.sample(maps, 5, generator=torch.Generator().manual_seed(11))
            c = net.sample(maps, 5, generator=12)
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        self.assertGreater(float((a - c).abs().max()), 1e-3)

    def test_low_rank_noise_is_global(self):
        """Without the diagonal, each sample minus the mean is P @ eps with one eps for the whole image."""
        rank = 3
        net = _tiny_ssn(2, rank=rank).eval()
        with torch.no_grad():
            maps = net.distribution(torch.randn(1, 2, 8, 8))
            maps = {**maps, "cov_diag": torch.zeros_like(maps["cov_diag"])}
            s = net.sample(maps, 6, generator=0)
        resid = (s[0] - maps["mean"]).reshape(6, -1)  # (N, C*V)
        self.assertEqual(int(torch.linalg.matrix_rank(resid, atol=1e-4)), rank)
        dense = maps["cov_factor"][0].reshape(3, rank, -1).permute(0, 2, 1).reshape(-1, rank)  # (C*V, R)
        eps = torch.linalg.lstsq(dense, resid.T).solution
        torch.testing.assert_close(dense @ eps, resid.T, atol=1e-4, rtol=1e-4)

    def test_shared_eps_stitches_chunks(self):
        """Sampling two halves of the maps with the same eps equals sampling the whole (no seams)."""
        net = _tiny_ssn(2).eval()
        with torch.no_grad():
            maps = net.distribution(torch.randn(1, 2, 8, 8))
            maps = {**maps, "cov_diag": torch.zeros_like(maps["cov_diag"])}
            eps = torch.randn(1, 4, 3)
            whole = net.sample(maps, 4, eps=eps)
            left = net.sample({k: v[..., :4] for k, v in maps.items()}, 4, eps=eps)
            right = net.sample({k: v[..., 4:] for k, v in maps.items()}, 4, eps=eps)
        torch.testing.assert_close(torch.cat([left, right], dim=-1), whole)

    @parameterized.expand([[2, (8, 8)], [3, (8, 8, 8)]])
    def test_diagonal_zero_factor(self, dims, spatial):
        net = _tiny_ssn(dims, diagonal=True).train()
        out = net(torch.randn(2, 2, *spatial))
        self.assertTrue(net.diagonal)
        self.assertEqual(tuple(out["cov_factor"].shape), (2, 9, *spatial))
        self.assertEqual(float(out["cov_factor"].detach().abs().max()), 0.0)
        self.assertGreater(float(out["cov_diag"].detach().min()), 1e-5)

    @parameterized.expand([[2, (8, 8)], [3, (8, 8, 8)]])
    def test_roi(self, dims, spatial):
        x = torch.zeros(2, 2, *spatial)
        inside = (slice(None), slice(None)) + tuple(slice(2, 6) for _ in spatial)
        x[inside] = torch.rand(x[inside].shape) + 0.5
        roi = (x != 0).any(1, keepdim=True)
        for net, kwargs in (
            (_tiny_ssn(dims, epsilon=1e-4), {"roi_mask": roi}),
            (_tiny_ssn(dims, epsilon=1e-4, roi_from_image=True), {}),
        ):
            with torch.no_grad():
                maps = net.distribution(x, **kwargs)
            out_f = ~roi.expand_as(maps["cov_factor"])
            out_d = ~roi.expand_as(maps["cov_diag"])
            self.assertEqual(float(maps["cov_factor"][out_f].abs().max()), 0.0)
            torch.testing.assert_close(maps["cov_diag"][out_d], torch.full((int(out_d.sum()),), 1e-4))
            self.assertGreater(float(maps["cov_factor"][~out_f].abs().max()), 0.0)
            self.assertGreater(float(maps["cov_diag"][~out_d].min()), 1e-4)
            # outside the ROI the samples (almost) equal the mean
            s = net.sample(maps, 3, generator=0)
            dev = (s - maps["mean"].unsqueeze(1)).abs()
            out_s = out_d.unsqueeze(1).expand_as(dev)
            self.assertLess(float(dev[out_s].max()), 0.06)  # 6 sd of sqrt(1e-4)
            self.assertGreater(float(dev[~out_s].max()), 0.1)

    def test_fallback_counted_and_warned(self):
        net = StochasticSegmentationNetwork(2, 1, 2, rank=2, backbone=_NaNOnSecond(4), backbone_channels=4)
        with self.assertWarns(RuntimeWarning):
            out = net(torch.randn(2, 1, 6, 6))
        self.assertEqual(net.num_fallbacks, 1)
        for v in out.values():
            self.assertTrue(torch.isfinite(v).all())
        torch.testing.assert_close(out["cov_diag"][1], torch.full((2, 6, 6), 1e-5))
        self.assertEqual(float(out["cov_factor"][1].detach().abs().max()), 0.0)
        loss = LowRankMVNNLLLoss(generator=0)(out, torch.zeros(2, 1, 6, 6))
        self.assertTrue(torch.isfinite(loss))
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the second time it does not warn
            net(torch.randn(2, 1, 6, 6))
        self.assertEqual(net.num_fallbacks, 2)

    @parameterized.expand([(False,), (True,)])
    def test_window_maps_complete_to_distribution(self, diagonal):
        """complete_maps(window_maps(x)) is distribution(x), with a region, a diagonal head and a fallback item."""

        torch.manual_seed(0)
        net = StochasticSegmentationNetwork(
            2, 1, 3, rank=4, backbone=_NaNOnSecond(5), backbone_channels=5, diagonal=diagonal, roi_from_image=True
        ).eval()
        x = torch.randn(2, 1, 9, 7)
        x[..., 5:] = 0
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            window = net.window_maps(x)
            direct = net.distribution(x)
        self.assertEqual("cov_factor" in window, False)
        self.assertEqual("factor_features" in window, not diagonal)
        maps = net.complete_maps(window)
        self.assertEqual(set(maps), set(direct))
        for key in direct:
            torch.testing.assert_close(maps[key], direct[key], atol=1e-6, rtol=1e-6)
            self.assertTrue(torch.isfinite(maps[key]).all())
        self.assertIs(net.complete_maps(maps), maps)  # complete maps stay as they are
        self.assertEqual(net.num_fallbacks, 2)  # the NaN item, once per call
        torch.testing.assert_close(maps["cov_diag"][1], torch.full((3, 9, 7), 1e-5))

    def test_errors(self):
        with self.assertRaisesRegex(ValueError, "backbone_channels is required"):
            StochasticSegmentationNetwork(2, 1, 2, backbone=nn.Conv2d(1, 4, 1))
        with self.assertRaisesRegex(TypeError, "backbone"):
            StochasticSegmentationNetwork(2, 1, 2, backbone="unet", backbone_channels=4)
        net = StochasticSegmentationNetwork(2, 1, 2, backbone=nn.Conv2d(1, 4, 1), backbone_channels=5)
        with self.assertRaisesRegex(ValueError, "backbone must map"):
            net(torch.randn(1, 1, 4, 4))
        with self.assertRaisesRegex(ValueError, r"input must be \(B, 2"):
            _tiny_ssn(2)(torch.randn(1, 3, 8, 8))
        with self.assertRaisesRegex(ValueError, "spatial_dims"):
            StochasticSegmentationNetwork(4, 1, 2)
        with self.assertRaisesRegex(KeyError, "cov_factor"):
            _tiny_ssn(2).sample({"mean": torch.zeros(1, 3, 4, 4)}, 2)

    @parameterized.expand([(2, False, False), (3, True, True)])
    def test_script_of_eval_forward(self, dims, diagonal, roi_from_image):
        torch.manual_seed(0)
        net = _tiny_ssn(dims, diagonal=diagonal, roi_from_image=roi_from_image).eval()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            scripted = torch.jit.script(net)
        x = torch.randn(2, 2, *([8] * dims))
        x[0, :, :2] = 0  # some "air" for the region of interest
        with torch.no_grad():
            torch.testing.assert_close(scripted(x), net(x), atol=1e-6, rtol=0)

    def test_default_backbone(self):
        net = StochasticSegmentationNetwork(3, 4, 4)
        self.assertIsInstance(net.backbone, UNet)
        self.assertEqual((net.rank, net.backbone_channels, net.epsilon), (10, 32, 1e-5))
        self.assertEqual(net.head.cov_factor.out_channels, 40)

    def test_learns_two_mode_frequencies(self):
        """On the two-mode toy problem (p_large = 0.3) the sample frequency of the large mode is 0.3 +- 0.1."""
        torch.manual_seed(0)
        images, labels = two_mode_toy(512, (16, 16), p_large=0.3, seed=0)
        net = StochasticSegmentationNetwork(
            2, 1, 2, rank=2, channels=(8, 16), strides=(2,), num_res_units=0, backbone_channels=8
        )
        loss_fn = LowRankMVNNLLLoss(num_mc_samples=20, generator=1)
        opt = torch.optim.Adam(net.parameters(), 1e-2)
        g = torch.Generator().manual_seed(2)
        net.train()
        for _ in range(800):
            idx = torch.randint(0, 512, (32,), generator=g)
            loss = loss_fn(net(images[idx], labels[idx]), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        net.eval()
        test_image, _ = two_mode_toy(1, (16, 16), seed=99)
        with torch.no_grad():
            samples = net.sample(net.distribution(test_image), 200, generator=3)
        freq = float(classify_two_mode(samples.argmax(2), (16, 16)).float().mean())
        self.assertAlmostEqual(freq, 0.3, delta=0.10)
        # the mean (best single answer) is the more frequent, small mode
        self.assertFalse(bool(classify_two_mode(net(test_image).argmax(1), (16, 16))[0]))


if __name__ == "__main__":
    unittest.main()


def test_sample_scale_narrows_the_noise():
    """``sample_scale`` s gives mean + s * (noise): the same draws, scaled about the mean."""
    net = StochasticSegmentationNetwork(2, 1, 3, rank=2, channels=(4, 8), strides=(2,), num_res_units=0)
    scaled = StochasticSegmentationNetwork(
        2, 1, 3, rank=2, channels=(4, 8), strides=(2,), num_res_units=0, sample_scale=0.5
    )
    scaled.load_state_dict(net.state_dict())
    net.eval()
    scaled.eval()
    with torch.no_grad():
        maps = net.distribution(torch.randn(1, 1, 16, 16))
        a, b = net.sample(maps, 4, generator=0), scaled.sample(maps, 4, generator=0)
    mean = maps["mean"][:, None]
    torch.testing.assert_close(b - mean, 0.5 * (a - mean), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="sample_scale"):
        StochasticSegmentationNetwork(2, 1, 3, sample_scale=0.0)
