# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

from __future__ import annotations

import math
import unittest
import warnings

import torch
from parameterized import parameterized

from monai_probseg.networks.blocks import LowRankHead, low_rank_sample


def _maps(batch, num_classes, rank, spatial, seed=0, diag_scale=0.1):
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn((batch, num_classes, *spatial), generator=g)
    factor = torch.randn((batch, num_classes * rank, *spatial), generator=g)
    diag = diag_scale * torch.rand((batch, num_classes, *spatial), generator=g) + 0.01
    return mean, factor, diag


def _dense_factor(factor, num_classes, rank):
    """(B, C*R, *s) maps -> (B, C*V, R) matrix with event index c * V + v."""
    b = factor.shape[0]
    return factor.reshape(b, num_classes, rank, -1).permute(0, 1, 3, 2).reshape(b, -1, rank)


class TestLowRankSample(unittest.TestCase):
    @parameterized.expand([[(6, 5)], [(4, 3, 5)]])
    def test_shape_and_reproducible(self, spatial):
        mean, factor, diag = _maps(2, 3, 4, spatial)
        s1 = low_rank_sample(mean, factor, diag, 6, generator=7)
        s2 = low_rank_sample(mean, factor, diag, 6, generator=torch.Generator().manual_seed(7))
        s3 = low_rank_sample(mean, factor, diag, 6, generator=8)
        self.assertEqual(tuple(s1.shape), (2, 6, 3, *spatial))
        torch.testing.assert_close(s1, s2, rtol=0, atol=0)
        self.assertGreater(float((s1 - s3).abs().max()), 0.1)

    def test_draw_order_by_hand(self):
        """eps (B, N, R) is drawn first, then eta (B, N, C, *s); the sample is mean + P eps + sqrt(D) eta."""
        mean, factor, diag = _maps(1, 2, 3, (2, 2))
        out = low_rank_sample(mean, factor, diag, 4, generator=3)
        g = torch.Generator().manual_seed(3)
        eps = torch.randn((1, 4, 3), generator=g)
        eta = torch.randn((1, 4, 2, 2, 2), generator=g)
        for n in range(4):
            for c in range(2):
                expected = mean[0, c] + diag[0, c].sqrt() * eta[0, n, c]
                for r in range(3):
                    expected = expected + factor[0, c * 3 + r] * eps[0, n, r]
                torch.testing.assert_close(out[0, n, c], expected)

    @parameterized.expand([[(5, 4)], [(3, 3, 3)]])
    def test_antithetic_mirrored(self, spatial):
        mean, factor, diag = _maps(2, 2, 3, spatial)
        for grad in (False, True):
            with torch.set_grad_enabled(grad):
                m = mean.clone().requires_grad_(grad)
                s = low_rank_sample(m, factor, diag, 8, generator=1, antithetic=True).detach()
            half = s.shape[1] // 2
            torch.testing.assert_close(s[:, :half] + s[:, half:], 2 * mean.unsqueeze(1).expand(-1, half, -1, *spatial))
            self.assertGreater(float((s[:, :half] - s[:, half:]).abs().max()), 0.1)
        with self.assertRaisesRegex(ValueError, "even"):
            low_rank_sample(mean, factor, diag, 5, antithetic=True)

    def test_low_rank_noise_is_global(self):
        """With a zero diagonal, every sample minus the mean is P @ eps with ONE eps for all voxels."""
        num_classes, rank = 3, 2
        mean, factor, _ = _maps(1, num_classes, rank, (6, 7))
        s = low_rank_sample(mean, factor, torch.zeros_like(mean), 5, generator=0)
        dense = _dense_factor(factor, num_classes, rank)[0]  # (C*V, R)
        resid = (s[0] - mean).reshape(5, -1)  # (N, C*V)
        eps = torch.linalg.lstsq(dense, resid.T).solution  # (R, N)
        torch.testing.assert_close(dense @ eps, resid.T, atol=1e-4, rtol=1e-4)
        # the rank-R structure: the N residual maps span at most R dimensions
        self.assertEqual(int(torch.linalg.matrix_rank(resid, atol=1e-3)), rank)

    def test_given_eps_shared(self):
        mean, factor, diag = _maps(3, 2, 2, (4, 4))
        eps = torch.randn(1, 4, 2)
        s = low_rank_sample(mean, factor, torch.zeros_like(diag), 4, eps=eps)
        expected = mean.unsqueeze(1) + torch.einsum("bcrhw,nr->bnchw", factor.reshape(3, 2, 2, 4, 4), eps[0])
        torch.testing.assert_close(s, expected)
        with self.assertRaisesRegex(ValueError, "eps must be"):
            low_rank_sample(mean, factor, diag, 4, eps=torch.randn(2, 4, 2))

    def test_covariance_matches_torch_lowrank_mvn(self):
        """Empirical covariance of the samples equals P P^T + D of torch's LowRankMultivariateNormal."""
        num_classes, rank = 2, 2
        mean, factor, diag = _maps(1, num_classes, rank, (1, 3), diag_scale=0.5)
        dist = torch.distributions.LowRankMultivariateNormal(
            mean.reshape(1, -1), _dense_factor(factor, num_classes, rank), diag.reshape(1, -1)
        )
        s = low_rank_sample(mean, factor, diag, 40000, generator=0).reshape(40000, -1)
        emp = torch.cov(s.T)
        torch.testing.assert_close(emp, dist.covariance_matrix[0], atol=0.08 * float(emp.abs().max()), rtol=0)
        torch.testing.assert_close(s.mean(0), mean.reshape(-1), atol=0.05, rtol=0)

    def test_gradients_flow(self):
        mean, factor, diag = (t.clone().requires_grad_(True) for t in _maps(1, 2, 2, (3, 3)))
        low_rank_sample(mean, factor, diag, 4, generator=0, antithetic=True).pow(2).sum().backward()
        for t in (mean, factor, diag):
            self.assertTrue(torch.isfinite(t.grad).all())
            self.assertGreater(float(t.grad.abs().sum()), 0.0)

    def test_bad_shapes(self):
        mean, factor, diag = _maps(1, 3, 2, (4, 4))
        with self.assertRaisesRegex(ValueError, "multiple of the 3 classes"):
            low_rank_sample(mean, factor[:, :5], diag, 2)
        with self.assertRaisesRegex(ValueError, "cov_diag"):
            low_rank_sample(mean, factor, diag[:, :2], 2)
        with self.assertRaisesRegex(ValueError, "num_samples"):
            low_rank_sample(mean, factor, diag, 0)


class TestLowRankHead(unittest.TestCase):
    @parameterized.expand([[2, (8, 6)], [3, (4, 4, 4)]])
    def test_shapes_and_values(self, dims, spatial):
        head = LowRankHead(dims, in_channels=5, out_channels=3, rank=4, act=None)
        with torch.no_grad():
            head.log_cov_diag.weight.zero_()
            head.log_cov_diag.bias.fill_(math.log(2.0))
        maps = head(torch.randn(2, 5, *spatial))
        self.assertEqual(tuple(maps["mean"].shape), (2, 3, *spatial))
        self.assertEqual(tuple(maps["cov_factor"].shape), (2, 12, *spatial))
        torch.testing.assert_close(maps["cov_diag"], torch.full((2, 3, *spatial), 2.0 + 1e-5))

    @parameterized.expand([[2, (8, 6)], [3, (4, 5, 3)]])
    def test_heads_are_the_three_convolutions(self, dims, spatial):
        """The fused pointwise product equals the three 1x1 convolutions, values and gradients."""
        torch.manual_seed(0)
        head = LowRankHead(dims, in_channels=5, out_channels=3, rank=4)
        features = torch.randn(2, 5, *spatial, requires_grad=True)
        maps = head(features)
        h = torch.relu(features)
        ref = {
            "mean": head.mean(h),
            "cov_factor": head.cov_factor(h),
            "cov_diag": torch.exp(head.log_cov_diag(h).clamp(-20.0, 10.0)) + 1e-5,
        }
        for key, value in ref.items():
            torch.testing.assert_close(maps[key], value, atol=1e-5, rtol=1e-5)
        weights = torch.randn(3)
        grads = torch.autograd.grad(sum(w * maps[k].square().sum() for w, k in zip(weights, ref)), [features])
        ref_grads = torch.autograd.grad(sum(w * ref[k].square().sum() for w, k in zip(weights, ref)), [features])
        torch.testing.assert_close(grads[0], ref_grads[0], atol=1e-4, rtol=1e-4)

    def test_log_diag_clamped(self):
        head = LowRankHead(2, 4, 2, rank=2, log_diag_range=(-5.0, 3.0))
        with torch.no_grad():
            head.log_cov_diag.weight.zero_()
            head.log_cov_diag.bias.copy_(torch.tensor([1e4, -1e4]))
        diag = head(torch.randn(1, 4, 3, 3))["cov_diag"]
        torch.testing.assert_close(diag[0, 0], torch.full((3, 3), math.exp(3.0) + 1e-5))
        torch.testing.assert_close(diag[0, 1], torch.full((3, 3), math.exp(-5.0) + 1e-5))

    @torch.no_grad()
    def test_diagonal_zero_factor(self):
        head = LowRankHead(3, 4, 2, rank=3, diagonal=True)
        self.assertIsNone(head.cov_factor)
        maps = head(torch.randn(2, 4, 3, 3, 3))
        self.assertEqual(tuple(maps["cov_factor"].shape), (2, 6, 3, 3, 3))
        self.assertEqual(float(maps["cov_factor"].abs().sum()), 0.0)

    @torch.no_grad()
    def test_roi(self):
        head = LowRankHead(2, 4, 2, rank=3, epsilon=1e-4)
        roi = torch.zeros(2, 1, 5, 5)
        roi[:, :, 1:3, 1:4] = 1
        maps = head(torch.randn(2, 4, 5, 5), roi_mask=roi)
        out = roi.expand(-1, 6, -1, -1) == 0
        self.assertEqual(float(maps["cov_factor"][out].abs().sum()), 0.0)
        self.assertGreater(float(maps["cov_factor"][~out].abs().min()), 0.0)
        diag_out = maps["cov_diag"][roi.expand(-1, 2, -1, -1) == 0]
        torch.testing.assert_close(diag_out, torch.full_like(diag_out, 1e-4))
        with self.assertRaisesRegex(ValueError, "roi_mask"):
            head(torch.randn(2, 4, 5, 5), roi_mask=torch.ones(2, 1, 4, 5))

    @torch.no_grad()
    def test_fallback_warned_once_and_counted(self):
        head = LowRankHead(2, 3, 2, rank=2, epsilon=1e-5, act=None)
        feats = torch.randn(3, 3, 4, 4)
        feats[1, 0, 2, 2] = float("nan")
        with self.assertWarns(RuntimeWarning):
            maps = head(feats)
        self.assertEqual(head.num_fallbacks, 1)
        for v in maps.values():
            self.assertTrue(torch.isfinite(v).all())
        self.assertEqual(float(maps["cov_factor"][1].abs().sum()), 0.0)
        torch.testing.assert_close(maps["cov_diag"][1], torch.full((2, 4, 4), 1e-5))
        self.assertGreater(float(maps["cov_factor"][0].abs().sum()), 0.0)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            head(feats)
        self.assertEqual(len(caught), 0)  # warned once only
        self.assertEqual(head.num_fallbacks, 2)

    def test_bad_args(self):
        with self.assertRaisesRegex(ValueError, "epsilon"):
            LowRankHead(2, 4, 2, epsilon=0.0)
        with self.assertRaisesRegex(ValueError, "spatial_dims"):
            LowRankHead(1, 4, 2)
        with self.assertRaisesRegex(ValueError, "features must be"):
            LowRankHead(2, 4, 2)(torch.randn(1, 3, 4, 4))


if __name__ == "__main__":
    unittest.main()
