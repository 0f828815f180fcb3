# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

from __future__ import annotations

import math
import unittest

import torch
import torch.nn.functional as F
from parameterized import parameterized

from monai_probseg.distributions import MIN_VARIANCE, low_rank_sample, variance_to_std
from monai_probseg.losses import LowRankMVNNLLLoss


def _params(num_classes=2, rank=2, spatial=(1, 3), batch=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn((batch, num_classes, *spatial), generator=g)
    factor = 0.5 * torch.randn((batch, num_classes * rank, *spatial), generator=g)
    diag = 0.3 * torch.rand((batch, num_classes, *spatial), generator=g) + 0.05
    return mean, factor, diag


def _hand_loss(mean, factor, diag, target, num_samples, seed, antithetic, rank):
    """Direct computation with python floats for one batch item, spatial (1, V)."""
    num_classes, num_vox = mean.shape[1], mean.shape[-1]
    num_draw = num_samples // 2 if antithetic else num_samples
    g = torch.Generator().manual_seed(seed)
    eps = torch.randn((1, num_draw, rank), generator=g)
    eta = torch.randn((1, num_draw, num_classes, 1, num_vox), generator=g)
    centred = []
    for n in range(num_draw):
        z = [
            [
                sum(float(factor[0, c * rank + r, 0, v]) * float(eps[0, n, r]) for r in range(rank))
                + math.sqrt(float(diag[0, c, 0, v])) * float(eta[0, n, c, 0, v])
                for v in range(num_vox)
            ]
            for c in range(num_classes)
        ]
        centred.append(z)
    if antithetic:
        centred = centred + [[[-x for x in row] for row in z] for z in centred]
    sums = []
    for z in centred:
        total = 0.0
        for v in range(num_vox):
            logits = [float(mean[0, c, 0, v]) + z[c][v] for c in range(num_classes)]
            y = int(target[0, 0, 0, v])
            total += logits[y] - math.log(sum(math.exp(x) for x in logits))
        sums.append(total)
    top = max(sums)
    return -(top + math.log(sum(math.exp(s - top) for s in sums)) - math.log(num_samples))


class TestLowRankMVNNLLLoss(unittest.TestCase):
    @parameterized.expand([[True], [False]])
    def test_hand_computation(self, antithetic):
        """1 batch item, 2 classes, 3 voxels, M = 4: the loss equals the formula evaluated by hand."""
        mean, factor, diag = _params()
        target = torch.tensor([[[[1, 0, 1]]]])
        loss = LowRankMVNNLLLoss(num_mc_samples=4, antithetic=antithetic, generator=5)(
            mean, target, cov_factor=factor, cov_diag=diag
        )
        expected = _hand_loss(mean, factor, diag, target, 4, 5, antithetic, rank=2)
        self.assertAlmostEqual(float(loss), expected, places=5)

    def test_dict_input_equals_tensor_input(self):
        mean, factor, diag = _params(3, 2, (4, 4), batch=2)
        target = torch.randint(0, 3, (2, 1, 4, 4))
        a = LowRankMVNNLLLoss(generator=1)(
            {"logits": mean, "mean": mean, "cov_factor": factor, "cov_diag": diag}, target
        )
        b = LowRankMVNNLLLoss(generator=1)(mean, target[:, 0], cov_factor=factor, cov_diag=diag)
        torch.testing.assert_close(a, b)

    @parameterized.expand([[2, (5, 4)], [3, (3, 4, 2)]])
    def test_deterministic_limit_is_cross_entropy(self, num_classes, spatial):
        """With (almost) no covariance every sample is the mean: the loss is the summed cross-entropy."""
        mean, factor, diag = _params(num_classes, 2, spatial, batch=2)
        target = torch.randint(0, num_classes, (2, 1, *spatial))
        loss = LowRankMVNNLLLoss(reduction="none", generator=0)(
            mean, target, cov_factor=torch.zeros_like(factor), cov_diag=torch.zeros_like(diag)
        )
        ce = F.cross_entropy(mean, target[:, 0], reduction="none").flatten(1).sum(1)
        torch.testing.assert_close(loss, ce)

    def test_sigmoid_single_channel(self):
        mean, factor, diag = _params(1, 2, (4, 4), batch=2)
        target = torch.randint(0, 2, (2, 1, 4, 4))
        loss = LowRankMVNNLLLoss(generator=0)(
            mean, target, cov_factor=torch.zeros_like(factor), cov_diag=torch.zeros_like(diag)
        )
        bce = F.binary_cross_entropy_with_logits(mean, target.float(), reduction="sum") / 2
        torch.testing.assert_close(loss, bce)
        self.assertTrue(torch.isfinite(LowRankMVNNLLLoss()(mean, target, cov_factor=factor, cov_diag=diag)))

    def test_mask_and_ignore_index_exclude_voxels(self):
        mean, factor, diag = _params(2, 2, (4, 4), batch=2)
        target = torch.randint(0, 2, (2, 1, 4, 4))
        mask = torch.ones_like(target)
        mask[:, :, :2] = 0
        flipped = target.clone()
        flipped[:, :, :2] = 1 - flipped[:, :, :2]
        ignored = target.clone()
        ignored[:, :, :2] = 255
        kw = {"cov_factor": factor, "cov_diag": diag}
        a = LowRankMVNNLLLoss(generator=3)(mean, target, mask=mask, **kw)
        b = LowRankMVNNLLLoss(generator=3)(mean, flipped, mask=mask, **kw)
        c = LowRankMVNNLLLoss(generator=3, ignore_index=255)(mean, ignored, **kw)
        full = LowRankMVNNLLLoss(generator=3)(mean, target, **kw)
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(a, c)
        self.assertLess(float(a), float(full))
        # masked loss with zero covariance = cross-entropy over the kept voxels only
        zero = {"cov_factor": torch.zeros_like(factor), "cov_diag": torch.zeros_like(diag)}
        ce = F.cross_entropy(mean, target[:, 0], reduction="none")[:, 2:].sum() / 2
        torch.testing.assert_close(LowRankMVNNLLLoss()(mean, target, mask=mask, **zero), ce)

    def test_reductions(self):
        mean, factor, diag = _params(2, 2, (3, 3), batch=3)
        target = torch.randint(0, 2, (3, 1, 3, 3))
        kw = {"cov_factor": factor, "cov_diag": diag}
        per_item = LowRankMVNNLLLoss(reduction="none", generator=0)(mean, target, **kw)
        self.assertEqual(tuple(per_item.shape), (3,))
        torch.testing.assert_close(LowRankMVNNLLLoss(generator=0)(mean, target, **kw), per_item.mean())
        torch.testing.assert_close(LowRankMVNNLLLoss(reduction="sum", generator=0)(mean, target, **kw), per_item.sum())

    def test_seed_reproducible_and_noise_changes_between_calls(self):
        mean, factor, diag = _params(2, 2, (4, 4))
        target = torch.randint(0, 2, (1, 1, 4, 4))
        kw = {"cov_factor": factor, "cov_diag": diag}
        loss_a, loss_b = LowRankMVNNLLLoss(generator=9), LowRankMVNNLLLoss(generator=9)
        first = loss_a(mean, target, **kw)
        torch.testing.assert_close(first, loss_b(mean, target, **kw))
        self.assertNotEqual(float(first), float(loss_a(mean, target, **kw)))  # the generator moves on

    def test_large_sums_stay_finite(self):
        """Per-sample log-likelihood sums of about -1e6 would underflow a naive exp; logsumexp keeps them."""
        mean = torch.zeros(1, 2, 64, 64)
        mean[:, 1] = 500.0
        target = torch.zeros(1, 1, 64, 64, dtype=torch.long)
        factor, diag = torch.randn(1, 2 * 3, 64, 64), torch.full((1, 2, 64, 64), 1.0)
        mean.requires_grad_(True)
        factor.requires_grad_(True)
        loss = LowRankMVNNLLLoss(generator=0)(mean, target, cov_factor=factor, cov_diag=diag)
        self.assertTrue(torch.isfinite(loss))
        self.assertGreater(float(loss.detach()), 1e6)
        loss.backward()
        self.assertTrue(torch.isfinite(mean.grad).all() and torch.isfinite(factor.grad).all())

    def test_gradient_reaches_covariance(self):
        mean, factor, diag = (t.clone().requires_grad_(True) for t in _params(2, 2, (4, 4)))
        target = torch.randint(0, 2, (1, 1, 4, 4))
        LowRankMVNNLLLoss(generator=0)(mean, target, cov_factor=factor, cov_diag=diag).backward()
        for t in (mean, factor, diag):
            self.assertTrue(torch.isfinite(t.grad).all())
            self.assertGreater(float(t.grad.abs().sum()), 0.0)

    def test_return_dict(self):
        mean, factor, diag = _params(2, 2, (4, 4), batch=2)
        target = torch.randint(0, 2, (2, 1, 4, 4))
        kw = {"cov_factor": factor, "cov_diag": diag}
        out = LowRankMVNNLLLoss(generator=0, return_dict=True)(mean, target, **kw)
        self.assertEqual(set(out), {"loss", "nll_per_voxel", "ce_mean"})
        torch.testing.assert_close(out["loss"], LowRankMVNNLLLoss(generator=0)(mean, target, **kw))
        torch.testing.assert_close(out["nll_per_voxel"], out["loss"] / 16)
        torch.testing.assert_close(out["ce_mean"], F.cross_entropy(mean, target[:, 0]))

    def test_mean_ce_weight_adds_summed_cross_entropy(self):
        """loss = NLL + w * CE of the mean summed over the counted voxels (hand values), per image."""
        mean, factor, diag = _params()
        target = torch.tensor([[[[1, 0, 1]]]])
        loss = LowRankMVNNLLLoss(num_mc_samples=4, generator=5, mean_ce_weight=0.5)(
            mean, target, cov_factor=factor, cov_diag=diag
        )
        ce = 0.0
        for v, y in enumerate([1, 0, 1]):
            logits = [float(mean[0, c, 0, v]) for c in range(2)]
            ce -= logits[y] - math.log(sum(math.exp(t) for t in logits))
        expected = _hand_loss(mean, factor, diag, target, 4, 5, True, rank=2) + 0.5 * ce
        self.assertAlmostEqual(float(loss), expected, places=5)
        # masked voxels leave both terms; batch items keep their own sums
        mean2, factor2, diag2 = _params(3, 2, (4, 4), batch=2)
        target2 = torch.randint(0, 3, (2, 1, 4, 4), generator=torch.Generator().manual_seed(1))
        mask = torch.ones(2, 1, 4, 4)
        mask[:, :, :2] = 0
        kw = {"cov_factor": factor2, "cov_diag": diag2, "mask": mask}
        base = LowRankMVNNLLLoss(generator=3, reduction="none")(mean2, target2, **kw)
        weighted = LowRankMVNNLLLoss(generator=3, reduction="none", mean_ce_weight=2.0)(mean2, target2, **kw)
        ce2 = F.cross_entropy(mean2, target2[:, 0], reduction="none")[:, 2:].flatten(1).sum(-1)
        torch.testing.assert_close(weighted, base + 2.0 * ce2)

    def test_errors(self):
        mean, factor, diag = _params(2, 2, (4, 4))
        with self.assertRaisesRegex(ValueError, "mean_ce_weight"):
            LowRankMVNNLLLoss(mean_ce_weight=-1.0)
        kw = {"cov_factor": factor, "cov_diag": diag}
        with self.assertRaisesRegex(ValueError, "even"):
            LowRankMVNNLLLoss(num_mc_samples=5)
        LowRankMVNNLLLoss(num_mc_samples=5, antithetic=False)  # fine without antithetic pairs
        with self.assertRaisesRegex(ValueError, "target must be"):
            LowRankMVNNLLLoss()(mean, torch.zeros(1, 1, 4, 3, dtype=torch.long), **kw)
        with self.assertRaisesRegex(ValueError, r"target values must be in \[0, 1\]"):
            LowRankMVNNLLLoss()(mean, torch.full((1, 1, 4, 4), 2), **kw)
        with self.assertRaisesRegex(KeyError, "cov_factor"):
            LowRankMVNNLLLoss()({"mean": mean}, torch.zeros(1, 1, 4, 4))
        with self.assertRaisesRegex(ValueError, "cov_factor and cov_diag"):
            LowRankMVNNLLLoss()(mean, torch.zeros(1, 1, 4, 4))
        with self.assertRaisesRegex(ValueError, "reduction"):
            LowRankMVNNLLLoss(reduction="max")

    def test_float16_gives_the_float32_result(self):
        """At 256^2 voxels the per-sample sum of log-probabilities exceeds float16's 65504: it is summed in float32."""
        mean, factor, diag = _params(2, 2, (256, 256), seed=4)
        mean = 3.0 * mean
        target = torch.randint(0, 2, (1, 1, 256, 256), generator=torch.Generator().manual_seed(5))
        loss_fn = LowRankMVNNLLLoss(num_mc_samples=2, reduction="none", generator=0)
        ref = loss_fn(mean, target, cov_factor=factor, cov_diag=diag)
        self.assertGreater(float(ref), 65504.0)  # a float16 sum would be -inf
        half = [t.half().requires_grad_(True) for t in (mean, factor, diag)]
        loss_fn = LowRankMVNNLLLoss(num_mc_samples=2, reduction="none", generator=0)  # same draws as above
        out = loss_fn(half[0], target, cov_factor=half[1], cov_diag=half[2])
        self.assertEqual(out.dtype, torch.float32)
        self.assertTrue(torch.isfinite(out).all())
        torch.testing.assert_close(out.detach(), ref, rtol=1e-3, atol=0.0)
        # the float32 result of the same (rounded) values, to rounding of the sums
        rounded = LowRankMVNNLLLoss(num_mc_samples=2, reduction="none", generator=0)(
            half[0].detach().float(), target, cov_factor=half[1].detach().float(), cov_diag=half[2].detach().float()
        )
        torch.testing.assert_close(out.detach(), rounded, rtol=1e-6, atol=0.0)
        out.sum().backward()
        for t in half:
            self.assertEqual(t.grad.dtype, torch.float16)
            self.assertTrue(torch.isfinite(t.grad).all())

    def test_autocast_does_not_lower_the_precision(self):
        mean, factor, diag = _params(3, 2, (16, 16), seed=6)
        target = torch.randint(0, 3, (1, 1, 16, 16), generator=torch.Generator().manual_seed(7))
        kw = {"cov_factor": factor, "cov_diag": diag}
        ref = LowRankMVNNLLLoss(num_mc_samples=4, generator=0)(mean, target, **kw)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = LowRankMVNNLLLoss(num_mc_samples=4, generator=0)(mean, target, **kw)
        self.assertEqual(out.dtype, torch.float32)
        torch.testing.assert_close(out, ref)

    def test_sampler_gradient_finite_at_zero_variance(self):
        """d sqrt(D) / dD is infinite at D = 0: such variances give std 0 and gradient 0 (MIN_VARIANCE)."""
        mean, factor, diag = _params(2, 2, (3, 4), seed=8)
        diag[:, :, 0] = 0.0  # a user-supplied diagonal with exact zeros
        diag[:, :, 1, 0] = 0.5 * MIN_VARIANCE
        mean, factor, diag = (t.clone().requires_grad_(True) for t in (mean, factor, diag))
        samples = low_rank_sample(mean, factor, diag, 6, generator=0)
        weights = torch.randn(samples.shape, generator=torch.Generator().manual_seed(1))
        (samples * weights).sum().backward()
        for t in (mean, factor, diag):
            self.assertTrue(torch.isfinite(t.grad).all())
        self.assertTrue((diag.grad[:, :, 0] == 0).all())
        # zero variance: every sample minus its low-rank part is exactly the mean
        without_diag = low_rank_sample(mean, factor, torch.zeros_like(diag), 6, generator=0)
        torch.testing.assert_close(samples[:, :, :, 0], without_diag[:, :, :, 0], rtol=0, atol=0)
        # positive variances keep the exact sqrt gradient: sum_n w * eta / (2 sqrt(D))
        g = torch.Generator().manual_seed(0)
        torch.randn((1, 6, 2), generator=g)  # eps, drawn first
        eta = torch.randn((1, 6, 2, 3, 4), generator=g)
        expected = (weights * eta).sum(1) / (2 * diag.detach().sqrt())
        torch.testing.assert_close(diag.grad[:, :, 1:, 1:], expected[:, :, 1:, 1:])
        torch.testing.assert_close(variance_to_std(torch.tensor([0.0, 1e-13, -1.0, 4.0])), torch.tensor([0, 0, 0, 2.0]))
        # through the loss as well
        loss = LowRankMVNNLLLoss(generator=0)(
            mean, torch.zeros(1, 1, 3, 4, dtype=torch.long), cov_factor=factor, cov_diag=diag
        )
        diag.grad = None
        loss.backward()
        self.assertTrue(torch.isfinite(diag.grad).all())


class TestFusedLikelihood(unittest.TestCase):
    """The fused, chunked Monte Carlo likelihood equals the plain autograd form, value and gradients."""

    @parameterized.expand([[True, 1], [False, 3], [True, 10**6]])
    def test_value_and_gradients_match_autograd(self, antithetic, chunk):
        from monai_probseg.losses import mvn_nll

        mean, factor, diag = (t.double() for t in _params(num_classes=3, rank=2, spatial=(4, 5), batch=2, seed=4))
        target = torch.randint(0, 3, (2, 1, 4, 5), generator=torch.Generator().manual_seed(2))
        mask = torch.rand(2, 1, 4, 5, generator=torch.Generator().manual_seed(3)) > 0.3
        results = []
        for fused in (True, False):
            leaves = [t.clone().requires_grad_(True) for t in (mean, factor, diag)]
            if fused:
                old = dict(mvn_nll._LIKELIHOOD_CHUNK_ELEMENTS)
                mvn_nll._LIKELIHOOD_CHUNK_ELEMENTS["cpu"] = chunk * 3 * (2 if antithetic else 4)
                try:
                    loss = LowRankMVNNLLLoss(4, antithetic=antithetic, generator=7, mean_ce_weight=0.3)(
                        leaves[0], target, cov_factor=leaves[1], cov_diag=leaves[2], mask=mask
                    )
                finally:
                    mvn_nll._LIKELIHOOD_CHUNK_ELEMENTS.update(old)
            else:  # the same draws through low_rank_sample and autograd
                samples = low_rank_sample(*leaves, 4, generator=7, antithetic=antithetic)
                log_p = torch.log_softmax(samples, 2).gather(2, target.unsqueeze(1).expand(-1, 4, 1, -1, -1))[:, :, 0]
                log_lik = (log_p * mask).flatten(2).sum(-1)
                ce = -(torch.log_softmax(leaves[0], 1).gather(1, target)[:, 0] * mask[:, 0]).flatten(1).sum(-1)
                loss = (-(torch.logsumexp(log_lik, 1) - math.log(4)) + 0.3 * ce).mean()
            loss.backward()
            results.append((loss.detach(), *(t.grad for t in leaves)))
        for a, b in zip(*results):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)

    def test_gradcheck(self):
        from monai_probseg.losses.mvn_nll import _LowRankLogLikelihood

        g = torch.Generator().manual_seed(0)
        mean = torch.randn(1, 3, 6, dtype=torch.double, generator=g, requires_grad=True)
        factor = torch.randn(1, 3, 2, 6, dtype=torch.double, generator=g, requires_grad=True)
        std = (torch.rand(1, 3, 6, dtype=torch.double, generator=g) + 0.1).requires_grad_(True)
        eps = torch.randn(1, 2, 2, dtype=torch.double, generator=g)
        eta = torch.randn(1, 2, 3, 6, dtype=torch.double, generator=g)
        labels = torch.randint(0, 3, (1, 6), generator=g)
        weight = torch.ones(1, 6, dtype=torch.double)
        fn = lambda m, f, s: _LowRankLogLikelihood.apply(m, f, s, eps, eta, labels, weight, True)  # noqa: E731
        self.assertTrue(torch.autograd.gradcheck(fn, (mean, factor, std)))


if __name__ == "__main__":
    unittest.main()
