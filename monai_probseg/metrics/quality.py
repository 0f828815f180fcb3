# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""Segmentation quality: per-case uncertainty scores, the ``<case>_quality.json`` report and how well a predicted
Dice matches the true one.

DeVries, T., Taylor, G. W. (2018) Leveraging Uncertainty Estimates for Predicting Segmentation Quality.
arXiv:1807.00502. Jungo, A., Reyes, M. (2019) Assessing Reliability and Challenges of Uncertainty Estimations for
Medical Image Segmentation. MICCAI 2019. Robinson, R. et al. (2018) Real-time Prediction of Segmentation Quality.
MICCAI 2018.

Three groups of functions:

- :func:`quality_scores`: image-level scores of one stage-1 prediction from its mean probabilities, uncertainty maps
  and samples: the baselines a quality predictor must beat and extra inputs for it;
- :func:`quality_report` and :func:`write_quality_json`: the per-case report the bundles write;
- :func:`quality_prediction_metrics` (Pearson, Spearman, MAE, failure AUROC, area under the risk-coverage curve):
  how good a predicted Dice is against the true Dice, over cases.

Empty regions: the Dice of two empty masks is 1 (the BraTS convention, ``empty="brats"`` of
:py:func:`~monai_probseg.metrics.compute_brats_region_metrics`), so a confident empty prediction of a region the
case does not have (no enhancing tumour, say) is a high-quality result, and the sample agreement of samples that are
all empty is 1 too.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from scipy.stats import rankdata

from monai_probseg.metrics.ged import generalized_energy_distance
from monai_probseg.metrics.regions import BRATS_REGIONS, region_mask_scores, region_masks
from monai_probseg.utils.io import write_json_atomic

__all__ = [
    "DEFAULT_FAILURE_THRESHOLD",
    "LESION_REGIONS",
    "QUALITY_REPORT_KEYS",
    "area_under_risk_coverage",
    "failure_auroc",
    "mean_absolute_error",
    "pearson_r",
    "quality_prediction_metrics",
    "quality_report",
    "quality_scores",
    "region_dice",
    "risk_coverage_curve",
    "spearman_r",
    "write_quality_json",
]

#: a case is flagged as a likely failure when its predicted mean Dice is below this
DEFAULT_FAILURE_THRESHOLD = 0.7
#: the region of the 2D lesion bundles (every foreground label)
LESION_REGIONS: dict[str, tuple[int, ...]] = {"lesion": (1,)}
#: the keys every ``<case>_quality.json`` has (more may follow)
QUALITY_REPORT_KEYS = (
    "case_id",
    "predicted_dice",
    "predicted_dice_mean",
    "failure",
    "failure_threshold",
    "scores",
    "quality_model",
)


def _single_case(x: torch.Tensor, name: str, spatial: Sequence[int] | None) -> torch.Tensor:
    x = torch.as_tensor(x)
    if spatial is not None and tuple(x.shape[-len(spatial) :]) != tuple(spatial):
        raise ValueError(f"{name} has shape {tuple(x.shape)}, expected spatial shape {tuple(spatial)} at the end.")
    return x


def _label_mask(label_maps: torch.Tensor, labels: Sequence[int]) -> torch.Tensor:
    """Where ``label_maps`` holds any of ``labels``, by comparisons in the maps' own dtype (no int64 copy)."""
    mask = label_maps == int(labels[0])
    for lab in labels[1:]:
        mask |= label_maps == int(lab)
    return mask


def _pairwise_dice(masks: torch.Tensor, chunk: int = 1 << 20) -> torch.Tensor:
    """Dice of every pair of the binary masks ``(M, V)``: their Gram matrix, accumulated over voxel chunks
    (float32 products of 0/1 are exact within a chunk; the sums are float64); two empty masks have Dice 1."""
    m = masks.shape[0]
    gram = torch.zeros(m, m, dtype=torch.float64)
    for start in range(0, masks.shape[1], chunk):
        part = masks[:, start : start + chunk].to(torch.float32)
        gram += (part @ part.T).double()
    size = gram.diagonal()
    total = size[:, None] + size[None, :]
    return torch.where(total > 0, 2.0 * gram / total.clamp_min(1.0), torch.ones_like(gram)).float()


def quality_scores(
    prob: torch.Tensor,
    entropy: torch.Tensor,
    mutual_info: torch.Tensor,
    samples: torch.Tensor | None = None,
    regions: Mapping[str, Sequence[int]] = BRATS_REGIONS,
    brain: torch.Tensor | None = None,
) -> dict[str, float]:
    """Image-level uncertainty scores of one case's stage-1 prediction.

    With ``seg`` the argmax of ``prob`` and ``U`` the *uncertain region*, the voxels that the mean segmentation or
    any sample labels as foreground (label > 0) dilated by nothing (just their union; the whole ``brain`` if that is
    empty):

    - ``mean_entropy`` / ``mean_mutual_info``: mean predictive entropy / mutual information (nats) over ``U``
      (0 when ``U`` is empty: a confident empty prediction);
    - ``mean_entropy_brain``: mean entropy over the brain (non-zero image voxels if ``brain`` is given, else all);
    - ``sample_dice_agreement``: mean over regions and over pairs of distinct samples of the Dice between the two
      samples' region masks (two empty masks: 1); also per region as ``sample_dice_agreement_<R>``;
    - ``sample_dice_to_mean``: mean Dice of each sample's region mask with the mean segmentation's;
    - ``ged_to_mean``: squared generalized energy distance between the samples and the mean segmentation as a
      one-element reference set, ``d = 1 - IoU`` over the foreground labels
      (:py:func:`~monai_probseg.metrics.generalized_energy_distance`);
    - ``uncertainty_volume_ratio_<R>``: the summed binary entropy of the region probability
      ``p_R = sum of prob over the region's labels`` over the predicted volume ``sum p_R`` plus one voxel (Jungo &
      Reyes 2019 normalise uncertainty by volume the same way), and ``uncertainty_volume_ratio`` its mean over regions;
    - ``volume_<R>``: the predicted region volume as a fraction of the brain (or image);
    - ``mean_max_prob_<R>``: mean of ``p_R`` over the voxels predicted in the region (1 if none).

    Without ``samples`` the sample-based scores are left out.

    Args:
        prob: mean class probabilities ``(C, *spatial)``.
        entropy: predictive entropy ``(*spatial)`` or ``(1, *spatial)``.
        mutual_info: mutual information, same shape as ``entropy``.
        samples: sample label maps ``(N, *spatial)`` (N >= 2 for the sample agreement), or ``None``.
        regions: region name -> labels (:data:`~monai_probseg.metrics.BRATS_REGIONS`, or :data:`LESION_REGIONS`).
        brain: optional ``(*spatial)`` brain mask.

    Returns:
        dict of score name -> float.

    Example::

        scores = quality_scores(out["prob"][0], out["entropy"][0], out["mutual_info"][0], out["samples"][0])
        scores["sample_dice_agreement"], scores["mean_entropy"]
    """
    prob = torch.as_tensor(prob).float()
    if prob.ndim < 3:
        raise ValueError(f"prob must have shape (C, *spatial) of one case, got {tuple(prob.shape)}.")
    spatial = tuple(prob.shape[1:])
    entropy = _single_case(entropy, "entropy", spatial).float().reshape(spatial)
    mutual_info = _single_case(mutual_info, "mutual_info", spatial).float().reshape(spatial)
    num_classes = prob.shape[0]
    for name, labels in regions.items():
        if any(not 0 < int(lab) < num_classes for lab in labels):
            raise ValueError(f"region {name!r} has labels {tuple(labels)}, expected foreground labels < {num_classes}.")
    if brain is None:
        brain_mask = torch.ones(spatial, dtype=torch.bool)
    else:
        brain_mask = _single_case(brain, "brain", spatial).reshape(spatial).bool()
        if not brain_mask.any():
            brain_mask = torch.ones(spatial, dtype=torch.bool)
    seg = prob.argmax(0)
    foreground = seg > 0
    if samples is not None:
        samples = _single_case(samples, "samples", spatial)
        if samples.is_floating_point():
            samples = samples.round().to(torch.int64)
        if samples.ndim != len(spatial) + 1:
            raise ValueError(f"samples must have shape (N, *spatial), got {tuple(samples.shape)}.")
        foreground = foreground | (samples > 0).any(0)
    scores: dict[str, float] = {}
    if foreground.any():
        scores["mean_entropy"] = float(entropy[foreground].mean())
        scores["mean_mutual_info"] = float(mutual_info[foreground].mean())
    else:
        scores["mean_entropy"] = 0.0
        scores["mean_mutual_info"] = 0.0
    scores["mean_entropy_brain"] = float(entropy[brain_mask].mean())
    brain_volume = float(brain_mask.sum())
    seg_regions = region_masks(seg[None, None], regions)[0]  # (R, *spatial)
    ratios = []
    for r, (name, labels) in enumerate(regions.items()):
        p = prob[list(labels)].sum(0).clamp(0.0, 1.0)
        binary_entropy = -(torch.special.xlogy(p, p) + torch.special.xlogy(1 - p, 1 - p))  # 0 log 0 = 0
        ratio = float(binary_entropy.sum() / (p.sum() + 1.0))
        ratios.append(ratio)
        scores[f"uncertainty_volume_ratio_{name}"] = ratio
        inside = seg_regions[r] > 0
        scores[f"volume_{name}"] = float(inside.sum()) / brain_volume
        scores[f"mean_max_prob_{name}"] = float(p[inside].mean()) if inside.any() else 1.0
    scores["uncertainty_volume_ratio"] = float(np.mean(ratios))
    if samples is not None:
        n = samples.shape[0]
        agreements, to_mean = [], []
        for r, (name, labels) in enumerate(regions.items()):
            masks = torch.cat([_label_mask(samples, labels), seg_regions[r : r + 1] > 0])  # (N + 1, *spatial)
            dice = _pairwise_dice(masks.reshape(n + 1, -1))  # two empty masks: Dice 1
            if n > 1:
                off_diagonal = ~torch.eye(n, dtype=torch.bool)
                agreement = float(dice[:n, :n][off_diagonal].mean())
            else:
                agreement = 1.0
            agreements.append(agreement)
            to_mean.append(float(dice[:n, n].mean()))
            scores[f"sample_dice_agreement_{name}"] = agreement
        scores["sample_dice_agreement"] = float(np.mean(agreements))
        scores["sample_dice_to_mean"] = float(np.mean(to_mean))
        scores["ged_to_mean"] = float(
            generalized_energy_distance(samples[None], seg[None, None], num_classes=num_classes)[0]
        )
    return scores


def quality_report(
    case_id: str,
    predicted_dice: Mapping[str, float],
    scores: Mapping[str, float] | None = None,
    failure_threshold: float = DEFAULT_FAILURE_THRESHOLD,
    quality_model: str = "SegmentationQualityNet",
    **extra: Any,
) -> dict[str, Any]:
    """The ``<case>_quality.json`` content of one case.

    Keys (in this order, :data:`QUALITY_REPORT_KEYS`): ``case_id``, ``predicted_dice`` (region -> predicted Dice,
    ``{"WT", "TC", "ET"}`` for BraTS, ``{"lesion"}`` in 2D), ``predicted_dice_mean`` (their mean), ``failure``
    (``predicted_dice_mean < failure_threshold``), ``failure_threshold``, ``scores`` (the uncertainty scores, e.g.
    from :func:`quality_scores`) and ``quality_model`` (what predicted the Dice); ``extra`` keys follow.

    Args:
        case_id: the case's identifier.
        predicted_dice: region -> predicted Dice in ``[0, 1]``.
        scores: scalar scores to report (``mean_entropy``, ``sample_dice_agreement``, ...).
        failure_threshold: a case with a lower predicted mean Dice is flagged.
        quality_model: name of the predictor (``"SegmentationQualityNet"``, ``"ridge"``, ...).
        extra: more keys (e.g. ``"true_dice"`` when the truth is known).

    Returns:
        the JSON-able dict.

    Example::

        report = quality_report("BraTS-0001", {"WT": 0.87, "TC": 0.81, "ET": 0.74}, {"mean_entropy": 0.03})
        report["predicted_dice_mean"], report["failure"]  # 0.8067, False
    """
    if not predicted_dice:
        raise ValueError(f"predicted_dice of case {case_id!r} is empty, expected region -> Dice.")
    dice = {str(k): float(v) for k, v in predicted_dice.items()}
    for name, value in dice.items():
        if not (math.isfinite(value) and -1e-6 <= value <= 1 + 1e-6):
            raise ValueError(f"predicted Dice of region {name!r} of case {case_id!r} is {value}, expected [0, 1].")
    mean = float(np.mean(list(dice.values())))
    report: dict[str, Any] = {
        "case_id": str(case_id),
        "predicted_dice": dice,
        "predicted_dice_mean": mean,
        "failure": bool(mean < failure_threshold),
        "failure_threshold": float(failure_threshold),
        "scores": {str(k): float(v) for k, v in (scores or {}).items()},
        "quality_model": str(quality_model),
    }
    report.update(extra)
    return report


def write_quality_json(report: Mapping[str, Any], output_dir: str | os.PathLike) -> str:
    """Write ``report`` to ``<output_dir>/<case_id>_quality.json`` atomically and return the path.

    Example::

        write_quality_json(quality_report("case1", {"lesion": 0.9}), "outputs/lesions2d")
    """
    missing = [k for k in QUALITY_REPORT_KEYS if k not in report]
    if missing:
        raise ValueError(f"quality report misses {missing}, expected the keys {QUALITY_REPORT_KEYS}.")
    return write_json_atomic(dict(report), os.path.join(os.fspath(output_dir), f"{report['case_id']}_quality.json"))


# ----------------------------------------------------------------------------------------- predicted vs true Dice
def _pair(predicted: Any, true: Any) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(predicted, dtype=np.float64).reshape(-1)
    t = np.asarray(true, dtype=np.float64).reshape(-1)
    if p.shape != t.shape:
        raise ValueError(f"predicted ({p.size} values) and true ({t.size} values) must have the same length.")
    keep = np.isfinite(p) & np.isfinite(t)
    return p[keep], t[keep]


def pearson_r(predicted: Any, true: Any) -> float:
    """Pearson correlation of predicted and true values (NaN pairs left out; NaN if either is constant).

    Example::

        pearson_r([0.1, 0.5, 0.9], [0.2, 0.4, 0.9])  # 0.9934
    """
    p, t = _pair(predicted, true)
    if p.size < 2:
        return float("nan")
    p, t = p - p.mean(), t - t.mean()
    denominator = math.sqrt(float((p * p).sum() * (t * t).sum()))
    return float((p * t).sum() / denominator) if denominator > 0 else float("nan")


def spearman_r(predicted: Any, true: Any) -> float:
    """Spearman rank correlation: Pearson's of the average ranks (ties share their mean rank)."""
    p, t = _pair(predicted, true)
    return pearson_r(rankdata(p), rankdata(t)) if p.size >= 2 else float("nan")


def mean_absolute_error(predicted: Any, true: Any) -> float:
    """Mean of ``|predicted - true|`` (NaN pairs left out)."""
    p, t = _pair(predicted, true)
    return float(np.abs(p - t).mean()) if p.size else float("nan")


def failure_auroc(predicted: Any, true: Any, threshold: float = DEFAULT_FAILURE_THRESHOLD) -> float:
    """Area under the ROC curve of detecting failures (true Dice ``< threshold``) by a low predicted Dice.

    Computed as the Mann-Whitney statistic: the probability that a random failure has a lower predicted Dice than a
    random success, ties counting one half. NaN when there are no failures or no successes.

    Example::

        failure_auroc([0.2, 0.9, 0.6, 0.8], [0.3, 0.95, 0.5, 0.85])  # 1.0
    """
    p, t = _pair(predicted, true)
    failed = t < threshold
    num_failed, num_ok = int(failed.sum()), int((~failed).sum())
    if num_failed == 0 or num_ok == 0:
        return float("nan")
    ranks = rankdata(-p)  # a low predicted Dice ranks high
    return float((ranks[failed].sum() - num_failed * (num_failed + 1) / 2) / (num_failed * num_ok))


def risk_coverage_curve(predicted: Any, true: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Risk-coverage curve of selective prediction with the predicted Dice as the confidence.

    Cases are sorted by predicted Dice, highest first (ties keep their order); keeping the first ``k`` of ``n`` gives
    coverage ``k / n``, mean true Dice ``mean_k`` of the kept cases and risk ``1 - mean_k``. Removing flagged cases
    (lowest predicted Dice) should raise the mean Dice of those kept.

    Returns:
        ``(coverage, risk, mean_dice)``, each ``(n,)``, coverage increasing.
    """
    p, t = _pair(predicted, true)
    order = np.argsort(-p, kind="stable")
    kept = np.arange(1, p.size + 1)
    mean_dice = np.cumsum(t[order]) / kept
    return kept / p.size, 1.0 - mean_dice, mean_dice


def area_under_risk_coverage(predicted: Any, true: Any) -> float:
    """AURC: the mean risk over the coverages ``1/n, ..., n/n`` of :func:`risk_coverage_curve` (Geifman et al., ICLR
    2019); lower is better, its minimum is the AURC of the true Dice sorted itself."""
    _, risk, _ = risk_coverage_curve(predicted, true)
    return float(risk.mean()) if risk.size else float("nan")


def quality_prediction_metrics(
    predicted: Any, true: Any, threshold: float = DEFAULT_FAILURE_THRESHOLD
) -> dict[str, float]:
    """Pearson, Spearman, MAE, failure AUROC at ``threshold``, AURC and the optimal AURC (of the true Dice itself).

    Args:
        predicted: predicted Dice per case (or any score that grows with quality; the MAE then means nothing).
        true: true Dice per case.
        threshold: true Dice below which a case is a failure.

    Returns:
        dict with ``pearson``, ``spearman``, ``mae``, ``auroc``, ``aurc``, ``aurc_optimal``, ``num_cases``,
        ``num_failures``.

    Example::

        quality_prediction_metrics(predicted_mean_dice, true_mean_dice, threshold=0.7)["auroc"]
    """
    p, t = _pair(predicted, true)
    return {
        "pearson": pearson_r(p, t),
        "spearman": spearman_r(p, t),
        "mae": mean_absolute_error(p, t),
        "auroc": failure_auroc(p, t, threshold),
        "aurc": area_under_risk_coverage(p, t),
        "aurc_optimal": area_under_risk_coverage(t, t),
        "num_cases": int(p.size),
        "num_failures": int((t < threshold).sum()),
    }


def region_dice(
    pred_labels: torch.Tensor, true_labels: torch.Tensor, regions: Mapping[str, Sequence[int]] = BRATS_REGIONS
) -> dict[str, float]:
    """Dice of each region of one case's predicted label map against the reference label map.

    Both empty: Dice 1 (a confident empty prediction of an absent region is right); one empty: 0 (BraTS convention,
    :py:func:`~monai_probseg.metrics.region_mask_scores` with ``empty="brats"``).

    Args:
        pred_labels: predicted label map ``(*spatial)`` or ``(1, *spatial)``.
        true_labels: reference label map of the same shape.
        regions: region name -> labels.

    Returns:
        region name -> Dice.

    Example::

        region_dice(seg, label)  # {"TC": 0.81, "WT": 0.9, "ET": 0.77}
    """
    pred = torch.as_tensor(pred_labels)
    true = torch.as_tensor(true_labels)
    if pred.shape != true.shape:
        raise ValueError(f"pred_labels {tuple(pred.shape)} and true_labels {tuple(true.shape)} must match.")
    spatial = pred.shape[1:] if pred.ndim >= 3 and pred.shape[0] == 1 else pred.shape
    pred_masks = region_masks(pred.reshape(1, 1, *spatial), regions)
    true_masks = region_masks(true.reshape(1, 1, *spatial), regions)
    dice, _ = region_mask_scores(pred_masks, true_masks, None, False, None, "brats")
    return {name: float(dice[0, r]) for r, name in enumerate(regions)}
