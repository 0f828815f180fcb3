# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""The feature backbone of the models whose heads read full-resolution features (SSN, mixture of experts)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.networks.nets import UNet

from monai_probseg.utils import check_positive_int

__all__ = ["backbone_features", "feature_backbone"]


def feature_backbone(
    spatial_dims: int,
    in_channels: int,
    backbone: nn.Module | None = None,
    backbone_channels: int | None = None,
    channels: Sequence[int] = (32, 64, 128, 256),
    strides: Sequence[int] = (2, 2, 2),
    num_res_units: int = 2,
) -> tuple[nn.Module, int]:
    """A user's backbone with its number of output feature maps, or a MONAI ``UNet`` emitting ``backbone_channels``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        backbone: any module mapping ``(B, in_channels, *spatial)`` to ``(B, backbone_channels, *spatial)``
            features; ``None`` builds a MONAI ``UNet(spatial_dims, in_channels, backbone_channels, channels,
            strides, num_res_units=num_res_units)``.
        backbone_channels: number of feature maps the backbone outputs (32 by default for the UNet; required with a
            custom backbone).
        channels: UNet channels per level.
        strides: UNet strides.
        num_res_units: UNet residual units per block.

    Returns:
        ``(backbone, backbone_channels)``.

    Raises:
        TypeError: ``backbone`` is not a module.
        ValueError: a custom backbone without ``backbone_channels``.

    Example::

        net, features = feature_backbone(3, 4)  # a MONAI UNet with 32 output feature maps
    """
    if backbone is None:
        backbone_channels = 32 if backbone_channels is None else backbone_channels
        backbone = UNet(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            out_channels=check_positive_int(backbone_channels, "backbone_channels"),
            channels=channels,
            strides=strides,
            num_res_units=num_res_units,
        )
    elif not isinstance(backbone, nn.Module):
        raise TypeError(f"backbone must be a torch.nn.Module or None, got {type(backbone).__name__}.")
    elif backbone_channels is None:
        raise ValueError(
            "backbone_channels is required with a custom backbone: the number of feature maps it outputs "
            "(e.g. the out_channels the MONAI network was built with)."
        )
    return backbone, check_positive_int(backbone_channels, "backbone_channels")


def backbone_features(
    backbone: nn.Module, x: torch.Tensor, spatial_dims: int, in_channels: int, backbone_channels: int
) -> torch.Tensor:
    """Run ``backbone`` on ``x`` and check that it gives full-resolution features ``(B, backbone_channels, *spatial)``.

    Args:
        backbone: the feature backbone (a list/tuple output, e.g. deep supervision, gives its first entry).
        x: images ``(B, in_channels, *spatial)``.
        spatial_dims: 2 or 3.
        in_channels: expected image channels.
        backbone_channels: expected feature maps.

    Raises:
        ValueError: naming the shape got and the one expected, for the input or the features.
    """
    if x.ndim != spatial_dims + 2 or x.shape[1] != in_channels:
        raise ValueError(
            f"input must be (B, {in_channels}, *spatial) with {spatial_dims} spatial dims, got {tuple(x.shape)}."
        )
    feats = backbone(x)
    if isinstance(feats, (list, tuple)):  # e.g. deep supervision outputs: the first is the full resolution
        feats = feats[0]
    if feats.ndim != x.ndim or feats.shape[1] != backbone_channels or feats.shape[2:] != x.shape[2:]:
        raise ValueError(
            f"the backbone must map the input {tuple(x.shape)} to (B, {backbone_channels}, "
            f"{', '.join(map(str, x.shape[2:]))}) features, got {tuple(feats.shape)}; check backbone_channels, "
            "that the spatial size suits its strides, and that deep supervision is off."
        )
    return feats
