# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

from __future__ import annotations

import math

import pytest
import torch
from monai.metrics import compute_dice
from monai.transforms import ConvertToMultiChannelBasedOnBratsClasses

from monai_probseg.metrics import (
    BRATS_REGION_NAMES,
    BRATS_REGIONS,
    BraTSRegionMetrics,
    brats_regions,
    compute_brats_region_metrics,
    region_masks,
)


def test_brats_regions_conventions():
    assert BRATS_REGIONS == {"TC": (1, 3), "WT": (1, 2, 3), "ET": (3,)} and BRATS_REGION_NAMES == ("TC", "WT", "ET")
    labels = torch.tensor([0, 1, 2, 3, 4]).reshape(1, 1, 5, 1)
    regions = brats_regions(labels)
    assert regions.shape == (1, 3, 5, 1)
    expected = torch.tensor([[0, 1, 0, 1, 0], [0, 1, 1, 1, 0], [0, 0, 0, 1, 0]]).float()  # TC, WT, ET
    torch.testing.assert_close(regions[0, :, :, 0], expected)
    old = brats_regions(labels, convention="2020", dtype=torch.bool)
    expected_old = torch.tensor([[0, 1, 0, 0, 1], [0, 1, 1, 0, 1], [0, 0, 0, 0, 1]]).bool()
    assert torch.equal(old[0, :, :, 0], expected_old)
    torch.testing.assert_close(region_masks(labels, BRATS_REGIONS), regions)
    with pytest.raises(ValueError, match=r"\(B, 1, \*spatial\)"):
        brats_regions(torch.zeros(1, 2, 4, 4))
    with pytest.raises(ValueError, match="convention"):
        brats_regions(labels, convention="2019")


@pytest.mark.parametrize("convention, et_label", [("2023", 3), ("2020", 4)])
def test_brats_regions_match_monai(convention, et_label):
    # the channel order and content of MONAI's ConvertToMultiChannelBasedOnBratsClasses
    labels = torch.randint(0, 5, (2, 1, 6, 5, 4))
    ours = brats_regions(labels, convention, dtype=torch.bool)
    monai = torch.stack([torch.as_tensor(ConvertToMultiChannelBasedOnBratsClasses(et_label)(lab)) for lab in labels])
    assert torch.equal(ours, monai.bool())


def _phantom(shape=(12, 12, 10)) -> torch.Tensor:
    lab = torch.zeros(1, 1, *shape, dtype=torch.long)
    lab[..., 2:10, 2:10, 2:8] = 2  # edema
    lab[..., 4:8, 4:8, 3:7] = 1  # necrotic core
    lab[..., 5:7, 5:7, 4:6] = 3  # enhancing
    return lab


def test_identical_and_hand_dice():
    target = _phantom()
    scores = compute_brats_region_metrics(target, target)
    torch.testing.assert_close(scores["dice"], torch.ones(1, 3))
    torch.testing.assert_close(scores["hd"], torch.zeros(1, 3))
    # prediction misses half of the enhancing voxels (relabelled as core): ET Dice = 2*4 / (4 + 8)
    pred = target.clone()
    pred[..., 5:7, 5:7, 5] = 1
    scores = compute_brats_region_metrics(pred, target, include_hd=False)
    assert set(scores) == {"dice"}
    torch.testing.assert_close(scores["dice"], torch.tensor([[1.0, 1.0, 2 * 4 / 12]]))
    # the value is MONAI's Dice of the region masks
    expected = compute_dice(brats_regions(pred), brats_regions(target), include_background=True)
    torch.testing.assert_close(scores["dice"], expected)


def test_hd95_uses_spacing():
    target = _phantom()
    pred = target.clone()
    pred[..., 2:10, 10, 2:8] = 2  # whole tumour grows by one voxel along the second axis
    hd1 = compute_brats_region_metrics(pred, target, hd_percentile=None)["hd"]
    hd2 = compute_brats_region_metrics(pred, target, hd_percentile=None, spacing=(2.0, 2.0, 2.0))["hd"]
    wt = BRATS_REGION_NAMES.index("WT")
    assert hd1[0, wt].item() == pytest.approx(1.0)
    torch.testing.assert_close(hd2, 2 * hd1)
    torch.testing.assert_close(hd1[0, [i for i in range(3) if i != wt]], torch.zeros(2))


def test_empty_region_policies():
    target = torch.zeros(1, 1, 8, 6, dtype=torch.long)
    target[..., 2:6, 1:5] = 2
    target[..., 3:5, 2:4] = 1  # no enhancing tumour in the reference
    pred_no_et = target.clone()
    pred_et = target.clone()
    pred_et[..., 5, 4] = 3
    brats = compute_brats_region_metrics(
        torch.cat([pred_no_et, pred_et]), torch.cat([target, target]), per_sample=False
    )
    # both empty: Dice 1, HD 0; prediction only: Dice 0, HD = diagonal sqrt(8^2 + 6^2) = 10
    torch.testing.assert_close(brats["dice"][:, 2], torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(brats["hd"][:, 2], torch.tensor([0.0, 10.0]))
    nan = compute_brats_region_metrics(torch.cat([pred_no_et, pred_et]), torch.cat([target, target]), empty="nan")
    assert nan["dice"][:, 2].isnan().all() and nan["hd"][:, 2].isnan().all()
    torch.testing.assert_close(nan["dice"][:, :2], brats["dice"][:, :2])
    with pytest.raises(ValueError, match="empty"):
        compute_brats_region_metrics(target, target, empty="zero")


def test_per_sample_and_metric_class():
    target = _phantom()
    pred = target.clone()
    pred[..., 5:7, 5:7, 5] = 1
    samples = torch.cat([target, pred], dim=1)  # (B, N=2, *s)
    scores = compute_brats_region_metrics(samples, target)
    assert scores["dice"].shape == (1, 2, 3) and scores["hd"].shape == (1, 2, 3)
    torch.testing.assert_close(scores["dice"][:, 0], torch.ones(1, 3))
    torch.testing.assert_close(scores["dice"][:, 1], compute_brats_region_metrics(pred, target)["dice"])

    metric = BraTSRegionMetrics()
    metric(y_pred=target, y=target)
    metric(y_pred=samples, y=target)  # averaged over the 2 samples
    out = metric.aggregate()
    et_dice = (1.0 + (1.0 + 2 * 4 / 12) / 2) / 2
    torch.testing.assert_close(out["dice"], torch.tensor([1.0, 1.0, et_dice]))
    assert out["hd"].shape == (3,)
    assert not math.isnan(out["hd"].sum().item())
    dice_only = BraTSRegionMetrics(include_hd=False, reduction="mean")
    dice_only(y_pred=pred, y=target)
    assert set(dice_only.aggregate()) == {"dice"}
