# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from monai_probseg.metrics import (
    expected_calibration_error,
    max_uncertainty_error_overlap,
    ncc_uncertainty_error,
    uncertainty_error_overlap,
)


def test_expected_calibration_error_hand_values():
    # every voxel predicts 0.8 foreground; 8 of 10 voxels are foreground -> calibrated; 10 of 10 -> ECE 0.2
    probs = torch.full((2, 1, 10, 1), 0.8)
    target = torch.zeros(2, 1, 10, 1, dtype=torch.long)
    target[0, 0, :8] = 1
    target[1] = 1
    ece = expected_calibration_error(probs, target, num_bins=10)
    assert ece.shape == (2, 1)
    torch.testing.assert_close(ece[:, 0], torch.tensor([0.0, 0.2]), atol=1e-6, rtol=0)
    # background included: channel 0 predicts 0.2 with the complementary frequencies
    both = expected_calibration_error(probs, target, num_bins=10, include_background=True)
    torch.testing.assert_close(both, torch.tensor([[0.0, 0.0], [0.2, 0.2]]), atol=1e-6, rtol=0)
    # one-hot target gives the same, 3D works
    onehot = torch.cat([1 - target, target], dim=1).float()
    torch.testing.assert_close(expected_calibration_error(torch.cat([1 - probs, probs], 1), onehot, 10), ece)
    probs3 = torch.softmax(torch.randn(1, 3, 4, 4, 4), dim=1)
    assert expected_calibration_error(probs3, torch.randint(0, 3, (1, 1, 4, 4, 4))).shape == (1, 2)
    with pytest.raises(ValueError, match="target"):
        expected_calibration_error(probs3, torch.zeros(1, 2, 4, 4, 4))


def test_uncertainty_error_overlap_hand_values():
    u = torch.tensor([0.9, 0.1, 0.8, 0.2]).reshape(1, 1, 2, 2)
    pred = torch.tensor([1, 0, 0, 0]).reshape(1, 1, 2, 2)
    target = torch.tensor([0, 0, 1, 0]).reshape(1, 1, 2, 2)  # errors at voxels 0 and 2
    assert uncertainty_error_overlap(u, pred, target, 0.5).item() == pytest.approx(1.0)
    ueo = uncertainty_error_overlap(u, pred, target, [0.15, 0.5, 0.85, 0.95])
    assert ueo.shape == (1, 4)
    # U = {0, 2, 3}: 2*2/5; U = {0, 2}: 1; U = {0}: 2*1/3; U empty: 0
    torch.testing.assert_close(ueo[0], torch.tensor([0.8, 1.0, 2 / 3, 0.0]))
    # threshold equal to a value: strictly greater
    assert uncertainty_error_overlap(u, pred, target, 0.8).item() == pytest.approx(2 / 3)
    # no error and no uncertainty -> 1; no error but uncertainty -> 0
    assert uncertainty_error_overlap(u, pred, pred, 0.95).item() == 1.0
    assert uncertainty_error_overlap(u, pred, pred, 0.5).item() == 0.0
    best, thr = max_uncertainty_error_overlap(u, pred, target)
    assert best.item() == pytest.approx(1.0)
    assert 0.2 <= thr.item() < 0.8
    best, thr = max_uncertainty_error_overlap(u, pred, target, thresholds=[0.85, 0.15])
    assert best.item() == pytest.approx(0.8) and thr.item() == pytest.approx(0.15)


@pytest.mark.parametrize("spatial", [(9, 11), (4, 5, 6)])
def test_uncertainty_error_overlap_matches_loop(spatial):
    g = torch.Generator().manual_seed(0)
    u = torch.rand(3, 1, *spatial, generator=g)
    pred = torch.randint(0, 3, (3, 1, *spatial), generator=g)
    target = torch.randint(0, 3, (3, 1, *spatial), generator=g)
    thresholds = torch.linspace(0, 1, 13)
    ueo = uncertainty_error_overlap(u, pred, target, thresholds)
    for b in range(3):
        err = (pred[b] != target[b]).numpy()
        for t_idx, t in enumerate(thresholds.tolist()):
            unc = (u[b] > t).numpy()
            denom = unc.sum() + err.sum()
            expected = 2 * np.logical_and(unc, err).sum() / denom if denom else 1.0
            assert ueo[b, t_idx].item() == pytest.approx(expected, abs=1e-6)
    # per-item thresholds (B, T)
    per_item = uncertainty_error_overlap(u, pred, target, thresholds[None].repeat(3, 1))
    torch.testing.assert_close(per_item, ueo)


def test_ncc_hand_case_is_one():
    # two hard samples agreeing except in a block; annotator = sample 0 -> error map proportional to gamma
    s0 = torch.zeros(6, 6, dtype=torch.long)
    s1 = s0.clone()
    s0[1:3, 1:4] = 1
    s1[1:3, 1:4] = 2
    samples = torch.stack([s0, s1])[None]
    ncc = ncc_uncertainty_error(samples, s0[None, None], num_classes=3)
    assert ncc.item() == pytest.approx(1.0, abs=1e-5)
    # the same samples given as one-hot probabilities
    onehot = torch.nn.functional.one_hot(samples, 3).movedim(-1, 2).float()
    assert ncc_uncertainty_error(onehot, s0[None, None]).item() == pytest.approx(1.0, abs=1e-5)
    # an annotator labelling everything 1: error -log(eps) outside the block, half of it inside -> NCC -1
    both = torch.stack([s0, torch.ones_like(s0)])[None]
    per = ncc_uncertainty_error(samples, both, num_classes=3, return_per_annotator=True)
    torch.testing.assert_close(per, torch.tensor([[1.0, -1.0]]), atol=1e-5, rtol=0)
    assert ncc_uncertainty_error(samples, both, num_classes=3).item() == pytest.approx(0.0, abs=1e-5)
    # samples that all agree give a constant gamma map: NCC undefined (NaN)
    assert ncc_uncertainty_error(samples[:, :1], s0[None, None], num_classes=3).isnan().all()


def _reference_ncc(probs: np.ndarray, annotations: np.ndarray, eps: float) -> float:
    """PHiSeg's definition with loops over samples and annotators (probs (N, C, H, W), annotations (K, H, W))."""
    mean = probs.mean(0)
    log = np.log(np.maximum(probs, eps))
    gamma = np.mean([-(mean * log[n]).sum(0) for n in range(len(probs))], axis=0)
    nccs = []
    for y in annotations:
        onehot = np.stack([(y == c) for c in range(probs.shape[1])]).astype(float)
        err = np.mean([-(onehot * log[n]).sum(0) for n in range(len(probs))], axis=0)
        a = (gamma - gamma.mean()) / gamma.std()
        v = (err - err.mean()) / err.std()
        nccs.append((a * v).mean())
    return float(np.mean(nccs))


@pytest.mark.parametrize("spatial", [(8, 8), (4, 4, 5)])
def test_ncc_matches_reference(spatial):
    g = torch.Generator().manual_seed(1)
    probs = torch.softmax(2 * torch.randn(2, 5, 3, *spatial, generator=g), dim=2)
    annotations = torch.randint(0, 3, (2, 4, *spatial), generator=g)
    ncc = ncc_uncertainty_error(probs, annotations)
    assert ncc.shape == (2,)
    for b in range(2):
        ref = _reference_ncc(probs[b].double().numpy(), annotations[b].numpy(), 1e-8)
        assert ncc[b].item() == pytest.approx(ref, abs=1e-5)
    assert (ncc.abs() <= 1 + 1e-6).all()
    assert not math.isnan(ncc.sum().item())
    with pytest.raises(ValueError, match="num_classes"):
        ncc_uncertainty_error(annotations, annotations)
