# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

from __future__ import annotations

import itertools
import math

import pytest
import torch

from monai_probseg.metrics import (
    HungarianMatchedIoUMetric,
    hungarian_matched_iou,
    pairwise_distance,
    sample_set_metrics,
)


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


def _brute_force_lcm(iou: torch.Tensor) -> float:
    """Kohl et al. (2019) by enumeration: both sets duplicated to lcm(N, K), best of all L! one-to-one matchings."""
    num_samples, num_annotations = iou.shape
    size = math.lcm(num_samples, num_annotations)
    rows = [i for i in range(num_samples) for _ in range(size // num_samples)]
    cols = [j for j in range(num_annotations) for _ in range(size // num_annotations)]
    return max(
        sum(iou[rows[r], cols[p[r]]].item() for r in range(size)) / size for p in itertools.permutations(range(size))
    )


@pytest.mark.parametrize("num_samples, num_annotations", [(4, 2), (3, 2), (2, 3), (1, 3), (5, 1)])
def test_matches_brute_force_over_permutations(num_samples, num_annotations):
    g = torch.Generator().manual_seed(1)
    samples = torch.randint(0, 3, (3, num_samples, 6, 6), generator=g)
    annotations = torch.randint(0, 3, (3, num_annotations, 6, 6), generator=g)
    hm = hungarian_matched_iou(samples, annotations, num_classes=3)
    iou = 1 - pairwise_distance(samples, annotations, 3)
    for i in range(3):
        assert hm[i].item() == pytest.approx(_brute_force_lcm(iou[i]), abs=1e-6)


def _lcm_example():
    """Annotations A, B (disjoint); C overlaps B with IoU 1/3 and is disjoint from A."""
    a = torch.zeros(4, 4, dtype=torch.long)
    b, c = a.clone(), a.clone()
    a[:2, :2] = 1
    b[2:, 2:] = 1
    c[2:, 1:3] = 1
    return a, b, c


def test_lcm_hand_value_three_samples_two_annotations():
    a, b, c = _lcm_example()
    annotations = torch.stack([a, b])[None]
    # N = 3, K = 2, L = 6: samples {A, A, C} twice each (4 A rows, 2 C rows), annotations A, B three times each.
    # Best matching: 3 A rows -> A (IoU 1), the 4th A row -> B (0), both C rows -> B (1/3): (3 + 0 + 2/3) / 6
    samples = torch.stack([a, a, c])[None]
    torch.testing.assert_close(hungarian_matched_iou(samples, annotations, 2), torch.tensor([11.0 / 18.0]))
    # the tiled variant matches A, A -> the two copies of A and C -> B: (1 + 1 + 1/3) / 3, biased up by 1/6
    tiled = hungarian_matched_iou(samples, annotations, 2, matching="tile")
    torch.testing.assert_close(tiled, torch.tensor([7.0 / 9.0]))
    # {A, A, B}: the LCM matching must send one A copy to B, (5 of 6 pairs perfect); tiling hides it (1.0)
    samples = torch.stack([a, a, b])[None]
    torch.testing.assert_close(hungarian_matched_iou(samples, annotations, 2), torch.tensor([5.0 / 6.0]))
    torch.testing.assert_close(hungarian_matched_iou(samples, annotations, 2, matching="tile"), torch.ones(1))


def test_lcm_invariant_to_repeating_the_samples():
    """Each sample weighs 1/N and each annotation 1/K: repeating the sample set leaves HM-IoU unchanged."""
    g = torch.Generator().manual_seed(4)
    samples = torch.randint(0, 2, (4, 3, 6, 6), generator=g)
    annotations = torch.randint(0, 2, (4, 2, 6, 6), generator=g)
    once = hungarian_matched_iou(samples, annotations, 2)
    torch.testing.assert_close(hungarian_matched_iou(samples.repeat(1, 2, 1, 1), annotations, 2), once)
    torch.testing.assert_close(hungarian_matched_iou(samples.repeat(1, 4, 1, 1), annotations, 2), once)


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
    # N = 5, K = 2, L = 10: 6 A rows and 4 B rows against 5 A and 5 B columns -> one A row meets B: 9 / 10
    samples = torch.stack([a, a, a, b, b])[None]
    torch.testing.assert_close(hungarian_matched_iou(samples, annotations, 2), torch.tensor([0.9]))
    # four copies of a: 8 A rows, 2 B rows -> 3 A rows meet B: 7 / 10
    four_a = torch.stack([a, a, a, a, b])[None]
    torch.testing.assert_close(hungarian_matched_iou(four_a, annotations, 2), torch.tensor([0.7]))
    # one sample against two annotations: it is matched to both, (1 + 0) / 2
    torch.testing.assert_close(hungarian_matched_iou(a[None, None], annotations, 2), torch.tensor([0.5]))
    # the older tiled variant: each annotation at most ceil(N / K) times, mean over the N samples
    torch.testing.assert_close(hungarian_matched_iou(samples, annotations, 2, matching="tile"), torch.ones(1))
    torch.testing.assert_close(hungarian_matched_iou(four_a, annotations, 2, matching="tile"), torch.tensor([0.8]))
    torch.testing.assert_close(hungarian_matched_iou(a[None, None], annotations, 2, matching="tile"), torch.ones(1))


def test_matching_option_and_errors():
    g = torch.Generator().manual_seed(3)
    samples, annotations = (
        torch.randint(0, 2, (2, 4, 6, 6), generator=g),
        torch.randint(0, 2, (2, 2, 6, 6), generator=g),
    )
    # K divides N: both definitions agree
    torch.testing.assert_close(
        hungarian_matched_iou(samples, annotations, 2), hungarian_matched_iou(samples, annotations, 2, matching="tile")
    )
    with pytest.raises(ValueError, match="matching must be one of"):
        hungarian_matched_iou(samples, annotations, 2, matching="square")
    with pytest.raises(ValueError, match="matching must be one of"):
        HungarianMatchedIoUMetric(num_classes=2, matching="rect")
    with pytest.raises(ValueError, match=r"annotations: label values \[256\] are outside the expected range \[0, 2\]"):
        hungarian_matched_iou(samples, annotations * 256, 3)


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


def test_metric_class_and_shared_pass_use_lcm():
    a, b, c = _lcm_example()
    samples, annotations = torch.stack([a, a, c])[None], torch.stack([a, b])[None]
    metric = HungarianMatchedIoUMetric(num_classes=2)
    metric(y_pred=samples, y=annotations)
    torch.testing.assert_close(metric.aggregate(), torch.tensor([11.0 / 18.0]))
    tiled = HungarianMatchedIoUMetric(num_classes=2, matching="tile")
    tiled(y_pred=samples, y=annotations)
    torch.testing.assert_close(tiled.aggregate(), torch.tensor([7.0 / 9.0]))
    torch.testing.assert_close(sample_set_metrics(samples, annotations, 2)["hm_iou"], torch.tensor([11.0 / 18.0]))
    shared_tile = sample_set_metrics(samples, annotations, 2, matching="tile")["hm_iou"]
    torch.testing.assert_close(shared_tile, torch.tensor([7.0 / 9.0]))
