# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from monai_probseg.metrics import (
    GeneralizedEnergyDistanceMetric,
    SampleDiversityMetric,
    generalized_energy_distance,
    hungarian_matched_iou,
    sample_diversity,
    sample_set_metrics,
)


def _masks(shape: tuple[int, ...], regions: list[tuple[slice, ...]]) -> torch.Tensor:
    """Stack of binary label maps, one per region (``None`` = empty)."""
    out = torch.zeros((len(regions), *shape), dtype=torch.long)
    for i, region in enumerate(regions):
        if region is not None:
            out[(i, *region)] = 1
    return out


def _reference_ged(samples: np.ndarray, annotations: np.ndarray, num_classes: int, include_bg: bool, mode: str):
    """Brute-force GED with Python loops over pairs and classes (the definition)."""

    def dist(a, b):
        ious = []
        for c in range(0 if include_bg else 1, num_classes):
            ma, mb = a == c, b == c
            union = np.logical_or(ma, mb).sum()
            if union == 0:
                ious.append(1.0 if mode == "zero" else np.nan)
            else:
                ious.append(np.logical_and(ma, mb).sum() / union)
        ious = np.array(ious)
        if mode == "nan":
            return np.nan if np.isnan(ious).all() else 1.0 - np.nanmean(ious)
        return 1.0 - ious.mean()

    def mean_pairs(x, y):
        vals = np.array([dist(a, b) for a, b in itertools.product(x, y)])
        return np.nan if np.isnan(vals).all() else np.nanmean(vals)

    cross, ds, dy = mean_pairs(samples, annotations), mean_pairs(samples, samples), mean_pairs(annotations, annotations)
    return 2 * cross - ds - dy, cross, ds, dy


@pytest.mark.parametrize("spatial", [(8, 8), (4, 5, 6)])
@pytest.mark.parametrize("num_classes", [2, 4])
def test_identical_sets_give_zero(spatial, num_classes):
    g = torch.Generator().manual_seed(0)
    annotations = torch.randint(0, num_classes, (2, 3, *spatial), generator=g)
    ged = generalized_energy_distance(annotations.clone(), annotations, num_classes)
    assert ged.shape == (2,)
    torch.testing.assert_close(ged, torch.zeros(2))
    # the same multiset in another order and repeated twice is also at distance 0
    samples = torch.cat([annotations.flip(1), annotations], dim=1)
    torch.testing.assert_close(generalized_energy_distance(samples, annotations, num_classes), torch.zeros(2))


def test_disjoint_single_masks_hand_values():
    a, b = _masks((4, 4), [(slice(0, 2), slice(0, 2)), (slice(2, 4), slice(2, 4))])
    # one sample A vs one annotation B, disjoint: d(A, B) = 1, diagonals 0 -> GED = 2
    ged = generalized_energy_distance(a[None, None], b[None, None], num_classes=2)
    torch.testing.assert_close(ged, torch.tensor([2.0]))
    # samples {A, B} vs annotation {A}: cross 1/2, diversity (0 + 1 + 1 + 0) / 4 = 1/2, annotations 0 -> 1/2
    terms = generalized_energy_distance(torch.stack([a, b])[None], a[None, None], num_classes=2, return_terms=True)
    torch.testing.assert_close(terms["cross"], torch.tensor([0.5]))
    torch.testing.assert_close(terms["diversity_samples"], torch.tensor([0.5]))
    torch.testing.assert_close(terms["diversity_annotations"], torch.tensor([0.0]))
    torch.testing.assert_close(terms["ged"], torch.tensor([0.5]))


def test_overlapping_masks_hand_value():
    # 2x2 squares overlapping in 2 pixels: IoU = 2 / 6, d = 2/3, GED of single sets = 4/3
    a, b = _masks((4, 4), [(slice(0, 2), slice(0, 2)), (slice(0, 2), slice(1, 3))])
    ged = generalized_energy_distance(a[None, None], b[None, None], num_classes=2)
    torch.testing.assert_close(ged, torch.tensor([4.0 / 3.0]))


def test_include_background_hand_value():
    a = torch.tensor([[1, 0, 0, 0]])
    b = torch.tensor([[1, 1, 0, 0]])
    # class 1: IoU 1/2; class 0: IoU 2/3; GED of single sets = 2 d
    fg = generalized_energy_distance(a[None, None], b[None, None], 2)
    both = generalized_energy_distance(a[None, None], b[None, None], 2, include_background=True)
    torch.testing.assert_close(fg, torch.tensor([2 * 0.5]))
    torch.testing.assert_close(both, torch.tensor([2 * (1 - (0.5 + 2 / 3) / 2)]))


def test_mode_distribution_beats_collapsed_set():
    a, b = _masks((6, 6), [(slice(0, 3), slice(0, 3)), (slice(3, 6), slice(3, 6))])
    annotations = torch.stack([a, a, b, b])[None]  # two equally likely modes
    modes = torch.stack([a, b] * 10)[None]  # samples from the mode distribution
    collapsed = torch.stack([a] * 20)[None]  # all mass on one mode
    ged_modes = generalized_energy_distance(modes, annotations, 2)
    ged_collapsed = generalized_energy_distance(collapsed, annotations, 2)
    # hand values: modes -> 2 * 1/2 - 1/2 - 1/2 = 0; collapsed -> 2 * 1/2 - 0 - 1/2 = 1/2
    torch.testing.assert_close(ged_modes, torch.tensor([0.0]))
    torch.testing.assert_close(ged_collapsed, torch.tensor([0.5]))


def test_empty_both_conventions():
    a = _masks((4, 4), [(slice(0, 2), slice(0, 2))])[0]
    empty = torch.zeros_like(a)
    samples = torch.stack([a, a])[None]
    annotations = torch.stack([empty, a])[None]
    zero = generalized_energy_distance(samples, annotations, 2, empty_both="zero", return_terms=True)
    nan = generalized_energy_distance(samples, annotations, 2, empty_both="nan", return_terms=True)
    # "zero": d(empty, empty) = 0 -> E[d(Y, Y')] = (0 + 1 + 1 + 0) / 4; GED = 2 * 1/2 - 0 - 1/2
    torch.testing.assert_close(zero["diversity_annotations"], torch.tensor([0.5]))
    torch.testing.assert_close(zero["ged"], torch.tensor([0.5]))
    # "nan": the (empty, empty) pair is left out -> E[d(Y, Y')] = (1 + 1 + 0) / 3; GED = 1 - 2/3
    torch.testing.assert_close(nan["diversity_annotations"], torch.tensor([2.0 / 3.0]))
    torch.testing.assert_close(nan["ged"], torch.tensor([1.0 / 3.0]))
    # all pairs empty: no defined pair -> NaN
    all_empty = torch.zeros(1, 2, 4, 4, dtype=torch.long)
    assert torch.isnan(generalized_energy_distance(all_empty, all_empty, 2, empty_both="nan")).all()
    torch.testing.assert_close(generalized_energy_distance(all_empty, all_empty, 2), torch.zeros(1))
    with pytest.raises(ValueError, match="empty_both"):
        generalized_energy_distance(samples, annotations, 2, empty_both="one")


def test_nan_convention_class_mean():
    # class 1 overlaps with IoU 1/3, class 2 absent from both masks
    a = torch.zeros(4, 4, dtype=torch.long)
    b = torch.zeros(4, 4, dtype=torch.long)
    a[0:2, 0:2] = 1
    b[0:2, 1:3] = 1
    zero = generalized_energy_distance(a[None, None], b[None, None], 3, empty_both="zero")
    nan = generalized_energy_distance(a[None, None], b[None, None], 3, empty_both="nan")
    torch.testing.assert_close(zero, torch.tensor([2 * (1 - (1 / 3 + 1) / 2)]))
    torch.testing.assert_close(nan, torch.tensor([2 * (1 - 1 / 3)]))


@pytest.mark.parametrize("spatial", [(7, 9), (5, 4, 6)])
@pytest.mark.parametrize("mode", ["zero", "nan"])
@pytest.mark.parametrize("include_bg", [False, True])
def test_matches_brute_force(spatial, mode, include_bg):
    g = torch.Generator().manual_seed(1)
    num_classes = 3
    # sparse labels so that some classes are empty in some masks
    samples = torch.randint(0, 12, (2, 5, *spatial), generator=g).clamp(max=num_classes - 1)
    samples[:, 0] = 0  # an entirely empty sample
    annotations = torch.randint(0, 14, (2, 3, *spatial), generator=g).clamp(max=num_classes - 1)
    terms = generalized_energy_distance(
        samples, annotations, num_classes, include_background=include_bg, empty_both=mode, return_terms=True
    )
    for i in range(2):
        ref = _reference_ged(samples[i].numpy(), annotations[i].numpy(), num_classes, include_bg, mode)
        got = [terms[k][i].item() for k in ("ged", "cross", "diversity_samples", "diversity_annotations")]
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


def test_probabilities_input_equals_labels():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 6, 3, 8, 8, generator=g)
    annotations = torch.randint(0, 3, (2, 4, 8, 8), generator=g)
    ged_probs = generalized_energy_distance(torch.softmax(logits, dim=2), annotations, 3)
    ged_labels = generalized_energy_distance(logits.argmax(2), annotations, 3)
    torch.testing.assert_close(ged_probs, ged_labels)
    # uint8 annotations (as the synthetic set stores them) and bool samples work
    torch.testing.assert_close(
        generalized_energy_distance(logits.argmax(2) > 0, (annotations > 0).to(torch.uint8), 2),
        generalized_energy_distance((logits.argmax(2) > 0).long(), (annotations > 0).long(), 2),
    )


def test_shape_errors():
    with pytest.raises(ValueError, match="annotations"):
        generalized_energy_distance(torch.zeros(1, 2, 4, 4, dtype=torch.long), torch.zeros(2, 4, 4), 2)
    with pytest.raises(ValueError, match="share batch size and spatial shape"):
        generalized_energy_distance(torch.zeros(1, 2, 4, 4, dtype=torch.long), torch.zeros(1, 2, 4, 5), 2)
    with pytest.raises(ValueError, match="class channels"):
        generalized_energy_distance(torch.rand(1, 2, 3, 4, 4), torch.zeros(1, 2, 4, 4), 2)
    with pytest.raises(ValueError, match="num_classes"):
        generalized_energy_distance(torch.zeros(1, 2, 4, 4, dtype=torch.long), torch.zeros(1, 2, 4, 4), 1)


def test_sample_diversity():
    a, b = _masks((4, 4), [(slice(0, 2), slice(0, 2)), (slice(2, 4), slice(2, 4))])
    samples = torch.stack([a, b])[None]
    torch.testing.assert_close(sample_diversity(samples, 2), torch.tensor([0.5]))
    torch.testing.assert_close(sample_diversity(samples, 2, include_diagonal=False), torch.tensor([1.0]))
    # equals the diversity term of the GED, also for probabilities
    probs = torch.softmax(torch.randn(1, 6, 2, 5, 5, 5, generator=torch.Generator().manual_seed(3)), dim=2)
    terms = generalized_energy_distance(probs, torch.zeros(1, 2, 5, 5, 5), 2, return_terms=True)
    torch.testing.assert_close(sample_diversity(probs, 2), terms["diversity_samples"])
    float_labels = probs.argmax(2).float()
    torch.testing.assert_close(sample_diversity(float_labels, 2, spatial_dims=3), terms["diversity_samples"])


def test_metric_classes_accumulate():
    a, b = _masks((4, 4), [(slice(0, 2), slice(0, 2)), (slice(2, 4), slice(2, 4))])
    metric = GeneralizedEnergyDistanceMetric(num_classes=2)
    out = metric(y_pred=a[None, None], y=b[None, None])  # GED 2
    assert out.shape == (1, 1)
    metric(y_pred=torch.stack([a, a])[None, :], y=torch.stack([a, a])[None])  # GED 0
    torch.testing.assert_close(metric.aggregate(), torch.tensor([1.0]))  # MONAI reductions keep shape (1,)
    torch.testing.assert_close(metric.aggregate("none")[:, 0], torch.tensor([2.0, 0.0]))
    metric.reset()
    metric(y_pred=[a[None], b[None]], y=[b[None], b[None]])  # list of per-item tensors
    torch.testing.assert_close(metric.aggregate("none")[:, 0], torch.tensor([2.0, 0.0]))

    div = SampleDiversityMetric(num_classes=2, get_not_nans=True)
    div(y_pred=torch.stack([a, b])[None])
    value, not_nans = div.aggregate()
    torch.testing.assert_close(value, torch.tensor([0.5]))
    assert not_nans.item() == 1
    assert not math.isnan(value.item())


@pytest.mark.parametrize("mode", ["zero", "nan"])
def test_sample_set_metrics_equals_separate_calls(mode):
    g = torch.Generator().manual_seed(5)
    samples = torch.randint(0, 8, (2, 6, 5, 6, 7), generator=g).clamp(max=2)
    annotations = torch.randint(0, 8, (2, 3, 5, 6, 7), generator=g).clamp(max=2)
    scores = sample_set_metrics(samples, annotations, 3, empty_both=mode)
    terms = generalized_energy_distance(samples, annotations, 3, empty_both=mode, return_terms=True)
    for key, value in terms.items():
        torch.testing.assert_close(scores[key], value)
    torch.testing.assert_close(scores["hm_iou"], hungarian_matched_iou(samples, annotations, 3, empty_both=mode))
