# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""Monte Carlo integrated negative log-likelihood of a low-rank normal over logits (Stochastic Segmentation Networks).

Monteiro, M. et al. (2020) Stochastic Segmentation Networks: Modelling Spatially Correlated Aleatoric
Uncertainty. NeurIPS 2020.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from monai.utils import LossReduction
from torch.nn.modules.loss import _Loss

from monai_probseg.distributions import low_rank_sample
from monai_probseg.utils import check_positive_int, make_generator

__all__ = ["LowRankMVNNLLLoss"]


class LowRankMVNNLLLoss(_Loss):
    """Monte Carlo integrated negative log-likelihood of Stochastic Segmentation Networks.

    Monteiro et al. (2020) Stochastic Segmentation Networks: Modelling Spatially Correlated Aleatoric
    Uncertainty. NeurIPS 2020 (the Monte Carlo integrated likelihood).

    The logits ``eta`` of the whole image follow a low-rank normal ``N(mean, P P^T + D)``; the label ``y`` is
    categorical given the logits, and the likelihood integrates over the logits by Monte Carlo with ``M`` samples:

    .. math::

        \\mathcal{L} = -\\frac{1}{B} \\sum_b \\Big[ \\operatorname{logsumexp}_{m=1}^{M}
        \\Big( \\sum_{v} \\log \\operatorname{softmax}(\\eta^{(m)}_{b, v})_{y_{b, v}} \\Big) - \\log M \\Big]

    computed with ``log_softmax`` and ``logsumexp`` so that it stays finite when the per-sample sums are large and
    negative. Samples are drawn with the reparameterisation ``mean + P @ eps + sqrt(D) * eta`` directly from the
    spatial maps (:py:func:`~monai_probseg.distributions.low_rank_sample`), never forming the dense
    ``(C V) x (C V)`` covariance; with ``antithetic=True`` (the reference implementation's choice) ``M / 2``
    centred samples ``z`` are drawn and both ``mean + z`` and ``mean - z`` are used.

    Multi-class with a softmax over ``C >= 2`` channels (binary is ``C = 2``); ``C = 1`` is also supported and
    means a sigmoid (foreground probability ``sigmoid(eta)``).

    Voxels excluded by ``ignore_index`` or outside ``mask`` do not enter the sum over voxels. The loss is a sum
    over voxels (not a mean), as in the paper, so its scale grows with the image size; ``return_dict=True`` also
    reports it per voxel.

    Precision: the samples, log-probabilities and their sums are computed in float32 (float64 inputs stay
    float64) with autocast disabled, whatever the dtype of the inputs: a float16 sum over ``256^2`` voxels
    would overflow. Float16 or bfloat16 parameter maps give the float32 result of the same values, and the
    gradients flow back to them in their own dtype.

    Memory: about four tensors of ``B * M * C * V`` values are kept for the backward pass.

    Args:
        num_mc_samples: number of Monte Carlo samples ``M`` (20 in the paper).
        antithetic: use ``M / 2`` antithetic pairs; ``M`` must then be even.
        ignore_index: label value whose voxels are excluded.
        reduction: ``"mean"`` or ``"sum"`` over the batch, or ``"none"`` for ``(B,)``.
        generator: seed or ``torch.Generator`` for the Monte Carlo draws (``None``: torch's global random state).
            A seed creates a generator, on the device of the first input, that is reused by later calls.
        return_dict: return ``{"loss", "nll_per_voxel", "ce_mean"}`` instead of a tensor: the loss to back-propagate,
            the loss divided by the number of voxels counted (detached), and the cross-entropy of the mean logits
            per voxel (detached), for logging with :py:class:`monai_probseg.engines.ProbSegTrainer`.
        mean_ce_weight: weight ``w`` of an auxiliary cross-entropy of the *mean* logits, summed over the counted
            voxels like the likelihood: the loss per image becomes ``NLL + w * CE(mean, y)``. ``0`` (default) is the
            paper's loss. The Monte Carlo likelihood rewards the best of the ``M`` samples, so early in training
            the mean gets a weak signal when the covariance is large; a positive ``w`` trains the mean as a
            segmentation in its own right (useful when the mean prediction is used as the segmentation, e.g. in
            3D with few iterations). Not in Monteiro et al.; an option, off by default.

    Example::

        net = StochasticSegmentationNetwork(2, 1, 2, rank=10)
        loss_fn = LowRankMVNNLLLoss(num_mc_samples=20)
        out = net(image, label)  # training mode: {"logits", "mean", "cov_factor", "cov_diag"}
        loss = loss_fn(out, label)
        loss.backward()
    """

    def __init__(
        self,
        num_mc_samples: int = 20,
        antithetic: bool = True,
        ignore_index: int | None = None,
        reduction: LossReduction | str = LossReduction.MEAN,
        generator: int | torch.Generator | None = None,
        return_dict: bool = False,
        mean_ce_weight: float = 0.0,
    ) -> None:
        valid_reductions = [r.value for r in LossReduction]
        if str(reduction) not in valid_reductions:
            raise ValueError(f"reduction must be one of {valid_reductions}, got {reduction!r}.")
        super().__init__(reduction=LossReduction(reduction).value)
        self.num_mc_samples = check_positive_int(num_mc_samples, "num_mc_samples")
        self.antithetic = bool(antithetic)
        if self.antithetic and self.num_mc_samples % 2 != 0:
            raise ValueError(f"antithetic sampling needs an even num_mc_samples, got {num_mc_samples}.")
        self.ignore_index = ignore_index
        if generator is not None and not isinstance(generator, (int, torch.Generator)):
            raise TypeError(
                f"generator must be an int seed, a torch.Generator or None, got {type(generator).__name__}."
            )
        self.generator = generator
        self.return_dict = bool(return_dict)
        if not (math.isfinite(mean_ce_weight) and mean_ce_weight >= 0):
            raise ValueError(f"mean_ce_weight must be a finite number >= 0, got {mean_ce_weight!r}.")
        self.mean_ce_weight = float(mean_ce_weight)

    def _get_generator(self, device: torch.device) -> torch.Generator | None:
        if isinstance(self.generator, int) and not isinstance(self.generator, bool):
            self.generator = make_generator(self.generator, device)
        return self.generator

    def forward(
        self,
        input: torch.Tensor | Mapping[str, torch.Tensor],
        target: torch.Tensor,
        cov_factor: torch.Tensor | None = None,
        cov_diag: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        """
        Args:
            input: the training output of :py:class:`~monai_probseg.networks.nets.StochasticSegmentationNetwork`
                (a mapping with ``"mean"`` (or ``"logits"``), ``"cov_factor"``, ``"cov_diag"``), or the mean
                logits ``(B, C, *spatial)`` with ``cov_factor`` and ``cov_diag`` given separately.
            target: integer labels ``(B, 1, *spatial)`` or ``(B, *spatial)``, values in ``[0, C)`` (``{0, 1}`` when
                ``C = 1``) or ``ignore_index``.
            cov_factor: ``(B, C * R, *spatial)`` when ``input`` is a tensor.
            cov_diag: ``(B, C, *spatial)`` when ``input`` is a tensor.
            mask: optional ``(B, 1, *spatial)`` or ``(B, *spatial)``; voxels where it is zero are excluded.

        Raises:
            KeyError: when ``input`` is a mapping without the distribution parameters.
            ValueError: when shapes or label values do not match.
        """
        if isinstance(input, Mapping):
            mean = input["mean"] if "mean" in input else input.get("logits")
            cov_factor, cov_diag = input.get("cov_factor"), input.get("cov_diag")
            if mean is None or cov_factor is None or cov_diag is None:
                raise KeyError(
                    f"input must hold 'mean' (or 'logits'), 'cov_factor' and 'cov_diag', got keys {sorted(input)}."
                )
        else:
            mean = input
            if cov_factor is None or cov_diag is None:
                raise ValueError("with a tensor input, cov_factor and cov_diag must be given as well.")
        # the sum over voxels is large (|sum| > 65504 overflows float16 at 256^2 voxels): compute in float32 at least
        dtype = torch.promote_types(_plain(mean).dtype, torch.float32)
        mean, cov_factor, cov_diag = (_plain(t).to(dtype) for t in (mean, cov_factor, cov_diag))
        if mean.ndim < 3:
            raise ValueError(f"mean logits must be (B, C, *spatial), got shape {tuple(mean.shape)}.")
        batch, num_classes = mean.shape[:2]
        spatial = tuple(mean.shape[2:])

        labels = _plain(target)
        if labels.ndim == mean.ndim and labels.shape[1] == 1:
            labels = labels[:, 0]
        if tuple(labels.shape) != (batch, *spatial):
            raise ValueError(
                f"target must be (B, 1, *spatial) or (B, *spatial) integer labels matching the logits "
                f"{tuple(mean.shape)}, got {tuple(target.shape)}."
            )
        labels = labels.to(device=mean.device).long()
        valid = torch.ones_like(labels, dtype=torch.bool)
        if self.ignore_index is not None:
            valid = labels != self.ignore_index
        if mask is not None:
            m = _plain(mask)
            if m.ndim == mean.ndim and m.shape[1] == 1:
                m = m[:, 0]
            if tuple(m.shape) != (batch, *spatial):
                raise ValueError(f"mask must be (B, 1, *spatial) or (B, *spatial), got {tuple(mask.shape)}.")
            valid = valid & (m.to(mean.device) != 0)
        labels = torch.where(valid, labels, torch.zeros_like(labels))
        num_labels = max(num_classes, 2)
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_labels):
            raise ValueError(
                f"target values must be in [0, {num_labels - 1}] for {num_classes} channel(s) (or ignore_index="
                f"{self.ignore_index}), got values in [{int(labels.min())}, {int(labels.max())}]."
            )

        with torch.autocast(device_type=mean.device.type, enabled=False):  # keep float32 under AMP
            samples = low_rank_sample(
                mean,
                cov_factor,
                cov_diag,
                self.num_mc_samples,
                generator=self._get_generator(mean.device),
                antithetic=self.antithetic,
            )  # (B, M, C, *spatial)
            log_prob = _log_prob(samples, labels.unsqueeze(1))  # (B, M, *spatial)
            log_prob = torch.where(valid.unsqueeze(1), log_prob, torch.zeros_like(log_prob))
            log_lik = log_prob.flatten(2).sum(-1)  # (B, M)
            nll = -(torch.logsumexp(log_lik, dim=1) - math.log(self.num_mc_samples))  # (B,)
            per_image = nll
            mean_ce = None  # cross-entropy of the mean logits summed over the counted voxels, (B,)
            if self.mean_ce_weight > 0 or self.return_dict:
                mean_log_prob = _log_prob(mean.unsqueeze(1), labels.unsqueeze(1))[:, 0]  # (B, *spatial)
                mean_ce = -torch.where(valid, mean_log_prob, torch.zeros_like(mean_log_prob)).flatten(1).sum(-1)
        if self.mean_ce_weight > 0:
            per_image = nll + self.mean_ce_weight * mean_ce

        if self.reduction == LossReduction.MEAN.value:
            loss = per_image.mean()
        elif self.reduction == LossReduction.SUM.value:
            loss = per_image.sum()
        elif self.reduction == LossReduction.NONE.value:
            loss = per_image
        else:
            raise ValueError(f'Unsupported reduction: {self.reduction}, available options are ["mean", "sum", "none"].')
        if not self.return_dict:
            return loss
        with torch.no_grad():
            num_valid = valid.flatten(1).sum(-1).clamp_min(1).to(nll.dtype)
            ce_mean = mean_ce.detach() / num_valid
            return {"loss": loss, "nll_per_voxel": (nll / num_valid).mean(), "ce_mean": ce_mean.mean()}


def _plain(t: torch.Tensor) -> torch.Tensor:
    """Drop MetaTensor metadata (it is not needed here and slows the arithmetic down)."""
    return t.as_tensor() if hasattr(t, "as_tensor") else torch.as_tensor(t)


def _log_prob(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Log-probability of ``labels`` ``(B, 1, *spatial)`` under ``logits`` ``(B, M, C, *spatial)`` -> ``(B, M, *s)``.

    Softmax over ``C >= 2`` channels, sigmoid for ``C = 1``. Uses ``logit_y - logsumexp(logits)`` rather than a full
    ``log_softmax`` so that only ``(B, M, *spatial)`` tensors are added to the memory kept for backward.
    """
    if logits.shape[2] == 1:
        sign = labels.to(logits.dtype) * 2 - 1  # +1 foreground, -1 background
        return F.logsigmoid(logits[:, :, 0] * sign)
    index = labels.unsqueeze(2).expand(-1, logits.shape[1], 1, *labels.shape[2:])
    return logits.gather(2, index).squeeze(2) - torch.logsumexp(logits, dim=2)
