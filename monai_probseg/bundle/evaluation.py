# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""Per-case evaluation of a probabilistic segmentation and the JSON/CSV report a bundle writes.

For each case, in the input's voxel space:

- region Dice and HD95 of the mean prediction (``seg``) against the consensus label, per region
  (:py:data:`monai_probseg.metrics.BRATS_REGIONS` by default: TC, WT, ET; MONAI's
  ``compute_dice``/``compute_hausdorff_distance`` with the BraTS empty-region convention, see
  :py:func:`monai_probseg.metrics.compute_brats_region_metrics`);
- the generalised energy distance and the Hungarian-matched IoU of the ``N`` samples against the raters
  (:py:func:`monai_probseg.metrics.sample_set_metrics`; Kohl et al., NeurIPS 2018 and arXiv 1905.13077);
- the expected calibration error of the mean probabilities against the consensus
  (:py:func:`monai_probseg.metrics.expected_calibration_error`; Guo et al., ICML 2017), averaged over the
  foreground classes.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from monai_probseg.bundle.validation import check_label_values
from monai_probseg.metrics import (
    BRATS_REGIONS,
    expected_calibration_error,
    region_mask_scores,
    region_masks,
    sample_set_metrics,
)
from monai_probseg.utils import majority_vote, write_json_atomic, write_text_atomic

__all__ = ["evaluate_case", "write_metrics"]


def evaluate_case(
    seg: torch.Tensor,
    prob: torch.Tensor,
    samples: torch.Tensor,
    label: torch.Tensor | None,
    raters: torch.Tensor | None,
    num_classes: int,
    regions: Mapping[str, Sequence[int]] = BRATS_REGIONS,
    spacing: Sequence[float] | None = None,
    num_bins: int = 20,
) -> dict[str, float]:
    """Scores of one case: region Dice/HD95 of the mean, GED/HM-IoU of the samples, ECE of the mean probabilities.

    Args:
        seg: mean prediction label map ``(*spatial)``.
        prob: mean class probabilities ``(C, *spatial)``.
        samples: sample label maps ``(N, *spatial)``.
        label: consensus label map ``(*spatial)``; ``None`` uses the majority vote of ``raters``
            (:py:func:`monai_probseg.utils.majority_vote`: a tie goes to the larger label).
        raters: rater label maps ``(K, *spatial)``; ``None`` uses ``label`` as the only rater.
        num_classes: number of classes ``C`` (background included).
        regions: evaluation regions, name -> labels making up the region.
        spacing: voxel size per spatial axis (for HD95, in mm); ``None`` is 1.
        num_bins: number of bins of the calibration error.

    Raises:
        ValueError: ``label`` or ``raters`` hold values outside ``0 .. num_classes - 1`` (naming the values found and
            the expected labels), or the shapes disagree.

    Returns:
        ``{"dice_<region>", "hd95_<region>", "ged", "hm_iou", "diversity_samples", "diversity_raters", "ece"}``
        as floats (NaN where undefined).

    Example::

        scores = evaluate_case(seg, prob, samples, label, raters, num_classes=4, spacing=(1.0, 1.0, 1.0))
        scores["dice_WT"], scores["ged"]
    """
    if label is None and raters is None:
        raise ValueError("evaluate_case needs a consensus label or rater label maps, got neither.")
    for name, labels in (("label", label), ("raters", raters)):
        if labels is not None:
            check_label_values(labels, num_classes, name)  # before any index: no IndexError deep inside a metric
    if raters is None:
        raters = label[None]
    if label is None:
        label = majority_vote(raters, num_labels=num_classes)
    spatial = tuple(seg.shape)
    for name, t, lead in (("prob", prob, 1), ("samples", samples, 1), ("label", label, 0), ("raters", raters, 1)):
        if tuple(t.shape[lead:]) != spatial:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, expected spatial shape {spatial} like seg.")
    scores: dict[str, float] = {}
    target = label[None, None].long()
    dice, hd = region_mask_scores(
        region_masks(seg[None, None].long(), regions),
        region_masks(target, regions),
        hd_percentile=95,
        include_hd=True,
        spacing=list(spacing) if spacing is not None else None,
        empty="brats",
    )
    for i, name in enumerate(regions):
        scores[f"dice_{name}"] = float(dice[0, i])
        scores[f"hd95_{name}"] = float(hd[0, i])  # type: ignore[index]
    sets = sample_set_metrics(samples[None].long(), raters[None].long(), num_classes)
    scores["ged"] = float(sets["ged"][0])
    scores["hm_iou"] = float(sets["hm_iou"][0])
    scores["diversity_samples"] = float(sets["diversity_samples"][0])
    scores["diversity_raters"] = float(sets["diversity_annotations"][0])
    ece = expected_calibration_error(prob[None].float(), target, num_bins=num_bins)
    ece = ece[torch.isfinite(ece)]
    scores["ece"] = float(ece.mean()) if ece.numel() else float("nan")
    return scores


def write_metrics(
    per_case: Mapping[str, Mapping[str, float]],
    output_dir: str | os.PathLike,
    name: str = "metrics",
    extra: Mapping[str, Any] | None = None,
) -> tuple[str, str]:
    """Write per-case scores and their NaN-aware means as ``<name>.json`` and ``<name>.csv``, atomically.

    Args:
        per_case: case id -> {metric: value}.
        output_dir: the folder to write to.
        name: the file stem.
        extra: more top-level JSON entries (settings, failed cases, ...).

    Returns:
        the paths of the JSON and CSV files.

    Example::

        write_metrics({"case1": {"dice_WT": 0.9, "ged": 0.2}}, "/tmp/eval")
    """
    columns = sorted({k for scores in per_case.values() for k in scores})
    mean = {}
    for col in columns:
        values = [float(s[col]) for s in per_case.values() if col in s and math.isfinite(float(s[col]))]
        mean[col] = float(np.mean(values)) if values else float("nan")
    content = {"num_cases": len(per_case), "mean": mean, "cases": dict(per_case)}
    content.update(extra or {})
    json_path = write_json_atomic(content, os.path.join(os.fspath(output_dir), f"{name}.json"))
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["case_id", *columns])
    for case, scores in per_case.items():
        writer.writerow([case, *(_fmt(scores.get(c)) for c in columns)])
    writer.writerow(["mean", *(_fmt(mean[c]) for c in columns)])
    csv_path = write_text_atomic(buffer.getvalue(), os.path.join(os.fspath(output_dir), f"{name}.csv"))
    return json_path, csv_path


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    value = float(value)
    return "nan" if not math.isfinite(value) and math.isnan(value) else f"{value:.6g}"
