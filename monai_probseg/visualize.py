# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""Figures a person would rather look at than read: an image, its raters, the mean, samples and uncertainty maps.

:func:`plot_sample_grid` draws one row per case: the image, the raters (or the reference), the mean segmentation,
a few samples, the entropy and the mutual information, for 2D images or a chosen slice of 3D volumes (by default
the axial slice through the largest cross-section of the reference or the mean segmentation). Matplotlib is
imported only when a figure is drawn (``pip install matplotlib``, part of the ``[all]`` extra).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["plot_sample_grid", "pick_slice"]


def _np(x: Any) -> np.ndarray | None:
    if x is None:
        return None
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def pick_slice(mask: np.ndarray, axis: int = -1) -> int:
    """Index along ``axis`` of the slice with the most foreground voxels of ``mask`` (the middle when empty)."""
    mask = np.asarray(mask) > 0
    axis = axis % mask.ndim
    counts = mask.sum(axis=tuple(a for a in range(mask.ndim) if a != axis))
    return int(counts.argmax()) if counts.any() else mask.shape[axis] // 2


def _cut(x: np.ndarray | None, spatial_dims: int, index: int | None, axis: int) -> np.ndarray | None:
    if x is None:
        return None
    if spatial_dims == 2:
        return x
    return np.take(x, index, axis=x.ndim - 3 + axis)


def plot_sample_grid(
    cases: Sequence[Mapping[str, Any]],
    num_samples: int = 4,
    slice_index: int | None = None,
    slice_axis: int = 2,
    image_channel: int = 0,
    num_classes: int | None = None,
    titles: Sequence[str] | None = None,
    entropy_max: float | None = None,
    figsize_per_panel: float = 1.9,
) -> Any:
    """One row per case: image, raters, mean segmentation, ``num_samples`` samples, entropy, mutual information.

    Args:
        cases: dicts with ``"image"`` ``(C, *spatial)`` (or ``(*spatial)``), and any of ``"raters"``
            ``(K, *spatial)`` label maps (or ``"label"`` ``(*spatial)``), ``"seg"`` ``(*spatial)`` mean label map,
            ``"samples"`` ``(N, *spatial)`` label maps, ``"entropy"`` and ``"mutual_info"`` ``(*spatial)``; numpy
            arrays or tensors, 2D or 3D spatial.
        num_samples: how many samples to show per row.
        slice_index: the slice of 3D volumes along ``slice_axis``; default: the largest cross-section of the
            consensus/label (else the mean segmentation) of each case.
        slice_axis: the spatial axis that is cut (2: axial for RAS volumes).
        image_channel: the image channel shown (e.g. 3 for FLAIR in the BraTS order t1n, t1c, t2w, t2f).
        num_classes: colour range of the label maps (default: the largest label seen + 1).
        titles: one title per row (default: ``case_id`` when given).
        entropy_max: upper end of the entropy colour scale (default: ``log(num_classes)``).
        figsize_per_panel: inches per panel.

    Returns:
        the matplotlib ``Figure``.

    Example::

        fig = plot_sample_grid([{"image": image, "raters": raters, "seg": seg, "samples": samples,
                                 "entropy": entropy, "mutual_info": mi}], image_channel=3)
        fig.savefig("samples.png")
    """
    import matplotlib.pyplot as plt

    if not cases:
        raise ValueError("cases is empty: pass at least one dict with an 'image'.")
    rows = []
    max_label = 1
    for case in cases:
        image = _np(case["image"])
        seg = _np(case.get("seg"))
        raters = _np(case.get("raters"))
        if raters is None and case.get("label") is not None:
            raters = _np(case["label"])[None]
        spatial_dims = 3 if image.ndim >= 4 or (image.ndim == 3 and seg is not None and seg.ndim == 3) else 2
        if image.ndim == spatial_dims:
            image = image[None]
        index = slice_index
        if spatial_dims == 3 and index is None:
            ref = raters.max(0) if raters is not None else seg
            index = pick_slice(ref, slice_axis) if ref is not None else image.shape[1 + slice_axis] // 2
        row = {
            "image": _cut(image[image_channel], spatial_dims, index, slice_axis),
            "raters": [_cut(r, spatial_dims, index, slice_axis) for r in raters] if raters is not None else [],
            "seg": _cut(seg, spatial_dims, index, slice_axis),
            "samples": [_cut(s, spatial_dims, index, slice_axis) for s in _np(case.get("samples"))[:num_samples]]
            if case.get("samples") is not None
            else [],
            "entropy": _cut(_np(case.get("entropy")), spatial_dims, index, slice_axis),
            "mutual_info": _cut(_np(case.get("mutual_info")), spatial_dims, index, slice_axis),
            "title": (titles[len(rows)] if titles else str(case.get("case_id", ""))) + (f" z={index}" if index else ""),
        }
        for lab in [*row["raters"], row["seg"], *row["samples"]]:
            if lab is not None:
                max_label = max(max_label, int(lab.max()))
        rows.append(row)
    num_classes = num_classes or max_label + 1
    entropy_max = entropy_max if entropy_max is not None else float(np.log(max(num_classes, 2)))
    num_raters = max(len(r["raters"]) for r in rows)
    num_shown = max(len(r["samples"]) for r in rows)
    columns = ["image"] + [f"rater {k + 1}" for k in range(num_raters)] + ["mean"]
    columns += [f"sample {k + 1}" for k in range(num_shown)] + ["entropy", "mutual info"]
    fig, axes = plt.subplots(
        len(rows),
        len(columns),
        figsize=(figsize_per_panel * len(columns), figsize_per_panel * len(rows)),
        squeeze=False,
    )
    label_kw = {"cmap": "viridis", "vmin": 0, "vmax": num_classes - 1, "interpolation": "nearest"}
    for r, row in enumerate(rows):
        panels = [("image", row["image"], {"cmap": "gray"})]
        panels += [(f"rater {k + 1}", m, label_kw) for k, m in enumerate(row["raters"])]
        panels += [(None, None, None)] * (num_raters - len(row["raters"]))
        panels += [("mean", row["seg"], label_kw)]
        panels += [(f"sample {k + 1}", m, label_kw) for k, m in enumerate(row["samples"])]
        panels += [(None, None, None)] * (num_shown - len(row["samples"]))
        panels += [("entropy", row["entropy"], {"cmap": "magma", "vmin": 0, "vmax": entropy_max})]
        panels += [("mutual info", row["mutual_info"], {"cmap": "magma", "vmin": 0, "vmax": entropy_max})]
        for c, (name, data, kw) in enumerate(panels):
            ax = axes[r, c]
            ax.axis("off")
            if data is None:
                continue
            ax.imshow(np.asarray(data, dtype=np.float32).T, origin="lower", **kw)
            if r == 0:
                ax.set_title(name, fontsize=8)
        axes[r, 0].text(
            -0.05, 0.5, row["title"], transform=axes[r, 0].transAxes, rotation=90, va="center", ha="right", fontsize=7
        )
    fig.tight_layout()
    return fig
