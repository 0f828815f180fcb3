# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""Generalized energy distance and sample diversity between sets of segmentations."""

from __future__ import annotations

import torch
from monai.utils import MetricReduction

from .hungarian import match_iou
from .utils import (
    SampleSetMetric,
    as_label_maps,
    class_mean_distance,
    prepare_samples_and_annotations,
    set_iou_blocks,
)

__all__ = [
    "GeneralizedEnergyDistanceMetric",
    "SampleDiversityMetric",
    "generalized_energy_distance",
    "sample_diversity",
    "sample_set_metrics",
]


def _mean_pairs(distances: torch.Tensor, include_diagonal: bool = True) -> torch.Tensor:
    """NaN-aware mean of ``(B, M, L)`` pair distances, optionally leaving out the diagonal ``i == j``."""
    if not include_diagonal:
        eye = torch.eye(distances.shape[1], distances.shape[2], dtype=torch.bool, device=distances.device)
        distances = distances.masked_fill(eye, float("nan"))
    return torch.nanmean(distances, dim=(1, 2))


def generalized_energy_distance(
    samples: torch.Tensor,
    annotations: torch.Tensor,
    num_classes: int,
    include_background: bool = False,
    empty_both: str = "zero",
    return_terms: bool = False,
) -> torch.Tensor | dict[str, torch.Tensor]:
    """Squared generalized energy distance between a set of samples and a set of annotations, per batch item.

    ``D^2_GED = 2 E[d(S, Y)] - E[d(S, S')] - E[d(Y, Y')]`` with ``d = 1 - IoU`` averaged over the scored classes
    (Kohl et al., "A Probabilistic U-Net for Segmentation of Ambiguous Images", NeurIPS 2018). The expectations
    are plain means over all ``N x K``, ``N x N`` and ``K x K`` pairs **including the diagonal** ``i == j``
    (where ``d = 0``), as the PHiSeg (Baumgartner et al., MICCAI 2019) and SSN (Monteiro et al., NeurIPS 2020)
    evaluation code compute it; the diversity terms are therefore ``(N - 1) / N`` and ``(K - 1) / K`` times the
    means over distinct pairs.

    All pairwise IoUs come from one batched matrix product per class (see
    :py:func:`monai_probseg.metrics.utils.pairwise_iou`), no Python loop over voxels or pairs.

    Args:
        samples: sample label maps ``(B, N, *spatial)`` or sample probabilities/logits ``(B, N, C, *spatial)``
            (reduced with ``argmax`` over ``C``; ``C = 1`` is read as a sigmoid probability, threshold 0.5).
        annotations: annotator label maps ``(B, K, *spatial)``, 2D or 3D.
        num_classes: number of classes, background included.
        include_background: whether class 0 contributes to ``d``. Defaults to ``False``.
        empty_both: what ``d`` is for a class absent from both masks: ``"zero"`` (IoU 1, distance 0, as
            PHiSeg/SSN/BerDiff) or ``"nan"`` (the class is left out of the class mean, Kohl et al.'s reference;
            a pair where every class is left out is left out of the expectation, and a term with no pair left
            is NaN).
        return_terms: if ``True`` return a dict with ``"ged"``, ``"cross"`` (E[d(S, Y)]),
            ``"diversity_samples"`` (E[d(S, S')]) and ``"diversity_annotations"`` (E[d(Y, Y')]), each ``(B,)``.

    Returns:
        GED per batch item ``(B,)`` (float32), or the dict described above.

    Example::

        samples = torch.randint(0, 2, (2, 16, 64, 64))
        annotations = torch.randint(0, 2, (2, 4, 64, 64))
        ged = generalized_energy_distance(samples, annotations, num_classes=2)  # (2,)
    """
    terms = _set_terms(samples, annotations, num_classes, include_background, empty_both, matching=None)
    return terms if return_terms else terms["ged"]


def _set_terms(
    samples: torch.Tensor,
    annotations: torch.Tensor,
    num_classes: int,
    include_background: bool,
    empty_both: str,
    matching: str | None,
) -> dict[str, torch.Tensor]:
    """GED terms (and HM-IoU unless ``matching`` is None) from one computation of the three pairwise IoU blocks."""
    labels, annotations = prepare_samples_and_annotations(samples, annotations, num_classes)
    iou = set_iou_blocks(
        labels,
        annotations,
        num_classes,
        include_background,
        empty_both,
        blocks=("aa", "ab", "bb"),
        names=("samples", "annotations"),
    )
    dist = {blk: class_mean_distance(v, empty_both) for blk, v in iou.items()}
    cross, div_s, div_y = _mean_pairs(dist["ab"]), _mean_pairs(dist["aa"]), _mean_pairs(dist["bb"])
    terms = {
        "ged": 2.0 * cross - div_s - div_y,
        "cross": cross,
        "diversity_samples": div_s,
        "diversity_annotations": div_y,
    }
    if matching is not None:
        terms["hm_iou"] = match_iou(1.0 - dist["ab"], matching=matching)
    return terms


def sample_set_metrics(
    samples: torch.Tensor,
    annotations: torch.Tensor,
    num_classes: int,
    include_background: bool = False,
    empty_both: str = "zero",
    matching: str = "lcm",
) -> dict[str, torch.Tensor]:
    """GED with its three terms and the Hungarian-matched IoU from a single pass over the voxels.

    Equivalent to :py:func:`generalized_energy_distance` with ``return_terms=True`` plus
    :py:func:`monai_probseg.metrics.hungarian_matched_iou`, sharing the pairwise IoUs (the expensive part).

    Args:
        samples: sample label maps ``(B, N, *spatial)`` or probabilities/logits ``(B, N, C, *spatial)``.
        annotations: annotator label maps ``(B, K, *spatial)``, 2D or 3D.
        num_classes: number of classes, background included.
        include_background: whether class 0 contributes to ``d``. Defaults to ``False``.
        empty_both: ``"zero"`` or ``"nan"``, see :py:func:`generalized_energy_distance`.
        matching: how HM-IoU matches ``N`` samples to ``K`` annotations, ``"lcm"`` (Kohl et al. 2019, default) or
            ``"tile"``, see :py:func:`monai_probseg.metrics.match_iou`.

    Returns:
        dict with ``"ged"``, ``"cross"``, ``"diversity_samples"``, ``"diversity_annotations"`` and ``"hm_iou"``,
        each ``(B,)``.

    Example::

        scores = sample_set_metrics(torch.randint(0, 2, (1, 100, 128, 128)), torch.randint(0, 2, (1, 4, 128, 128)), 2)
        scores["ged"], scores["hm_iou"]
    """
    return _set_terms(samples, annotations, num_classes, include_background, empty_both, matching=matching)


def sample_diversity(
    samples: torch.Tensor,
    num_classes: int,
    include_background: bool = False,
    empty_both: str = "zero",
    include_diagonal: bool = True,
    spatial_dims: int | None = None,
) -> torch.Tensor:
    """Sample diversity ``E[d(S, S')]`` with ``d = 1 - IoU`` averaged over the scored classes, per batch item.

    This is the second term of the generalized energy distance (Kohl et al., NeurIPS 2018); by default the mean
    runs over all ``N x N`` pairs including ``i == j`` as in :py:func:`generalized_energy_distance`.

    Args:
        samples: sample label maps ``(B, N, *spatial)`` (integer or bool dtype) or sample probabilities/logits
            ``(B, N, C, *spatial)`` (floating dtype, reduced with ``argmax``). Without ``spatial_dims`` the dtype
            tells the two apart: cast floating-point label maps to an integer dtype, or pass ``spatial_dims``.
        num_classes: number of classes, background included.
        include_background: whether class 0 contributes to ``d``. Defaults to ``False``.
        empty_both: ``"zero"`` or ``"nan"``, see :py:func:`generalized_energy_distance`.
        include_diagonal: include the ``i == j`` pairs (distance 0). ``False`` averages over distinct pairs only.
        spatial_dims: number of spatial dims (2 or 3), if known.

    Returns:
        diversity per batch item ``(B,)``.

    Example::

        div = sample_diversity(torch.randint(0, 3, (1, 8, 32, 32, 32)), num_classes=3)
    """
    labels = as_label_maps(samples, "samples", spatial_ndim=spatial_dims, num_classes=num_classes)
    iou = set_iou_blocks(
        labels, None, num_classes, include_background, empty_both, blocks=("aa",), names=("samples", "samples")
    )["aa"]
    return _mean_pairs(class_mean_distance(iou, empty_both), include_diagonal=include_diagonal)


class GeneralizedEnergyDistanceMetric(SampleSetMetric):
    """Generalized energy distance between sample sets and annotation sets, accumulated over iterations.

    Wraps :py:func:`generalized_energy_distance` in MONAI's cumulative metric API: call it with
    ``y_pred=samples`` (``(B, N, *spatial)`` label maps or ``(B, N, C, *spatial)`` probabilities) and
    ``y=annotations`` (``(B, K, *spatial)``), then ``aggregate()``. The buffer holds one value per batch item
    (shape ``(B, 1)``) and is reduced by :py:func:`monai.metrics.utils.do_metric_reduction` (NaN-aware).

    Args:
        num_classes: number of classes, background included.
        include_background: whether class 0 contributes to ``d``. Defaults to ``False``.
        empty_both: ``"zero"`` or ``"nan"``, see :py:func:`generalized_energy_distance`.
        reduction: reduction mode applied by ``aggregate`` (``"mean"``, ``"sum"``, ``"none"``, ...).
        get_not_nans: if ``True``, ``aggregate()`` returns ``(metric, not_nans)``.

    Example::

        metric = GeneralizedEnergyDistanceMetric(num_classes=2)
        metric(y_pred=torch.randint(0, 2, (2, 16, 64, 64)), y=torch.randint(0, 2, (2, 4, 64, 64)))
        ged = metric.aggregate()
    """

    def _per_item(self, y_pred: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        if y is None:
            raise ValueError("GeneralizedEnergyDistanceMetric needs y (annotations of shape (B, K, *spatial)).")
        return generalized_energy_distance(y_pred, y, self.num_classes, self.include_background, self.empty_both)


class SampleDiversityMetric(SampleSetMetric):
    """Sample diversity ``E[d(S, S')]`` accumulated over iterations (see :py:func:`sample_diversity`).

    Call it with ``y_pred=samples``; ``y`` is not used.

    Args:
        num_classes: number of classes, background included.
        include_background: whether class 0 contributes to ``d``. Defaults to ``False``.
        empty_both: ``"zero"`` or ``"nan"``, see :py:func:`generalized_energy_distance`.
        include_diagonal: include the ``i == j`` pairs (distance 0) in the mean.
        spatial_dims: number of spatial dims (2 or 3), if known; see :py:func:`sample_diversity`.
        reduction: reduction mode applied by ``aggregate``.
        get_not_nans: if ``True``, ``aggregate()`` returns ``(metric, not_nans)``.

    Example::

        metric = SampleDiversityMetric(num_classes=2)
        metric(y_pred=torch.randint(0, 2, (2, 16, 64, 64)))
        diversity = metric.aggregate()
    """

    def __init__(
        self,
        num_classes: int,
        include_background: bool = False,
        empty_both: str = "zero",
        include_diagonal: bool = True,
        spatial_dims: int | None = None,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        get_not_nans: bool = False,
    ) -> None:
        super().__init__(num_classes, include_background, empty_both, reduction, get_not_nans)
        self.include_diagonal = include_diagonal
        self.spatial_dims = spatial_dims

    def _per_item(self, y_pred: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        return sample_diversity(
            y_pred,
            self.num_classes,
            self.include_background,
            self.empty_both,
            include_diagonal=self.include_diagonal,
            spatial_dims=self.spatial_dims,
        )
