# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""Stochastic Segmentation Network on any MONAI segmentation backbone.

Monteiro, M., Le Folgoc, L., Coelho de Castro, D., Pawlowski, N., Marques, B., Kamnitsas, K., van der Wilk, M.,
Glocker, B. (2020) Stochastic Segmentation Networks: Modelling Spatially Correlated Aleatoric Uncertainty.
NeurIPS 2020.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn

from monai_probseg.distributions import low_rank_moments, low_rank_sample
from monai_probseg.networks.blocks.backbone import backbone_features, feature_backbone
from monai_probseg.networks.blocks.lowrank import LowRankHead
from monai_probseg.networks.contract import DistributionModel
from monai_probseg.utils import check_positive_int, check_spatial_dims

__all__ = ["StochasticSegmentationNetwork", "SSN"]


class StochasticSegmentationNetwork(DistributionModel):
    """Stochastic Segmentation Network: a backbone plus a low-rank multivariate normal over the logits.

    Monteiro et al. (2020) Stochastic Segmentation Networks: Modelling Spatially Correlated Aleatoric
    Uncertainty. NeurIPS 2020.

    The backbone maps the image to ``F`` feature maps; 1x1 convolution heads (:py:class:`LowRankHead`) turn them
    into the parameters of a normal distribution over the logits of all voxels with covariance
    ``P P^T + D``: the mean (``C`` maps), the diagonal ``D = exp(log_diag) + epsilon`` (``C`` maps) and the factor
    ``P`` of rank ``R`` (``C * R`` maps, channel ``c * R + r`` is rank ``r`` of class ``c``). A sample is
    ``mean + P @ eps + sqrt(D) * eta`` with ``eps`` (``R`` numbers) shared by the whole image, so samples are
    spatially coherent, and drawing ``N`` of them costs one backbone pass plus ``N`` cheap per-voxel operations
    (:py:meth:`sample`). Train it with :py:class:`monai_probseg.losses.LowRankMVNNLLLoss`.

    Defaults follow the paper: rank 10, epsilon 1e-5. The backbone can be any MONAI segmentation network whose
    output channels are set to ``backbone_channels`` (``UNet``, ``BasicUNet``, ``DynUNet``, ``SegResNet``, ...):
    its last layer then produces the features and this network adds the heads. ``diagonal=True`` gives the
    paper's baseline with independent normals per voxel (the factor is zero).

    Outside a region of interest (a brain mask passed as ``roi_mask``, or the non-zero voxels of the image with
    ``roi_from_image=True``) the factor is zero and the diagonal ``epsilon``, as in the reference implementation:
    the covariance tends to blow up in the air, where the label is certain. If the parameters of a batch item are
    not finite the item falls back to the mean with an ``epsilon`` diagonal (see :py:attr:`num_fallbacks`).

    Model contract (a :py:class:`~monai_probseg.networks.DistributionModel`, see docs/design.rst):

    - eval ``forward(x)`` returns the mean logits ``(B, C, *spatial)`` (TorchScript-compatible: ``python -m
      monai.bundle ckpt_export`` scripts it);
    - training ``forward(x, y)`` returns ``{"logits", "mean", "cov_factor", "cov_diag"}`` (``y`` is ignored);
    - ``distribution(x)`` returns the spatial maps ``mean``, ``cov_factor``, ``cov_diag``;
    - ``sample(maps, num_samples, generator)`` returns ``(B, N, C, *spatial)`` logits.

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3.
        in_channels: number of input channels (e.g. 4 MRI modalities).
        out_channels: number of classes ``C`` (softmax over classes; binary is ``C = 2``, or ``C = 1`` with a
            sigmoid in :py:class:`~monai_probseg.losses.LowRankMVNNLLLoss`).
        rank: rank ``R`` of the covariance factor (10 in the paper).
        backbone: module mapping ``(B, in_channels, *spatial)`` to ``(B, backbone_channels, *spatial)`` features.
            ``None`` builds a MONAI ``UNet`` with ``channels``, ``strides`` and ``num_res_units``.
        backbone_channels: number of feature maps the backbone outputs (32 when ``backbone`` is None; required
            otherwise).
        diagonal: independent normals per voxel instead of the low-rank covariance (the paper's baseline).
        epsilon: added to the covariance diagonal (1e-5 in the paper), also the diagonal outside the ROI.
        roi_from_image: when no ``roi_mask`` is given, use the voxels where any input channel is non-zero.
        log_diag_range: bounds of the log of the diagonal before the exponential.
        head_act: activation applied to the backbone features before the 1x1 heads (ReLU, as in the reference
            implementation), or ``None``.
        channels: channels of the default ``UNet`` backbone (used when ``backbone`` is None).
        strides: strides of the default ``UNet`` backbone.
        num_res_units: residual units per block of the default ``UNet`` backbone.
        sampling_tolerance: used by :py:meth:`sampling_mask`, which tells a sliding-window inferer where sampling
            can be skipped: voxels where skipping changes no map (mean probabilities, entropy, mutual information,
            variance) by more than this, in expectation. ``None`` samples every voxel.
        sampling_num_std: standard deviations of the logits within which a voxel whose logits barely vary moves
            no probability by more than ``sampling_tolerance`` (the second rule of :py:meth:`sampling_mask`).
        sample_scale: multiplies the noise of every sample at inference (``mean + s (P @ eps + sqrt(D) * eta)``,
            i.e. the covariance by ``s^2``); 1 (the default) is the trained distribution. A post-hoc calibration
            of the spread, like temperature scaling: a value below 1 narrows an over-dispersed model. Choose it on
            validation data (lowest GED against the raters), never on test data. Not used in training.

    Example::

        net = StochasticSegmentationNetwork(3, in_channels=4, out_channels=4, rank=10)
        net.eval()
        maps = net.distribution(torch.randn(1, 4, 64, 64, 64))
        samples = net.sample(maps, num_samples=20, generator=0)  # (1, 20, 4, 64, 64, 64) logits

        # any MONAI backbone, its output channels are the features
        backbone = SegResNet(spatial_dims=3, in_channels=4, out_channels=16, init_filters=16)
        net = StochasticSegmentationNetwork(3, 4, 4, backbone=backbone, backbone_channels=16)
    """

    #: voxels per chunk of :py:meth:`sampling_mask` (large operations: with several threads, small ones cost more in
    #: dispatch than in work)
    _MASK_STEP = 1 << 16

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        rank: int = 10,
        backbone: nn.Module | None = None,
        backbone_channels: int | None = None,
        diagonal: bool = False,
        epsilon: float = 1e-5,
        roi_from_image: bool = False,
        log_diag_range: Sequence[float] = (-20.0, 10.0),
        head_act: str | tuple | None = "relu",
        channels: Sequence[int] = (32, 64, 128, 256),
        strides: Sequence[int] = (2, 2, 2),
        num_res_units: int = 2,
        sampling_tolerance: float | None = 1e-3,
        sampling_num_std: float = 6.0,
        sample_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if not (math.isfinite(float(sample_scale)) and float(sample_scale) > 0):
            raise ValueError(f"sample_scale must be a finite number > 0, got {sample_scale!r}.")
        self.sample_scale = float(sample_scale)
        self.spatial_dims = check_spatial_dims(spatial_dims)
        self.in_channels = check_positive_int(in_channels, "in_channels")
        self.out_channels = check_positive_int(out_channels, "out_channels")
        self.rank = check_positive_int(rank, "rank")
        backbone, self.backbone_channels = feature_backbone(
            self.spatial_dims, self.in_channels, backbone, backbone_channels, channels, strides, num_res_units
        )
        self.backbone = backbone
        self.roi_from_image = bool(roi_from_image)
        if sampling_tolerance is not None and not 0.0 < sampling_tolerance < 1.0:
            raise ValueError(f"sampling_tolerance must be in (0, 1) or None, got {sampling_tolerance!r}.")
        if sampling_num_std <= 0:
            raise ValueError(f"sampling_num_std must be > 0, got {sampling_num_std!r}.")
        self.sampling_tolerance = sampling_tolerance
        self.sampling_num_std = float(sampling_num_std)
        self.head = LowRankHead(
            spatial_dims=self.spatial_dims,
            in_channels=self.backbone_channels,
            out_channels=self.out_channels,
            rank=self.rank,
            diagonal=diagonal,
            epsilon=epsilon,
            log_diag_range=log_diag_range,
            act=head_act,
        )

    @property
    def diagonal(self) -> bool:
        """Whether the covariance is diagonal (no low-rank factor)."""
        return self.head.diagonal

    @property
    def epsilon(self) -> float:
        """The constant added to the covariance diagonal."""
        return self.head.epsilon

    @property
    def num_fallbacks(self) -> int:
        """Number of batch items whose distribution could not be formed and fell back to the mean."""
        return self.head.num_fallbacks

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            return self.backbone(x)
        return self._checked_features(x)

    def _checked_features(self, x: torch.Tensor) -> torch.Tensor:
        return backbone_features(self.backbone, x, self.spatial_dims, self.in_channels, self.backbone_channels)

    def distribution(self, x: torch.Tensor, roi_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Return the spatial parameter maps of the distribution over logits.

        Args:
            x: image ``(B, in_channels, *spatial)``.
            roi_mask: optional region of interest ``(B, 1, *spatial)`` or ``(B, *spatial)``, non-zero inside;
                outside it the factor is zero and the diagonal epsilon. Derived from ``x`` when None and
                ``roi_from_image`` is set.

        Returns:
            ``{"mean": (B, C, *spatial), "cov_factor": (B, C * R, *spatial), "cov_diag": (B, C, *spatial)}``;
            channel ``c * R + r`` of ``cov_factor`` is rank ``r`` of class ``c``; ``cov_diag`` holds variances.
        """
        if roi_mask is None and self.roi_from_image:
            roi_mask = (x != 0).any(dim=1, keepdim=True)
        return self.head(self._features(x), roi_mask=roi_mask)

    @torch.jit.unused
    def window_maps(self, x: torch.Tensor, roi_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """What a sliding-window inferer blends: :py:meth:`distribution` with the covariance factor left as the
        head's features and region (:py:meth:`LowRankHead.window_maps`), about half the channels to blend.
        :py:meth:`complete_maps` turns the blended maps (or any of their voxels) into those of
        :py:meth:`distribution`.

        Args:
            x: image ``(B, in_channels, *spatial)``.
            roi_mask: optional region of interest, see :py:meth:`distribution`.
        """
        if roi_mask is None and self.roi_from_image:
            roi_mask = (x != 0).any(dim=1, keepdim=True)
        return self.head.window_maps(self._checked_features(x), roi_mask=roi_mask)

    @torch.jit.unused
    def complete_maps(self, maps: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The maps of :py:meth:`distribution` from those of :py:meth:`window_maps`, voxel by voxel (the factor head
        on the blended features); complete maps are returned as they are."""
        return self.head.complete(maps)

    def forward(
        self, x: torch.Tensor, y: torch.Tensor | None = None, roi_mask: torch.Tensor | None = None
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        """Mean logits in eval mode, the distribution maps (plus ``"logits"``) in training mode.

        Args:
            x: image ``(B, in_channels, *spatial)``.
            y: label, accepted so that a trainer can call ``network(x, y)``; not used.
            roi_mask: optional region of interest, see :py:meth:`distribution`.
        """
        maps = self.distribution(x, roi_mask=roi_mask)
        if not torch.jit.is_scripting():  # (TorchScript skips this block: the export is the eval forward)
            if self.training:
                return _with_logits(maps)
        return maps["mean"]

    def sample(
        self,
        maps: dict[str, torch.Tensor],
        num_samples: int,
        generator: int | torch.Generator | None = None,
        eps: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Draw logit samples ``mean + P @ eps + sqrt(D) * eta`` from the maps of :py:meth:`distribution`.

        ``eps`` (``R`` numbers per sample) is shared by the whole image; the backbone is not re-run. Memory and
        the order of the random draws are described in :py:func:`~monai_probseg.distributions.low_rank_sample`.

        Args:
            maps: the output of :py:meth:`distribution` (possibly stitched by a sliding-window inferer).
            num_samples: number of samples ``N``.
            generator: seed or ``torch.Generator`` (same seed, same samples).
            eps: optional global low-rank noise ``(B or 1, N, R)`` to use instead of drawing it.

        Returns:
            logits ``(B, N, C, *spatial)``.
        """
        mean, factor, diag = self._scaled(maps)
        return low_rank_sample(mean, factor, diag, num_samples, generator=generator, eps=eps)

    def _scaled(self, maps: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        missing = [k for k in ("mean", "cov_factor", "cov_diag") if k not in maps]
        if missing:
            raise KeyError(f"maps lacks {missing}; expected the dict returned by distribution(), got {sorted(maps)}.")
        factor, diag = maps["cov_factor"], maps["cov_diag"]
        if self.sample_scale != 1.0:
            factor, diag = factor * self.sample_scale, diag * self.sample_scale**2
        return maps["mean"], factor, diag

    def sample_moments(
        self,
        maps: dict[str, torch.Tensor],
        num_samples: int,
        generator: int | torch.Generator | None = None,
        keep_labels: bool = False,
    ) -> dict[str, torch.Tensor] | None:
        """The moments of the probabilities of ``num_samples`` samples, drawn and folded voxel chunk by chunk.

        :py:func:`~monai_probseg.distributions.low_rank_moments` on the maps (with :py:attr:`sample_scale`): the
        same distribution as :py:meth:`sample`, at about the cost of drawing the noise. ``None`` for a single
        class (sigmoid), where the inferer folds the chunks of :py:meth:`sample` instead.
        """
        mean, factor, diag = self._scaled(maps)
        if mean.shape[1] < 2:
            return None
        return low_rank_moments(mean, factor, diag, num_samples, generator=generator, keep_labels=keep_labels)

    def mean_logits(self, maps: dict[str, torch.Tensor]) -> torch.Tensor:
        """The best single answer from the maps of :py:meth:`distribution` (or :py:meth:`window_maps`): the mean
        logits ``(B, C, *spatial)``."""
        return maps["mean"]

    @torch.no_grad()
    def sampling_mask(self, maps: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """Voxels where samples can differ noticeably from the mean prediction, ``(B, 1, *spatial)`` bool.

        The distribution is the one :py:meth:`sample` draws from (with :py:attr:`sample_scale`). A voxel is left out
        (``False``) when skipping it changes none of the inferer's maps by more than ``tol = sampling_tolerance``
        in expectation, i.e. when one of these holds:

        - it lies outside the region of interest (zero factor, ``epsilon`` diagonal): there the distribution is
          the ``epsilon`` placeholder of the reference implementation and every sample is the mean;
        - its logits barely vary: ``k s <= tol`` with ``k = sampling_num_std`` and ``s`` the largest per-class logit
          standard deviation ``sqrt(max_c sum_r P_cr^2 + D_c)`` (softmax moves a probability by at most the change
          of the logits), so no sample within ``k`` standard deviations moves a probability by more than ``tol``;
        - its mean is confident beyond the noise. With ``t`` the mean's top class, ``d_c = l_c - l_t`` is Gaussian
          with mean ``-g_c`` (the gap of the mean logits) and variance ``v_c = sum_r (P_cr - P_tr)^2 + D_c + D_t``,
          and a sample's ``p_c <= exp(d_c)``, so ``E p_c <= u_c = exp(-g_c + v_c / 2)`` (the log-normal mean),
          ``E p_c^2 <= w_c = exp(-2 g_c + 2 v_c)`` and a sample's label differs from the mean's with a probability
          of at most ``sum_c u_c`` (Markov). With every ``u_c <= 1/e``, the mean probabilities, the entropy and
          the mutual information of the samples are then within ``B = sum_c u_c (1 - log u_c)`` of the mean
          prediction's (``-x log x`` is concave and increasing below ``1/e``), the variances within
          ``(sum_c sqrt(w_c))^2``; the voxel is skipped when both are ``<= tol``.

        The :py:class:`~monai_probseg.inferers.StochasticSlidingWindowInferer` samples only the voxels left in
        and gives the others the mean prediction, so its maps are within ``tol`` of those of sampling every voxel
        (in expectation; a finite number of samples adds its own Monte Carlo error). Returns ``None`` (sample
        everything) when ``sampling_tolerance`` is None or there is a single class.
        """
        if self.sampling_tolerance is None or maps["mean"].shape[1] < 2:
            return None
        mean, factor, diag = self._scaled(maps)
        batch, num_classes, spatial = mean.shape[0], mean.shape[1], mean.shape[2:]
        flat = [t.reshape(batch, t.shape[1], -1) for t in (mean, factor, diag, maps["cov_factor"], maps["cov_diag"])]
        flat[1] = flat[1].reshape(batch, num_classes, -1, flat[1].shape[-1])  # (B, C, R, V)
        num_voxels = flat[0].shape[-1]
        out = torch.empty((batch, 1, num_voxels), dtype=torch.bool, device=mean.device)
        step = self._MASK_STEP  # voxels per chunk
        for start in range(0, num_voxels, step):
            out[..., start : start + step] = self._sampling_mask_chunk(*(t[..., start : start + step] for t in flat))
        return out.reshape(batch, 1, *spatial)

    def _sampling_mask_chunk(self, mean, factor, diag, raw_factor, raw_diag) -> torch.Tensor:
        """:py:meth:`sampling_mask` of flat voxels: ``mean``/``diag`` ``(B, C, v)`` and ``factor`` ``(B, C, R, v)``
        scaled by ``sample_scale``, ``raw_factor``/``raw_diag`` the network's ``(B, C * R, v)``/``(B, C, v)``."""
        tol, k = self.sampling_tolerance, self.sampling_num_std
        assert tol is not None
        outside_roi = (raw_factor == 0).all(1, keepdim=True) & (raw_diag <= self.head.epsilon * (1 + 1e-3)).all(
            1, keepdim=True
        )
        still = k * (factor.square().sum(2) + diag).amax(1, keepdim=True).sqrt() <= tol
        top = mean.argmax(1, keepdim=True)
        mean_top, diag_top = mean.gather(1, top), diag.gather(1, top)
        factor_top = factor.gather(1, top.unsqueeze(2).expand(-1, -1, factor.shape[2], -1))
        entropy_bound = torch.zeros_like(mean_top)
        variance_root = torch.zeros_like(mean_top)
        too_likely = torch.zeros_like(top, dtype=torch.bool)
        for c in range(mean.shape[1]):
            is_top = top == c
            gap = mean_top - mean[:, c : c + 1]
            var = (factor[:, c : c + 1] - factor_top).square().sum(2) + diag[:, c : c + 1] + diag_top
            log_u = (var / 2 - gap).masked_fill(is_top, -1.0)  # the top class itself adds nothing
            too_likely |= ~is_top & (log_u > -1.0)
            entropy_bound += torch.where(is_top, 0.0, log_u.exp() * (1.0 - log_u))
            variance_root += torch.where(is_top, 0.0, (var - gap).exp())  # sqrt(w_c)
        confident = ~too_likely & (entropy_bound <= tol) & (variance_root.square() <= tol)
        return ~(outside_roi | still | confident)


def _with_logits(maps: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The training outputs: the maps plus ``"logits"`` (the mean), for trainers and metrics that read logits."""
    return {"logits": maps["mean"], **maps}


SSN = StochasticSegmentationNetwork
