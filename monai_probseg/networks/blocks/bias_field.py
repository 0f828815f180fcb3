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
parameters, it adapts to each scan's own field.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch

from monai_probseg.utils import check_positive_int

__all__ = ["cosine_basis", "fit_log_bias"]


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
        intensity_mean: ``(C, ch)`` tissue means.
        intensity_log_var: ``(C, ch)`` tissue log-variances.
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
    mean, log_var = intensity_mean.to(dtype), intensity_log_var.to(dtype)
    spatial = tuple(x.shape[2:])
    m = mask.to(dtype)
    valid = (mean > 1e-3).to(dtype)  # (C, ch)
    w = mean.clamp_min(1e-3) ** 2 * torch.exp(-log_var) * valid
    a = torch.einsum("bl...,lc->bc...", r, w) * m  # (B, ch, *sp): the voxel's precision
    rhs_voxel = (
        a * torch.log(x.clamp_min(1e-6)) - torch.einsum("bl...,lc->bc...", r, w * torch.log(mean.clamp_min(1e-3))) * m
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
