# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""Calibration of mean probabilities and agreement between uncertainty maps and segmentation errors."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.metrics import CalibrationErrorMetric
from monai.networks.utils import one_hot

from .utils import check_label_range

__all__ = [
    "expected_calibration_error",
    "max_uncertainty_error_overlap",
    "ncc_uncertainty_error",
    "uncertainty_error_overlap",
]


def expected_calibration_error(
    probs: torch.Tensor,
    target: torch.Tensor,
    num_bins: int = 20,
    include_background: bool = False,
    calibration_reduction: str = "expected",
    right: bool = False,
) -> torch.Tensor:
    """Calibration error of (mean) class probabilities per batch item and class, computed by MONAI.

    A thin wrapper of :py:class:`monai.metrics.CalibrationErrorMetric` (hard binning, Guo et al., ICML 2017) that
    accepts a label map as target and sigmoid probabilities with one channel. For a set of samples pass the mean
    probabilities, ``uncertainty_maps(probs)["prob"]``.

    Args:
        probs: class probabilities ``(B, C, *spatial)``; ``C = 1`` is a sigmoid foreground probability and is
            expanded to ``(1 - p, p)``.
        target: label map ``(B, 1, *spatial)`` or one-hot ``(B, C, *spatial)`` (same shape as the expanded probs).
        num_bins: number of equal-width probability bins.
        include_background: whether channel 0 is scored.
        calibration_reduction: ``"expected"`` (ECE), ``"average"`` (ACE) or ``"maximum"`` (MCE).
        right: bins are ``(left, right]`` if ``True``, ``[left, right)`` otherwise.

    Returns:
        calibration error ``(B, C)`` (``(B, C - 1)`` without background); NaN where a channel has no voxel.

    Example::

        probs = torch.softmax(torch.randn(2, 3, 32, 32), dim=1)
        target = torch.randint(0, 3, (2, 1, 32, 32))
        ece = expected_calibration_error(probs, target)  # (2, 2)
    """
    if probs.ndim < 3:
        raise ValueError(f"probs must have shape (B, C, *spatial), got {tuple(probs.shape)}.")
    if probs.shape[1] == 1:
        probs = torch.cat([1.0 - probs, probs], dim=1)
    num_classes = probs.shape[1]
    if target.shape == probs.shape:
        target_onehot = target.float()
    elif target.shape[0] == probs.shape[0] and target.shape[1] == 1 and target.shape[2:] == probs.shape[2:]:
        check_label_range(target, num_classes, "target")
        target_onehot = one_hot(target, num_classes=num_classes, dim=1)
    else:
        raise ValueError(
            f"target must be a label map (B, 1, *spatial) or one-hot (B, {num_classes}, *spatial) matching probs "
            f"{tuple(probs.shape)}, got {tuple(target.shape)}."
        )
    metric = CalibrationErrorMetric(
        num_bins=num_bins,
        include_background=include_background,
        calibration_reduction=calibration_reduction,
        metric_reduction="none",
        right=right,
    )
    return metric(y_pred=probs.float(), y=target_onehot)  # type: ignore[return-value]


def _flat_per_item(x: torch.Tensor, name: str) -> torch.Tensor:
    if x.ndim < 3:
        raise ValueError(f"{name} must have shape (B, 1, *spatial) or (B, *spatial), got {tuple(x.shape)}.")
    return x.reshape(x.shape[0], -1)


def uncertainty_error_overlap(
    uncertainty: torch.Tensor,
    prediction: torch.Tensor,
    target: torch.Tensor,
    threshold: float | Sequence[float] | torch.Tensor = 0.5,
) -> torch.Tensor:
    """Uncertainty-error overlap (UEO) of Jungo and Reyes (MICCAI 2019), per batch item and threshold.

    ``UEO = 2 |U n E| / (|U| + |E|)``, the Dice overlap between the thresholded uncertainty ``U = {u > t}``
    (strictly greater) and the error ``E = {prediction != target}`` (any class). It is 1 when both ``U`` and
    ``E`` are empty. All thresholds are evaluated at once from one sort of the uncertainty values (no loop over
    thresholds or voxels).

    Args:
        uncertainty: voxel uncertainty ``(B, 1, *spatial)`` or ``(B, *spatial)`` (e.g. entropy).
        prediction: predicted label map with the same number of voxels per item.
        target: reference label map with the same number of voxels per item.
        threshold: one threshold (result ``(B,)``), a sequence or 1D tensor of ``T`` thresholds, or a
            ``(B, T)`` tensor of per-item thresholds (result ``(B, T)``).

    Returns:
        UEO ``(B,)`` or ``(B, T)``.

    Example::

        ueo = uncertainty_error_overlap(maps["entropy"], maps["seg"], label, threshold=[0.1, 0.3, 0.5])
    """
    u = _flat_per_item(uncertainty, "uncertainty").float()
    pred = _flat_per_item(prediction, "prediction")
    tgt = _flat_per_item(target, "target")
    if not (u.shape == pred.shape == tgt.shape):
        raise ValueError(
            "uncertainty, prediction and target must have the same batch size and number of voxels, got shapes "
            f"{tuple(uncertainty.shape)}, {tuple(prediction.shape)} and {tuple(target.shape)}."
        )
    scalar = not isinstance(threshold, (Sequence, torch.Tensor)) or (
        isinstance(threshold, torch.Tensor) and threshold.ndim == 0
    )
    thr = torch.as_tensor(threshold, dtype=u.dtype, device=u.device)
    if thr.ndim <= 1:
        thr = thr.reshape(1, -1).expand(u.shape[0], -1)
    elif thr.ndim != 2 or thr.shape[0] != u.shape[0]:
        raise ValueError(f"threshold must be a number, a 1D sequence or a (B, T) tensor, got {tuple(thr.shape)}.")
    thr = thr.contiguous()
    error = pred != tgt
    num_voxels = u.shape[1]
    # |{u > t}| = V - #{u <= t}; error voxels only: the others are set to -inf, never above a finite threshold
    size_u = num_voxels - torch.searchsorted(u.sort(dim=1).values, thr, right=True)
    u_err = torch.where(error, u, torch.full_like(u, -float("inf")))
    size_inter = num_voxels - torch.searchsorted(u_err.sort(dim=1).values, thr, right=True)
    size_e = error.sum(dim=1, keepdim=True)
    denom = (size_u + size_e).float()
    ueo = torch.where(denom > 0, 2.0 * size_inter.float() / denom.clamp_min(1.0), torch.ones_like(denom))
    return ueo[:, 0] if scalar else ueo


def max_uncertainty_error_overlap(
    uncertainty: torch.Tensor,
    prediction: torch.Tensor,
    target: torch.Tensor,
    thresholds: Sequence[float] | torch.Tensor | None = None,
    num_thresholds: int = 101,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Maximum of :py:func:`uncertainty_error_overlap` over thresholds, as reported by Jungo and Reyes (2019).

    Args:
        uncertainty: voxel uncertainty ``(B, 1, *spatial)`` or ``(B, *spatial)``.
        prediction: predicted label map with the same number of voxels per item.
        target: reference label map with the same number of voxels per item.
        thresholds: thresholds to try (1D, or ``(B, T)``). By default ``num_thresholds`` evenly spaced values from
            the minimum to the maximum uncertainty of each item.
        num_thresholds: number of default thresholds.

    Returns:
        ``(max_ueo, best_threshold)``, both ``(B,)``.

    Example::

        ueo, t = max_uncertainty_error_overlap(maps["entropy"], maps["seg"], label)
    """
    if thresholds is None:
        u = _flat_per_item(uncertainty, "uncertainty").float()
        steps = torch.linspace(0.0, 1.0, num_thresholds, device=u.device)
        lo, hi = u.min(dim=1, keepdim=True).values, u.max(dim=1, keepdim=True).values
        thr = lo + (hi - lo) * steps[None]
    else:
        thr = torch.as_tensor(thresholds, dtype=torch.float32, device=uncertainty.device)
        if thr.ndim == 0:
            thr = thr.reshape(1)
    ueo = uncertainty_error_overlap(uncertainty, prediction, target, thr)
    best, idx = ueo.max(dim=1)
    thr_b = thr.expand(ueo.shape[0], -1) if thr.ndim == 1 else thr
    return best, thr_b.gather(1, idx[:, None])[:, 0]


def ncc_uncertainty_error(
    samples: torch.Tensor,
    annotations: torch.Tensor,
    num_classes: int | None = None,
    eps: float = 1e-8,
    return_per_annotator: bool = False,
) -> torch.Tensor:
    """Normalised cross-correlation between the expected cross-entropy map and the annotators' error maps.

    The uncertainty-error agreement of PHiSeg (Baumgartner et al., "PHiSeg: Capturing Uncertainty in Medical
    Image Segmentation", MICCAI 2019)::

        S_NCC = E_{y ~ annotators}[ NCC( E_s[CE(s_bar, s)], E_s[CE(y, s)] ) ]

    where ``s`` runs over the ``N`` samples, ``s_bar = E_s[s]`` is the mean prediction, and
    ``CE(a, b) = -sum_c a_c log b_c`` is the voxel-wise cross-entropy of *target* ``a`` against *prediction*
    ``b`` (``b`` clamped to ``>= eps``; PHiSeg uses ``eps = 1e-8``). So the gamma map is
    ``-sum_c s_bar_c E_s[log s_c]`` and annotator ``k``'s error map is ``-E_s[log s_{y_k}]``. The NCC is the
    Pearson correlation over the voxels of an image (population standard deviations). It is NaN for an
    annotator when either map is constant (zero variance); such annotators are left out of the mean.

    Args:
        samples: sample probabilities ``(B, N, C, *spatial)`` (soft, or one-hot for hard samples; ``C = 1`` is
            a sigmoid probability, expanded to two channels) or sample label maps ``(B, N, *spatial)``
            (one-hot, which needs ``num_classes``).
        annotations: annotator label maps ``(B, K, *spatial)``.
        num_classes: number of classes; required for label-map samples.
        eps: lower clamp of the sample probabilities inside the logarithm.
        return_per_annotator: return the NCC of each annotator ``(B, K)`` instead of the mean ``(B,)``.

    Returns:
        NCC per batch item ``(B,)`` (or ``(B, K)``), in ``[-1, 1]``.

    Example::

        probs = torch.softmax(torch.randn(2, 16, 2, 64, 64), dim=2)
        ncc = ncc_uncertainty_error(probs, torch.randint(0, 2, (2, 4, 64, 64)))  # (2,)
    """
    if annotations.ndim not in (4, 5):
        raise ValueError(f"annotations must have shape (B, K, *spatial), got {tuple(annotations.shape)}.")
    spatial_ndim = annotations.ndim - 2
    log_eps = torch.log(torch.tensor(eps, dtype=torch.float32)).item()
    if samples.ndim == spatial_ndim + 2:  # label maps: log p_c is 0 where the label is c, log(eps) elsewhere
        if num_classes is None:
            raise ValueError("num_classes is required when samples are label maps (B, N, *spatial).")
        freq = torch.stack([(samples == c).float().mean(dim=1) for c in range(num_classes)], dim=1)
        mean_p, mean_log = freq, (1.0 - freq) * log_eps
    elif samples.ndim == spatial_ndim + 3:
        probs = samples.float()
        if probs.shape[2] == 1:
            probs = torch.cat([1.0 - probs, probs], dim=2)
        mean_p, mean_log = probs.mean(dim=1), probs.clamp_min(eps).log().mean(dim=1)
    else:
        raise ValueError(
            f"samples must have shape (B, N, *spatial) or (B, N, C, *spatial) with the {spatial_ndim} spatial dims "
            f"of annotations {tuple(annotations.shape)}, got {tuple(samples.shape)}."
        )
    if mean_p.shape[0] != annotations.shape[0] or mean_p.shape[2:] != annotations.shape[2:]:
        raise ValueError(
            f"samples {tuple(samples.shape)} and annotations {tuple(annotations.shape)} must share batch size and "
            "spatial shape."
        )
    gamma = -(mean_p * mean_log).sum(dim=1).flatten(1)  # (B, V)
    errors = -mean_log.gather(1, annotations.long()).flatten(2)  # (B, K, V)
    g = gamma - gamma.mean(dim=1, keepdim=True)
    e = errors - errors.mean(dim=2, keepdim=True)
    cov = (g[:, None] * e).mean(dim=2)
    std_g, std_e = g.square().mean(dim=1).sqrt(), e.square().mean(dim=2).sqrt()
    # a map is constant when its spread is at rounding level relative to its magnitude
    valid = (std_g > 1e-6 * gamma.abs().amax(dim=1))[:, None] & (std_e > 1e-6 * errors.abs().amax(dim=2))
    std = (std_g[:, None] * std_e).clamp_min(torch.finfo(std_e.dtype).tiny)
    ncc = torch.where(valid, cov / std, torch.full_like(cov, float("nan")))
    return ncc if return_per_annotator else torch.nanmean(ncc, dim=1)
