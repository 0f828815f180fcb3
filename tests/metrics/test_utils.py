# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

from __future__ import annotations

import math

import pytest
import torch

from monai_probseg.metrics import (
    expected_calibration_error,
    generalized_energy_distance,
    hungarian_matched_iou,
    sample_diversity,
)
from monai_probseg.metrics.utils import as_label_maps, check_label_range, pairwise_distance, pairwise_iou


def test_pairwise_iou_hand_values():
    a = torch.tensor([[[1, 1, 0, 2]], [[0, 0, 0, 0]]]).reshape(1, 2, 4)
    b = torch.tensor([[[1, 0, 0, 2]]]).reshape(1, 1, 4)
    iou = pairwise_iou(a, b, num_classes=3)
    assert iou.shape == (1, 2, 1, 2)
    # a0 vs b: class 1 -> 1/2, class 2 -> 1; a1 (empty) vs b: 0, 0
    torch.testing.assert_close(iou[0, :, 0], torch.tensor([[0.5, 1.0], [0.0, 0.0]]))
    with_bg = pairwise_iou(a, b, num_classes=3, include_background=True)
    torch.testing.assert_close(with_bg[0, 0, 0], torch.tensor([0.5, 0.5, 1.0]))  # background {2} vs {1, 2}
    # class 2 absent from both a1 and an all-background mask
    empty = torch.zeros(1, 1, 4, dtype=torch.long)
    torch.testing.assert_close(pairwise_iou(a, empty, 3)[0, 1, 0], torch.tensor([1.0, 1.0]))
    assert pairwise_iou(a, empty, 3, empty_both="nan")[0, 1, 0].isnan().all()
    d = pairwise_distance(a, empty, 3, empty_both="nan")
    assert d[0, 0, 0].item() == pytest.approx(1.0) and math.isnan(d[0, 1, 0].item())


def test_pairwise_iou_exact_under_autocast():
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 2, (1, 3, 40, 40), generator=g)
    ref = pairwise_iou(a, a, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = pairwise_iou(a, a, 2)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref)
    torch.testing.assert_close(torch.diagonal(got[0, ..., 0]), torch.ones(3))


def test_as_label_maps():
    probs = torch.tensor([0.2, 0.7]).reshape(1, 2, 1, 1, 1)  # sigmoid probabilities, one channel
    assert as_label_maps(probs, "x", spatial_ndim=2).flatten().tolist() == [0, 1]
    scores = torch.randn(1, 2, 3, 4, 4)
    torch.testing.assert_close(as_label_maps(scores, "x"), scores.argmax(2))
    torch.testing.assert_close(as_label_maps(scores.argmax(2).float(), "x", spatial_ndim=2), scores.argmax(2))
    with pytest.raises(ValueError, match="spatial dims"):
        as_label_maps(torch.zeros(2, 3, 4), "x")


@pytest.mark.parametrize("bad, shown", [(256, "256"), (257, "257"), (-1, "-1"), (3, "3")])
def test_labels_outside_range_raise_instead_of_wrapping(bad, shown):
    """Values outside [0, C - 1] used to be cast to uint8 (256 -> 0, 257 -> 1, -1 -> 255) and scored silently."""
    a = torch.zeros(1, 2, 4, 4, dtype=torch.long)
    a[0, 0, :2, :2] = 1
    a[0, 1, 2:, 2:] = 2
    b = a.clone()
    b[0, 1, 0, 0] = bad
    with pytest.raises(ValueError, match=rf"masks_b: label values \[{shown}\] are outside the expected range \[0, 2\]"):
        pairwise_iou(a, b, num_classes=3)
    with pytest.raises(ValueError, match=rf"samples: label values \[{shown}\] .*num_classes=3"):
        generalized_energy_distance(b, a, num_classes=3)
    with pytest.raises(ValueError, match=rf"annotations: label values \[{shown}\]"):
        hungarian_matched_iou(a, b, num_classes=3)
    with pytest.raises(ValueError, match=rf"samples: label values \[{shown}\]"):
        sample_diversity(b, num_classes=3)


def test_label_range_message_lists_values_once_on_one_line():
    labels = torch.tensor([0, 1, 4, 4, 255, -1, 2])
    with pytest.raises(ValueError) as err:
        check_label_range(labels, 4, "annotations")
    message = str(err.value)
    assert "\n" not in message
    assert "[-1, 4, 255]" in message and "[0, 3]" in message and "label 4 -> 3" in message
    check_label_range(torch.tensor([0, 3]), 4)  # in range: no error
    check_label_range(torch.ones(3, dtype=torch.bool), 2)
    check_label_range(torch.tensor([0.0, 2.0]), 3)  # floating label maps are checked by value


def test_calibration_target_outside_range():
    probs = torch.softmax(torch.randn(1, 3, 4, 4), dim=1)
    target = torch.zeros(1, 1, 4, 4, dtype=torch.long)
    target[0, 0, 0, 0] = 4
    with pytest.raises(ValueError, match=r"target: label values \[4\] are outside the expected range \[0, 2\]"):
        expected_calibration_error(probs, target)
