# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""Seam measure for predictions stitched from sliding windows.

A prediction assembled from windows that were sampled (or computed) independently jumps where one window ends and
the next takes over. :py:func:`seam_ratio` compares the mean absolute difference between neighbouring planes at the
window borders with the same quantity at all other (interior) planes: about 1 means no seam, clearly above 1 means
visible seams. :py:func:`window_borders` gives the window edges of MONAI's sliding-window scan (where windows meet
with ``mode="constant"`` blending), :py:func:`window_transitions` the middles of the overlaps (where they meet with
``mode="gaussian"``, whose weights vanish at the window edges).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.data.utils import dense_patch_slices

__all__ = ["window_borders", "window_transitions", "plane_differences", "seam_ratio"]


def _scan(
    image_size: Sequence[int], roi_size: Sequence[int] | int, overlap: Sequence[float] | float
) -> tuple[tuple[int, ...], tuple[int, ...], list]:
    """Image size, roi (clipped to the image) and window slices of MONAI's sliding-window scan."""
    image_size = tuple(int(s) for s in image_size)
    ndim = len(image_size)
    roi = (int(roi_size),) * ndim if isinstance(roi_size, int) else tuple(int(r) for r in roi_size)
    ovl = (float(overlap),) * ndim if isinstance(overlap, (int, float)) else tuple(float(o) for o in overlap)
    if len(roi) != ndim or len(ovl) != ndim:
        raise ValueError(
            f"roi_size and overlap must have one entry per spatial axis ({ndim}), got {roi_size!r} and {overlap!r}."
        )
    if any(not 0.0 <= o < 1.0 for o in ovl):
        raise ValueError(f"overlap must be in [0, 1), got {overlap!r}.")
    roi = tuple(min(r, s) for r, s in zip(roi, image_size))
    # the interval of monai.inferers.utils._get_scan_interval
    interval = tuple(r if r == s else max(int(r * (1.0 - o)), 1) for r, s, o in zip(roi, image_size, ovl))
    return image_size, roi, dense_patch_slices(image_size, roi, interval)


def window_borders(
    image_size: Sequence[int], roi_size: Sequence[int] | int, overlap: Sequence[float] | float = 0.25
) -> list[list[int]]:
    """Positions of the window edges of MONAI's ``sliding_window_inference`` scan, per spatial axis.

    The scan interval is ``int(roi * (1 - overlap))`` (at least 1; the roi itself when it equals the image size),
    the windows are those of ``monai.data.utils.dense_patch_slices`` (the last one flush with the image end). A
    position ``p`` (``0 < p < size``) is the plane between voxels ``p - 1`` and ``p`` where some window starts or
    ends.

    Args:
        image_size: spatial size of the image, e.g. ``(96, 96, 96)``.
        roi_size: window size (an int for every axis, or one per axis).
        overlap: window overlap fraction in ``[0, 1)`` (a float for every axis, or one per axis).

    Returns:
        one sorted list of border positions per spatial axis.

    Example::

        window_borders((96, 96, 96), 48, 0.25)  # [[36, 48, 84], ...]: windows [0, 48), [36, 84), [48, 96)
    """
    image_size, roi, slices = _scan(image_size, roi_size, overlap)
    ndim = len(image_size)
    borders: list[list[int]] = []
    for axis in range(ndim):
        edges = set()
        for window in slices:
            for pos in (window[axis].start, window[axis].stop):
                if 0 < pos < image_size[axis]:
                    edges.add(int(pos))
        borders.append(sorted(edges))
    return borders


def window_transitions(
    image_size: Sequence[int], roi_size: Sequence[int] | int, overlap: Sequence[float] | float = 0.25
) -> list[list[int]]:
    """Planes where one window of MONAI's sliding-window scan takes over from the next, per spatial axis.

    With Gaussian blending (MONAI's ``mode="gaussian"``) a window's weight falls off towards its edges, so the
    prediction passes from one window to the next around the middle of their overlap: that is where windows
    sampled with different noise meet (the seam), while the window edges themselves carry almost no weight.
    For consecutive window starts ``s_i < s_{i+1}`` along an axis the transition is ``(s_{i+1} + s_i + roi) // 2``.

    Args:
        image_size: spatial size of the image.
        roi_size: window size (an int for every axis, or one per axis).
        overlap: window overlap fraction in ``[0, 1)``.

    Returns:
        one sorted list of transition planes per spatial axis (empty when one window covers the axis).

    Example::

        window_transitions((64, 64), 16, 0.25)  # [[14, 26, 38, 50], [14, 26, 38, 50]]
    """
    image_size, roi, slices = _scan(image_size, roi_size, overlap)
    ndim = len(image_size)
    out = []
    for axis in range(ndim):
        starts = sorted({int(w[axis].start) for w in slices})
        out.append([(starts[i + 1] + starts[i] + roi[axis]) // 2 for i in range(len(starts) - 1)])
    return out


def plane_differences(volume: torch.Tensor, axis: int) -> torch.Tensor:
    """Mean absolute difference between neighbouring planes along ``axis``.

    Args:
        volume: any tensor, e.g. sample probabilities ``(B, N, C, *spatial)``.
        axis: the axis across whose planes to measure (negative values count from the end).

    Returns:
        ``(L - 1,)`` float tensor; entry ``i`` is ``mean |v[..., i + 1, ...] - v[..., i, ...]|``, the jump across
        the plane at position ``i + 1``.

    Example::

        d = plane_differences(torch.arange(4.0).view(1, 4), axis=1)  # tensor([1., 1., 1.])
    """
    if volume.shape[axis] < 2:
        raise ValueError(f"volume needs at least 2 planes along axis {axis}, got shape {tuple(volume.shape)}.")
    v = volume.float().movedim(axis, 0)
    return (v[1:] - v[:-1]).abs().reshape(v.shape[0] - 1, -1).mean(dim=1)


def seam_ratio(
    volume_samples: torch.Tensor,
    window_borders: Sequence[int],
    axis: int,
    margin: int = 0,
    return_terms: bool = False,
) -> torch.Tensor | dict[str, torch.Tensor]:
    """Ratio of the mean plane-to-plane jump at window borders to the mean jump at interior planes.

    ``ratio = mean_{p in borders} d(p) / mean_{p interior} d(p)`` with ``d(p)`` the mean absolute difference of the
    predictions across the plane at position ``p`` (between voxels ``p - 1`` and ``p``, see
    :py:func:`plane_differences`), averaged over everything else (batch, samples, channels, other axes). Interior
    planes are all positions farther than ``margin`` from every border. A seamless prediction gives about 1
    (borders look like any other plane); windows sampled independently give clearly more than 1. If the interior
    jump is 0 the ratio is 1 when the border jump is 0 too, and ``inf`` otherwise.

    Args:
        volume_samples: predictions, e.g. sample probabilities ``(B, N, C, *spatial)`` or label maps.
        window_borders: border positions along ``axis`` (e.g. one list of :py:func:`window_borders`).
        axis: tensor axis the positions refer to (e.g. ``-3`` for the first spatial axis of a 3D volume).
        margin: planes within this distance of a border are left out of the interior set.
        return_terms: return ``{"ratio", "border", "interior"}`` instead of the ratio alone.

    Returns:
        the ratio (0-d float tensor), or the dict described above.

    Example::

        borders = window_borders(probs.shape[-3:], 48, 0.25)
        ratio = seam_ratio(probs, borders[0], axis=-3)
    """
    diffs = plane_differences(volume_samples, axis)
    length = diffs.shape[0] + 1
    positions = sorted({int(p) for p in window_borders})
    if not positions:
        raise ValueError("window_borders is empty: there is no window border to measure.")
    if positions[0] < 1 or positions[-1] > length - 1:
        raise ValueError(f"window_borders must lie in [1, {length - 1}] for {length} planes, got {positions}.")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}.")
    all_pos = torch.arange(1, length)
    border_mask = torch.zeros(length - 1, dtype=torch.bool)
    near = torch.zeros(length - 1, dtype=torch.bool)
    for p in positions:
        border_mask[p - 1] = True
        near |= (all_pos - p).abs() <= margin
    interior_mask = ~near & ~border_mask
    if not interior_mask.any():
        raise ValueError(f"no interior plane is left with margin={margin} and borders {positions} ({length} planes).")
    border = diffs[border_mask.to(diffs.device)].mean()
    interior = diffs[interior_mask.to(diffs.device)].mean()
    if float(interior) > 0:
        ratio = border / interior
    else:
        ratio = torch.tensor(1.0 if float(border) == 0 else float("inf"), device=diffs.device)
    if return_terms:
        return {"ratio": ratio, "border": border, "interior": interior}
    return ratio
