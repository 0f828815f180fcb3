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

from monai_probseg.distributions import low_rank_noise, low_rank_sample, variance_to_std
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

    Speed and memory (softmax, ``C >= 2``): the per-sample log-likelihoods and their gradients are computed by one
    fused autograd function, voxel chunk by voxel chunk (chunks that stay in cache), recomputing the sample logits
    in the backward pass instead of storing them: only the noise (``B * M / 2 * C * V`` values with antithetic
    pairs) is kept for the backward pass. The draws and the value are those of :py:func:`low_rank_sample`
    followed by a log-softmax (same seed, same loss).

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
            generator = self._get_generator(mean.device)
            if num_classes >= 2:
                log_lik = _monte_carlo_log_likelihood(
                    mean, cov_factor, cov_diag, labels, valid, self.num_mc_samples, self.antithetic, generator
                )  # (B, M)
            else:  # sigmoid: the plain autograd form
                samples = low_rank_sample(
                    mean, cov_factor, cov_diag, self.num_mc_samples, generator=generator, antithetic=self.antithetic
                )  # (B, M, 1, *spatial)
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


# elements (classes x samples x voxels) of one chunk of the fused likelihood: small enough to stay in cache on CPU
_LIKELIHOOD_CHUNK_ELEMENTS = {"cpu": 2**17, "cuda": 2**25}


def _monte_carlo_log_likelihood(
    mean: torch.Tensor,
    cov_factor: torch.Tensor,
    cov_diag: torch.Tensor,
    labels: torch.Tensor,
    valid: torch.Tensor,
    num_samples: int,
    antithetic: bool,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """``(B, M)`` sums over the valid voxels of ``log softmax(sample_m)_y``, samples as :py:func:`low_rank_sample`."""
    batch, num_classes = mean.shape[:2]
    rank = cov_factor.shape[1] // num_classes
    num_draw = num_samples // 2 if antithetic else num_samples
    eps, eta = low_rank_noise(mean, rank, num_draw, generator)
    std = variance_to_std(cov_diag)
    return _LowRankLogLikelihood.apply(
        mean.flatten(2),
        cov_factor.reshape(batch, num_classes, rank, -1),
        std.flatten(2),
        eps.contiguous(),
        eta.flatten(3),
        labels.flatten(1),
        valid.flatten(1).to(mean.dtype),
        antithetic,
    )


def _chunk_size(num_classes: int, num_draw: int, device: torch.device) -> int:
    """Voxels per chunk of the fused likelihood."""
    elements = _LIKELIHOOD_CHUNK_ELEMENTS.get(device.type, _LIKELIHOOD_CHUNK_ELEMENTS["cuda"])
    return max(1, elements // (num_classes * num_draw))


class _LowRankLogLikelihood(torch.autograd.Function):
    """Per-sample log-likelihoods of the labels under low-rank logit samples, fused and chunked over voxels.

    Inputs: ``mean`` ``(B, C, V)``, ``factor`` ``(B, C, R, V)``, ``std`` ``(B, C, V)``, the noise ``eps``
    ``(B, n, R)`` and ``eta`` ``(B, n, C, V)``, ``labels`` ``(B, V)`` and ``weight`` ``(B, V)`` (1 for a counted
    voxel, 0 otherwise). With ``z_m = P @ eps_m + std * eta_m`` the samples are ``mean + z_m`` (and ``mean - z_m``
    after them when ``antithetic``), and the output ``(B, M)`` is ``sum_v weight_v log softmax(sample_m, v)_{y_v}``.
    The gradient of that sum with respect to the logits of a sample is ``weight (onehot(y) - softmax)``; the
    backward pass recomputes the logits chunk by chunk and maps that gradient to the mean, the factor (``eps``
    products) and ``std`` (times ``eta``). No gradient for the noise, labels or weights.
    """

    @staticmethod
    def forward(ctx, mean, factor, std, eps, eta, labels, weight, antithetic):  # type: ignore[override]
        batch, num_classes = mean.shape[:2]
        num_draw = eps.shape[1]
        signs = (1.0, -1.0) if antithetic else (1.0,)
        step = _chunk_size(num_classes, num_draw, mean.device)
        out = torch.zeros((batch, num_draw * len(signs)), dtype=mean.dtype, device=mean.device)
        for b, _, _, z, index, w, m in _voxel_chunks(mean, factor, std, eps, eta, labels, weight, step):
            for k, sign in enumerate(signs):
                logits = m + z if sign > 0 else m - z
                log_p = torch.log_softmax(logits, dim=0).gather(0, index)[0]  # (n, v)
                out[b, k * num_draw : (k + 1) * num_draw] += log_p.mul_(w).sum(dim=1)
        ctx.antithetic = antithetic
        ctx.save_for_backward(mean, factor, std, eps, eta, labels, weight)
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        mean, factor, std, eps, eta, labels, weight = ctx.saved_tensors
        num_classes = mean.shape[1]
        num_draw = eps.shape[1]
        signs = (1.0, -1.0) if ctx.antithetic else (1.0,)
        step = _chunk_size(num_classes, num_draw, mean.device)
        need_mean, need_factor, need_std = ctx.needs_input_grad[:3]
        # every voxel chunk of each gradient is written once below: no zero fill
        grad_mean = torch.empty_like(mean) if need_mean else None
        grad_factor = torch.empty_like(factor) if need_factor else None
        grad_std = torch.empty_like(std) if need_std else None
        minus_grad_out = grad_out.to(mean.dtype).neg()
        minus_ones = torch.full((1, num_draw, step), -1.0, dtype=mean.dtype, device=mean.device)
        for b, start, stop, z, index, w, m in _voxel_chunks(mean, factor, std, eps, eta, labels, weight, step):
            eps_t = eps[b].transpose(0, 1)  # (R, n)
            grad_z = grad_m = None
            for k, sign in enumerate(signs):
                logits = m + z if sign > 0 else m - z
                g = torch.softmax(logits, dim=0)
                g.scatter_add_(0, index, minus_ones[..., : stop - start])  # softmax - onehot(y)
                # times -grad * weight: (onehot(y) - softmax) * grad * weight, (C, n, v) * (n, v)
                g.mul_(minus_grad_out[b, k * num_draw : (k + 1) * num_draw, None] * w)
                if grad_mean is not None:
                    part = g.sum(dim=1)
                    grad_m = part if grad_m is None else grad_m.add_(part)
                grad_z = g if grad_z is None else grad_z.add_(g, alpha=sign)
            if grad_mean is not None:
                grad_mean[b, :, start:stop] = grad_m
            if grad_std is not None:
                grad_std[b, :, start:stop] = (grad_z * eta[b, :, :, start:stop].transpose(0, 1)).sum(dim=1)
            if grad_factor is not None:
                grad_factor[b, :, :, start:stop] = torch.matmul(eps_t, grad_z)  # (C, R, v)
        return grad_mean, grad_factor, grad_std, None, None, None, None, None


def _voxel_chunks(mean, factor, std, eps, eta, labels, weight, step: int):
    """Per batch item and chunk of ``step`` voxels: ``(b, start, stop, z, label index, weight, mean)``, with the
    centred samples ``z`` ``(C, n, v)``, the labels as a gather index ``(1, n, v)`` and the mean ``(C, 1, v)``."""
    num_draw, num_voxels = eps.shape[1], mean.shape[2]
    for b in range(mean.shape[0]):
        for start in range(0, num_voxels, step):
            stop = min(num_voxels, start + step)
            z = _centred(factor, std, eps, eta, b, start, stop)
            index = labels[b, start:stop].expand(1, num_draw, -1)
            yield b, start, stop, z, index, weight[b, start:stop], mean[b, :, None, start:stop]


def _centred(factor, std, eps, eta, b: int, start: int, stop: int) -> torch.Tensor:
    """``z = P @ eps + std * eta`` of batch item ``b`` on voxels ``start:stop``, as ``(C, n, v)``."""
    z = torch.matmul(eps[b], factor[b, :, :, start:stop])  # (n, R) @ (C, R, v) -> (C, n, v)
    return z.addcmul_(eta[b, :, :, start:stop].transpose(0, 1), std[b, :, None, start:stop])
