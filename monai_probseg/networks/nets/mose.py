# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""Mixture of Stochastic Experts on a MONAI segmentation backbone.

Gao, Z., Chen, Y., Zhang, C., He, X. (2023) Modeling Multimodal Aleatoric Uncertainty in Segmentation with Mixture
of Stochastic Experts. ICLR 2023.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn

from monai_probseg.distributions import low_rank_moments, low_rank_sample, merge_moments
from monai_probseg.networks.blocks.backbone import backbone_features, feature_backbone
from monai_probseg.networks.blocks.lowrank import LowRankHead
from monai_probseg.networks.contract import DistributionModel
from monai_probseg.utils import check_positive_int, check_spatial_dims, make_generator

__all__ = ["MixtureOfStochasticExperts", "MoSE", "gate_weights"]

_MAP_KEYS = ("mean", "cov_factor", "cov_diag", "gate")


def gate_weights(maps: dict[str, torch.Tensor]) -> torch.Tensor:
    """The image-level mode weights ``(B, K)`` of a mixture's maps: the spatial average of the ``"gate"`` map.

    The gate map holds, at every voxel, the weights predicted for the window that covered it (blended over
    overlapping windows by a sliding-window inferer); for an image seen in one window it is constant and its
    average is the gate itself. The average is clamped at 0 and renormalised to sum to 1.

    Args:
        maps: the output of :py:meth:`MixtureOfStochasticExperts.distribution` (possibly stitched), holding
            ``"gate"`` ``(B, K, *spatial)``.
    """
    if "gate" not in maps:
        raise KeyError(
            f"maps lacks 'gate' (the mode weights); expected the dict of distribution(), got {sorted(maps)}."
        )
    gate = maps["gate"]
    if gate.ndim < 3:
        raise ValueError(f"the gate map must be (B, K, *spatial), got shape {tuple(gate.shape)}.")
    weights = gate.float().flatten(2).mean(2).clamp_min(0.0)
    return weights / weights.sum(1, keepdim=True).clamp_min(1e-12)


class MixtureOfStochasticExperts(DistributionModel):
    """Mixture of Stochastic Experts: ``K`` stochastic expert heads on a shared backbone plus a gate over the modes.

    Gao et al. (2023) Modeling Multimodal Aleatoric Uncertainty in Segmentation with Mixture of Stochastic Experts.
    ICLR 2023.

    The backbone maps the image to ``F`` feature maps. Each expert ``k`` is a low-rank normal over the logits, as
    in a Stochastic Segmentation Network (mean ``mu_k``, factor ``P_k`` of rank ``R``, diagonal ``D_k``; 1x1
    convolutions of one :py:class:`~monai_probseg.networks.blocks.LowRankHead` with ``K * C`` outputs, channel
    ``k * C + c`` is class ``c`` of expert ``k``). The gate averages the (ReLU) features over space and maps them
    by a small MLP and a softmax to the image's mode weights ``w`` (``K`` numbers summing to 1). The model is the
    mixture ``p(logits | x) = sum_k w_k N(mu_k, P_k P_k^T + D_k)``; a sample picks ONE expert ``k ~ w`` for the
    whole image, then draws ``mu_k + P_k eps + sqrt(D_k) eta`` with ``eps`` (``R`` numbers) shared by every voxel,
    so a sample is one coherent mode. Train it with :py:class:`monai_probseg.losses.MoSELoss` (optimal-transport
    matching of the weighted samples to the annotations, gate trained toward the plan's marginal).

    Departures from the paper: each expert's stochastic part is the low-rank logit noise of the SSN (the paper
    gives each expert a low-dimensional Gaussian latent injected into its decoder), so that the experts' maps can
    be stitched by a sliding-window inferer like the SSN's; the gate reads the backbone's full-resolution
    features, pooled over space (the paper pools a deeper encoder level), because MONAI backbones expose only
    their output.

    Model contract (a :py:class:`~monai_probseg.networks.DistributionModel`, see docs/design.rst):

    - eval ``forward(x)`` returns the best single answer: the log of the gate-weighted mean of the experts' mean
      probabilities, ``log(sum_k w_k softmax(mu_k))`` (logits whose softmax is the mixture's mean-field
      prediction; not the mean of the sampled probabilities, which also includes the noise);
    - training ``forward(x, y)`` returns the maps plus ``"logits"`` (as above), ``"gate_weights"`` ``(B, K)``,
      ``"samples"`` ``(B, K * S, C, *spatial)`` (``S = samples_per_expert`` reparameterised samples of every
      expert, expert-major) and ``"sample_weights"`` ``(B, K * S)`` (``w_k / S``), what the loss needs;
    - ``distribution(x)`` returns ``"mean"`` ``(B, K * C, *spatial)``, ``"cov_factor"`` ``(B, K * C * R, *spatial)``
      (channel ``(k * C + c) * R + r``), ``"cov_diag"`` ``(B, K * C, *spatial)`` and ``"gate"`` ``(B, K,
      *spatial)``: the image-level weights broadcast over the window, so that a sliding-window inferer stitches
      them like any other map (a voxel gets the blend of the weights of the windows covering it; every voxel's
      value still sums to 1);
    - ``sample(maps, num_samples, generator)`` returns ``(B, N, C, *spatial)`` logits; the experts are drawn from
      :py:func:`gate_weights` (the spatial average of the gate map, i.e. of the windows' weights, which is the gate
      itself for one window).

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3.
        in_channels: number of input channels.
        out_channels: number of classes ``C`` (softmax over classes, ``C >= 2``; binary is ``C = 2``).
        num_experts: number of experts (modes) ``K`` (4 in the paper's LIDC setting).
        rank: rank ``R`` of each expert's covariance factor.
        samples_per_expert: reparameterised samples per expert in the training output (``S``, 4 in the paper).
        backbone: module mapping ``(B, in_channels, *spatial)`` to ``(B, backbone_channels, *spatial)`` features.
            ``None`` builds a MONAI ``UNet`` with ``channels``, ``strides`` and ``num_res_units``.
        backbone_channels: number of feature maps the backbone outputs (32 when ``backbone`` is None; required
            otherwise).
        channels: channels of the default ``UNet`` backbone.
        strides: strides of the default ``UNet`` backbone.
        num_res_units: residual units per block of the default ``UNet`` backbone.
        gate_hidden: width of the gate's hidden layer (``backbone_channels`` when None).
        epsilon: added to every expert's covariance diagonal.
        log_diag_range: bounds of the log of the diagonal before the exponential.
        head_act: activation applied to the backbone features before the heads and the gate, or ``None``.
        gate_pooling: how the gate summarises the (activated) features over space: ``"mean_max"`` (default), the
            average and the maximum side by side (``2 F`` inputs to its MLP), or ``"mean"`` (global average pooling
            only, as the paper; version 0.1 of this class). The maximum lets the gate read a small structure (a
            faint lesion in a large image) that the average dilutes by its area: on the 2D ambiguous lesions it
            took the "no lesion" frequency error from -16 to -2 points (``benchmarks/results/experiments.md``).
        sample_scale: multiplies every expert's noise at inference (``mu_k + s (P_k eps + sqrt(D_k) eta)``), as the
            SSN's ``sample_scale``: 1 (the default) is the trained distribution; a value below 1 narrows it. Choose
            it on validation data, never on test data. Not used in training.

    Example::

        net = MixtureOfStochasticExperts(2, in_channels=1, out_channels=2, num_experts=4, rank=4)
        net.eval()
        maps = net.distribution(torch.randn(1, 1, 64, 64))
        gate_weights(maps)  # (1, 4), sums to 1
        samples = net.sample(maps, num_samples=20, generator=0)  # (1, 20, 2, 64, 64) logits
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        num_experts: int = 4,
        rank: int = 4,
        samples_per_expert: int = 4,
        backbone: nn.Module | None = None,
        backbone_channels: int | None = None,
        channels: Sequence[int] = (32, 64, 128, 256),
        strides: Sequence[int] = (2, 2, 2),
        num_res_units: int = 2,
        gate_hidden: int | None = None,
        epsilon: float = 1e-5,
        log_diag_range: Sequence[float] = (-20.0, 10.0),
        head_act: str | tuple | None = "relu",
        gate_pooling: str = "mean_max",
        sample_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.spatial_dims = check_spatial_dims(spatial_dims)
        self.in_channels = check_positive_int(in_channels, "in_channels")
        self.out_channels = check_positive_int(out_channels, "out_channels", minimum=2)
        self.num_experts = check_positive_int(num_experts, "num_experts")
        self.rank = check_positive_int(rank, "rank")
        self.samples_per_expert = check_positive_int(samples_per_expert, "samples_per_expert")
        backbone, self.backbone_channels = feature_backbone(
            self.spatial_dims, self.in_channels, backbone, backbone_channels, channels, strides, num_res_units
        )
        self.backbone = backbone
        self.head = LowRankHead(
            spatial_dims=self.spatial_dims,
            in_channels=self.backbone_channels,
            out_channels=self.num_experts * self.out_channels,
            rank=self.rank,
            epsilon=epsilon,
            log_diag_range=log_diag_range,
            act=head_act,
        )
        hidden = self.backbone_channels if gate_hidden is None else check_positive_int(gate_hidden, "gate_hidden")
        if gate_pooling not in ("mean", "mean_max"):
            raise ValueError(f"gate_pooling must be 'mean' or 'mean_max', got {gate_pooling!r}.")
        self.gate_pooling = gate_pooling
        if not (math.isfinite(float(sample_scale)) and float(sample_scale) > 0):
            raise ValueError(f"sample_scale must be a finite number > 0, got {sample_scale!r}.")
        self.sample_scale = float(sample_scale)
        pooled = self.backbone_channels * (2 if self.gate_pooling == "mean_max" else 1)
        self.gate = nn.Sequential(nn.Linear(pooled, hidden), nn.ReLU(), nn.Linear(hidden, self.num_experts))

    # ------------------------------------------------------------------ maps
    def _features(self, x: torch.Tensor) -> torch.Tensor:
        return backbone_features(self.backbone, x, self.spatial_dims, self.in_channels, self.backbone_channels)

    def gate_logits(self, features: torch.Tensor) -> torch.Tensor:
        """The gate's logits ``(B, K)`` from backbone features ``(B, F, *spatial)`` (activation, pooling, MLP).

        Args:
            features: backbone features.
        """
        flat = self.head.act(features).flatten(2)
        pooled = flat.mean(2) if self.gate_pooling == "mean" else torch.cat([flat.mean(2), flat.amax(2)], 1)
        return self.gate(pooled)

    def distribution(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return the experts' parameter maps and the gate broadcast over space.

        Args:
            x: image ``(B, in_channels, *spatial)``.

        Returns:
            ``{"mean": (B, K * C, *sp), "cov_factor": (B, K * C * R, *sp), "cov_diag": (B, K * C, *sp),
            "gate": (B, K, *sp)}``; the gate is the same softmax weights at every voxel of ``x``.
        """
        feats = self._features(x)
        maps = self.head(feats)
        weights = torch.softmax(self.gate_logits(feats), dim=1)
        maps["gate"] = _broadcast_gate(weights, x.shape[2:])
        return maps

    def _split(
        self, maps: dict[str, torch.Tensor], scaled: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Maps as ``mean (B, K, C, *sp)``, ``factor (B, K, C * R, *sp)``, ``diag (B, K, C, *sp)``; with ``scaled``
        the noise times :py:attr:`sample_scale`."""
        missing = [k for k in _MAP_KEYS if k not in maps]
        if missing:
            raise KeyError(f"maps lacks {missing}; expected the dict returned by distribution(), got {sorted(maps)}.")
        k, c, r = self.num_experts, self.out_channels, self.rank
        mean, factor, diag = maps["mean"], maps["cov_factor"], maps["cov_diag"]
        if mean.shape[1] != k * c or diag.shape[1] != k * c or factor.shape[1] != k * c * r:
            raise ValueError(
                f"maps must have K * C = {k * c} mean/diag and K * C * R = {k * c * r} factor channels, got "
                f"{mean.shape[1]}, {diag.shape[1]} and {factor.shape[1]}."
            )
        if maps["gate"].shape[1] != k:
            raise ValueError(f"the gate map has {maps['gate'].shape[1]} channels, expected num_experts = {k}.")
        if scaled and self.sample_scale != 1.0:
            factor, diag = factor * self.sample_scale, diag * self.sample_scale**2
        split = (mean.shape[0], k, -1, *mean.shape[2:])
        return mean.reshape(split), factor.reshape(split), diag.reshape(split)

    def _mixture_logits(self, expert_means: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """``log(sum_k w_k softmax(mu_k))`` from ``(B, K, C, *sp)`` means and ``(B, K)`` weights."""
        log_w = torch.log(weights.clamp_min(1e-12)).to(expert_means.dtype)
        log_w = log_w.reshape(*weights.shape, *([1] * (expert_means.ndim - 2)))
        return torch.logsumexp(log_w + torch.log_softmax(expert_means, dim=2), dim=1)

    def mean_logits(self, maps: dict[str, torch.Tensor]) -> torch.Tensor:
        """The best single answer ``(B, C, *spatial)`` from (stitched) maps: ``log(sum_k w_k softmax(mu_k))``.

        Args:
            maps: the output of :py:meth:`distribution`; ``w`` is :py:func:`gate_weights` of it.
        """
        mean, _, _ = self._split(maps)
        return self._mixture_logits(mean, gate_weights(maps))

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor | dict[str, torch.Tensor]:
        """Mixture mean logits (eval); the maps plus what :py:class:`~monai_probseg.losses.MoSELoss` needs (training).

        Args:
            x: image ``(B, in_channels, *spatial)``.
            y: label, accepted so that a trainer can call ``network(x, y)``; not used.
        """
        feats = self._features(x)
        maps = self.head(feats)
        weights = torch.softmax(self.gate_logits(feats), dim=1)
        k, s = self.num_experts, self.samples_per_expert
        mean = maps["mean"].reshape(x.shape[0], k, -1, *x.shape[2:])
        logits = self._mixture_logits(mean, weights)
        if not self.training:
            return logits
        factor = maps["cov_factor"].reshape(x.shape[0], k, -1, *x.shape[2:])
        diag = maps["cov_diag"].reshape(x.shape[0], k, -1, *x.shape[2:])
        # S reparameterised samples of every expert (global torch random state), expert-major
        samples = low_rank_sample(mean.flatten(0, 1), factor.flatten(0, 1), diag.flatten(0, 1), s)
        samples = samples.reshape(x.shape[0], k * s, *samples.shape[2:])
        return {
            "logits": logits,
            **maps,
            "gate": _broadcast_gate(weights, x.shape[2:]),
            "gate_weights": weights,
            "samples": samples,
            "sample_weights": weights.repeat_interleave(s, dim=1) / s,
        }

    # ------------------------------------------------------------------ sampling
    def choose_experts(
        self, maps: dict[str, torch.Tensor], num_samples: int, generator: int | torch.Generator | None = None
    ) -> torch.Tensor:
        """The expert of each of ``num_samples`` samples, ``(B, N)`` long, stratified over :py:func:`gate_weights`.

        Systematic sampling (as in the systematic resampling of particle filters): with one ``u ~ U(0, 1)`` per
        batch item, sample ``i`` takes the expert whose interval of the cumulative gate holds ``(u + i) / N``, and
        the ``N`` choices are then put in a random order. Each sample's expert is still marginally ``k ~ w``, but the
        ``N`` samples hold expert ``k`` ``N w_k`` times up to one (independent draws would scatter the counts by
        ``sqrt(N w_k (1 - w_k))``, and a fixed seed would repeat the same scatter for every case of a data set).
        The first random draws of :py:meth:`sample` and :py:meth:`sample_moments` (which call it with the same
        generator).

        Args:
            maps: the output of :py:meth:`distribution`.
            num_samples: number of samples ``N``.
            generator: seed or ``torch.Generator`` (same seed, same choices).
        """
        num_samples = check_positive_int(num_samples, "num_samples")
        weights = gate_weights(maps).float()
        gen = make_generator(generator, weights.device)
        if gen is not None and gen.device != weights.device:
            weights = weights.to(gen.device)
        batch = weights.shape[0]
        offset = torch.rand((batch, 1), generator=gen, device=weights.device)
        positions = (offset + torch.arange(num_samples, device=weights.device)) / num_samples  # (B, N) in [0, 1)
        cdf = weights.cumsum(1) / weights.sum(1, keepdim=True)
        experts = torch.searchsorted(cdf, positions, right=True).clamp_max(weights.shape[1] - 1)
        order = torch.rand((batch, num_samples), generator=gen, device=weights.device).argsort(1)
        return experts.gather(1, order).to(maps["gate"].device)

    def sample(
        self,
        maps: dict[str, torch.Tensor],
        num_samples: int,
        generator: int | torch.Generator | None = None,
        experts: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Draw logit samples: each picks one expert ``k ~ w`` for the image, then ``mu_k + P_k eps + sqrt(D_k) eta``.

        Random draws, in this order: the experts (:py:meth:`choose_experts`, skipped when ``experts`` is given),
        then for every batch item and every expert ``k`` in increasing order that some sample picked, the noise of
        its samples as :py:func:`~monai_probseg.distributions.low_rank_sample` draws it. The backbone is not re-run.

        Args:
            maps: the output of :py:meth:`distribution` (possibly stitched by a sliding-window inferer).
            num_samples: number of samples ``N``.
            generator: seed or ``torch.Generator`` (same seed, same samples).
            experts: optional ``(B, N)`` expert indices to use instead of drawing them.

        Returns:
            logits ``(B, N, C, *spatial)``.
        """
        num_samples = check_positive_int(num_samples, "num_samples")
        mean, factor, diag = self._split(maps, scaled=True)
        gen = make_generator(generator, mean.device)
        if experts is None:
            experts = self.choose_experts(maps, num_samples, gen)
        elif tuple(experts.shape) != (mean.shape[0], num_samples):
            raise ValueError(f"experts must be (B, N) = ({mean.shape[0]}, {num_samples}), got {tuple(experts.shape)}.")
        out = mean.new_empty((mean.shape[0], num_samples, *mean.shape[2:]))
        for b in range(mean.shape[0]):
            for k in range(self.num_experts):
                index = (experts[b] == k).nonzero().squeeze(1).to(mean.device)
                if index.numel() == 0:
                    continue
                drawn = low_rank_sample(
                    mean[b : b + 1, k], factor[b : b + 1, k], diag[b : b + 1, k], index.numel(), generator=gen
                )
                out[b, index] = drawn[0].to(out.dtype)
        return out

    def sample_moments(
        self,
        maps: dict[str, torch.Tensor],
        num_samples: int,
        generator: int | torch.Generator | None = None,
        keep_labels: bool = False,
    ) -> dict[str, torch.Tensor]:
        """The moments of the probabilities of ``num_samples`` samples, drawn expert by expert with the fused sampler.

        The experts are drawn as in :py:meth:`sample` (:py:meth:`choose_experts`, the first random draw); then, for
        every batch item and every expert some sample picked, the moments of its samples come from
        :py:func:`~monai_probseg.distributions.low_rank_moments` (no sample is materialised) and the groups are
        merged with :py:func:`~monai_probseg.distributions.merge_moments`. The same distribution as
        :py:meth:`sample`; the random stream of the noise is that of the fused sampler, so the same seed gives the
        same moments here, not the samples of :py:meth:`sample`.

        Args:
            maps: the output of :py:meth:`distribution` (possibly stitched by a sliding-window inferer).
            num_samples: number of samples ``N``.
            generator: seed or ``torch.Generator`` (same seed, same moments).
            keep_labels: also return the label map of every sample, ``"labels"`` ``(B, N, *spatial)`` uint8.

        Returns:
            ``{"mean", "m2", "expected_entropy"}`` (and ``"labels"``) as :py:func:`low_rank_moments` returns them.
        """
        num_samples = check_positive_int(num_samples, "num_samples")
        mean, factor, diag = self._split(maps, scaled=True)
        gen = make_generator(generator, mean.device)
        experts = self.choose_experts(maps, num_samples, gen)
        items: list[dict[str, torch.Tensor]] = []
        labels = torch.empty((mean.shape[0], num_samples, *mean.shape[3:]), dtype=torch.uint8, device=mean.device)
        for b in range(mean.shape[0]):
            merged: dict[str, torch.Tensor] | None = None
            count = 0
            for k in range(self.num_experts):
                index = (experts[b] == k).nonzero().squeeze(1).to(mean.device)
                if index.numel() == 0:
                    continue
                part = low_rank_moments(
                    mean[b : b + 1, k].float(),
                    factor[b : b + 1, k].float(),
                    diag[b : b + 1, k].float(),
                    index.numel(),
                    generator=gen,
                    keep_labels=keep_labels,
                )
                if keep_labels:
                    labels[b, index] = part.pop("labels")[0]
                merged = part if merged is None else merge_moments(count, merged, index.numel(), part)
                count += index.numel()
            assert merged is not None  # num_samples >= 1 picks at least one expert
            items.append(merged)
        out = {key: torch.cat([item[key] for item in items]) for key in ("mean", "m2", "expected_entropy")}
        if keep_labels:
            out["labels"] = labels
        return out


def _broadcast_gate(weights: torch.Tensor, spatial: Sequence[int]) -> torch.Tensor:
    """The gate's ``(B, K)`` weights as a ``(B, K, *spatial)`` map (a real tensor: sliding windows write into it)."""
    shape = (*weights.shape, *([1] * len(spatial)))
    return weights.reshape(shape).expand(-1, -1, *spatial).contiguous()


MoSE = MixtureOfStochasticExperts
