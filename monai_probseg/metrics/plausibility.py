# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""Plausibility figures of one case's samples and uncertainty maps: do they look like what a radiologist expects?

A trustworthy probabilistic segmentation is certain far from any structure and uncertain at ambiguous
boundaries, and every sample is a believable segmentation. These figures test that on a single case, with no
ground truth (measured from the predicted tumour) or with one (measured from the reference tumour):

- ``far_entropy_median``: median predictive entropy (nats) of the brain voxels more than ``far_distance`` (mm)
  from the tumour: about 0 for a good model;
- ``boundary_entropy_mean``: mean entropy in a band of ``+- band_width`` (mm) around the tumour's boundary, and
  ``boundary_far_ratio``, its ratio to the mean entropy far away (high for a good model);
- ``high_entropy_fraction``: the fraction of the brain with entropy above ``high_entropy`` (0.5 nats);
- ``sample_volume_ratio_min`` / ``_max``: each sample's tumour volume over the reference tumour's volume (a sample
  that labels the whole brain, or nothing, stands out).

:func:`plausibility_warnings` turns them into messages with the limits of :data:`PLAUSIBILITY_LIMITS`; the bundles'
inference runner writes both into its summary and logs a warning for each implausible case.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy import ndimage

__all__ = ["PLAUSIBILITY_LIMITS", "plausibility_scores", "plausibility_warnings"]

#: default limits of :func:`plausibility_warnings` (the acceptance limits of the shipped 3D models)
PLAUSIBILITY_LIMITS = {
    "far_entropy_median": 0.05,  # at most
    "boundary_far_ratio": 5.0,  # at least
    "high_entropy_fraction": 0.2,  # at most (the boundary band of a large tumour alone can exceed 5%)
    "sample_volume_ratio_min": 0.5,  # at least
    "sample_volume_ratio_max": 2.0,  # at most
    "min_reference_voxels": 50,  # volume ratios and the boundary band are judged only for tumours this large
}


def plausibility_scores(
    entropy: np.ndarray,
    reference: np.ndarray,
    samples: np.ndarray | None = None,
    brain: np.ndarray | None = None,
    spacing: tuple[float, ...] | None = None,
    far_distance: float = 8.0,
    band_width: float = 2.0,
    high_entropy: float = 0.5,
) -> dict[str, float]:
    """Plausibility figures of one case (see the module docstring).

    Args:
        entropy: ``(*spatial)`` predictive entropy in nats.
        reference: ``(*spatial)`` bool, the tumour the distances are measured from (the mean prediction's whole
            tumour without ground truth, the consensus' with it).
        samples: optional ``(N, *spatial)`` bool, each sample's tumour.
        brain: optional ``(*spatial)`` bool brain mask (for skull-stripped images, the non-zero voxels); default:
            the whole image.
        spacing: voxel size per axis in mm (default 1): distances are in mm.
        far_distance: "far from the tumour" means more than this distance (mm) from it.
        band_width: half width (mm) of the band around the tumour's boundary.
        high_entropy: the entropy (nats) above which a voxel counts as uncertain.

    Returns:
        a dict of floats (NaN where a figure is undefined, e.g. the band of an empty reference):
        ``far_entropy_median``, ``far_entropy_mean``, ``boundary_entropy_mean``, ``boundary_far_ratio``,
        ``high_entropy_fraction``, ``reference_voxels``, ``sample_volume_ratio_min``, ``sample_volume_ratio_max``,
        ``sample_volume_ratio_median``.

    Example::

        scores = plausibility_scores(entropy, seg > 0, samples=samples > 0, brain=image.any(0))
        plausibility_warnings(scores)  # [] for a plausible case
    """
    entropy = np.asarray(entropy, dtype=np.float32)
    reference = np.asarray(reference, dtype=bool)
    if entropy.shape != reference.shape:
        raise ValueError(f"entropy has shape {entropy.shape} but reference has {reference.shape}; expected the same.")
    brain = np.ones_like(reference) if brain is None else np.asarray(brain, dtype=bool)
    if brain.shape != reference.shape:
        raise ValueError(f"brain has shape {brain.shape}, expected the entropy's {reference.shape}.")
    if samples is not None:
        samples = np.asarray(samples, dtype=bool)
        if samples.shape[1:] != reference.shape:
            raise ValueError(f"samples must be (N, {reference.shape}), got {samples.shape}.")
    spacing = tuple(float(s) for s in spacing) if spacing is not None else (1.0,) * reference.ndim
    nan = float("nan")
    scores: dict[str, float] = {"reference_voxels": float(reference.sum())}
    if reference.any():
        outside = ndimage.distance_transform_edt(~reference, sampling=spacing)
        inside = ndimage.distance_transform_edt(reference, sampling=spacing)
        far = (outside > far_distance) & brain
        band = ((outside > 0) & (outside <= band_width)) | (reference & (inside <= band_width))
    else:
        far, band = brain, np.zeros_like(reference)
    far_values = entropy[far]
    scores["far_entropy_median"] = float(np.median(far_values)) if far_values.size else nan
    scores["far_entropy_mean"] = float(far_values.mean()) if far_values.size else nan
    scores["boundary_entropy_mean"] = float(entropy[band].mean()) if band.any() else nan
    far_mean = scores["far_entropy_mean"]
    boundary = scores["boundary_entropy_mean"]
    scores["boundary_far_ratio"] = (
        nan if np.isnan(boundary) or np.isnan(far_mean) else float(boundary / max(far_mean, 1e-6))
    )
    scores["high_entropy_fraction"] = float((entropy[brain] > high_entropy).mean()) if brain.any() else nan
    if samples is not None and samples.shape[0] > 0:
        volumes = samples.reshape(samples.shape[0], -1).sum(1).astype(np.float64)
        ref_volume = max(float(reference.sum()), 1.0)
        ratios = volumes / ref_volume
        scores["sample_volume_ratio_min"] = float(ratios.min())
        scores["sample_volume_ratio_max"] = float(ratios.max())
        scores["sample_volume_ratio_median"] = float(np.median(ratios))
    return scores


def plausibility_warnings(
    scores: Mapping[str, float],
    limits: Mapping[str, float] | None = None,
    reference_name: str = "the mean segmentation",
) -> list[str]:
    """Messages for the figures of :func:`plausibility_scores` outside ``limits`` (empty: the case looks plausible).

    Args:
        scores: the output of :func:`plausibility_scores`.
        limits: overrides of :data:`PLAUSIBILITY_LIMITS` (same keys).
        reference_name: what the reference tumour of ``scores`` is, for the messages.
    """
    lim = {**PLAUSIBILITY_LIMITS, **(limits or {})}
    out = []
    far = scores.get("far_entropy_median", float("nan"))
    if far > lim["far_entropy_median"]:
        out.append(f"median entropy far from the tumour {far:.3f} nats > {lim['far_entropy_median']}")
    high = scores.get("high_entropy_fraction", float("nan"))
    if high > lim["high_entropy_fraction"]:
        out.append(
            f"{100 * high:.1f}% of the brain has entropy > 0.5 nats (limit {100 * lim['high_entropy_fraction']:.0f}%)"
        )
    if scores.get("reference_voxels", 0.0) >= lim["min_reference_voxels"]:
        ratio = scores.get("boundary_far_ratio", float("nan"))
        if ratio < lim["boundary_far_ratio"]:
            out.append(
                f"boundary entropy only {ratio:.1f}x the entropy far away (expected >= {lim['boundary_far_ratio']})"
            )
        low, high_ratio = scores.get("sample_volume_ratio_min"), scores.get("sample_volume_ratio_max")
        if low is not None and low < lim["sample_volume_ratio_min"]:
            out.append(
                f"a sample holds {low:.2f}x the tumour volume of {reference_name} "
                f"(expected >= {lim['sample_volume_ratio_min']})"
            )
        if high_ratio is not None and high_ratio > lim["sample_volume_ratio_max"]:
            out.append(
                f"a sample holds {high_ratio:.2f}x the tumour volume of {reference_name} "
                f"(expected <= {lim['sample_volume_ratio_max']})"
            )
    return out
