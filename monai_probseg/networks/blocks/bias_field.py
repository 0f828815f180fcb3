# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""A smooth multiplicative intensity bias field predicted from image features (a low-order cosine basis).

MR images carry a slowly varying multiplicative gain (the "bias field" of coil sensitivity). Classic unified
segmentation models it inside the intensity likelihood as ``x_j = b_j * x'_j`` with ``log b`` a linear combination
of the lowest-frequency 3D discrete cosine transform (DCT) basis functions (Ashburner & Friston, "Unified
segmentation", NeuroImage 2005), so that one Gaussian per tissue fits the whole image. :py:class:`SmoothBiasField`
gives a network that field: the coefficients come from globally pooled features of an encoder (amortised, one
pass), the field is exactly smooth by construction (no more than ``order`` half-cycles along any axis), and it is
restricted to a mask (the brain: outside it the gain is 1) with zero mean inside it, so that the field never
rescales the image as a whole (the tissue means keep that role).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
import torch.nn as nn

from monai_probseg.utils import check_positive_int, check_spatial_dims

__all__ = ["SmoothBiasField", "cosine_basis"]


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


class SmoothBiasField(nn.Module):
    """``log b`` ``(B, channels, *spatial)``: a smooth log-gain per image channel, from pooled encoder features.

    ``log b = bound * tanh(sum_k c_k phi_k / bound)`` with ``phi_k`` the :py:func:`cosine_basis` of the image's
    size and ``c = W mean(features) + w_0`` (one linear layer on the features averaged over space, zero-initialised
    so that training starts from no bias), then masked (0 outside ``mask``) and centred to mean 0 over ``mask``
    (per image and channel). The corrected image is ``x * exp(-log b)``; a likelihood written on it must add the
    Jacobian ``-sum_c log b_c`` per voxel (:py:class:`~monai_probseg.losses.AnatomicalPriorELBOLoss` does, given
    ``log_bias``).

    Args:
        spatial_dims: 2 or 3.
        in_features: channels of the features.
        channels: image channels (one field each).
        order: highest DCT frequency per axis (3: ``4^d - 1`` coefficients per channel).
        bound: the largest ``|log b|`` (a soft tanh bound; 1 allows gains from 0.37 to 2.7).

    Example::

        field = SmoothBiasField(3, in_features=32, channels=1, order=3)
        log_bias = field(features, spatial_size=image.shape[2:], mask=image > 0)  # (B, 1, *spatial)
    """

    def __init__(self, spatial_dims: int, in_features: int, channels: int, order: int = 3, bound: float = 1.0):
        super().__init__()
        self.spatial_dims = check_spatial_dims(spatial_dims)
        self.channels = check_positive_int(channels, "channels")
        self.order = check_positive_int(order, "order")
        if not (math.isfinite(bound) and bound > 0):
            raise ValueError(f"bound must be a finite number > 0, got {bound!r}.")
        self.bound = float(bound)
        self.num_functions = (self.order + 1) ** self.spatial_dims - 1
        self.coefficients = nn.Linear(check_positive_int(in_features, "in_features"), channels * self.num_functions)
        nn.init.zeros_(self.coefficients.weight)
        nn.init.zeros_(self.coefficients.bias)
        self._basis: tuple[tuple, torch.Tensor] | None = None

    def basis(self, spatial_size: Sequence[int], like: torch.Tensor) -> torch.Tensor:
        """The (cached) :py:func:`cosine_basis` ``(K, *spatial_size)`` on ``like``'s device and type."""
        key = (tuple(int(s) for s in spatial_size), like.device, like.dtype)
        if self._basis is None or self._basis[0] != key:
            self._basis = (key, cosine_basis(key[0], self.order, like.device, like.dtype))
        return self._basis[1]

    def forward(self, features: torch.Tensor, spatial_size: Sequence[int], mask: torch.Tensor) -> torch.Tensor:
        """
        Args:
            features: ``(B, in_features, *grid)`` encoder features (any grid).
            spatial_size: the image's spatial size.
            mask: ``(B, 1, *spatial_size)`` boolean, where the field applies (and is centred).
        """
        if len(spatial_size) != self.spatial_dims:
            raise ValueError(f"spatial_size must have {self.spatial_dims} entries, got {tuple(spatial_size)}.")
        batch = features.shape[0]
        coef = self.coefficients(features.flatten(2).mean(2)).float().reshape(batch, self.channels, -1)
        phi = self.basis(spatial_size, coef)
        field = torch.einsum("bck,k...->bc...", coef, phi)
        field = self.bound * torch.tanh(field / self.bound)
        weight = mask.to(field.dtype)
        count = weight.flatten(2).sum(2).clamp_min(1.0)
        centre = (field * weight).flatten(2).sum(2) / count  # (B, C)
        return (field - centre.reshape(*centre.shape, *([1] * self.spatial_dims))) * weight
