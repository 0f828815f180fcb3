# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""Shared helpers for the sample-based metrics: label-map conversion and vectorised pairwise IoU."""

from __future__ import annotations

import torch
from monai.metrics import CumulativeIterationMetric
from monai.metrics.utils import do_metric_reduction
from monai.utils import MetricReduction

from monai_probseg.utils import check_positive_int

__all__ = [
    "EMPTY_BOTH_MODES",
    "aggregate_per_item",
    "as_label_maps",
    "check_label_range",
    "class_mean_distance",
    "foreground_classes",
    "pairwise_distance",
    "pairwise_iou",
    "prepare_samples_and_annotations",
    "set_iou_blocks",
]

EMPTY_BOTH_MODES = ("zero", "nan")

# voxels per chunk of the Gram-matrix accumulation: float32 holds every integer up to 2**24 exactly, so the
# products within a chunk are exact; the sums over chunks are float64
_VOXEL_CHUNK = 2**20


def as_label_maps(
    masks: torch.Tensor, name: str, spatial_ndim: int | None = None, num_classes: int | None = None
) -> torch.Tensor:
    """Return sample or annotator label maps ``(B, M, *spatial)`` as an integer tensor.

    ``masks`` may hold label maps ``(B, M, *spatial)`` or class scores (probabilities or logits)
    ``(B, M, C, *spatial)``, which are reduced by ``argmax`` over the class axis (dim 2).
    When ``spatial_ndim`` is known (e.g. from the annotations) the two layouts are told apart by the number of
    dimensions, so floating-point label maps are accepted. Otherwise integer/bool tensors are label maps and
    floating-point tensors are class scores ``(B, M, C, *spatial)``.

    Args:
        masks: label maps or class scores, see above.
        name: argument name used in error messages.
        spatial_ndim: number of spatial dimensions (2 or 3) if known.
        num_classes: number of classes; when given, class scores must have this many channels
            (a single channel is read as sigmoid foreground probability and thresholded at 0.5).

    Example::

        labels = as_label_maps(torch.rand(2, 8, 3, 16, 16), "samples", spatial_ndim=2)  # (2, 8, 16, 16)
    """
    if not isinstance(masks, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(masks).__name__}.")
    if spatial_ndim is not None:
        if masks.ndim == spatial_ndim + 2:
            is_scores = False
        elif masks.ndim == spatial_ndim + 3:
            is_scores = True
        else:
            raise ValueError(
                f"{name} must have shape (B, M, *spatial) (label maps) or (B, M, C, *spatial) (class scores) with "
                f"{spatial_ndim} spatial dims, got shape {tuple(masks.shape)}."
            )
    else:
        if masks.ndim < 4:
            raise ValueError(
                f"{name} must have shape (B, M, *spatial) or (B, M, C, *spatial) with 2 or 3 spatial dims, "
                f"got shape {tuple(masks.shape)}."
            )
        is_scores = masks.is_floating_point()
    if not is_scores:
        return masks if not masks.is_floating_point() else masks.round().long()
    num_channels = masks.shape[2]
    if num_classes is not None and num_channels not in (1, num_classes):
        raise ValueError(
            f"{name} has {num_channels} class channels (shape {tuple(masks.shape)}), expected {num_classes} "
            "(or 1 for sigmoid foreground probabilities)."
        )
    if num_channels == 1:
        return (masks[:, :, 0] > 0.5).long()
    return masks.argmax(dim=2)


def foreground_classes(num_classes: int, include_background: bool) -> list[int]:
    """Class indices over which overlap scores are averaged (``0`` is background)."""
    num_classes = check_positive_int(num_classes, "num_classes", minimum=1 if include_background else 2)
    return list(range(0 if include_background else 1, num_classes))


def check_label_range(labels: torch.Tensor, num_classes: int, name: str = "labels") -> None:
    """Raise if integer label maps hold values outside ``[0, num_classes - 1]``.

    Out-of-range values would otherwise be scored silently: as no class at all, or, once the maps are narrowed
    to uint8 for speed, as another class (``256`` wraps to ``0``, ``-1`` to ``255``). One ``aminmax`` pass; the
    offending values are only listed on the error path.

    Args:
        labels: integer (or bool) label maps of any shape.
        num_classes: number of classes, background included.
        name: argument name used in the message.

    Raises:
        ValueError: naming the values found (up to 8 of them) and the expected range.

    Example::

        check_label_range(torch.tensor([0, 1, 4]), 4, "annotations")  # ValueError: ... values [4] ...
    """
    if labels.numel() == 0 or (labels.dtype == torch.bool and num_classes >= 2):
        return
    low, high = torch.aminmax(labels)
    if bool(low >= 0) and bool(high < num_classes):
        return
    bad = labels[(labels < 0) | (labels >= num_classes)]
    found = torch.unique(bad).tolist()
    shown = ", ".join(str(v) for v in found[:8]) + (f", ... ({len(found)} distinct)" if len(found) > 8 else "")
    raise ValueError(
        f"{name}: label values [{shown}] are outside the expected range [0, {num_classes - 1}] for "
        f"num_classes={num_classes}: map them to classes first (e.g. BraTS 2021 label 4 -> 3) or raise num_classes."
    )


def _compact_labels(masks: torch.Tensor, num_classes: int, num_scored: int, name: str) -> torch.Tensor:
    """Flatten label maps to ``(B, M, V)`` after checking their values; use uint8 when several classes are
    compared (less memory traffic), which is exact because every value is then known to be in ``[0, 255]``."""
    check_label_range(masks, num_classes, name)
    flat = masks.reshape(masks.shape[0], masks.shape[1], -1)
    if num_scored > 1 and num_classes <= 256 and flat.dtype not in (torch.uint8, torch.bool):
        flat = flat.to(torch.uint8)
    return flat


def _iou_from_counts(inter: torch.Tensor, size_a: torch.Tensor, size_b: torch.Tensor, empty_both: str) -> torch.Tensor:
    """IoU from intersection ``(B, M, L)`` and sizes ``(B, M)``, ``(B, L)``; both-empty pairs per ``empty_both``."""
    union = size_a[:, :, None] + size_b[:, None, :] - inter
    empty_value = 1.0 if empty_both == "zero" else float("nan")
    return torch.where(union > 0, inter / union.clamp_min(1), torch.full_like(inter, empty_value)).float()


def _accumulate(acc: dict[str, torch.Tensor], key: str, value: torch.Tensor) -> None:
    acc[key] = acc[key] + value if key in acc else value


def set_iou_blocks(
    masks_a: torch.Tensor,
    masks_b: torch.Tensor | None,
    num_classes: int,
    include_background: bool = False,
    empty_both: str = "zero",
    blocks: tuple[str, ...] = ("ab",),
    names: tuple[str, str] = ("masks_a", "masks_b"),
) -> dict[str, torch.Tensor]:
    """Per-class IoU blocks ``"aa"`` (A x A), ``"ab"`` (A x B) and ``"bb"`` (B x B) of two sets of label maps.

    Each one-hot class mask is built once per set and every requested block is one batched matrix product,
    so the GED needs a single pass over the voxels of each set per class, in chunks of 2^20 voxels (memory stays
    one chunk of one-hot masks). Sizes come from the mask sums
    when the ``"aa"`` / ``"bb"`` blocks are computed.

    Args:
        masks_a: label maps ``(B, M, *spatial)``.
        masks_b: label maps ``(B, L, *spatial)`` (``None`` if only ``"aa"`` is requested).
        num_classes: number of classes, background included.
        include_background: whether class 0 is scored.
        empty_both: ``"zero"`` or ``"nan"``, see :py:func:`pairwise_iou`.
        blocks: which blocks to return.
        names: names of the two sets in error messages.

    Raises:
        ValueError: when a label map holds a value outside ``[0, num_classes - 1]`` (see
            :py:func:`check_label_range`).

    Returns:
        dict from block name to IoU ``(B, ., ., num_scored_classes)``.

    Example::

        iou = set_iou_blocks(samples, annotations, 2, blocks=("aa", "ab", "bb"))
    """
    if empty_both not in EMPTY_BOTH_MODES:
        raise ValueError(f"empty_both must be one of {EMPTY_BOTH_MODES}, got {empty_both!r}.")
    if any(blk not in ("aa", "ab", "bb") for blk in blocks):
        raise ValueError(f"blocks must be among ('aa', 'ab', 'bb'), got {blocks}.")
    need_b = any("b" in blk for blk in blocks)
    if need_b:
        if masks_b is None:
            raise ValueError(f"masks_b is required for blocks {blocks}.")
        if masks_a.shape[0] != masks_b.shape[0] or masks_a.shape[2:] != masks_b.shape[2:]:
            raise ValueError(
                "the two sets of label maps must share batch size and spatial shape, got "
                f"{tuple(masks_a.shape)} and {tuple(masks_b.shape)}."
            )
    classes = foreground_classes(num_classes, include_background)
    flat_a = _compact_labels(masks_a, num_classes, len(classes), names[0])
    flat_b = _compact_labels(masks_b, num_classes, len(classes), names[1]) if need_b else None  # type: ignore[arg-type]
    out: dict[str, list[torch.Tensor]] = {blk: [] for blk in blocks}
    num_voxels = flat_a.shape[-1]
    with torch.autocast(device_type=flat_a.device.type, enabled=False):
        for c in classes:
            # counts accumulated over voxel chunks: float32 products of 0/1 masks are exact within a chunk of at
            # most 2^24 voxels, the running sums are float64; memory stays one chunk of one-hot masks per set
            acc: dict[str, torch.Tensor] = {}
            for start in range(0, max(num_voxels, 1), _VOXEL_CHUNK):
                one_a = (flat_a[..., start : start + _VOXEL_CHUNK] == c).to(torch.float32)
                _accumulate(acc, "size_a", one_a.sum(-1, dtype=torch.float64))
                if "aa" in blocks:
                    _accumulate(acc, "aa", torch.bmm(one_a, one_a.transpose(1, 2)).double())
                if need_b:
                    one_b = (flat_b[..., start : start + _VOXEL_CHUNK] == c).to(torch.float32)  # type: ignore[index]
                    _accumulate(acc, "size_b", one_b.sum(-1, dtype=torch.float64))
                    if "bb" in blocks:
                        _accumulate(acc, "bb", torch.bmm(one_b, one_b.transpose(1, 2)).double())
                    if "ab" in blocks:
                        _accumulate(acc, "ab", torch.bmm(one_a, one_b.transpose(1, 2)).double())
            for blk in blocks:
                first, second = ("size_a" if blk[0] == "a" else "size_b"), ("size_a" if blk[1] == "a" else "size_b")
                out[blk].append(_iou_from_counts(acc[blk], acc[first], acc[second], empty_both))
    return {blk: torch.stack(v, dim=-1) for blk, v in out.items()}


def class_mean_distance(iou: torch.Tensor, empty_both: str = "zero") -> torch.Tensor:
    """``d = 1 - IoU`` averaged over the last (class) axis; NaN-aware for ``empty_both="nan"``.

    Args:
        iou: per-class IoU ``(..., num_scored_classes)``.
        empty_both: ``"zero"`` (plain mean) or ``"nan"`` (classes with NaN IoU left out; NaN if all are).

    Example::

        d = class_mean_distance(pairwise_iou(a, b, 3))
    """
    return 1.0 - (iou.mean(-1) if empty_both == "zero" else torch.nanmean(iou, dim=-1))


def pairwise_iou(
    masks_a: torch.Tensor,
    masks_b: torch.Tensor | None = None,
    num_classes: int = 2,
    include_background: bool = False,
    empty_both: str = "zero",
) -> torch.Tensor:
    """Per-class IoU of every pair of label maps of two sets, vectorised over voxels and pairs.

    For each class the one-hot masks are flattened to ``(B, M, V)`` and all intersections come from one batched
    matrix product ``(B, M, V) x (B, V, L)``; the sizes give the unions as ``|A| + |B| - |A n B|``. The products
    run in float32 on chunks of 2^20 voxels, summed in float64, with autocast disabled, so the counts are exact.

    Args:
        masks_a: label maps ``(B, M, *spatial)`` (integer valued).
        masks_b: label maps ``(B, L, *spatial)`` with the same batch size and spatial shape; ``None`` for the
            pairs within ``masks_a`` (computed with one product per class).
        num_classes: number of classes, background included.
        include_background: whether class 0 is scored.
        empty_both: IoU of a class absent from both masks: ``"zero"`` gives IoU 1 (distance 0) as PHiSeg
            (Baumgartner et al., MICCAI 2019) and SSN (Monteiro et al., NeurIPS 2020) do, ``"nan"`` gives NaN
            so that the class is left out of averages (Kohl et al., NeurIPS 2018).

    Returns:
        IoU per pair and class, shape ``(B, M, L, num_scored_classes)``, float32.

    Example::

        a = torch.randint(0, 3, (2, 5, 32, 32))
        b = torch.randint(0, 3, (2, 4, 32, 32))
        iou = pairwise_iou(a, b, num_classes=3)  # (2, 5, 4, 2)
    """
    if masks_b is None:
        return set_iou_blocks(masks_a, None, num_classes, include_background, empty_both, blocks=("aa",))["aa"]
    return set_iou_blocks(masks_a, masks_b, num_classes, include_background, empty_both, blocks=("ab",))["ab"]


def pairwise_distance(
    masks_a: torch.Tensor,
    masks_b: torch.Tensor | None = None,
    num_classes: int = 2,
    include_background: bool = False,
    empty_both: str = "zero",
) -> torch.Tensor:
    """Distance ``d = 1 - IoU`` averaged over the scored classes for every pair of label maps.

    With ``empty_both="nan"`` classes absent from both masks are left out of the class mean, and a pair where every
    class is left out (both masks entirely background) has distance NaN.

    Args:
        masks_a: label maps ``(B, M, *spatial)``.
        masks_b: label maps ``(B, L, *spatial)``, or ``None`` for the pairs within ``masks_a``.
        num_classes: number of classes, background included.
        include_background: whether class 0 is scored.
        empty_both: ``"zero"`` or ``"nan"``, see :py:func:`pairwise_iou`.

    Returns:
        distances ``(B, M, L)``.

    Example::

        d = pairwise_distance(torch.randint(0, 2, (1, 3, 8, 8)), torch.randint(0, 2, (1, 2, 8, 8)), num_classes=2)
    """
    iou = pairwise_iou(masks_a, masks_b, num_classes, include_background, empty_both)
    return class_mean_distance(iou, empty_both)


def aggregate_per_item(
    metric: CumulativeIterationMetric, reduction: MetricReduction | str | None = None
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Shared ``aggregate`` of metrics whose buffer holds ``(B, channels)`` values per batch item.

    Reduces with :py:func:`monai.metrics.utils.do_metric_reduction` (NaN-aware) using ``reduction`` or
    ``metric.reduction``, and returns ``(value, not_nans)`` if ``metric.get_not_nans``.

    Args:
        metric: a cumulative metric with ``reduction`` and ``get_not_nans`` attributes.
        reduction: overrides ``metric.reduction`` when given.

    Example::

        value = aggregate_per_item(ged_metric)
    """
    data = metric.get_buffer()
    if not isinstance(data, torch.Tensor):
        raise ValueError(f"the data to aggregate must be a PyTorch Tensor, got {type(data).__name__}.")
    f, not_nans = do_metric_reduction(data.clone(), reduction or metric.reduction)  # type: ignore[attr-defined]
    return (f, not_nans) if metric.get_not_nans else f  # type: ignore[attr-defined]


def _check_annotations(annotations: torch.Tensor) -> int:
    """Return the number of spatial dims of annotator label maps ``(B, K, *spatial)``."""
    if not isinstance(annotations, torch.Tensor):
        raise TypeError(f"annotations must be a torch.Tensor, got {type(annotations).__name__}.")
    if annotations.ndim not in (4, 5):
        raise ValueError(
            f"annotations must be label maps of shape (B, K, H, W) or (B, K, H, W, D), got {tuple(annotations.shape)}."
        )
    return annotations.ndim - 2


def prepare_samples_and_annotations(
    samples: torch.Tensor, annotations: torch.Tensor, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Label maps of samples ``(B, N, *s)`` and annotations ``(B, K, *s)`` with a common integer dtype.

    The annotations fix the number of spatial dims; samples with one more dimension are class scores
    ``(B, N, C, *s)`` reduced by :py:func:`as_label_maps`.

    Args:
        samples: sample label maps ``(B, N, *s)`` or class scores ``(B, N, C, *s)``.
        annotations: annotator label maps ``(B, K, *s)``, 2D or 3D.
        num_classes: number of classes, background included.

    Example::

        labels, annotations = prepare_samples_and_annotations(torch.rand(1, 8, 2, 16, 16), torch.zeros(1, 4, 16, 16), 2)
    """
    spatial_ndim = _check_annotations(annotations)
    labels = as_label_maps(samples, "samples", spatial_ndim=spatial_ndim, num_classes=num_classes)
    annotations = as_label_maps(annotations, "annotations", spatial_ndim=spatial_ndim)
    if labels.shape[0] != annotations.shape[0] or labels.shape[2:] != annotations.shape[2:]:
        raise ValueError(
            "samples and annotations must share batch size and spatial shape, got sample label maps "
            f"{tuple(labels.shape)} and annotations {tuple(annotations.shape)}."
        )
    dtype = torch.promote_types(labels.dtype, annotations.dtype)
    return labels.to(dtype), annotations.to(dtype)


class SampleSetMetric(CumulativeIterationMetric):
    """Base of the sample-set metrics: one value per batch item, buffered and reduced NaN-aware by ``aggregate()``.

    Subclasses implement :py:meth:`_per_item` (``y_pred``, ``y`` -> ``(B,)``) with the settings stored here.

    Args:
        num_classes: number of classes, background included.
        include_background: whether class 0 contributes.
        empty_both: ``"zero"`` or ``"nan"``, the convention for a class empty in both masks.
        reduction: reduction mode applied by ``aggregate``.
        get_not_nans: if ``True``, ``aggregate()`` returns ``(metric, not_nans)``.
    """

    def __init__(
        self,
        num_classes: int,
        include_background: bool = False,
        empty_both: str = "zero",
        reduction: MetricReduction | str = MetricReduction.MEAN,
        get_not_nans: bool = False,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.include_background = include_background
        self.empty_both = empty_both
        self.reduction = reduction
        self.get_not_nans = get_not_nans

    def _per_item(self, y_pred: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement _per_item.")

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None, **kwargs) -> torch.Tensor:  # type: ignore[override]
        return self._per_item(y_pred, y)[:, None]

    def aggregate(
        self, reduction: MetricReduction | str | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Reduce the buffered per-item values.

        Args:
            reduction: overrides ``self.reduction`` when given.
        """
        return aggregate_per_item(self, reduction)
