# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""A Gaussian mixture over brain-voxel intensities, fitted per image by EM: the classic unsupervised tissue baseline.

Tissue classification by a mixture of Gaussians on intensities (e.g. Wells et al., IEEE TMI 1996; Zhang, Brady &
Smith, IEEE TMI 2001 without the MRF; Ashburner & Friston, NeuroImage 2005 without the atlas) is what unsupervised
anatomical-prior segmentation (Dalca et al., CVPR 2018) has to beat: the same per-label Gaussian likelihood, but no
prior over shapes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn

from monai_probseg.utils import check_positive_int

__all__ = ["IntensityMixtureSegmentation"]


class IntensityMixtureSegmentation(nn.Module):
    """Per-image Gaussian mixture over the non-zero (brain) voxels, its components named by their intensity order.

    For each image of the batch, ``len(label_order)`` Gaussian components (diagonal covariance over the channels)
    are fitted by expectation-maximisation to the voxels where any channel is non-zero (skull-stripped: air is
    exactly 0), starting from the intensity quantiles of ``order_channel``. The components are then sorted by their
    mean in ``order_channel`` and given the labels ``label_order`` (lowest mean first): ``(1, 2, 3)`` on a T1
    (CSF < GM < WM), ``(3, 2, 1)`` on a T2. Air voxels get label 0.

    ``forward(x)`` returns logits ``(B, C, *spatial)`` with ``C = num_classes``: the log posterior responsibilities
    of the components in the brain, and ``0`` for label 0 / ``-1e4`` for the others in air (and ``-1e4`` for label
    0 and unused labels in the brain), so ``argmax`` is the mixture's segmentation. It has no parameters and is a
    deterministic model of the package contract (every sample equals it).

    Args:
        num_classes: number of labels ``C`` of the output, background 0 included.
        label_order: the label of each component, in increasing order of its mean intensity in ``order_channel``.
        order_channel: the channel whose intensity orders the components.
        num_iterations: EM iterations.
        min_variance: lower bound of a component's variance (relative to the brain's intensity variance).
        tol: stop when the mean log-likelihood per voxel improves by less than this.

    Example::

        gmm = IntensityMixtureSegmentation(num_classes=4, label_order=(1, 2, 3))  # T1: CSF < GM < WM
        labels = gmm(t1).argmax(1)  # t1 (B, 1, H, W, D), air exactly 0
    """

    def __init__(
        self,
        num_classes: int = 4,
        label_order: Sequence[int] = (1, 2, 3),
        order_channel: int = 0,
        num_iterations: int = 100,
        min_variance: float = 1e-4,
        tol: float = 1e-6,
    ) -> None:
        super().__init__()
        self.num_classes = check_positive_int(num_classes, "num_classes", minimum=2)
        self.label_order = tuple(int(v) for v in label_order)
        if not self.label_order or len(set(self.label_order)) != len(self.label_order):
            raise ValueError(f"label_order must be distinct labels, got {tuple(label_order)}.")
        if min(self.label_order) < 1 or max(self.label_order) >= self.num_classes:
            raise ValueError(
                f"label_order must hold labels in [1, {self.num_classes - 1}] (0 is air), got {self.label_order}."
            )
        self.order_channel = int(order_channel)
        self.num_iterations = check_positive_int(num_iterations, "num_iterations")
        self.min_variance = float(min_variance)
        self.tol = float(tol)

    def fit(self, values: torch.Tensor) -> dict[str, torch.Tensor]:
        """Fit the mixture to brain voxels ``values`` ``(V, ch)`` by EM.

        Returns:
            ``{"weight": (K,), "mean": (K, ch), "var": (K, ch)}`` with the components sorted by their mean in
            ``order_channel`` (lowest first).
        """
        v = values.double()
        num, channels = v.shape
        k = len(self.label_order)
        if num < k:
            raise ValueError(f"the image has {num} brain voxel(s), expected at least {k} to fit {k} components.")
        if not 0 <= self.order_channel < channels:
            raise ValueError(f"order_channel {self.order_channel} is not a channel of a {channels}-channel image.")
        floor = self.min_variance * v.var(0).clamp_min(1e-12)
        order = v[:, self.order_channel].argsort()
        chunks = order.chunk(k)  # quantile initialisation along the ordering channel
        mean = torch.stack([v[c].mean(0) for c in chunks])
        var = torch.stack([v[c].var(0, unbiased=False) for c in chunks]).clamp_min(1e-12) + floor
        weight = torch.full((k,), 1.0 / k, dtype=v.dtype, device=v.device)
        previous = -math.inf
        for _ in range(self.num_iterations):
            log_p = self._log_joint(v, weight, mean, var)  # (V, K)
            log_norm = torch.logsumexp(log_p, 1, keepdim=True)
            resp = torch.exp(log_p - log_norm)
            nk = resp.sum(0).clamp_min(1e-10)
            weight = nk / num
            mean = (resp.T @ v) / nk[:, None]
            var = (resp.T @ (v * v)) / nk[:, None] - mean**2
            var = var.clamp_min(0.0) + floor
            current = float(log_norm.mean())
            if current - previous < self.tol:
                break
            previous = current
        idx = mean[:, self.order_channel].argsort()
        return {"weight": weight[idx], "mean": mean[idx], "var": var[idx]}

    @staticmethod
    def _log_joint(v: torch.Tensor, weight: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
        diff = v[:, None, :] - mean[None]
        log_n = -0.5 * (diff**2 / var[None] + torch.log(2 * math.pi * var[None])).sum(-1)
        return log_n + torch.log(weight)[None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes, *spatial)`` of the mixture fitted to each image (see the class docstring).

        Args:
            x: skull-stripped image ``(B, ch, *spatial)``, air exactly 0.
        """
        if not isinstance(x, torch.Tensor) or x.ndim < 3:
            raise ValueError(f"x must be (B, ch, *spatial), got {getattr(x, 'shape', type(x))}.")
        low = -1e4
        out = torch.full((x.shape[0], self.num_classes, *x.shape[2:]), low, dtype=torch.float32, device=x.device)
        for b in range(x.shape[0]):
            brain = (x[b] != 0).any(0)
            out[b, 0][~brain] = 0.0
            values = x[b][:, brain].T  # (V, ch)
            params = self.fit(values)
            log_p = self._log_joint(values.double(), params["weight"], params["mean"], params["var"])
            log_post = (log_p - torch.logsumexp(log_p, 1, keepdim=True)).float().clamp_min(low)
            for i, label in enumerate(self.label_order):
                out[b, label][brain] = log_post[:, i]
        return out
