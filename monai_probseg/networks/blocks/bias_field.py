# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""A smooth multiplicative intensity bias field on a low-order cosine basis, fitted to tissue posteriors.

MR images carry a slowly varying multiplicative gain (the "bias field" of coil sensitivity). Classic unified
segmentation models it inside the intensity likelihood as ``x_j = b_j * x'_j`` with ``log b`` a linear combination
of the lowest-frequency 3D discrete cosine transform (DCT) basis functions (Ashburner & Friston, "Unified
segmentation", NeuroImage 2005), so that one Gaussian per tissue fits the whole image. :py:func:`fit_log_bias` is
its bias step: given the tissue posteriors of every voxel, the weighted least-squares log-gain in the span of the
basis, exactly smooth by construction (no more than ``order`` half-cycles along any axis), restricted to a mask
(the brain: outside it the gain is 1) with zero mean inside it, so that the field never rescales the image as a
whole (the tissue means keep that role). Alternated with the posteriors it is an EM for the field; having no
parameters, it adapts to each scan's own field. :py:func:`fit_tissue_gaussians` is the intensity step of the same
EM: every scan's own tissue means and variances (a MAP estimate around the model's learnt ones), since the tissue
intensities of real scans differ from one scan to the next even after intensity normalisation.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch

from monai_probseg.utils import check_positive_int

__all__ = ["cosine_basis", "fit_log_bias", "fit_tissue_gaussians"]


def cosine_basis(spatial_size: Sequence[int], order: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """The separable DCT-II basis ``prod_a cos(pi k_a (i_a + 1/2) / N_a)`` for every ``0 <= k_a <= order``.

    The constant function (all ``k_a = 0``) is left out. Functions are ordered as ``itertools.product`` of the
    per-axis frequencies.

    Args:
        spatial_size: ``(N_1, .., N_d)``.
        order: the highest frequency per axis (``order`` half-cycles over the axis), >= 1.
        device: device of the result.
        dtype: floating point type of the result.

    Returns:
        ``((order + 1) ** d - 1, *spatial_size)``.

    Example::

        cosine_basis((4, 6), 1).shape  # (3, 4, 6): cos along axis 1, along axis 0, and their product
    """
    order = check_positive_int(order, "order")
    axes = []
    for n in spatial_size:
        i = torch.arange(int(n), device=device, dtype=torch.float64)
        k = torch.arange(order + 1, device=device, dtype=torch.float64)
        axes.append(torch.cos(math.pi * k[:, None] * (i[None] + 0.5) / int(n)))  # (order + 1, N_a)
    functions = []
    for ks in itertools.product(range(order + 1), repeat=len(axes)):
        if not any(ks):
            continue
        f = axes[0][ks[0]]
        for a in range(1, len(axes)):
            f = f.unsqueeze(-1) * axes[a][ks[a]].reshape(*([1] * a), -1)
        functions.append(f)
    return torch.stack(functions).to(dtype)


def _per_image(params: torch.Tensor, image: torch.Tensor, name: str) -> torch.Tensor:
    """Intensity parameters ``(C, ch)`` or ``(B, C, ch)`` as ``(B, C, ch)`` in the image's (at least float32) dtype."""
    batch, channels = image.shape[:2]
    if params.ndim not in (2, 3) or params.shape[-1] != channels or (params.ndim == 3 and params.shape[0] != batch):
        raise ValueError(
            f"{name} must be (C, {channels}) or ({batch}, C, {channels}) for an image of shape {tuple(image.shape)}, "
            f"got {tuple(params.shape)}."
        )
    params = params.to(image.dtype)
    return params.expand(batch, -1, -1) if params.ndim == 2 else params


def fit_log_bias(
    image: torch.Tensor,
    responsibilities: torch.Tensor,
    intensity_mean: torch.Tensor,
    intensity_log_var: torch.Tensor,
    mask: torch.Tensor,
    order: int = 3,
    bound: float = 1.0,
    ridge: float = 1e-3,
) -> torch.Tensor:
    """The smooth log-gain ``log b`` ``(B, ch, *spatial)`` that best explains ``image`` given tissue posteriors.

    The bias step of unified segmentation (Ashburner & Friston 2005), in the log domain: with ``r_jl`` the
    posterior of label ``l`` at voxel ``j`` and ``N(mu_lc, sigma_lc^2)`` the tissue intensities, ``log x_jc - log
    mu_lc`` is (by the delta method) ``log b_jc`` plus noise of precision ``w_lc = mu_lc^2 / sigma_lc^2``, so
    ``log b_c = sum_k a_k phi_k`` (the constant and :py:func:`cosine_basis` functions up to ``order``) minimises
    ``sum_j m_j sum_l r_jl w_lc (log x_jc - log mu_lc - log b_jc)^2`` (weighted least squares, a small ridge of
    ``ridge`` times the mean diagonal); labels whose mean is below 1e-3 (air) carry no weight. The field is then
    softly bounded to ``|log b| <= bound``, centred to mean 0 over ``mask`` (the global scale is the tissue means'
    to set) and set to 0 outside it. Computed in float32 at least; alternate it with the posteriors for an EM.

    Args:
        image: ``(B, ch, *spatial)`` intensities (> 0 inside ``mask``).
        responsibilities: ``(B, C, *spatial)`` label posteriors (summing to 1 over ``C``).
        intensity_mean: ``(C, ch)`` tissue means, or ``(B, C, ch)``: one set per image.
        intensity_log_var: tissue log-variances, the shape of ``intensity_mean``.
        mask: ``(B, 1, *spatial)`` boolean, where the field applies.
        order: highest DCT frequency per axis.
        bound: the largest ``|log b|`` (a soft tanh bound).
        ridge: ridge regularisation, relative to the mean diagonal of the normal equations.

    Example::

        log_b = fit_log_bias(x, posteriors, means, log_vars, x > 0, order=3)
        corrected = x * torch.exp(-log_b)
    """
    if image.ndim not in (4, 5) or responsibilities.shape[0] != image.shape[0]:
        raise ValueError(
            f"image must be (B, ch, *spatial) 2D/3D and responsibilities (B, C, *spatial), got {tuple(image.shape)} "
            f"and {tuple(responsibilities.shape)}."
        )
    dtype = torch.promote_types(image.dtype, torch.float32)
    x, r = image.to(dtype), responsibilities.to(dtype)
    mean = _per_image(intensity_mean, x, "intensity_mean")
    log_var = _per_image(intensity_log_var, x, "intensity_log_var")
    spatial = tuple(x.shape[2:])
    m = mask.to(dtype)
    valid = (mean > 1e-3).to(dtype)  # (B, C, ch)
    w = mean.clamp_min(1e-3) ** 2 * torch.exp(-log_var) * valid
    a = torch.einsum("bl...,blc->bc...", r, w) * m  # (B, ch, *sp): the voxel's precision
    rhs_voxel = (
        a * torch.log(x.clamp_min(1e-6)) - torch.einsum("bl...,blc->bc...", r, w * torch.log(mean.clamp_min(1e-3))) * m
    )
    phi = torch.cat(
        [torch.ones(1, *spatial, dtype=dtype, device=x.device), cosine_basis(spatial, order, x.device, dtype)]
    )
    flat = phi.flatten(1)  # (K, V)
    gram = (a.flatten(2).unsqueeze(2) * flat) @ flat.T  # (B, ch, K, K), no (K, K, V) intermediate
    rhs = torch.einsum("bcv,kv->bck", rhs_voxel.flatten(2), flat)
    scale = gram.diagonal(dim1=-2, dim2=-1).mean(-1).clamp_min(1e-12)[..., None, None]
    eye = torch.eye(flat.shape[0], dtype=dtype, device=x.device)
    coef = torch.linalg.solve(gram + ridge * scale * eye, rhs.unsqueeze(-1)).squeeze(-1)  # (B, ch, K)
    field = torch.einsum("bck,kv->bcv", coef, flat).reshape(*x.shape)
    field = bound * torch.tanh(field / bound)
    dims = tuple(range(2, x.ndim))
    centre = (field * m).sum(dims) / m.sum(dims).clamp_min(1.0)
    return (field - centre.reshape(*centre.shape, *([1] * len(spatial)))) * m


def fit_tissue_gaussians(
    image: torch.Tensor,
    responsibilities: torch.Tensor,
    mask: torch.Tensor,
    prior_mean: torch.Tensor,
    prior_log_var: torch.Tensor,
    prior_count: float = 10.0,
    log_var_bounds: Sequence[float] = (-9.0, 2.0),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image's own tissue Gaussians: the responsibility-weighted means and variances of its voxels.

    The intensity step of unified segmentation (Ashburner & Friston 2005), which fits the tissue intensities to
    every scan instead of assuming one set for all: within ``mask``, with ``r_jl`` the posterior of label ``l`` at
    voxel ``j``, ``n_l = sum_j r_jl``,

    ``mu_lc = (sum_j r_jl x_jc + n0 m_lc) / (n_l + n0)`` and
    ``sigma_lc^2 = (sum_j r_jl (x_jc - mu_lc)^2 + n0 v_lc) / (n_l + n0)``,

    the maximum a posteriori estimate with ``n0 = prior_count`` pseudo-voxels at the prior's mean ``m`` and
    variance ``v`` (a label that an image lacks keeps the prior's values instead of 0 / 0). Labels whose prior mean
    is below 1e-3 (the air of a skull-stripped image, exactly 0) keep the prior. The log-variances are clamped to
    ``log_var_bounds``. Computed in float32 at least, without gradient to ``image``; alternate it with the
    posteriors (and :py:func:`fit_log_bias`) for an EM.

    Args:
        image: ``(B, ch, *spatial)`` intensities (bias-corrected).
        responsibilities: ``(B, C, *spatial)`` label posteriors.
        mask: ``(B, 1, *spatial)`` boolean, the voxels that count (the brain).
        prior_mean: ``(C, ch)`` or ``(B, C, ch)`` prior means (the model's learnt tissue means).
        prior_log_var: prior log-variances, the shape of ``prior_mean``.
        prior_count: ``n0 >= 0``, the prior's weight in voxels.
        log_var_bounds: ``(low, high)`` of the fitted log-variances.

    Returns:
        ``(mean, log_var)``, each ``(B, C, ch)``.

    Example::

        mean, log_var = fit_tissue_gaussians(x, posteriors, x > 0, net.intensity_mean, net.intensity_log_var)
        log_lik = label_log_likelihood(x, mean, log_var)  # (B, C, *spatial) with each image's own Gaussians
    """
    if image.ndim not in (4, 5) or responsibilities.ndim != image.ndim or responsibilities.shape[0] != image.shape[0]:
        raise ValueError(
            f"image must be (B, ch, *spatial) 2D/3D and responsibilities (B, C, *spatial), got {tuple(image.shape)} "
            f"and {tuple(responsibilities.shape)}."
        )
    if not (math.isfinite(prior_count) and prior_count >= 0):
        raise ValueError(f"prior_count must be a finite number >= 0, got {prior_count!r}.")
    dtype = torch.promote_types(image.dtype, torch.float32)
    x = image.detach().to(dtype)
    r = responsibilities.detach().to(dtype) * mask.to(dtype)
    m0 = _per_image(prior_mean.detach(), x, "prior_mean")
    v0 = torch.exp(_per_image(prior_log_var.detach(), x, "prior_log_var"))
    if m0.shape[1] != r.shape[1]:
        raise ValueError(f"responsibilities have {r.shape[1]} labels, prior_mean {tuple(prior_mean.shape)}.")
    count = r.flatten(2).sum(2).unsqueeze(-1)  # (B, C, 1)
    first = torch.einsum("bl...,bc...->blc", r, x)
    second = torch.einsum("bl...,bc...->blc", r, x * x)
    mean = (first + prior_count * m0) / (count + prior_count).clamp_min(1e-12)
    # sum_j r (x - mu)^2 = second - 2 mu first + n mu^2
    scatter = (second - 2 * mean * first + count * mean * mean).clamp_min(0.0)
    var = (scatter + prior_count * v0) / (count + prior_count).clamp_min(1e-12)
    lo, hi = (float(b) for b in log_var_bounds)
    log_var = torch.log(var.clamp_min(1e-30)).clamp(lo, hi)
    keep = m0 <= 1e-3  # air: the prior's values
    no_data = (count + prior_count) <= 1e-12  # no voxel and no prior weight: the prior's values too
    mean = torch.where(keep | no_data, m0, mean)
    log_var = torch.where(keep | no_data, torch.log(v0), log_var)
    return mean, log_var
