# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""Kullback-Leibler divergence between diagonal (axis-aligned) Gaussians, as in the Probabilistic U-Net's ELBO."""

from __future__ import annotations

import torch
from monai.utils import LossReduction
from torch.nn.modules.loss import _Loss

from monai_probseg.distributions import gaussian_kl_divergence
from monai_probseg.utils import check_positive_int, make_generator

# gaussian_kl_divergence lives in monai_probseg.distributions (the Probabilistic U-Net uses it too)
__all__ = ["gaussian_kl_divergence", "KLDivergenceLoss"]


def _check_gaussian_params(mean_q, log_sigma_q, mean_p, log_sigma_p) -> None:
    names = ("mean_q", "log_sigma_q", "mean_p", "log_sigma_p")
    tensors = (mean_q, log_sigma_q, mean_p, log_sigma_p)
    for name, t in zip(names, tensors):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}.")
        if t.dim() < 2:
            raise ValueError(f"{name} must have shape (B, D, ...), got {tuple(t.shape)}.")
    shapes = {name: tuple(t.shape) for name, t in zip(names, tensors)}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"the four Gaussian parameters must have the same shape (B, D, ...), got {shapes}.")


class KLDivergenceLoss(_Loss):
    """``KL(q || p)`` between two diagonal Gaussians per batch item, summed over the latent dimensions.

    Used for the KL term of the Probabilistic U-Net's ELBO, between the posterior ``q(z|x,y)`` and the prior
    ``p(z|x)`` (Kohl et al., "A Probabilistic U-Net for Segmentation of Ambiguous Images", NeurIPS 2018).

    With ``analytic=True`` (the reference) the closed form is used. With ``analytic=False`` the KL is
    estimated by Monte Carlo, ``mean_s [log q(z_s) - log p(z_s)]`` with reparameterised ``z_s = mean_q +
    sigma_q * eps_s`` (``num_mc_samples`` draws, differentiable in all parameters); the estimate is unbiased
    and equals the analytic value on average.

    Both forms use ratios of standard deviations written as exponentials of differences of log sigmas (see
    :py:func:`~monai_probseg.distributions.gaussian_kl_divergence`), so they stay finite and accurate in float32
    for log standard deviations up to +-80 (``exp(-2 log_sigma)`` alone overflows beyond +-44).

    Args:
        reduction: ``"mean"`` (over the batch), ``"sum"`` or ``"none"`` (per batch item, shape ``(B,)``).
        analytic: use the closed form (True) or the Monte Carlo estimate (False).
        num_mc_samples: number of Monte Carlo draws per batch item when ``analytic=False``.

    Example::

        loss = KLDivergenceLoss()
        kl = loss(out["posterior_mean"], out["posterior_log_sigma"], out["prior_mean"], out["prior_log_sigma"])
    """

    def __init__(
        self, reduction: LossReduction | str = LossReduction.MEAN, analytic: bool = True, num_mc_samples: int = 1
    ) -> None:
        super().__init__(reduction=LossReduction(reduction).value)
        self.analytic = bool(analytic)
        self.num_mc_samples = check_positive_int(num_mc_samples, "num_mc_samples")

    def forward(
        self,
        mean_q: torch.Tensor,
        log_sigma_q: torch.Tensor,
        mean_p: torch.Tensor,
        log_sigma_p: torch.Tensor,
        generator: int | torch.Generator | None = None,
    ) -> torch.Tensor:
        """
        Args:
            mean_q: means of q, ``(B, D, ...)``.
            log_sigma_q: log standard deviations of q, same shape.
            mean_p: means of p, same shape.
            log_sigma_p: log standard deviations of p, same shape.
            generator: seed or generator of the Monte Carlo draws (``analytic=False`` only).

        Returns:
            the KL summed over all non-batch axes, reduced over the batch as ``reduction`` says.
        """
        _check_gaussian_params(mean_q, log_sigma_q, mean_p, log_sigma_p)
        if self.analytic:
            kl = gaussian_kl_divergence(mean_q, log_sigma_q, mean_p, log_sigma_p).flatten(1).sum(1)
        else:
            gen = make_generator(generator)  # drawn on the generator's device (CPU for a seed): same on CPU and GPU
            shape = (self.num_mc_samples, *mean_q.shape)
            eps = torch.randn(shape, generator=gen, device=gen.device if gen is not None else "cpu")
            eps = eps.to(device=mean_q.device, dtype=mean_q.dtype)
            # log N(z; m, s) = -log s - (z - m)^2 / (2 s^2) - log(2 pi) / 2; the constants cancel. With the
            # reparameterised z = mean_q + sigma_q * eps, (z - mean_p) / sigma_p is written with exp of differences
            # of log sigmas, so that it stays finite when sigma_q and sigma_p are both tiny or both huge.
            z_p = (mean_q - mean_p) * torch.exp(-log_sigma_p) + torch.exp(log_sigma_q - log_sigma_p) * eps
            log_q = -log_sigma_q - 0.5 * eps**2
            log_p = -log_sigma_p - 0.5 * z_p**2
            kl = (log_q - log_p).flatten(2).sum(2).mean(0)
        if self.reduction == LossReduction.MEAN.value:
            return kl.mean()
        if self.reduction == LossReduction.SUM.value:
            return kl.sum()
        return kl
