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
