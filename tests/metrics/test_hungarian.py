# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

from __future__ import annotations

import itertools

import pytest
import torch

from monai_probseg.metrics import HungarianMatchedIoUMetric, hungarian_matched_iou, pairwise_distance


@pytest.mark.parametrize("spatial", [(8, 8), (4, 5, 6)])
@pytest.mark.parametrize("repeats", [1, 3])
def test_permuted_copy_is_one(spatial, repeats):
    g = torch.Generator().manual_seed(0)
    annotations = torch.randint(0, 3, (2, 4, *spatial), generator=g)
    samples = torch.cat([annotations[:, torch.randperm(4, generator=g)] for _ in range(repeats)], dim=1)
    hm = hungarian_matched_iou(samples, annotations, num_classes=3)
    assert hm.shape == (2,)
    torch.testing.assert_close(hm, torch.ones(2))


def test_hand_value():
    a = torch.zeros(4, 4, dtype=torch.long)
    b, c = a.clone(), a.clone()
    a[2:4, 2:4] = 1
    b[0:2, 0:2] = 1
    c[0:2, 1:3] = 1  # IoU(b, c) = 2 / 6, disjoint from a
    # best matching: a-a (IoU 1), b-c (IoU 1/3) -> 2/3
    hm = hungarian_matched_iou(torch.stack([b, a])[None], torch.stack([a, c])[None], num_classes=2)
    torch.testing.assert_close(hm, torch.tensor([2.0 / 3.0]))


def test_matches_brute_force_over_permutations():
    g = torch.Generator().manual_seed(1)
    samples = torch.randint(0, 3, (3, 4, 6, 6), generator=g)
    annotations = torch.randint(0, 3, (3, 2, 6, 6), generator=g)
    hm = hungarian_matched_iou(samples, annotations, num_classes=3)
    iou = 1 - pairwise_distance(samples, annotations[:, [0, 1, 0, 1]], 3)  # annotations repeated to N = 4
    for i in range(3):
        best = max(sum(iou[i, r, p[r]].item() for r in range(4)) / 4 for p in itertools.permutations(range(4)))
        assert hm[i].item() == pytest.approx(best, abs=1e-6)


def test_nan_convention():
    empty = torch.zeros(1, 2, 4, 4, dtype=torch.long)
    a = empty.clone()
    a[0, 1, :2, :2] = 1
    # samples {empty, A} vs annotations {empty, A}: "zero" -> both pairs IoU 1; "nan" -> empty pair left out
    torch.testing.assert_close(hungarian_matched_iou(a, a, 2), torch.tensor([1.0]))
    torch.testing.assert_close(hungarian_matched_iou(a, a, 2, empty_both="nan"), torch.tensor([1.0]))
    assert torch.isnan(hungarian_matched_iou(empty, empty, 2, empty_both="nan")).all()


def test_number_of_samples_not_a_multiple():
    a = torch.zeros(4, 4, dtype=torch.long)
    b = a.clone()
    a[:2, :2] = 1
    b[2:, 2:] = 1  # disjoint from a
    annotations = torch.stack([a, b])[None]
    # N = 5, K = 2: each annotation can be matched up to ceil(5 / 2) = 3 times
    torch.testing.assert_close(hungarian_matched_iou(torch.stack([a, a, a, b, b])[None], annotations, 2), torch.ones(1))
    # four copies of a: only three match a, the fourth is matched to b (IoU 0) -> (3 + 0 + 1) / 5
    four_a = torch.stack([a, a, a, a, b])[None]
    torch.testing.assert_close(hungarian_matched_iou(four_a, annotations, 2), torch.tensor([0.8]))
    # fewer samples than annotations: each sample takes its best annotation
    torch.testing.assert_close(hungarian_matched_iou(a[None, None], annotations, 2), torch.ones(1))


def test_metric_class():
    g = torch.Generator().manual_seed(2)
    annotations = torch.randint(0, 2, (2, 2, 8, 8), generator=g)
    metric = HungarianMatchedIoUMetric(num_classes=2)
    metric(y_pred=annotations.flip(1), y=annotations)
    metric(y_pred=torch.softmax(torch.randn(2, 4, 2, 8, 8, generator=g), dim=2), y=annotations)
    values = metric.aggregate("none")
    assert values.shape == (4, 1)
    torch.testing.assert_close(values[:2, 0], torch.ones(2))
    assert (values[2:] < 1).all()
    torch.testing.assert_close(metric.aggregate(), values.mean().reshape(1))
