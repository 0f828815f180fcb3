# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

from __future__ import annotations

import numpy as np
import pytest

from monai_probseg.metrics import PLAUSIBILITY_LIMITS, plausibility_scores, plausibility_warnings


def _brute_distance(mask: np.ndarray, spacing) -> np.ndarray:
    """Euclidean distance (mm) of every voxel to the nearest voxel of ``mask``, by brute force."""
    grid = np.stack(np.meshgrid(*[np.arange(s) * sp for s, sp in zip(mask.shape, spacing)], indexing="ij"), -1)
    points = grid[mask]
    return np.sqrt(((grid[..., None, :] - points) ** 2).sum(-1)).min(-1)


@pytest.mark.parametrize("spacing", [(1.0, 1.0), (1.0, 2.0)])
def test_scores_match_a_direct_computation(spacing):
    rng = np.random.default_rng(0)
    shape = (24, 20)
    reference = np.zeros(shape, dtype=bool)
    reference[8:14, 6:11] = True
    brain = np.zeros(shape, dtype=bool)
    brain[1:-1, 1:-1] = True
    entropy = rng.uniform(0, 0.2, shape).astype(np.float32)
    samples = np.zeros((3, *shape), dtype=bool)
    samples[0, 8:14, 6:11] = True  # the reference: ratio 1
    samples[1, 8:11, 6:11] = True  # half of it
    samples[2] = True  # everything
    scores = plausibility_scores(entropy, reference, samples=samples, brain=brain, spacing=spacing)

    outside = _brute_distance(reference, spacing)
    inside = _brute_distance(~reference, spacing)
    far = (outside > 8) & brain
    band = ((outside > 0) & (outside <= 2)) | (reference & (inside <= 2))
    assert scores["far_entropy_median"] == pytest.approx(np.median(entropy[far]), rel=1e-6)
    assert scores["far_entropy_mean"] == pytest.approx(entropy[far].mean(), rel=1e-6)
    assert scores["boundary_entropy_mean"] == pytest.approx(entropy[band].mean(), rel=1e-6)
    assert scores["boundary_far_ratio"] == pytest.approx(entropy[band].mean() / entropy[far].mean(), rel=1e-6)
    assert scores["high_entropy_fraction"] == 0.0
    assert scores["reference_voxels"] == 30
    assert scores["sample_volume_ratio_min"] == pytest.approx(0.5)
    assert scores["sample_volume_ratio_max"] == pytest.approx(24 * 20 / 30)
    assert scores["sample_volume_ratio_median"] == pytest.approx(1.0)


def test_warnings_plausible_and_degenerate():
    shape = (40, 40, 40)
    reference = np.zeros(shape, dtype=bool)
    reference[15:25, 15:25, 15:25] = True
    samples = np.stack([reference] * 4)
    # a good model: certain far away, uncertain at the boundary
    entropy = np.zeros(shape, dtype=np.float32)
    entropy[14:26, 14:26, 14:26] = 0.4
    entropy[16:24, 16:24, 16:24] = 0.0
    good = plausibility_scores(entropy, reference, samples=samples)
    assert good["far_entropy_median"] == 0.0 and good["boundary_far_ratio"] > 1e3
    assert plausibility_warnings(good) == []
    # noise everywhere and a sample that labels the whole volume
    bad_samples = samples.copy()
    bad_samples[1] = True
    bad = plausibility_scores(np.full(shape, 0.7, np.float32), reference, samples=bad_samples)
    messages = plausibility_warnings(bad)
    assert len(messages) == 4
    assert "0.700 nats" in messages[0] and "100.0% of the brain" in messages[1]
    assert "1.0x" in messages[2] and "64.00x the tumour volume of the mean segmentation" in messages[3]
    # limits can be loosened
    assert len(plausibility_warnings(bad, {**PLAUSIBILITY_LIMITS, "far_entropy_median": 1.0})) == 3


def test_empty_reference_and_shape_errors():
    entropy = np.zeros((10, 10), np.float32)
    scores = plausibility_scores(entropy, np.zeros((10, 10), bool), samples=np.zeros((2, 10, 10), bool))
    assert scores["far_entropy_median"] == 0.0 and np.isnan(scores["boundary_entropy_mean"])
    assert plausibility_warnings(scores) == []  # a confident "no tumour" is plausible
    with pytest.raises(ValueError, match="reference has"):
        plausibility_scores(entropy, np.zeros((10, 9), bool))
    with pytest.raises(ValueError, match="samples must be"):
        plausibility_scores(entropy, np.zeros((10, 10), bool), samples=np.zeros((2, 9, 10), bool))
