# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_probseg.networks.nets import SegmentationQualityNet


@pytest.mark.parametrize(
    "dims, in_channels, regions, scores, res_units, size",
    [(2, 7, 1, 0, 1, 40), (2, 7, 1, 3, 0, 33), (3, 10, 3, 0, 1, 16), (3, 10, 3, 5, 0, 20)],
)
def test_shapes_and_range(dims, in_channels, regions, scores, res_units, size):
    torch.manual_seed(0)
    net = SegmentationQualityNet(
        dims, in_channels, regions, channels=(4, 8), strides=(2, 2), num_res_units=res_units, num_scores=scores
    )
    net.eval()
    x = torch.randn(2, in_channels, *([size] * dims)) * 5
    s = torch.randn(2, scores) if scores else None
    y = net(x, s)
    assert y.shape == (2, regions)
    assert torch.all((y >= 0) & (y <= 1))


def test_score_statistics_standardise_and_are_saved():
    torch.manual_seed(0)
    net = SegmentationQualityNet(2, 3, 1, channels=(4,), strides=(1,), num_scores=2).eval()
    x, s = torch.randn(1, 3, 8, 8), torch.tensor([[10.0, -4.0]])
    net.set_score_statistics([10.0, -4.0], [2.0, 1.0])
    y0 = net(x, s)
    net.set_score_statistics([0.0, 0.0], [1.0, 1.0])
    assert torch.allclose(net(x, torch.zeros(1, 2)), y0)  # standardised scores of s are zero
    net.set_score_statistics([10.0, -4.0], [2.0, 1.0])
    clone = SegmentationQualityNet(2, 3, 1, channels=(4,), strides=(1,), num_scores=2).eval()
    clone.load_state_dict(net.state_dict())
    np.testing.assert_allclose(clone.score_mean.numpy(), [10.0, -4.0])
    assert torch.allclose(clone(x, s), y0)


def test_errors():
    net = SegmentationQualityNet(3, 10, 3, channels=(4,), strides=(2,), num_scores=2)
    with pytest.raises(ValueError, match="expected \\(B, 10, \\*spatial\\)"):
        net(torch.randn(1, 9, 8, 8, 8), torch.randn(1, 2))
    with pytest.raises(ValueError, match="scores must have shape"):
        net(torch.randn(1, 10, 8, 8, 8))
    with pytest.raises(ValueError, match="strides"):
        SegmentationQualityNet(3, 10, 3, channels=(4, 8), strides=(2,))
    with pytest.raises(ValueError, match="2 values"):
        net.set_score_statistics([0.0], [1.0])
