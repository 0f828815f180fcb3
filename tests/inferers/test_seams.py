"""Coherence of whole-image sampling: no seam at window transitions with shared noise, seams with per-window noise.

What is measured: each sample's deviation from the mean prediction (so the image content and the backbone's own
window effects, which every sliding-window prediction has, cancel out), at the planes where one window takes over
from the next. With MONAI's default Gaussian blending those are the middles of the overlaps; the seam ratio
compares the plane-to-plane jump there with the jump at interior planes (1 = no seam).
"""

from __future__ import annotations

import pytest
import torch
from monai.inferers import sliding_window_inference

from monai_probseg.inferers import StochasticSlidingWindowInferer
from monai_probseg.metrics import seam_ratio, window_transitions
from monai_probseg.networks.nets import ProbabilisticUNet, StochasticSegmentationNetwork

OVERLAP = 0.25
SEEDS = range(8)


def _ssn():
    torch.manual_seed(0)
    net = StochasticSegmentationNetwork(2, 1, 3, rank=4, channels=(8, 16), strides=(2,), num_res_units=0)
    with torch.no_grad():
        # small per-pixel noise, and a spatially smooth covariance factor (as a trained SSN has in a region):
        # the coherent low-rank part dominates the samples
        net.head.log_cov_diag.bias.fill_(-12.0)
        net.head.cov_factor.bias.normal_(0, 1.0, generator=torch.Generator().manual_seed(1))
    return net.eval()


def _prob_unet():
    torch.manual_seed(0)
    return ProbabilisticUNet(2, 1, 3, latent_dim=4, channels=(8, 16), num_convs_per_block=1).eval()


def _image(size):
    # a smooth image: differences between neighbouring pixels come from the samples, not from the input
    g = torch.linspace(-1, 1, size)
    yy, xx = torch.meshgrid(g, g, indexing="ij")
    return (torch.sin(3 * xx) * torch.cos(2 * yy)).view(1, 1, size, size)


def _sample_deviations(net, image, roi, sampling):
    """Probabilities of one sample per seed minus the mean prediction, (S, C, H, W)."""
    with torch.no_grad():
        mean = torch.softmax(sliding_window_inference(image, roi, 1, net, overlap=OVERLAP, mode="gaussian"), 1)
        out = []
        for seed in SEEDS:
            inferer = StochasticSlidingWindowInferer(
                roi, overlap=OVERLAP, num_samples=1, outputs=("prob",), seed=seed, sampling=sampling
            )
            out.append(inferer(image, net)["prob"][0] - mean[0])
    return torch.stack(out)


@pytest.mark.parametrize(
    "make_net, size, roi", [(_ssn, 64, (16, 16)), (_prob_unet, 128, (32, 32))], ids=["ssn", "prob_unet"]
)
def test_shared_noise_has_no_seam_and_per_window_noise_does(make_net, size, roi):
    net = make_net()
    image = _image(size)
    transitions = window_transitions((size, size), roi, OVERLAP)
    assert len(transitions[0]) >= 3  # several windows wide
    shared = _sample_deviations(net, image, roi, "shared")
    naive = _sample_deviations(net, image, roi, "per_window")
    for axis, planes in zip((-2, -1), transitions):
        r_shared = float(seam_ratio(shared, planes, axis=axis, margin=1))
        r_naive = float(seam_ratio(naive, planes, axis=axis, margin=1))
        assert r_shared <= 1.10, f"coherent samples show a seam along axis {axis}: ratio {r_shared:.3f}"
        assert r_naive > 2.0, f"per-window noise should show seams along axis {axis}: ratio {r_naive:.3f}"
    # the samples do differ (the test is not vacuous)
    assert float((shared[0] - shared[1]).abs().mean()) > 1e-3
