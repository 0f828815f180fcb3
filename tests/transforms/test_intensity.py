# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""ScaleBrainIntensity: the brain percentile maps to 1, air stays 0, and non-brain images are refused."""

from __future__ import annotations

import pytest
import torch
from monai.data import MetaTensor

from monai_probseg.transforms import ScaleBrainIntensity, ScaleBrainIntensityd


def test_scale_is_invariant_to_the_scanner_scale_and_keeps_air():
    torch.manual_seed(0)
    img = torch.zeros(1, 20, 20)
    img[0, 5:15, 5:15] = torch.rand(10, 10) + 0.5
    a = ScaleBrainIntensity(percentile=100)(img)
    b = ScaleBrainIntensity(percentile=100)(1234.0 * img)
    torch.testing.assert_close(a, b)
    assert float(a.max()) == pytest.approx(1.0) and (a[img == 0] == 0).all()
    values = img[img > 0].sort().values
    median = ScaleBrainIntensity(percentile=50)(img)
    assert float(median[img > 0].max()) == pytest.approx(float(values[-1] / values[49]), rel=1e-6)


def test_negative_and_non_finite_voxels_become_air():
    img = torch.tensor([[[-1.0, 2.0, float("nan"), 4.0] * 5]])
    out = ScaleBrainIntensity(percentile=100, min_voxels=1)(img)
    assert torch.isfinite(out).all() and float(out.min()) == 0.0 and float(out.max()) == 1.0


def test_errors_name_the_file():
    head = MetaTensor(torch.rand(1, 8, 8) + 0.1, meta={"filename_or_obj": "/data/head_t1.nii.gz"})
    with pytest.raises(ValueError, match=r"'/data/head_t1.nii.gz'.*0.0% of its voxels at 0.*skull-stripped"):
        ScaleBrainIntensityd("image", min_background=0.05)({"image": head})
    with pytest.raises(ValueError, match="0 voxel\\(s\\) above 0"):
        ScaleBrainIntensity()(torch.zeros(1, 8, 8))
    with pytest.raises(ValueError, match="percentile"):
        ScaleBrainIntensity(percentile=0)


def test_fill_background_completes_the_probabilities_outside_a_crop():
    from monai_probseg.transforms import fill_background

    prob = torch.zeros(4, 3, 3)
    prob[:, 1, 1] = torch.tensor([0.1, 0.2, 0.3, 0.4])
    out = fill_background(prob)
    torch.testing.assert_close(out.sum(0), torch.ones(3, 3))
    torch.testing.assert_close(out[:, 1, 1], prob[:, 1, 1])
