from __future__ import annotations

import pytest
import torch

from monai_probseg.inferers import StochasticSlidingWindowInferer
from monai_probseg.networks.nets import StochasticSegmentationNetwork


def _net(**kwargs):
    torch.manual_seed(0)
    net = StochasticSegmentationNetwork(
        3, 1, 3, rank=4, channels=(4, 8), strides=(2,), num_res_units=0, roi_from_image=True, **kwargs
    )
    # a sharp mean and a small covariance, so that some voxels inside the ROI are confident
    with torch.no_grad():
        net.head.mean.weight.mul_(300)
        net.head.cov_factor.weight.mul_(0.02)
        net.head.cov_factor.bias.zero_()
        net.head.log_cov_diag.bias.sub_(8)
    return net.eval()


def _image():
    x = torch.zeros(1, 1, 16, 16, 16)
    x[..., 3:13, 3:13, 3:13] = torch.randn(1, 1, 10, 10, 10, generator=torch.Generator().manual_seed(1)) + 1.0
    return x


def test_mask_marks_only_voxels_that_can_change():
    net = _net()
    x = _image()
    with torch.no_grad():
        maps = net.distribution(x)
        mask = net.sampling_mask(maps)
        samples = torch.softmax(net.sample(maps, 200, generator=0), 2)
    assert mask.shape == (1, 1, 16, 16, 16) and mask.dtype == torch.bool
    assert not bool(mask[..., 0, 0, 0])  # air outside the ROI: epsilon covariance
    assert bool(mask.any())
    roi = (x != 0)[:, 0]
    mean_probs = torch.softmax(maps["mean"], 1).unsqueeze(1)
    deviation = (samples - mean_probs).abs().amax(dim=(1, 2))  # (B, *spatial): worst sample, worst class
    skipped = ~mask[:, 0]
    # inside the ROI, a skipped voxel's samples stay within the tolerance of the mean prediction
    assert bool((skipped & roi).any())
    assert float(deviation[skipped & roi].max()) <= net.sampling_tolerance * 1.01
    # outside the ROI the covariance is the epsilon placeholder: deviations of order sqrt(epsilon)
    assert float(deviation[~roi].max()) < 0.02
    # voxels kept for sampling really vary
    assert float(deviation[mask[:, 0]].max()) > 10 * net.sampling_tolerance


def test_inferer_with_mask_matches_unmasked_sampling():
    net = _net()
    ref_net = _net(sampling_tolerance=None)
    ref_net.load_state_dict(net.state_dict())
    x = _image()
    assert ref_net.sampling_mask(ref_net.distribution(x)) is None
    kwargs = {"roi_size": (8, 8, 8), "num_samples": 64, "sample_batch_size": 16, "seed": 0}
    with torch.no_grad():
        masked = StochasticSlidingWindowInferer(**kwargs)(x, net)
        full = StochasticSlidingWindowInferer(**kwargs)(x, ref_net)
    # same distribution: mean probabilities agree within Monte-Carlo error of 64 samples
    assert float((masked["prob"] - full["prob"]).abs().max()) < 0.25
    assert float((masked["prob"] - full["prob"]).abs().mean()) < 0.02
    assert float(masked["mutual_info"][..., 0, 0, 0]) == 0.0


def test_bad_tolerance():
    with pytest.raises(ValueError, match="sampling_tolerance"):
        StochasticSegmentationNetwork(2, 1, 2, sampling_tolerance=2.0)


def _voxel_maps(net, gaps, factor_diffs, diag=1e-5):
    """Maps of one voxel per entry: 2 classes, rank 1, mean logits (0, gap), factor (0, factor_diff)."""
    n = len(gaps)
    mean = torch.stack([torch.zeros(n), torch.tensor(gaps, dtype=torch.float32)]).reshape(1, 2, n, 1, 1)
    factor = torch.stack([torch.zeros(n), torch.tensor(factor_diffs, dtype=torch.float32)]).reshape(1, 2, n, 1, 1)
    return {"mean": mean, "cov_factor": factor, "cov_diag": torch.full_like(mean, diag)}


def test_confidence_bound_matches_hand_computation():
    import math

    net = StochasticSegmentationNetwork(3, 1, 2, rank=1, channels=(4, 8), strides=(2,), num_res_units=0).eval()
    tol = net.sampling_tolerance
    gaps = [8.0, 12.0, 14.0, 20.0, 20.0]
    diffs = [0.5, 0.5, 2.0, 2.0, 4.5]
    expected = []
    for g, a in zip(gaps, diffs):
        v = a * a + 2e-5  # (P_1 - P_0)^2 + D_0 + D_1
        log_u = -g + v / 2
        entropy_bound = math.exp(log_u) * (1 - log_u)
        variance_bound = math.exp(-2 * g + 2 * v)
        expected.append(not (log_u <= -1 and entropy_bound <= tol and variance_bound <= tol))
    mask = net.sampling_mask(_voxel_maps(net, gaps, diffs))
    assert mask.shape == (1, 1, 5, 1, 1)
    assert mask.flatten().tolist() == expected == [True, False, False, False, True]


def test_mask_uses_the_scaled_distribution():
    kwargs = {"rank": 1, "channels": (4, 8), "strides": (2,), "num_res_units": 0, "sampling_tolerance": 1e-4}
    wide = StochasticSegmentationNetwork(3, 1, 2, **kwargs).eval()
    narrow = StochasticSegmentationNetwork(3, 1, 2, sample_scale=0.3, **kwargs).eval()
    maps = _voxel_maps(wide, [14.0], [3.0])
    assert bool(wide.sampling_mask(maps).all())  # v = 9: E p <= exp(-9.5), bound 8e-4 > 1e-4
    assert not bool(narrow.sampling_mask(maps).any())  # v = 0.81 after the 0.3 scale


def test_skipped_voxels_keep_the_maps_within_tolerance():
    net = StochasticSegmentationNetwork(3, 1, 2, rank=1, channels=(4, 8), strides=(2,), num_res_units=0).eval()
    net.sampling_tolerance = 1e-3
    gaps = torch.linspace(6.0, 14.0, 33).tolist()
    maps = _voxel_maps(net, gaps, [2.0] * 33)
    skipped = ~net.sampling_mask(maps).flatten()
    assert 0 < int(skipped.sum()) < 33
    probs = torch.softmax(net.sample(maps, 20000, generator=0).double(), 2)[0]  # (N, 2, 33, 1, 1)
    mean_probs = torch.softmax(maps["mean"].double(), 1)[0].flatten(1)
    sample_mean = probs.mean(0).flatten(1)
    entropy = -(probs * probs.clamp_min(1e-300).log()).sum(1).mean(0).flatten()
    mean_entropy = -(mean_probs * mean_probs.log()).sum(0)
    assert float((sample_mean - mean_probs).abs()[:, skipped].max()) <= 1e-3
    assert float((entropy - mean_entropy).abs()[skipped].max()) <= 1e-3
    # the sampled voxels really differ, and the bound is not loose: at the last sampled gap the entropy moves by
    # more than a third of the tolerance
    assert float((entropy - mean_entropy).abs()[0]) > 1e-2
    last = int((~skipped).nonzero().max())
    assert float((entropy - mean_entropy).abs()[last]) > 1e-3 / 3
