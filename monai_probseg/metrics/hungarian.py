# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""Hungarian-matched IoU between a set of samples and a set of annotations."""

from __future__ import annotations

import math

import numpy as np
import torch
from monai.utils import MetricReduction, optional_import

from .utils import SampleSetMetric, class_mean_distance, prepare_samples_and_annotations, set_iou_blocks

linear_sum_assignment, _ = optional_import("scipy.optimize", name="linear_sum_assignment")

__all__ = ["MATCHING_MODES", "HungarianMatchedIoUMetric", "hungarian_matched_iou", "match_iou"]


MATCHING_MODES = ("lcm", "tile")


def _check_matching(matching: str) -> str:
    if matching not in MATCHING_MODES:
        raise ValueError(f"matching must be one of {MATCHING_MODES}, got {matching!r}.")
    return matching


def match_iou(iou: torch.Tensor, matching: str = "lcm") -> torch.Tensor:
    """Mean IoU of the optimal matching between ``N`` samples and ``K`` annotations.

    ``matching="lcm"`` (default) is the definition of Kohl et al. (2019): with ``L = lcm(N, K)`` every sample is
    repeated ``L / N`` times and every annotation ``L / K`` times, ``scipy.optimize.linear_sum_assignment`` solves
    the square ``L x L`` problem under the cost ``1 - IoU``, and the IoU is averaged over the ``L`` matched pairs.
    Each sample thus carries weight ``1 / N`` and each annotation ``1 / K``, whatever ``N`` and ``K`` are; when
    ``K`` divides ``N`` it is the usual ``N x N`` problem with the annotations repeated ``N / K`` times. The
    problem grows to at most ``N K`` rows (e.g. 300 for ``N = 100, K = 3``, a few milliseconds).

    ``matching="tile"`` is the older variant, kept to compare with figures computed before: the annotations are
    tiled ``ceil(N / K)`` times, every sample is matched to a distinct copy in a rectangular
    ``N x K ceil(N / K)`` problem and the mean runs over the ``N`` samples. It equals ``"lcm"`` when ``K``
    divides ``N``; otherwise the annotations no longer weigh equally and the value is biased upward (the
    annotations the samples resemble most are matched more often).

    NaN IoUs (undefined pairs) cost 0 and are left out of the mean; an item with no defined matched pair gets NaN.

    Args:
        iou: pair IoU ``(B, N, K)``.
        matching: ``"lcm"`` or ``"tile"``, see above.

    Returns:
        matched IoU per batch item ``(B,)`` (float32, on the device of ``iou``).

    Example::

        hm = match_iou(1 - pairwise_distance(samples, annotations, num_classes=2))
    """
    _check_matching(matching)
    if iou.ndim != 3 or iou.shape[1] < 1 or iou.shape[2] < 1:
        raise ValueError(f"iou must be (B, N, K) with N, K >= 1, got shape {tuple(iou.shape)}.")
    num_samples, num_annotations = iou.shape[1], iou.shape[2]
    pairs = iou.double().cpu().numpy()
    if matching == "lcm":
        size = math.lcm(num_samples, num_annotations)
        # row i * (L / N) + r is sample i, column j * (L / K) + t is annotation j
        pairs = np.repeat(np.repeat(pairs, size // num_samples, axis=1), size // num_annotations, axis=2)
    else:
        pairs = np.tile(pairs, (1, 1, -(-num_samples // num_annotations)))  # column j is annotation j % K
    cost = np.nan_to_num(1.0 - pairs, nan=0.0)
    out = np.empty(pairs.shape[0], dtype=np.float64)
    for b in range(pairs.shape[0]):  # one assignment per batch item
        rows, cols = linear_sum_assignment(cost[b])
        matched = pairs[b, rows, cols]
        valid = ~np.isnan(matched)
        out[b] = matched[valid].mean() if valid.any() else np.nan
    return torch.as_tensor(out, dtype=torch.float32, device=iou.device)


def hungarian_matched_iou(
    samples: torch.Tensor,
    annotations: torch.Tensor,
    num_classes: int,
    include_background: bool = False,
    empty_both: str = "zero",
    matching: str = "lcm",
) -> torch.Tensor:
    """Hungarian-matched IoU (HM-IoU) between ``N`` samples and ``K`` annotations, per batch item.

    Following Kohl et al., "A Hierarchical Probabilistic U-Net for Modeling Multi-Scale Ambiguities"
    (arXiv 1905.13077, 2019), both sets are duplicated to a common size, the least common multiple
    ``L = lcm(N, K)`` (each sample ``L / N`` times, each annotation ``L / K`` times), the optimal one-to-one
    matching under the cost ``1 - IoU`` is found with ``scipy.optimize.linear_sum_assignment``, and the IoU of
    the ``L`` matched pairs is averaged. When ``K`` divides ``N`` this is the annotation set repeated ``N / K``
    times. The IoU of a pair is averaged over the scored classes exactly as in
    :py:func:`generalized_energy_distance` (``IoU = 1 - d``). ``matching="tile"`` gives the older rectangular
    variant (see :py:func:`match_iou`).

    With ``empty_both="nan"`` a pair of two entirely empty masks has an undefined IoU: it costs 0 in the matching
    (a perfect match) and is left out of the mean; an item whose matched pairs are all undefined gets NaN.

    The pairwise IoUs are computed in one batched matrix product per class; only the assignment (``N x N``,
    a few milliseconds for ``N = 100``) runs on the CPU, once per batch item. To get the GED as well without
    computing the IoUs twice, use :py:func:`sample_set_metrics`.

    Args:
        samples: sample label maps ``(B, N, *spatial)`` or probabilities/logits ``(B, N, C, *spatial)``
            (reduced with ``argmax`` over ``C``).
        annotations: annotator label maps ``(B, K, *spatial)``, 2D or 3D.
        num_classes: number of classes, background included.
        include_background: whether class 0 contributes to the IoU. Defaults to ``False``.
        empty_both: ``"zero"`` (IoU 1 for a class absent from both masks) or ``"nan"`` (class left out).
        matching: ``"lcm"`` (Kohl et al. 2019, default) or ``"tile"``, see :py:func:`match_iou`.

    Raises:
        ValueError: when a label map holds a value outside ``[0, num_classes - 1]``.

    Returns:
        HM-IoU per batch item ``(B,)`` (float32, on the device of ``samples``).

    Example::

        samples = torch.randint(0, 2, (2, 16, 64, 64))
        annotations = torch.randint(0, 2, (2, 4, 64, 64))
        hm_iou = hungarian_matched_iou(samples, annotations, num_classes=2)  # (2,)
    """
    _check_matching(matching)
    labels, annotations = prepare_samples_and_annotations(samples, annotations, num_classes)
    iou = set_iou_blocks(
        labels, annotations, num_classes, include_background, empty_both, names=("samples", "annotations")
    )["ab"]
    return match_iou(1.0 - class_mean_distance(iou, empty_both), matching=matching)


class HungarianMatchedIoUMetric(SampleSetMetric):
    """Hungarian-matched IoU accumulated over iterations (see :py:func:`hungarian_matched_iou`).

    Call it with ``y_pred=samples`` and ``y=annotations``; the buffer holds one value per batch item
    (``(B, 1)``), reduced NaN-aware by ``aggregate()``.

    Args:
        num_classes: number of classes, background included.
        include_background: whether class 0 contributes to the IoU. Defaults to ``False``.
        empty_both: ``"zero"`` or ``"nan"``, see :py:func:`hungarian_matched_iou`.
        reduction: reduction mode applied by ``aggregate``.
        get_not_nans: if ``True``, ``aggregate()`` returns ``(metric, not_nans)``.
        matching: ``"lcm"`` (Kohl et al. 2019, default) or ``"tile"``, see :py:func:`match_iou`.

    Example::

        metric = HungarianMatchedIoUMetric(num_classes=2)
        metric(y_pred=torch.randint(0, 2, (2, 16, 64, 64)), y=torch.randint(0, 2, (2, 4, 64, 64)))
        hm_iou = metric.aggregate()
    """

    def __init__(
        self,
        num_classes: int,
        include_background: bool = False,
        empty_both: str = "zero",
        reduction: MetricReduction | str = MetricReduction.MEAN,
        get_not_nans: bool = False,
        matching: str = "lcm",
    ) -> None:
        super().__init__(num_classes, include_background, empty_both, reduction, get_not_nans)
        self.matching = _check_matching(matching)

    def _per_item(self, y_pred: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        if y is None:
            raise ValueError("HungarianMatchedIoUMetric needs y (annotations of shape (B, K, *spatial)).")
        return hungarian_matched_iou(
            y_pred, y, self.num_classes, self.include_background, self.empty_both, matching=self.matching
        )
