# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""Stage-2 segmentation-quality network: predicts the Dice of a stage-1 segmentation from the image, the segmentation
and its uncertainty maps.

DeVries, T., Taylor, G. W. (2018) Leveraging Uncertainty Estimates for Predicting Segmentation Quality.
arXiv:1807.00502.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.networks.blocks import Convolution, ResidualUnit
from monai.networks.layers.factories import Act, Pool

from monai_probseg.utils import check_positive_int, check_spatial_dims

__all__ = ["SegmentationQualityNet"]


class SegmentationQualityNet(nn.Module):
    """Regresses the per-region Dice of a segmentation from image, segmentation and uncertainty maps.

    DeVries & Taylor (2018) train a second network on the image, the stage-1 segmentation and its uncertainty map to
    predict the segmentation's Dice; a low prediction flags a likely failure. This network is a MONAI-style
    convolutional encoder (one ``ResidualUnit`` or ``Convolution`` per level, strided down-sampling), global average
    and max pooling (the max keeps a local failure visible), optionally concatenated with ``num_scores`` image-level
    scalar scores (e.g. the sample agreement of :py:func:`monai_probseg.metrics.quality_scores`), and a small
    fully connected head with a sigmoid: the output is one predicted Dice in ``[0, 1]`` per region.

    The input is the concatenation of the stage-1 image channels, its mean probabilities (or one-hot segmentation) and
    uncertainty maps (entropy, mutual information, ...) on the channel axis, at any spatial size (the pooling is
    global); :py:func:`monai_probseg.quality.quality_net_inputs` builds it at a fixed low resolution. Train it with
    an L1 or MSE loss on the true Dice.

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3.
        in_channels: input channels (4 MRI modalities + 4 class probabilities + entropy + mutual information = 10 for
            the BraTS bundles).
        num_regions: number of predicted Dice values (3 for BraTS: TC, WT, ET, the order of
            :data:`~monai_probseg.metrics.BRATS_REGIONS`; 1 for a 2D lesion).
        channels: output channels of each encoder level.
        strides: stride of each level (one per entry of ``channels``).
        num_res_units: residual sub-units per level (0: a plain ``Convolution``).
        num_scores: number of scalar scores concatenated to the pooled features (0: none); they are standardised with
            the buffers ``score_mean`` and ``score_std`` (:py:meth:`set_score_statistics`) and clipped to +-10.
        hidden_channels: width of the hidden fully connected layer.
        act: activation (MONAI ``Act`` name or ``(name, args)``).
        norm: normalisation of the encoder (MONAI ``Norm``). Batch norm by default: instance or group norm would
            remove each case's own intensity level, which is what the head must see (a high mean entropy).
        dropout: dropout of the encoder and the head.

    Example::

        net = SegmentationQualityNet(spatial_dims=3, in_channels=10, num_regions=3)
        dice = net(torch.randn(2, 10, 32, 32, 32))  # (2, 3), in [0, 1]
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        num_regions: int,
        channels: Sequence[int] = (16, 32, 64, 128),
        strides: Sequence[int] = (2, 2, 2, 1),
        num_res_units: int = 1,
        num_scores: int = 0,
        hidden_channels: int = 64,
        act: tuple | str = Act.PRELU,
        norm: tuple | str | None = "batch",
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.spatial_dims = check_spatial_dims(spatial_dims)
        self.in_channels = check_positive_int(in_channels, "in_channels")
        self.num_regions = check_positive_int(num_regions, "num_regions")
        self.num_scores = check_positive_int(num_scores, "num_scores", minimum=0)
        channels, strides = tuple(channels), tuple(strides)
        if not channels:
            raise ValueError("channels must have at least one level, got ().")
        if len(strides) != len(channels):
            raise ValueError(f"strides must have one entry per level of channels {channels}, got {strides}.")
        num_res_units = check_positive_int(num_res_units, "num_res_units", minimum=0)
        levels: list[nn.Module] = []
        c_in = in_channels
        for c_out, stride in zip(channels, strides):
            if num_res_units > 0:
                level: nn.Module = ResidualUnit(
                    spatial_dims,
                    c_in,
                    c_out,
                    strides=stride,
                    subunits=num_res_units,
                    act=act,
                    norm=norm,
                    dropout=dropout,
                )
            else:
                level = Convolution(spatial_dims, c_in, c_out, strides=stride, act=act, norm=norm, dropout=dropout)
            levels.append(level)
            c_in = c_out
        self.encoder = nn.Sequential(*levels)
        self.avg_pool = Pool[Pool.ADAPTIVEAVG, spatial_dims](1)
        self.max_pool = Pool[Pool.ADAPTIVEMAX, spatial_dims](1)
        self.head = nn.Sequential(
            nn.Linear(2 * c_in + self.num_scores, hidden_channels),
            nn.PReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_channels, num_regions),
        )
        # standardisation of the scalar scores, part of the weights (see set_score_statistics)
        self.register_buffer("score_mean", torch.zeros(self.num_scores))
        self.register_buffer("score_std", torch.ones(self.num_scores))

    @torch.no_grad()
    def set_score_statistics(self, mean: Sequence[float] | torch.Tensor, std: Sequence[float] | torch.Tensor) -> None:
        """Set the mean and standard deviation the scalar scores are standardised with (those of the training set);
        they are buffers, saved with the weights."""
        mean_t = torch.as_tensor(mean, dtype=self.score_mean.dtype).reshape(-1)
        std_t = torch.as_tensor(std, dtype=self.score_std.dtype).reshape(-1)
        if mean_t.numel() != self.num_scores or std_t.numel() != self.num_scores:
            raise ValueError(
                f"score statistics must have {self.num_scores} values each, got {mean_t.numel()} and {std_t.numel()}."
            )
        self.score_mean.copy_(mean_t)
        self.score_std.copy_(std_t.clamp_min(1e-6))

    def forward(self, x: torch.Tensor, scores: torch.Tensor | None = None) -> torch.Tensor:
        """Predicted Dice per region.

        Args:
            x: ``(B, in_channels, *spatial)``.
            scores: ``(B, num_scores)`` scalar scores, required when ``num_scores > 0``.

        Returns:
            ``(B, num_regions)`` in ``[0, 1]``.
        """
        if x.ndim != self.spatial_dims + 2 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"x has shape {tuple(x.shape)}, expected (B, {self.in_channels}, *spatial) with {self.spatial_dims} "
                "spatial dims (image, probabilities and uncertainty maps concatenated on dim 1)."
            )
        features = self.encoder(x)
        pooled = [self.avg_pool(features).flatten(1), self.max_pool(features).flatten(1)]
        if self.num_scores > 0:
            if scores is None or scores.shape != (x.shape[0], self.num_scores):
                got = None if scores is None else tuple(scores.shape)
                raise ValueError(f"scores must have shape ({x.shape[0]}, {self.num_scores}), got {got}.")
            pooled.append(((scores.to(features.dtype) - self.score_mean) / self.score_std).clamp(-10.0, 10.0))
        elif scores is not None:
            raise ValueError("scores were given but the network was built with num_scores=0.")
        return torch.sigmoid(self.head(torch.cat(pooled, dim=1)))
