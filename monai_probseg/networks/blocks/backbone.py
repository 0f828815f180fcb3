# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""The feature backbone of the models whose heads read full-resolution features (SSN, mixture of experts)."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn as nn
from monai.networks.nets import UNet

from monai_probseg.utils import check_positive_int

__all__ = ["feature_backbone"]


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
