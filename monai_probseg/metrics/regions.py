# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""BraTS tumour regions (tumour core, whole tumour, enhancing tumour) and their Dice / HD95 via MONAI.

:data:`BRATS_REGIONS` is the one definition of the regions in monai_probseg: every function here, the bundles'
evaluation and reports use it, in MONAI's channel order (that of ``ConvertToMultiChannelBasedOnBratsClassesd``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.metrics import CumulativeIterationMetric, compute_dice, compute_hausdorff_distance
from monai.metrics.utils import do_metric_reduction
from monai.utils import MetricReduction

__all__ = [
    "BRATS_REGIONS",
    "BRATS_REGION_NAMES",
    "BraTSRegionMetrics",
    "brats_regions",
    "compute_brats_region_metrics",
    "region_mask_scores",
    "region_masks",
]

#: The BraTS evaluation regions, region -> labels, with the BraTS 2023 labels (1 necrotic tumour core, 2 peritumoural
#: edema, 3 enhancing tumour): tumour core TC = 1 u 3, whole tumour WT = 1 u 2 u 3, enhancing tumour ET = 3. The
#: order is MONAI's: the channels of ``monai.transforms.ConvertToMultiChannelBasedOnBratsClassesd(et_label=3)``.
BRATS_REGIONS: dict[str, tuple[int, ...]] = {"TC": (1, 3), "WT": (1, 2, 3), "ET": (3,)}
#: the region names, in the order of :data:`BRATS_REGIONS`
BRATS_REGION_NAMES = tuple(BRATS_REGIONS)
# label of the enhancing tumour under each labelling convention (4 in BraTS 2017-2021, 3 from BraTS 2023 on)
_ET_LABEL = {"2023": 3, "2020": 4}
_EMPTY_POLICIES = ("brats", "nan")


def _convention_regions(convention: str) -> dict[str, tuple[int, ...]]:
    """:data:`BRATS_REGIONS` with the enhancing-tumour label of ``convention``."""
    if convention not in _ET_LABEL:
        raise ValueError(f"convention must be one of {tuple(_ET_LABEL)}, got {convention!r}.")
    et = _ET_LABEL[convention]
    return {name: tuple(et if lab == 3 else lab for lab in labels) for name, labels in BRATS_REGIONS.items()}


def region_masks(
    label_map: torch.Tensor, regions: Mapping[str, Sequence[int]], dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Binary masks of label groups (regions) from a label map, one channel per region in the order of ``regions``.

    Args:
        label_map: label map ``(B, 1, *spatial)``.
        regions: region name -> the labels making up the region (e.g. :data:`BRATS_REGIONS`).
        dtype: dtype of the masks.

    Returns:
        region masks ``(B, len(regions), *spatial)``.

    Example::

        masks = region_masks(labels, {"lesion": (1, 2)})  # (B, 1, *spatial)
    """
    if label_map.ndim < 3 or label_map.shape[1] != 1:
        raise ValueError(
            f"label_map must have shape (B, 1, *spatial) (one channel of labels), got {tuple(label_map.shape)}; "
            "for N sample label maps (B, N, *spatial) use compute_brats_region_metrics."
        )
    labels = label_map[:, 0]
    masks = [torch.isin(labels, torch.tensor(list(v), device=labels.device)) for v in regions.values()]
    return torch.stack(masks, dim=1).to(dtype)


def brats_regions(
    label_map: torch.Tensor, convention: str = "2023", dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Binary masks of the BraTS evaluation regions (:data:`BRATS_REGIONS`) from a label map.

    TC (tumour core) = 1 u 3, WT (whole tumour) = 1 u 2 u 3, ET (enhancing tumour) = 3 with the BraTS 2023 labels
    (1 necrotic core, 2 edema, 3 enhancing); with ``convention="2020"`` (BraTS 2017-2021) label 4 is the enhancing
    tumour: TC = 1 u 4, WT = 1 u 2 u 4, ET = 4 (Menze et al., IEEE TMI 2015; Bakas et al., arXiv 1811.02629). For 3D
    label maps the masks equal ``ConvertToMultiChannelBasedOnBratsClasses(et_label=3 or 4)`` of each case.

    Args:
        label_map: label map ``(B, 1, *spatial)``, 2D or 3D.
        convention: ``"2023"`` (enhancing = 3) or ``"2020"`` (enhancing = 4).
        dtype: dtype of the masks.

    Returns:
        region masks ``(B, 3, *spatial)`` in the order TC, WT, ET.

    Example::

        regions = brats_regions(torch.randint(0, 4, (1, 1, 64, 64, 64)))  # (1, 3, 64, 64, 64)
    """
    return region_masks(label_map, _convention_regions(convention), dtype)


def _image_diagonal(spatial_shape: Sequence[int], spacing: Any) -> float:
    """Length of the image diagonal in physical units (the BraTS penalty HD for a region missed entirely)."""
    if spacing is None:
        spacing = 1.0
    if isinstance(spacing, (int, float)):
        spacing = [float(spacing)] * len(spatial_shape)
    spacing = [float(s) for s in spacing]
    if len(spacing) != len(spatial_shape):
        raise ValueError(
            f"spacing must be a number or have one value per spatial dim {tuple(spatial_shape)}, got {spacing}."
        )
    return math.sqrt(sum((n * s) ** 2 for n, s in zip(spatial_shape, spacing)))


def region_mask_scores(
    pred_regions: torch.Tensor,
    target_regions: torch.Tensor,
    hd_percentile: float | None,
    include_hd: bool,
    spacing: Any,
    empty: str,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Dice and Hausdorff distance of region masks, with a policy for empty regions.

    Uses MONAI's ``compute_dice`` and ``compute_hausdorff_distance``; see
    :py:func:`compute_brats_region_metrics` for the policies.

    Args:
        pred_regions: predicted binary region masks ``(B, R, *spatial)`` (e.g. from :py:func:`brats_regions`).
        target_regions: reference region masks of the same shape.
        hd_percentile: percentile of the Hausdorff distance (95 for HD95), ``None`` for the maximum.
        include_hd: also compute the Hausdorff distance (otherwise ``None`` is returned for it).
        spacing: voxel spacing for the distance, as MONAI's ``compute_hausdorff_distance`` takes it.
        empty: ``"brats"`` (both empty: Dice 1, HD 0; one empty: Dice 0, HD the image diagonal) or ``"nan"``.

    Returns:
        ``(dice, hd)``, each ``(B, R)`` (``hd`` is ``None`` without ``include_hd``).

    Example::

        dice, hd = region_mask_scores(brats_regions(pred), brats_regions(label), 95, True, None, "brats")
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is all 0.*")  # empty regions are handled below
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*")  # MONAI-internal deprecation
        dice = compute_dice(pred_regions, target_regions, include_background=True, ignore_empty=True)
        hd = None
        if include_hd:
            hd = compute_hausdorff_distance(
                pred_regions, target_regions, include_background=True, percentile=hd_percentile, spacing=spacing
            )
    pred_empty = pred_regions.flatten(2).sum(-1) == 0
    target_empty = target_regions.flatten(2).sum(-1) == 0
    both, one = pred_empty & target_empty, pred_empty ^ target_empty
    nan = torch.full_like(dice, float("nan"))
    if empty == "brats":
        dice = torch.where(both, torch.ones_like(dice), torch.where(one, torch.zeros_like(dice), dice))
        if hd is not None:
            diagonal = _image_diagonal(pred_regions.shape[2:], spacing)
            hd = torch.where(both, torch.zeros_like(hd), torch.where(one, torch.full_like(hd, diagonal), hd))
    else:
        dice = torch.where(target_empty, nan, dice)
        if hd is not None:
            hd = torch.where(pred_empty | target_empty, nan, hd)
    return dice, hd


def compute_brats_region_metrics(
    pred_labels: torch.Tensor,
    target_labels: torch.Tensor,
    convention: str = "2023",
    hd_percentile: float | None = 95,
    include_hd: bool = True,
    spacing: float | Sequence[float] | None = None,
    empty: str = "brats",
    per_sample: bool | None = None,
) -> dict[str, torch.Tensor]:
    """Dice and percentile Hausdorff distance of the BraTS regions TC, WT and ET (:data:`BRATS_REGIONS`).

    The scores are computed by MONAI (:py:func:`monai.metrics.compute_dice` and
    :py:func:`monai.metrics.compute_hausdorff_distance`, the computations behind ``DiceMetric`` and
    ``HausdorffDistanceMetric``) on the region masks of :py:func:`brats_regions`. MONAI leaves empty regions
    undefined (Dice NaN when the reference is empty, HD NaN or Inf when either mask is empty); ``empty`` decides:

    - ``"brats"`` (default, the BraTS challenge convention): both empty -> Dice 1, HD 0; exactly one empty ->
      Dice 0, HD = the image diagonal in physical units (373.13 mm for 240 x 240 x 155 at 1 mm);
    - ``"nan"``: Dice NaN when the reference is empty, HD NaN when either is empty (left out of NaN-aware means).

    Args:
        pred_labels: predicted label map ``(B, 1, *spatial)`` or ``N`` sample label maps ``(B, N, *spatial)``.
        target_labels: reference label map ``(B, 1, *spatial)``.
        convention: BraTS labelling, ``"2023"`` (enhancing = 3) or ``"2020"`` (enhancing = 4).
        hd_percentile: percentile of the surface distances (95 for HD95; ``None`` for the maximum).
        include_hd: compute the Hausdorff distance (the slow part); otherwise only ``"dice"`` is returned.
        spacing: voxel spacing, a number or one value per spatial dim, shared by the batch (``None``: 1).
        empty: empty-region policy, ``"brats"`` or ``"nan"`` (see above).
        per_sample: whether ``pred_labels`` holds samples on dim 1; by default ``True`` when it has more than one
            channel.

    Returns:
        dict with ``"dice"`` and (if ``include_hd``) ``"hd"``, each ``(B, 3)`` for a single label map or
        ``(B, N, 3)`` per sample, regions in the order TC, WT, ET (:data:`BRATS_REGION_NAMES`).

    Example::

        scores = compute_brats_region_metrics(pred, label, spacing=(1.0, 1.0, 1.0))
        scores["dice"][:, BRATS_REGION_NAMES.index("WT")]  # whole-tumour Dice per case
    """
    if empty not in _EMPTY_POLICIES:
        raise ValueError(f"empty must be one of {_EMPTY_POLICIES}, got {empty!r}.")
    if target_labels.ndim < 3 or target_labels.shape[1] != 1:
        raise ValueError(f"target_labels must have shape (B, 1, *spatial), got {tuple(target_labels.shape)}.")
    if pred_labels.shape[0] != target_labels.shape[0] or pred_labels.shape[2:] != target_labels.shape[2:]:
        raise ValueError(
            f"pred_labels {tuple(pred_labels.shape)} and target_labels {tuple(target_labels.shape)} must share "
            "batch size and spatial shape."
        )
    if per_sample is None:
        per_sample = pred_labels.shape[1] > 1
    if not per_sample and pred_labels.shape[1] != 1:
        raise ValueError(
            f"pred_labels must have shape (B, 1, *spatial) when per_sample=False, got {tuple(pred_labels.shape)}."
        )
    target_regions = brats_regions(target_labels, convention)
    dices, hds = [], []
    for n in range(pred_labels.shape[1]):  # a few samples; each region map is scored by MONAI
        pred_regions = brats_regions(pred_labels[:, n : n + 1], convention)
        dice, hd = region_mask_scores(pred_regions, target_regions, hd_percentile, include_hd, spacing, empty)
        dices.append(dice)
        hds.append(hd)
    if per_sample:
        out = {"dice": torch.stack(dices, dim=1)}
        if include_hd:
            out["hd"] = torch.stack(hds, dim=1)  # type: ignore[arg-type]
        return out
    out = {"dice": dices[0]}
    if include_hd:
        out["hd"] = hds[0]  # type: ignore[assignment]
    return out


class BraTSRegionMetrics(CumulativeIterationMetric):
    """Dice and HD95 of the BraTS regions TC, WT, ET (:data:`BRATS_REGIONS`) accumulated over iterations.

    Call it with ``y_pred`` a predicted label map ``(B, 1, *spatial)`` or sample label maps ``(B, N, *spatial)``
    (scores averaged over the samples, NaN-aware) and ``y`` the reference label map ``(B, 1, *spatial)``;
    ``spacing`` may be passed as a keyword. See :py:func:`compute_brats_region_metrics` for the empty-region policy.

    Args:
        convention: BraTS labelling, ``"2023"`` (enhancing = 3) or ``"2020"`` (enhancing = 4).
        hd_percentile: percentile of the surface distances (95 for HD95; ``None`` for the maximum).
        include_hd: also compute the Hausdorff distance.
        empty: empty-region policy, ``"brats"`` or ``"nan"``.
        reduction: reduction applied by ``aggregate`` to the ``(num_items, 3)`` buffers; the default
            ``"mean_batch"`` gives one value per region.
        get_not_nans: if ``True``, each aggregated entry is ``(value, not_nans)``.

    Example::

        metric = BraTSRegionMetrics()
        metric(y_pred=pred_labels, y=labels, spacing=(1.0, 1.0, 1.0))
        scores = metric.aggregate()  # {"dice": (3,), "hd": (3,)}
    """

    def __init__(
        self,
        convention: str = "2023",
        hd_percentile: float | None = 95,
        include_hd: bool = True,
        empty: str = "brats",
        reduction: MetricReduction | str = MetricReduction.MEAN_BATCH,
        get_not_nans: bool = False,
    ) -> None:
        super().__init__()
        self.convention = convention
        self.hd_percentile = hd_percentile
        self.include_hd = include_hd
        self.empty = empty
        self.reduction = reduction
        self.get_not_nans = get_not_nans

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None, **kwargs: Any) -> list[torch.Tensor]:  # type: ignore[override]
        if y is None:
            raise ValueError("BraTSRegionMetrics needs y (reference label map of shape (B, 1, *spatial)).")
        scores = compute_brats_region_metrics(
            y_pred,
            y,
            convention=self.convention,
            hd_percentile=self.hd_percentile,
            include_hd=self.include_hd,
            spacing=kwargs.get("spacing"),
            empty=self.empty,
            per_sample=y_pred.shape[1] > 1,
        )
        out = [v if v.ndim == 2 else torch.nanmean(v, dim=1) for v in scores.values()]
        return out

    def aggregate(self, reduction: MetricReduction | str | None = None) -> dict[str, Any]:
        """Reduce the buffered ``(num_items, 3)`` scores.

        Args:
            reduction: overrides ``self.reduction`` when given.

        Returns:
            dict with ``"dice"`` (and ``"hd"``), each reduced (or ``(value, not_nans)`` with ``get_not_nans``).
        """
        data = self.get_buffer()
        buffers = [data] if isinstance(data, torch.Tensor) else list(data)
        names = ["dice", "hd"][: len(buffers)]
        out: dict[str, Any] = {}
        for name, buf in zip(names, buffers):
            f, not_nans = do_metric_reduction(buf.clone(), reduction or self.reduction)
            out[name] = (f, not_nans) if self.get_not_nans else f
        return out
