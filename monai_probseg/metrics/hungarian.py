# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""Hungarian-matched IoU between a set of samples and a set of annotations."""

from __future__ import annotations

import numpy as np
import torch
from monai.utils import optional_import

from .utils import SampleSetMetric, pairwise_distance, prepare_samples_and_annotations

linear_sum_assignment, _ = optional_import("scipy.optimize", name="linear_sum_assignment")

__all__ = ["HungarianMatchedIoUMetric", "hungarian_matched_iou", "match_iou"]


def match_iou(iou: torch.Tensor) -> torch.Tensor:
    """Mean IoU of the optimal matching of ``N`` samples to ``K`` annotations repeated to cover the samples.

    The ``K`` annotation columns are tiled ``ceil(N / K)`` times and ``scipy.optimize.linear_sum_assignment``
    minimises ``1 - IoU`` over the ``N`` rows, so each annotation is matched at most ``ceil(N / K)`` times; when
    ``N`` is a multiple of ``K`` this is exactly the square problem of Kohl et al. (2019). NaN IoUs (undefined
    pairs) cost 0 and are left out of the mean; an item with no defined matched pair gets NaN.

    Args:
        iou: pair IoU ``(B, N, K)``.

    Returns:
        matched IoU per batch item ``(B,)`` (float32, on the device of ``iou``).

    Example::

        hm = match_iou(1 - pairwise_distance(samples, annotations, num_classes=2))
    """
    num_samples, num_annotations = iou.shape[1], iou.shape[2]
    repeats = -(-num_samples // num_annotations)
    tiled = iou.repeat(1, 1, repeats).double().cpu().numpy()  # (B, N, K * repeats), column j is annotation j % K
    cost = np.nan_to_num(1.0 - tiled, nan=0.0)
    out = np.empty(tiled.shape[0], dtype=np.float64)
    for b in range(tiled.shape[0]):  # one assignment per batch item (N x N, milliseconds)
        rows, cols = linear_sum_assignment(cost[b])
        matched = tiled[b, rows, cols]
        valid = ~np.isnan(matched)
        out[b] = matched[valid].mean() if valid.any() else np.nan
    return torch.as_tensor(out, dtype=torch.float32, device=iou.device)


def hungarian_matched_iou(
    samples: torch.Tensor,
    annotations: torch.Tensor,
    num_classes: int,
    include_background: bool = False,
    empty_both: str = "zero",
) -> torch.Tensor:
    """Hungarian-matched IoU (HM-IoU) between ``N`` samples and ``K`` annotations, per batch item.

    Following Kohl et al., "A Hierarchical Probabilistic U-Net for Modeling Multi-Scale Ambiguities"
    (arXiv 1905.13077, 2019), the annotation set is repeated ``N / K`` times so that both sets have ``N``
    elements, the optimal one-to-one matching under the cost ``1 - IoU`` is found with
    ``scipy.optimize.linear_sum_assignment``, and the IoU of the matched pairs is averaged. The IoU of a pair is
    averaged over the scored classes exactly as in :py:func:`generalized_energy_distance` (``IoU = 1 - d``).
    When ``N`` is not a multiple of ``K`` the annotations are repeated ``ceil(N / K)`` times and the rectangular
    assignment matches every sample to a distinct copy, i.e. each annotation at most ``ceil(N / K)`` times
    (see :py:func:`match_iou`); draw a multiple of ``K`` samples to get Kohl's exact definition.

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

    Returns:
        HM-IoU per batch item ``(B,)`` (float32, on the device of ``samples``).

    Example::

        samples = torch.randint(0, 2, (2, 16, 64, 64))
        annotations = torch.randint(0, 2, (2, 4, 64, 64))
        hm_iou = hungarian_matched_iou(samples, annotations, num_classes=2)  # (2,)
    """
    labels, annotations = prepare_samples_and_annotations(samples, annotations, num_classes)
    iou = 1.0 - pairwise_distance(labels, annotations, num_classes, include_background, empty_both)
    return match_iou(iou)


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

    Example::

        metric = HungarianMatchedIoUMetric(num_classes=2)
        metric(y_pred=torch.randint(0, 2, (2, 16, 64, 64)), y=torch.randint(0, 2, (2, 4, 64, 64)))
        hm_iou = metric.aggregate()
    """

    def _per_item(self, y_pred: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        if y is None:
            raise ValueError("HungarianMatchedIoUMetric needs y (annotations of shape (B, K, *spatial)).")
        return hungarian_matched_iou(y_pred, y, self.num_classes, self.include_background, self.empty_both)
