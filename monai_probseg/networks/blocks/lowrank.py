# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""Low-rank multivariate normal over logits: the head of Stochastic Segmentation Networks.

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
sliding-window inferer stitch windows without seams) and ``eta ~ N(0, I)`` drawn per voxel and class. The sampler,
:py:func:`~monai_probseg.distributions.low_rank_sample`, lives in :py:mod:`monai_probseg.distributions` (the loss
uses it too) and is importable from here as before.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.networks.layers.factories import Conv
from monai.networks.layers.utils import get_act_layer

from monai_probseg.distributions import low_rank_sample
from monai_probseg.utils import check_positive_int, check_spatial_dims

__all__ = ["LowRankHead", "low_rank_sample"]  # low_rank_sample lives in monai_probseg.distributions


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
        if not torch.jit.is_scripting():
            self._check_features(features)
        h = self.act(features)
        # the three 1x1 heads as one convolution (one pass over the features, forward and backward)
        weights = [self.mean.weight, self.log_cov_diag.weight]
        biases = [_bias(self.mean.bias, self.out_channels, h), _bias(self.log_cov_diag.bias, self.out_channels, h)]
        if self.cov_factor is not None:
            weights.append(self.cov_factor.weight)
            biases.append(_bias(self.cov_factor.bias, self.out_channels * self.rank, h))
        out = _pointwise(h, torch.cat(weights), torch.cat(biases))
        c = self.out_channels
        # split, not slices: its backward concatenates the three gradients instead of zero-filling a full-size
        # gradient per slice and adding them
        if self.cov_factor is not None:
            mean, log_diag, factor = out.split([c, c, out.shape[1] - 2 * c], dim=1)
        else:
            mean, log_diag = out.split([c, c], dim=1)
            shape = list(mean.shape)
            shape[1] = self.out_channels * self.rank
            factor = mean.new_zeros(shape)
        cov_diag = torch.exp(log_diag.clamp(self.log_diag_range[0], self.log_diag_range[1])) + self.epsilon

        # safe fallback for batch items whose outputs are not finite
        batch = mean.shape[0]
        ok = _finite_items([out])
        if not bool(ok.all()):
            if not torch.jit.is_scripting():
                self._record_fallback(int((~ok).sum()), batch)
            keep = ok.view([batch] + [1] * (mean.dim() - 1))
            mean = torch.where(keep, mean, torch.nan_to_num(mean, nan=0.0, posinf=0.0, neginf=0.0))
            factor = torch.where(keep, factor, torch.zeros_like(factor))
            cov_diag = torch.where(keep, cov_diag, torch.full_like(cov_diag, self.epsilon))

        if roi_mask is not None:
            roi = roi_mask.unsqueeze(1) if roi_mask.dim() == mean.dim() - 1 else roi_mask
            if not torch.jit.is_scripting():
                self._check_roi(roi_mask, roi, mean)
            roi = (roi != 0).to(mean.device)
            factor = factor * roi.to(factor.dtype)
            cov_diag = torch.where(roi, cov_diag, torch.full_like(cov_diag, self.epsilon))
        return {"mean": mean, "cov_factor": factor, "cov_diag": cov_diag}

    @torch.jit.unused
    def window_maps(self, features: torch.Tensor, roi_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The maps of :py:meth:`forward` in the compact form a sliding-window inferer blends; see :py:meth:`complete`.

        The mean and the diagonal are those of :py:meth:`forward`. The factor (``C * R`` channels) is replaced by
        what it is an affine function of, voxel by voxel: the activated features inside the region of interest,
        ``"factor_features"`` (``F`` channels, zero outside), and the region itself, ``"factor_roi"`` (1 channel,
        all ones without a ``roi_mask``). Blending windows is a convex combination per voxel, so
        ``complete(blend(window_maps))`` equals ``blend(forward)`` up to rounding, from ``2 C + F + 1`` channels
        instead of ``C (R + 2)`` (25 instead of 48 for 4 classes, rank 10 and 16 features). A batch item whose
        outputs are not finite falls back as in :py:meth:`forward` (zero features and region: zero factor).

        Args:
            features: ``(B, F, *spatial)`` backbone features.
            roi_mask: optional ``(B, 1, *spatial)`` or ``(B, *spatial)`` region of interest (non-zero inside).
        """
        self._check_features(features)
        h = self.act(features)
        biases = [_bias(self.mean.bias, self.out_channels, h), _bias(self.log_cov_diag.bias, self.out_channels, h)]
        out = _pointwise(h, torch.cat([self.mean.weight, self.log_cov_diag.weight]), torch.cat(biases))
        mean, log_diag = out.split([self.out_channels, self.out_channels], dim=1)
        cov_diag = torch.exp(log_diag.clamp(self.log_diag_range[0], self.log_diag_range[1])) + self.epsilon
        roi = torch.ones_like(mean[:, :1])
        if roi_mask is not None:
            roi_c = roi_mask.unsqueeze(1) if roi_mask.dim() == mean.dim() - 1 else roi_mask
            self._check_roi(roi_mask, roi_c, mean)
            roi = (roi_c != 0).to(device=mean.device, dtype=mean.dtype).expand_as(roi).contiguous()
            cov_diag = torch.where(roi != 0, cov_diag, torch.full_like(cov_diag, self.epsilon))
        maps = {"mean": mean, "cov_diag": cov_diag}
        batch = mean.shape[0]
        ok = _finite_items([out, h])
        keep = ok.view([batch] + [1] * (mean.dim() - 1))
        if not bool(ok.all()):
            self._record_fallback(int((~ok).sum()), batch)
            maps["mean"] = torch.where(keep, mean, torch.nan_to_num(mean, nan=0.0, posinf=0.0, neginf=0.0))
            maps["cov_diag"] = torch.where(keep, cov_diag, torch.full_like(cov_diag, self.epsilon))
            roi = roi * keep.to(roi.dtype)
        if self.cov_factor is not None:
            maps["factor_features"] = torch.where(roi != 0, h, torch.zeros_like(h))
            maps["factor_roi"] = roi
        return maps

    @torch.jit.unused
    def complete(self, maps: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The maps of :py:meth:`forward` from those of :py:meth:`window_maps` (stitched, or any voxels of them).

        ``cov_factor = W factor_features + b factor_roi`` with the factor head's weight ``W`` and bias ``b``; maps
        that already hold ``"cov_factor"`` are returned as they are.

        Args:
            maps: ``{"mean", "cov_diag", "factor_features", "factor_roi"}`` (the last two absent for a diagonal
                head), each ``(B, ch, *spatial)``.
        """
        if "cov_factor" in maps:
            return maps
        mean = maps["mean"]
        if self.cov_factor is None:
            shape = list(mean.shape)
            shape[1] = self.out_channels * self.rank
            factor = mean.new_zeros(shape)
        else:
            h, roi = maps["factor_features"], maps["factor_roi"]
            # the 1x1 convolution as matrix products over chunks of the flattened voxels (any layout, e.g.
            # compacted), each chunk's output written once while it is in cache
            weight = self.cov_factor.weight.reshape(self.cov_factor.weight.shape[0], -1).to(h.dtype)
            bias = None if self.cov_factor.bias is None else self.cov_factor.bias.to(h.dtype).view(-1, 1)
            flat_h, flat_roi = h.reshape(h.shape[0], h.shape[1], -1), roi.reshape(roi.shape[0], 1, -1).to(h.dtype)
            if torch.is_grad_enabled():  # differentiable (out= has no gradient): one product
                factor = torch.matmul(weight, flat_h)
                if bias is not None:
                    factor = factor + bias * flat_roi
                return {
                    "mean": mean,
                    "cov_factor": factor.reshape(h.shape[0], -1, *h.shape[2:]),
                    "cov_diag": maps["cov_diag"],
                }
            factor = h.new_empty((h.shape[0], weight.shape[0], flat_h.shape[-1]))
            step = 1 << 15
            for b in range(h.shape[0]):
                for start in range(0, flat_h.shape[-1], step):
                    out = factor[b, :, start : start + step]
                    torch.matmul(weight, flat_h[b, :, start : start + step], out=out)
                    if bias is not None:
                        out.addcmul_(bias, flat_roi[b, :, start : start + step])
            factor = factor.reshape(h.shape[0], -1, *h.shape[2:])
        return {"mean": mean, "cov_factor": factor, "cov_diag": maps["cov_diag"]}

    def _check_features(self, features: torch.Tensor) -> None:
        if features.ndim != self.spatial_dims + 2 or features.shape[1] != self.in_channels:
            raise ValueError(
                f"features must be (B, {self.in_channels}, *spatial) with {self.spatial_dims} spatial dims, "
                f"got {tuple(features.shape)}."
            )

    def _record_fallback(self, num_bad: int, batch: int) -> None:
        """Count the batch items that fell back to the safe distribution, and warn the first time."""
        self.num_fallbacks += num_bad
        if not self._warned:
            warnings.warn(
                f"Stochastic segmentation head: {num_bad} of {batch} batch items have non-finite distribution "
                "parameters; using the mean with an epsilon diagonal and no covariance factor for them "
                "(counted in num_fallbacks, warned once).",
                RuntimeWarning,
                stacklevel=3,
            )
            self._warned = True

    @staticmethod
    def _check_roi(roi_mask: torch.Tensor, roi: torch.Tensor, like: torch.Tensor) -> None:
        """Check the region of interest ``roi`` (``roi_mask`` with a channel axis) against the maps ``like``."""
        spatial = tuple(like.shape[2:])
        batch = like.shape[0]
        if roi.ndim != len(spatial) + 2 or roi.shape[1] != 1 or tuple(roi.shape[2:]) != spatial:
            raise ValueError(
                f"roi_mask must be (B, 1, *spatial) or (B, *spatial) with spatial size {spatial}, "
                f"got {tuple(roi_mask.shape)}."
            )
        if roi.shape[0] not in (1, batch):
            raise ValueError(f"roi_mask has batch size {roi.shape[0]}, expected {batch} (or 1).")


def _pointwise(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """A 1x1 convolution of ``h`` ``(B, F, *spatial)`` with ``weight`` ``(O, F, 1, ...)`` and ``bias`` ``(O,)`` as one
    batched matrix product over the flattened voxels (on CPU faster than the convolution's 1x1 path, which copies
    the input into columns, forward and backward; the same numbers up to rounding)."""
    batch, out_channels = h.shape[0], weight.shape[0]
    flat = h.reshape(batch, h.shape[1], -1)
    w = weight.reshape(1, out_channels, -1).expand(batch, -1, -1)
    out = torch.baddbmm(bias.reshape(1, out_channels, 1).to(flat.dtype), w.to(flat.dtype), flat)
    return out.reshape([batch, out_channels] + list(h.shape[2:]))


def _finite_items(tensors: list[torch.Tensor]) -> torch.Tensor:
    """``(B,)`` bool: whether every value of each batch item of ``tensors`` is finite. A non-finite value makes the
    item's sum non-finite, so one reduction finds the suspects, and only then the exact element-wise check runs."""
    with torch.no_grad():
        batch = tensors[0].shape[0]
        ok = torch.ones(batch, dtype=torch.bool, device=tensors[0].device)
        for t in tensors:
            ok = ok & torch.isfinite(t.reshape(batch, -1).sum(1, dtype=torch.float32))
        if not bool(ok.all()):
            ok = torch.ones(batch, dtype=torch.bool, device=tensors[0].device)
            for t in tensors:
                ok = ok & torch.isfinite(t).reshape(batch, -1).all(1)
    return ok


def _bias(bias: torch.Tensor | None, channels: int, like: torch.Tensor) -> torch.Tensor:
    """A convolution's bias, zeros when it has none (TorchScript-friendly)."""
    if bias is None:
        return torch.zeros(channels, dtype=like.dtype, device=like.device)
    return bias
