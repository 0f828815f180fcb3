"""GPU checks of the stochastic inferer (skipped without CUDA; run them on a GPU machine)."""

from __future__ import annotations

import pytest
import torch

from monai_probseg.inferers import StochasticSlidingWindowInferer
from monai_probseg.networks.nets import ProbabilisticUNet, StochasticSegmentationNetwork

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _nets():
    torch.manual_seed(0)
    ssn = StochasticSegmentationNetwork(3, 2, 3, rank=4, channels=(8, 16), strides=(2,), num_res_units=0)
    pu = ProbabilisticUNet(3, 2, 3, latent_dim=3, channels=(8, 16), num_convs_per_block=1)
    return {"ssn": ssn.eval(), "prob_unet": pu.eval()}


@pytest.mark.parametrize("name", ["ssn", "prob_unet"])
def test_gpu_windows_cpu_maps_and_seed(name):
    net = _nets()[name]
    x = torch.randn(1, 2, 24, 24, 20, generator=torch.Generator().manual_seed(0))
    kwargs = {"roi_size": (16, 16, 16), "num_samples": 6, "sample_batch_size": 4, "keep_samples": True, "seed": 3}
    with torch.no_grad():
        split = StochasticSlidingWindowInferer(sw_device="cuda", device="cpu", **kwargs)(x, net.cuda())
        again = StochasticSlidingWindowInferer(sw_device="cuda", device="cpu", **kwargs)(x, net)
        on_gpu = StochasticSlidingWindowInferer(**kwargs)(x.cuda(), net)
    assert split["prob"].device.type == "cpu" and on_gpu["prob"].device.type == "cuda"
    for key in split:
        assert torch.equal(split[key], again[key]), key
    # the stitched maps agree across devices; samples use device-specific generators, so compare the mean
    # probability only within Monte-Carlo error
    assert float((split["prob"] - on_gpu["prob"].cpu()).abs().mean()) < 0.1
