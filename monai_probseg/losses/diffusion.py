# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""Denoising loss of diffusion models: mean squared error to the noise (or the velocity)."""

from __future__ import annotations

import torch
from monai.utils import LossReduction
from torch.nn.modules.loss import _Loss

__all__ = ["DiffusionLoss"]


class DiffusionLoss(_Loss):
    """Mean squared error between the denoiser's output and its target, ``|| eps - eps_theta(x_t, t) ||^2``.

    With the noise ``epsilon`` as target this is the simplified objective ``L_simple`` of Ho et al.
    ("Denoising Diffusion Probabilistic Models", NeurIPS 2020, eq. 14), which Wolleb et al. ("Diffusion Models for
    Implicit Image Segmentation Ensembles", MIDL 2022) train the segmentation model with; with the velocity ``v``
    as target it is the v-prediction loss. The target comes from
    :py:class:`monai_probseg.engines.DiffusionPrepareBatch`, which also chooses between the two.

    The squared error is averaged over channels and voxels of each item, then reduced over the batch.

    Args:
        reduction: ``"mean"`` (default) or ``"sum"`` over the batch, or ``"none"`` for one value per item ``(B,)``.

    Example::

        loss = DiffusionLoss()
        value = loss(net(image, noisy_seg=x_t, timesteps=t), noise)
    """

    def __init__(self, reduction: LossReduction | str = LossReduction.MEAN) -> None:
        super().__init__(reduction=LossReduction(reduction).value)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """
        Args:
            input: the denoiser's prediction ``(B, ch, *spatial)``.
            target: the noise (or velocity) ``(B, ch, *spatial)``, same shape.
        """
        if not isinstance(input, torch.Tensor):
            raise TypeError(
                f"input must be the denoiser's prediction tensor, got {type(input).__name__}; call the network with "
                "noisy_seg and timesteps (DiffusionPrepareBatch)."
            )
        if input.shape != target.shape:
            raise ValueError(
                f"input (prediction) and target (noise) must have the same shape, got {tuple(input.shape)} and "
                f"{tuple(target.shape)}."
            )
        per_item = (input.float() - target.float()).pow(2).reshape(input.shape[0], -1).mean(dim=1)
        if self.reduction == LossReduction.MEAN.value:
            return per_item.mean()
        if self.reduction == LossReduction.SUM.value:
            return per_item.sum()
        return per_item
