# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""The fused low-rank sampler: the moments it folds are those of the samples of ``low_rank_sample``."""

from __future__ import annotations

import unittest

import torch
from parameterized import parameterized

from monai_probseg.distributions import low_rank_moments, low_rank_sample
from monai_probseg.inferers import StochasticSlidingWindowInferer
from monai_probseg.metrics import StreamingUncertaintyMaps, uncertainty_maps
from monai_probseg.networks.nets import StochasticSegmentationNetwork


def _maps(batch, num_classes, rank, spatial, seed=0, diag_scale=0.5):
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn((batch, num_classes, *spatial), generator=g)
    factor = 0.7 * torch.randn((batch, num_classes * rank, *spatial), generator=g)
    diag = diag_scale * torch.rand((batch, num_classes, *spatial), generator=g)
    return mean, factor, diag


def _reference(mean, factor, diag, n, eps):
    probs = torch.softmax(low_rank_sample(mean, factor, diag, n, generator=1, eps=eps), 2)
    maps = uncertainty_maps(probs)
    return probs, maps


class TestLowRankMoments(unittest.TestCase):
    @parameterized.expand([((6, 5),), ((4, 3, 5),)])
    def test_equals_the_moments_of_the_samples_when_the_noise_is_low_rank_only(self, spatial):
        # with a zero diagonal a sample is a function of eps alone: the fused moments must equal the plain ones
        mean, factor, _ = _maps(2, 3, 4, spatial)
        diag = torch.zeros_like(mean)
        eps = torch.randn(2, 7, 4, generator=torch.Generator().manual_seed(3))
        for chunk in (1, 17, 10**6):  # chunks of one voxel, a few voxels, the whole image
            out = low_rank_moments(mean, factor, diag, 7, generator=0, eps=eps, chunk_elements=chunk, keep_labels=True)
            probs, ref = _reference(mean, factor, diag, 7, eps)
            torch.testing.assert_close(out["mean"], ref["prob"], atol=1e-6, rtol=1e-5)
            torch.testing.assert_close(out["m2"] / 7, ref["variance"], atol=1e-6, rtol=1e-5)
            torch.testing.assert_close(out["expected_entropy"], ref["expected_entropy"], atol=1e-6, rtol=1e-5)
            self.assertEqual(out["labels"].dtype, torch.uint8)
            torch.testing.assert_close(out["labels"].long(), probs.argmax(2))

    def test_same_distribution_as_low_rank_sample(self):
        # per-voxel noise on: the mean probabilities and entropies of many samples agree within Monte Carlo error
        mean, factor, diag = _maps(1, 3, 2, (4, 4))
        n = 4000
        fused = low_rank_moments(mean, factor, diag, n, generator=0)
        _, ref = _reference(mean, factor, diag, n, None)
        self.assertLess(float((fused["mean"] - ref["prob"]).abs().max()), 0.03)
        self.assertLess(float((fused["m2"] / n - ref["variance"]).abs().max()), 0.01)
        self.assertLess(float((fused["expected_entropy"] - ref["expected_entropy"]).abs().max()), 0.03)
        # and the per-voxel noise matters: without it the moments differ clearly
        no_diag = low_rank_moments(mean, factor, torch.zeros_like(diag), n, generator=0)
        self.assertGreater(float((no_diag["expected_entropy"] - ref["expected_entropy"]).abs().max()), 0.05)

    def test_same_seed_same_moments_and_checks(self):
        mean, factor, diag = _maps(1, 2, 3, (5, 5))
        a = low_rank_moments(mean, factor, diag, 9, generator=5, keep_labels=True)
        b = low_rank_moments(mean, factor, diag, 9, generator=5, keep_labels=True)
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
        c = low_rank_moments(mean, factor, diag, 9, generator=6)
        self.assertFalse(torch.equal(a["mean"], c["mean"]))
        with self.assertRaisesRegex(ValueError, "C >= 2"):
            low_rank_moments(mean[:, :1], factor[:, :3], diag[:, :1], 4)
        with self.assertRaisesRegex(ValueError, "cov_factor"):
            low_rank_moments(mean, factor[:, :5], diag, 4)
        with self.assertRaisesRegex(ValueError, "eps"):
            low_rank_moments(mean, factor, diag, 4, eps=torch.zeros(1, 3, 3))

    def test_streaming_merge_equals_update(self):
        probs = torch.softmax(torch.randn(1, 6, 3, 4, 4), 2)
        a, b = StreamingUncertaintyMaps(), StreamingUncertaintyMaps()
        a.update(probs[:, :2])
        a.update(probs[:, 2:])
        b.update(probs[:, :2])
        rest = probs[:, 2:]
        m = rest.mean(1)
        ent = -(rest * rest.log()).sum(2, keepdim=True).mean(1)
        b.merge(4, m, (rest - m[:, None]).square().sum(1), ent)
        for key, value in a.compute().items():
            torch.testing.assert_close(b.compute()[key], value)
        with self.assertRaisesRegex(ValueError, "moments must be"):
            b.merge(1, m, m[:, :1], ent)

    def test_inferer_uses_the_fused_path_and_keeps_the_maps(self):
        torch.manual_seed(0)
        net = StochasticSegmentationNetwork(2, 1, 3, rank=4, channels=(4, 8), strides=(2,), num_res_units=0).eval()
        x = torch.randn(1, 1, 16, 16)
        inferer = StochasticSlidingWindowInferer(8, num_samples=12, seed=0, keep_samples=True)
        with torch.no_grad():
            out = inferer(x, net)
            again = inferer(x, net)
            maps = net.distribution(x)
            moments = net.sample_moments(maps, 12, torch.Generator().manual_seed(0))
        self.assertIsNotNone(moments)
        self.assertEqual(tuple(out["samples"].shape), (1, 12, 16, 16))
        torch.testing.assert_close(out["prob"], again["prob"], rtol=0, atol=0)
        torch.testing.assert_close(out["prob"].sum(1), torch.ones(1, 16, 16), atol=1e-5, rtol=0)
        # the sample label maps are draws of the same distribution as the maps: their class frequencies follow
        # the mean probabilities (12 samples: loose bound), and the seg is the argmax of the mean
        freq = torch.stack([(out["samples"] == c).float().mean(1) for c in range(3)], 1)
        self.assertLess(float((freq - out["prob"]).abs().mean()), 0.15)
        torch.testing.assert_close(out["seg"][:, 0], out["prob"].argmax(1))


if __name__ == "__main__":
    unittest.main()


def test_grouped_chunks_keep_the_random_stream(monkeypatch):
    """Folding several chunks at once (fewer, larger operations) changes nothing: same seed, same bits."""
    import monai_probseg.distributions as distributions

    mean, factor, diag = _maps(2, 3, 4, (13, 11, 9), seed=3)  # 1287 voxels: full chunks and a partial one
    outs = {}
    for group in (1, 2, 5):
        monkeypatch.setitem(distributions._FUSED_GROUP, "cpu", group)
        outs[group] = low_rank_moments(mean, factor, diag, 6, generator=2, keep_labels=True, chunk_elements=3 * 6 * 100)
    for group in (2, 5):
        for key, value in outs[1].items():
            assert torch.equal(outs[group][key], value), (group, key)
