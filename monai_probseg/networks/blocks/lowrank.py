# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""Low-rank multivariate normal over logits: the head and the sampler of Stochastic Segmentation Networks.

Monteiro, M. et al. (2020) Stochastic Segmentation Networks: Modelling Spatially Correlated Aleatoric
Uncertainty. NeurIPS 2020.

The logits ``eta`` of an image with ``C`` classes and ``V`` voxels follow a normal distribution with mean ``mu``
and covariance ``Sigma = P P^T + D`` over the ``C x V`` event, with ``P`` a factor of rank ``R`` and ``D`` a
positive diagonal. The three parameters are kept as spatial maps, never as a dense ``(C V) x (C V)`` matrix:

- ``mean``: ``(B, C, *spatial)``,
- ``cov_factor``: ``(B, C * R, *spatial)``, channel ``c * R + r`` holds column ``r`` of ``P`` for class ``c``,
- ``cov_diag``: ``(B, C, *spatial)``, the diagonal of ``D`` (variances, not standard deviations).

A sample is ``mean + P @ eps + sqrt(D) * eta`` with ``eps ~ N(0, I_R)`` drawn once per sample and shared by
every voxel (the low-rank part is *global*, which is what makes samples spatially coherent and lets a
sliding-window inferer stitch windows without seams) and ``eta ~ N(0, I)`` drawn per voxel and class.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.networks.layers.factories import Conv
from monai.networks.layers.utils import get_act_layer

from monai_probseg.utils import check_positive_int, check_spatial_dims, make_generator

__all__ = ["LowRankHead", "low_rank_sample"]


def low_rank_sample(
    mean: torch.Tensor,
    cov_factor: torch.Tensor,
    cov_diag: torch.Tensor,
    num_samples: int,
    generator: int | torch.Generator | None = None,
    antithetic: bool = False,
    eps: torch.Tensor | None = None,
) -> torch.Tensor:
    """Draw logit samples ``mean + P @ eps + sqrt(D) * eta`` from low-rank normal parameter maps.

    The sampler of Stochastic Segmentation Networks (Monteiro et al., NeurIPS 2020), computed directly from the
    spatial maps: no dense covariance is formed and the cost per sample is ``C * R`` multiply-adds, ``C`` normal
    draws and ``C`` square roots per voxel.

    Random draws, in this order (so that a caller with the same generator can reproduce them):
    ``eps = randn(B, n, R)`` (skipped when ``eps`` is given), then ``eta = randn(B, n, C, *spatial)``, both in
    float32 on the generator's device (the tensors' device when ``generator`` is None), with ``n = num_samples``,
    or ``num_samples // 2`` when ``antithetic``.

    Memory: the result holds ``B * N * C * V`` values; with gradients enabled the computation keeps about three
    such tensors (the per-voxel noise, the centred samples and the result), without gradients about two.
    To bound memory, call it several times with fewer samples, or on spatial chunks of the maps with the same
    ``eps`` (the low-rank noise is global, so chunks of one sample stay coherent).

    Args:
        mean: ``(B, C, *spatial)`` mean logits.
        cov_factor: ``(B, C * R, *spatial)`` covariance factor; channel ``c * R + r`` is rank ``r`` of class ``c``.
        cov_diag: ``(B, C, *spatial)`` non-negative diagonal of the covariance (variances).
        num_samples: number of samples ``N``.
        generator: seed or ``torch.Generator`` for the draws (``None``: torch's global random state).
        antithetic: draw ``N / 2`` centred samples ``z`` and return ``mean + z`` followed by ``mean - z``, so that
            sample ``m`` and sample ``m + N / 2`` are mirrored about the mean (as the reference implementation
            of Monteiro et al. does for its loss). ``N`` must be even.
        eps: optional low-rank noise ``(B, n, R)`` or ``(1, n, R)`` to use instead of drawing it (e.g. to share it
            between spatial chunks or sliding windows of one image).

    Returns:
        logits ``(B, N, C, *spatial)``.

    Example::

        mean, factor, diag = torch.zeros(1, 2, 8, 8), torch.randn(1, 2 * 3, 8, 8), torch.full((1, 2, 8, 8), 0.1)
        samples = low_rank_sample(mean, factor, diag, num_samples=10, generator=0)  # (1, 10, 2, 8, 8)
    """
    num_samples = check_positive_int(num_samples, "num_samples")
    if mean.ndim < 3:
        raise ValueError(f"mean must be (B, C, *spatial), got shape {tuple(mean.shape)}.")
    if cov_diag.shape != mean.shape:
        raise ValueError(f"cov_diag must have the shape of mean {tuple(mean.shape)}, got {tuple(cov_diag.shape)}.")
    batch, num_classes = mean.shape[:2]
    spatial = tuple(mean.shape[2:])
    if cov_factor.ndim != mean.ndim or cov_factor.shape[0] != batch or tuple(cov_factor.shape[2:]) != spatial:
        raise ValueError(
            f"cov_factor must be (B, C * R, *spatial) = ({batch}, {num_classes} * R, {', '.join(map(str, spatial))}), "
            f"got {tuple(cov_factor.shape)}."
        )
    if cov_factor.shape[1] % num_classes != 0:
        raise ValueError(
            f"cov_factor has {cov_factor.shape[1]} channels, expected a multiple of the {num_classes} classes (C * R)."
        )
    rank = cov_factor.shape[1] // num_classes
    if antithetic and num_samples % 2 != 0:
        raise ValueError(f"antithetic sampling needs an even num_samples, got {num_samples}.")
    num_draw = num_samples // 2 if antithetic else num_samples

    gen = make_generator(generator, mean.device)
    noise_device = gen.device if gen is not None else mean.device
    if eps is None:
        eps = torch.randn((batch, num_draw, rank), generator=gen, device=noise_device, dtype=torch.float32)
    elif eps.ndim != 3 or eps.shape[0] not in (1, batch) or tuple(eps.shape[1:]) != (num_draw, rank):
        raise ValueError(
            f"eps must be ({batch} or 1, {num_draw}, {rank}) (batch, drawn samples, rank), got {tuple(eps.shape)}."
        )
    eps = eps.to(device=mean.device, dtype=mean.dtype).expand(batch, num_draw, rank)
    eta = torch.randn((batch, num_draw, num_classes, *spatial), generator=gen, device=noise_device, dtype=torch.float32)
    eta = eta.to(device=mean.device, dtype=mean.dtype)

    factor = cov_factor.reshape(batch, num_classes, rank, *spatial)
    low_rank = torch.einsum("bcr...,bnr->bnc...", factor, eps)  # (B, n, C, *spatial), P @ eps per voxel
    scale = cov_diag.clamp_min(0).sqrt().unsqueeze(1)
    track = torch.is_grad_enabled() and (mean.requires_grad or cov_factor.requires_grad or cov_diag.requires_grad)
    if track:
        centred = low_rank + scale * eta
        if antithetic:
            centred = torch.cat([centred, -centred], dim=1)
        return mean.unsqueeze(1) + centred
    # no autograd: reuse buffers in place
    centred = eta.mul_(scale).add_(low_rank)
    del low_rank
    if antithetic:
        centred = torch.cat([centred, centred.neg()], dim=1)
    return centred.add_(mean.unsqueeze(1))


class LowRankHead(nn.Module):
    """1x1 convolution heads giving the low-rank normal over logits of a Stochastic Segmentation Network.

    Monteiro, M. et al. (2020) Stochastic Segmentation Networks: Modelling Spatially Correlated Aleatoric
    Uncertainty. NeurIPS 2020.

    From backbone features ``(B, F, *spatial)`` the head computes (after an optional activation) three 1x1
    convolutions: the mean (``C`` channels), the log of the covariance diagonal (``C``) and the covariance factor
    (``C * R``, channel ``c * R + r``). The diagonal is ``exp(clamp(log_diag)) + epsilon``.

    Outside an optional region of interest (e.g. a brain mask) the factor is set to zero and the diagonal to
    ``epsilon``: the reference implementation does this because the covariance tends to blow up in the air
    around the head, where the label is certain.

    When the head outputs of a batch item are not finite (e.g. after a diverging step) the item falls back to a
    safe distribution: zero factor, ``epsilon`` diagonal and the mean with non-finite values replaced by 0. The
    first fallback issues a warning; :py:attr:`num_fallbacks` counts the batch items that fell back.

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3.
        in_channels: number of backbone feature maps ``F``.
        out_channels: number of classes ``C``.
        rank: rank ``R`` of the covariance factor (10 in Monteiro et al.).
        diagonal: no factor (independent normals per voxel, the paper's diagonal baseline); the factor map is
            returned as zeros so that the parameter maps keep the same shapes.
        epsilon: added to the covariance diagonal, and the diagonal outside the region of interest (1e-5 in
            Monteiro et al.).
        log_diag_range: bounds of the log of the diagonal before the exponential, to keep it finite.
        act: activation applied to the backbone features before the heads (ReLU as in the reference
            implementation), any MONAI activation name or ``None`` for none.

    Example::

        head = LowRankHead(spatial_dims=3, in_channels=32, out_channels=4, rank=10)
        maps = head(torch.randn(1, 32, 16, 16, 16))  # mean (1, 4, ...), cov_factor (1, 40, ...), cov_diag (1, 4, ...)
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        rank: int = 10,
        diagonal: bool = False,
        epsilon: float = 1e-5,
        log_diag_range: Sequence[float] = (-20.0, 10.0),
        act: str | tuple | None = "relu",
    ) -> None:
        super().__init__()
        self.spatial_dims = check_spatial_dims(spatial_dims)
        self.in_channels = check_positive_int(in_channels, "in_channels")
        self.out_channels = check_positive_int(out_channels, "out_channels")
        self.rank = check_positive_int(rank, "rank")
        if not epsilon > 0:
            raise ValueError(f"epsilon must be > 0, got {epsilon}.")
        lo, hi = (float(v) for v in log_diag_range)
        if not lo < hi:
            raise ValueError(f"log_diag_range must be (low, high) with low < high, got {tuple(log_diag_range)}.")
        self.diagonal = bool(diagonal)
        self.epsilon = float(epsilon)
        self.log_diag_range = (lo, hi)
        conv = Conv[Conv.CONV, self.spatial_dims]
        self.act = get_act_layer(act) if act is not None else nn.Identity()
        self.mean = conv(in_channels, out_channels, kernel_size=1)
        self.log_cov_diag = conv(in_channels, out_channels, kernel_size=1)
        self.cov_factor = None if self.diagonal else conv(in_channels, out_channels * rank, kernel_size=1)
        self.num_fallbacks = 0
        self._warned = False

    def forward(self, features: torch.Tensor, roi_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Compute the parameter maps.

        Args:
            features: ``(B, F, *spatial)`` backbone features.
            roi_mask: optional ``(B, 1, *spatial)`` or ``(B, *spatial)`` region of interest (non-zero inside).

        Returns:
            dict with ``"mean"`` ``(B, C, *spatial)``, ``"cov_factor"`` ``(B, C * R, *spatial)`` and ``"cov_diag"``
            ``(B, C, *spatial)``.
        """
        if features.ndim != self.spatial_dims + 2 or features.shape[1] != self.in_channels:
            raise ValueError(
                f"features must be (B, {self.in_channels}, *spatial) with {self.spatial_dims} spatial dims, "
                f"got {tuple(features.shape)}."
            )
        h = self.act(features)
        mean = self.mean(h)
        log_diag = self.log_cov_diag(h)
        if self.cov_factor is not None:
            factor = self.cov_factor(h)
        else:
            factor = mean.new_zeros((mean.shape[0], self.out_channels * self.rank, *mean.shape[2:]))
        cov_diag = torch.exp(log_diag.clamp(*self.log_diag_range)) + self.epsilon

        # safe fallback for batch items whose outputs are not finite
        batch = mean.shape[0]
        ok = torch.isfinite(mean).reshape(batch, -1).all(1) & torch.isfinite(log_diag).reshape(batch, -1).all(1)
        ok = ok & torch.isfinite(factor).reshape(batch, -1).all(1)
        if not bool(ok.all()):
            num_bad = int((~ok).sum())
            self.num_fallbacks += num_bad
            if not self._warned:
                warnings.warn(
                    f"Stochastic segmentation head: {num_bad} of {batch} batch items have non-finite distribution "
                    "parameters; using the mean with an epsilon diagonal and no covariance factor for them "
                    "(counted in num_fallbacks, warned once).",
                    RuntimeWarning,
                    stacklevel=2,
                )
                self._warned = True
            keep = ok.view(batch, *([1] * (mean.ndim - 1)))
            mean = torch.where(keep, mean, torch.nan_to_num(mean, nan=0.0, posinf=0.0, neginf=0.0))
            factor = torch.where(keep, factor, torch.zeros_like(factor))
            cov_diag = torch.where(keep, cov_diag, torch.full_like(cov_diag, self.epsilon))

        if roi_mask is not None:
            roi = self._check_roi(roi_mask, mean)
            factor = factor * roi.to(factor.dtype)
            cov_diag = torch.where(roi, cov_diag, torch.full_like(cov_diag, self.epsilon))
        return {"mean": mean, "cov_factor": factor, "cov_diag": cov_diag}

    @staticmethod
    def _check_roi(roi_mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Return the region of interest as a bool ``(B, 1, *spatial)`` tensor on the device of ``like``."""
        spatial = tuple(like.shape[2:])
        batch = like.shape[0]
        roi = roi_mask
        if roi.ndim == len(spatial) + 1:
            roi = roi.unsqueeze(1)
        if roi.ndim != len(spatial) + 2 or roi.shape[1] != 1 or tuple(roi.shape[2:]) != spatial:
            raise ValueError(
                f"roi_mask must be (B, 1, *spatial) or (B, *spatial) with spatial size {spatial}, "
                f"got {tuple(roi_mask.shape)}."
            )
        if roi.shape[0] not in (1, batch):
            raise ValueError(f"roi_mask has batch size {roi.shape[0]}, expected {batch} (or 1).")
        return (roi != 0).to(like.device)
