# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""Losses of anatomical-prior segmentation (Dalca, Guttag & Sabuncu, CVPR 2018): the prior's VAE loss and the ELBO.

Dalca et al., "Anatomical Priors in Convolutional Networks for Unsupervised Biomedical Segmentation", CVPR 2018
(arXiv:1903.03148). Both losses take tensors (no network), so they serve any encoder/decoder that produces them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from monai.utils import LossReduction
from torch.nn.modules.loss import _Loss

from monai_probseg.distributions import gaussian_kl_divergence, gaussian_log_density

from .elbo import cross_entropy_map

__all__ = ["AnatomicalPriorVAELoss", "AnatomicalPriorELBOLoss", "label_log_likelihood", "latent_kl_divergence"]


def _check_beta(beta: float) -> float:
    if not (isinstance(beta, (int, float)) and not isinstance(beta, bool) and math.isfinite(beta) and beta >= 0):
        raise ValueError(f"beta must be a finite number >= 0, got {beta!r}.")
    return float(beta)


def _check_voxel_reduction(value: str) -> str:
    if value not in ("sum", "mean"):
        raise ValueError(f"reconstruction must be 'sum' (over voxels, the paper) or 'mean', got {value!r}.")
    return value


def _reduce(values: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == LossReduction.MEAN.value:
        return values.mean()
    if reduction == LossReduction.SUM.value:
        return values.sum()
    return values


def latent_kl_divergence(latent_mean: torch.Tensor, latent_log_var: torch.Tensor) -> torch.Tensor:
    """``KL(N(mu, diag(sigma^2)) || N(0, I))`` per batch item, summed over every latent channel and grid cell.

    ``sum (sigma^2 + mu^2 - 1 - log sigma^2) / 2``, evaluated by
    :py:func:`~monai_probseg.distributions.gaussian_kl_divergence` (log standard deviation ``log_var / 2``).

    Args:
        latent_mean: ``(B, L, *grid)`` (or ``(B, D)``) means.
        latent_log_var: log-variances, same shape.

    Returns:
        ``(B,)`` float32 (or float64 for float64 inputs).
    """
    if not isinstance(latent_mean, torch.Tensor) or latent_mean.ndim < 2:
        raise ValueError(f"latent_mean must be (B, L, ...), got {getattr(latent_mean, 'shape', type(latent_mean))}.")
    if not isinstance(latent_log_var, torch.Tensor) or latent_log_var.shape != latent_mean.shape:
        raise ValueError(
            f"latent_log_var must have the shape of latent_mean {tuple(latent_mean.shape)}, "
            f"got {getattr(latent_log_var, 'shape', type(latent_log_var))}."
        )
    zero = torch.zeros_like(latent_mean)
    return gaussian_kl_divergence(latent_mean, 0.5 * latent_log_var, zero, zero).flatten(1).sum(1)


def label_log_likelihood(
    image: torch.Tensor, intensity_mean: torch.Tensor, intensity_log_var: torch.Tensor
) -> torch.Tensor:
    """``log p(x_j | s_j = l) = sum_c log N(x_jc; mu_lc, sigma_lc^2)`` for every voxel ``j`` and label ``l``.

    Args:
        image: ``(B, ch, *spatial)`` intensities.
        intensity_mean: ``(C, ch)`` mean intensity of every label and channel, or ``(B, C, ch)``: one set per image
            (the per-image tissue Gaussians of unified segmentation).
        intensity_log_var: log-variances ``log sigma_lc^2``, the shape of ``intensity_mean``.

    Returns:
        ``(B, C, *spatial)`` log-likelihoods, in at least float32.
    """
    if not isinstance(image, torch.Tensor) or image.ndim < 3:
        raise ValueError(f"image must be (B, ch, *spatial), got {getattr(image, 'shape', type(image))}.")
    batch, channels = image.shape[:2]
    for name, t in (("intensity_mean", intensity_mean), ("intensity_log_var", intensity_log_var)):
        if (
            not isinstance(t, torch.Tensor)
            or t.ndim not in (2, 3)
            or t.shape[-1] != channels
            or (t.ndim == 3 and t.shape[0] != batch)
        ):
            raise ValueError(
                f"{name} must be (C, {channels}) (labels, image channels) or ({batch}, C, {channels}) (one set per "
                f"image) for an image of shape {tuple(image.shape)}, got {getattr(t, 'shape', type(t))}."
            )
    if intensity_mean.shape != intensity_log_var.shape:
        raise ValueError(
            f"intensity_mean {tuple(intensity_mean.shape)} and intensity_log_var "
            f"{tuple(intensity_log_var.shape)} differ."
        )
    params = intensity_mean.shape[-2:]
    view = (-1 if intensity_mean.ndim == 3 else 1, *params, *([1] * (image.ndim - 2)))  # (B or 1, C, ch, 1, ...)
    log_density = gaussian_log_density(
        image.unsqueeze(1), intensity_mean.reshape(view), intensity_log_var.reshape(view)
    )
    return log_density.sum(2)


class AnatomicalPriorVAELoss(_Loss):
    """Loss of the anatomical prior's VAE: categorical cross-entropy of the reconstruction + beta * KL to ``N(0, I)``.

    Dalca et al., CVPR 2018: the prior over label maps is a VAE trained by its negative ELBO,
    ``-E_{q(z|s)}[log p(s | z)] + KL(q(z | s) || N(0, I))`` with ``log p(s | z) = sum_j log softmax(logits)_{j, s_j}``
    (one reparameterised draw of ``z``); ``beta = 1`` is the ELBO (``beta != 1`` is the beta-VAE weighting).

    Args:
        beta: weight of the KL term.
        reconstruction: ``"sum"`` (cross-entropy summed over voxels: the ELBO) or ``"mean"`` (averaged over voxels;
            the KL is then divided by the number of voxels too, so the loss is the ELBO per voxel).
        reduction: ``"mean"`` or ``"sum"`` over the batch, or ``"none"`` for per-item values ``(B,)``.

    Example::

        loss_fn = AnatomicalPriorVAELoss()
        terms = loss_fn(**prior.reconstruct(labels), target=labels)
        terms["loss"].backward()
    """

    def __init__(
        self, beta: float = 1.0, reconstruction: str = "sum", reduction: LossReduction | str = LossReduction.MEAN
    ) -> None:
        super().__init__(reduction=LossReduction(reduction).value)
        self.beta = _check_beta(beta)
        self.reconstruction = _check_voxel_reduction(reconstruction)

    def forward(  # type: ignore[override]
        self, logits: torch.Tensor, target: torch.Tensor, latent_mean: torch.Tensor, latent_log_var: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """
        Args:
            logits: reconstruction logits ``(B, C, *spatial)``.
            target: the label map ``(B, 1, *spatial)`` (or ``(B, *spatial)``) with values in ``[0, C - 1]``, or
                one-hot ``(B, C, *spatial)``.
            latent_mean: ``(B, L, *grid)`` means of ``q(z | s)``.
            latent_log_var: ``(B, L, *grid)`` log-variances of ``q(z | s)``.

        Returns:
            dict with ``"loss"``, ``"reconstruction"`` (the cross-entropy term) and ``"kl"``, reduced as ``reduction``.
        """
        ce = cross_entropy_map(logits, target).flatten(1)
        kl = latent_kl_divergence(latent_mean, latent_log_var)
        if kl.shape[0] != ce.shape[0]:
            raise ValueError(f"latent_mean has batch size {kl.shape[0]}, logits {ce.shape[0]}.")
        if self.reconstruction == "sum":
            rec, kl_term = ce.sum(1), kl
        else:
            rec, kl_term = ce.mean(1), kl / ce.shape[1]
        per_item = rec + self.beta * kl_term
        return {
            "loss": _reduce(per_item, self.reduction),
            "reconstruction": _reduce(rec, self.reduction),
            "kl": _reduce(kl, self.reduction),
        }


class AnatomicalPriorELBOLoss(_Loss):
    """Negative ELBO of anatomical-prior segmentation, unsupervised (label marginalised) or supervised.

    Dalca et al., "Anatomical Priors in Convolutional Networks for Unsupervised Biomedical Segmentation", CVPR 2018.
    With ``q(z | x)`` the image encoder, ``p(s_j = l | z) = softmax(logits)_{j, l}`` the prior's frozen decoder and
    ``p(x_j | s_j = l) = prod_c N(x_jc; mu_lc, sigma_lc^2)`` the intensity likelihood:

    - unsupervised (the paper's eq. 14, the label marginalised out voxel by voxel)::

        L = KL(q(z | x) || N(0, I)) - E_q[ sum_j log sum_l p(s_j = l | z) N(x_j; mu_l, sigma_l^2) ]

      evaluated in log space, ``logsumexp_l(log_softmax(logits)_l + log N(x_j; mu_l, sigma_l^2))``, in float32
      (or float64 for float64 inputs), so that neither a near-zero probability nor a far-off intensity underflows;
    - supervised (``supervised=True``, the label map ``s`` known)::

        L = KL(q(z | x) || N(0, I)) - E_q[ sum_j log N(x_j; mu_{s_j}, sigma_{s_j}^2) + log p(s_j | z) ]

    The expectation over ``q(z | x)`` is the Monte Carlo average over the ``M`` decoded draws in ``logits``
    ``(B, M, C, *spatial)`` (``(B, C, *spatial)`` is one draw). ``beta`` weights the KL (1 in the paper).

    Called as ``loss_fn(**net(x))`` (``AnatomicalPriorSegmentation`` in train mode returns exactly these arguments)
    or with the tensors directly.

    Args:
        beta: weight of the KL term (1: the ELBO).
        supervised: use the label map (``target``) in the likelihood instead of marginalising it.
        reconstruction: ``"sum"`` over voxels (the ELBO) or ``"mean"`` (the negative log-likelihood and the KL both
            divided by the number of voxels: the ELBO per voxel, the same optimum).
        reduction: ``"mean"`` or ``"sum"`` over the batch, or ``"none"`` for per-item values ``(B,)``.

    Example::

        loss_fn = AnatomicalPriorELBOLoss()
        terms = loss_fn(**net(image))  # net: AnatomicalPriorSegmentation in train mode
        terms["loss"].backward()
    """

    def __init__(
        self,
        beta: float = 1.0,
        supervised: bool = False,
        reconstruction: str = "sum",
        reduction: LossReduction | str = LossReduction.MEAN,
    ) -> None:
        super().__init__(reduction=LossReduction(reduction).value)
        self.beta = _check_beta(beta)
        self.supervised = bool(supervised)
        self.reconstruction = _check_voxel_reduction(reconstruction)

    def forward(  # type: ignore[override]
        self,
        logits: torch.Tensor,
        image: torch.Tensor,
        latent_mean: torch.Tensor,
        latent_log_var: torch.Tensor,
        intensity_mean: torch.Tensor,
        intensity_log_var: torch.Tensor,
        target: torch.Tensor | None = None,
        log_bias: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """
        Args:
            logits: prior-decoder logits of ``M`` draws of ``q(z | x)``, ``(B, M, C, *spatial)`` or ``(B, C,
                *spatial)`` for one draw.
            image: ``(B, ch, *spatial)`` intensities.
            latent_mean: ``(B, L, *grid)`` means of ``q(z | x)``.
            latent_log_var: ``(B, L, *grid)`` log-variances of ``q(z | x)``.
            intensity_mean: ``(C, ch)`` mean intensity per label and channel.
            intensity_log_var: ``(C, ch)`` intensity log-variances per label and channel.
            target: label map ``(B, 1, *spatial)`` or ``(B, *spatial)`` in ``[0, C - 1]``; needed when
                ``supervised``, ignored otherwise.
            log_bias: optional ``(B, ch, *spatial)`` log of a multiplicative bias field ``b``, with ``image`` the
                corrected ``x / b``: the likelihood of the acquired ``x`` is then ``N(x; b mu, b^2 sigma^2) =
                N(x / b; mu, sigma^2) / b``, so ``sum_c log b_c`` is subtracted from every voxel's log-likelihood
                (the Jacobian; without it a gain that shrinks ``x / b`` would raise the likelihood for free).

        Returns:
            dict with ``"loss"``, ``"nll"`` (the negative expected log-likelihood term) and ``"kl"``, reduced as
            ``reduction``.
        """
        if not isinstance(image, torch.Tensor) or image.ndim < 3:
            raise ValueError(f"image must be (B, ch, *spatial), got {getattr(image, 'shape', type(image))}.")
        spatial = tuple(image.shape[2:])
        if not isinstance(logits, torch.Tensor):
            raise TypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}.")
        if logits.ndim == image.ndim:
            logits = logits.unsqueeze(1)
        if logits.ndim != image.ndim + 1 or logits.shape[0] != image.shape[0] or tuple(logits.shape[3:]) != spatial:
            raise ValueError(
                f"logits must be (B, M, C, *spatial) or (B, C, *spatial) with B={image.shape[0]} and spatial "
                f"{spatial} as the image {tuple(image.shape)}, got {tuple(logits.shape)}."
            )
        num_classes = logits.shape[2]
        if num_classes < 2 or intensity_mean.ndim != 2 or intensity_mean.shape[0] != num_classes:
            raise ValueError(
                f"logits have {num_classes} labels, intensity_mean has shape {tuple(intensity_mean.shape)}: expected "
                f"({num_classes}, {image.shape[1]}) with at least 2 labels."
            )
        dtype = torch.promote_types(logits.dtype, torch.float32)
        log_lik = label_log_likelihood(image, intensity_mean, intensity_log_var).to(dtype)  # (B, C, *spatial)
        log_prior = F.log_softmax(logits.to(dtype), dim=2)  # (B, M, C, *spatial)
        if self.supervised:
            if target is None:
                raise ValueError("the supervised ELBO needs the label map: loss_fn(..., target=labels).")
            labels = target.unsqueeze(1) if target.ndim == image.ndim - 1 else target
            if labels.ndim != image.ndim or labels.shape[1] != 1 or tuple(labels.shape[2:]) != spatial:
                raise ValueError(
                    f"target must be a label map (B, 1, *{spatial}) to match the image {tuple(image.shape)}, "
                    f"got {tuple(target.shape)}."
                )
            labels = labels.long()
            if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
                raise ValueError(
                    f"target label values must lie in [0, {num_classes - 1}], got [{int(labels.min())}, "
                    f"{int(labels.max())}]."
                )
            log_joint = log_lik.gather(1, labels).unsqueeze(1) + log_prior.gather(
                2, labels.unsqueeze(1).expand(-1, log_prior.shape[1], *labels.shape[1:])
            )
            log_voxel = log_joint.squeeze(2)  # (B, M, *spatial)
        else:
            log_voxel = torch.logsumexp(log_prior + log_lik.unsqueeze(1), dim=2)  # eq. 14, (B, M, *spatial)
        nll = -log_voxel.flatten(2).sum(2).mean(1)  # sum over voxels, Monte Carlo mean over draws: (B,)
        if log_bias is not None:
            if not isinstance(log_bias, torch.Tensor) or tuple(log_bias.shape) != tuple(image.shape):
                raise ValueError(
                    f"log_bias must have the image's shape {tuple(image.shape)}, "
                    f"got {getattr(log_bias, 'shape', type(log_bias))}."
                )
            nll = nll + log_bias.to(dtype).flatten(1).sum(1)  # the Jacobian of x = b * (x / b)
        kl = latent_kl_divergence(latent_mean, latent_log_var)
        if kl.shape[0] != nll.shape[0]:
            raise ValueError(f"latent_mean has batch size {kl.shape[0]}, image {nll.shape[0]}.")
        kl = kl.to(dtype)
        if self.reconstruction == "sum":
            per_item = nll + self.beta * kl
        else:
            num_voxels = math.prod(spatial)
            nll_mean = nll / num_voxels
            per_item = nll_mean + self.beta * kl / num_voxels
            nll = nll_mean
        return {
            "loss": _reduce(per_item, self.reduction),
            "nll": _reduce(nll, self.reduction),
            "kl": _reduce(kl, self.reduction),
        }
