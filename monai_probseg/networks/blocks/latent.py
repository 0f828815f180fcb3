# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""Building blocks of latent-variable segmentation models (Probabilistic U-Net and relatives).

- :py:class:`ConvEncoder`: a plain convolutional encoder, ``num_convs_per_block`` convolutions per level and
  average pooling between levels, returning the features of every level.
- :py:class:`GaussianLatentEncoder`: ``ConvEncoder`` -> global average pool -> 1x1 convolution to the mean and
  (bounded) log standard deviation of an axis-aligned Gaussian over a global latent vector; the prior net
  p(z|x) and the posterior net q(z|x,y) of Kohl et al., "A Probabilistic U-Net for Segmentation of Ambiguous
  Images", NeurIPS 2018.
- :py:class:`LatentCombiner`: the "fcomb" of the same paper: the latent vector, tiled over space, concatenated
  with the features of the last decoder layer, then 1x1 convolutions to logits. It is written so that the
  feature part of the first 1x1 convolution is computed once and reused for every latent sample.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from monai.networks.layers.factories import Act, Conv, Pool
from monai.networks.layers.utils import get_act_layer

from monai_probseg.utils import check_positive_int, check_spatial_dims

__all__ = ["ConvEncoder", "GaussianLatentEncoder", "LatentCombiner", "soft_clamp"]


def soft_clamp(x: torch.Tensor, bound: float) -> torch.Tensor:
    """Smoothly squash ``x`` into ``(-bound, bound)``: ``bound * tanh(x / bound)``.

    The identity near 0 (slope 1), so it does not change a well-behaved network, but keeps values (and
    anything exponentiated from them) finite whatever the input.

    Args:
        x: any tensor.
        bound: a positive number.

    Example::

        soft_clamp(torch.tensor([0.1, 1e9]), 5.0)  # tensor([0.1000, 5.0000])
    """
    return bound * torch.tanh(x / bound)


def _init_conv_weights(module: nn.Module) -> None:
    """He-normal weights and zero bias for every convolution (the reference uses He-normal initialisation)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class ConvEncoder(nn.Module):
    """Convolutional encoder: per level ``num_convs_per_block`` 3x3(x3) convolutions, 2x average pooling between levels.

    Level ``i`` works at ``1 / 2**i`` of the input resolution with ``channels[i]`` channels. This is the encoder
    of the Probabilistic U-Net (Kohl et al., NeurIPS 2018), shared by its U-Net, prior net and posterior net.

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3.
        in_channels: number of input channels.
        channels: output channels of each level, top level first.
        num_convs_per_block: convolutions per level (3 in the reference).
        act: activation type and arguments (MONAI ``Act`` factory name). Defaults to ReLU.
        norm: feature normalisation type and arguments (MONAI ``Norm``), ``None`` (the reference) for none.
        dropout: dropout ratio, ``None`` for none.
        bias: whether the convolutions have a bias.

    Example::

        enc = ConvEncoder(2, 1, channels=(8, 16, 32))
        feats = enc(torch.rand(1, 1, 32, 32))  # shapes (1, 8, 32, 32), (1, 16, 16, 16), (1, 32, 8, 8)
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        channels: Sequence[int],
        num_convs_per_block: int = 3,
        act: tuple | str | None = Act.RELU,
        norm: tuple | str | None = None,
        dropout: float | None = None,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.spatial_dims = check_spatial_dims(spatial_dims)
        check_positive_int(in_channels, "in_channels")
        check_positive_int(num_convs_per_block, "num_convs_per_block")
        channels = tuple(channels)
        if len(channels) < 1:
            raise ValueError("channels must have at least one entry.")
        for c in channels:
            check_positive_int(c, "channels entries")
        self.channels = channels
        self.levels = nn.ModuleList()
        prev = in_channels
        for i, c in enumerate(channels):
            layers: list[nn.Module] = []
            if i > 0:
                layers.append(Pool[Pool.AVG, spatial_dims](kernel_size=2, stride=2))
            for j in range(num_convs_per_block):
                layers.append(
                    Convolution(
                        spatial_dims,
                        prev if j == 0 else c,
                        c,
                        kernel_size=3,
                        act=act,
                        norm=norm,
                        dropout=dropout,
                        bias=bias,
                    )
                )
            self.levels.append(nn.Sequential(*layers))
            prev = c

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return the features of every level, top level first."""
        feats = []
        for level in self.levels:
            x = level(x)
            feats.append(x)
        return feats


class GaussianLatentEncoder(nn.Module):
    """Image (and label) -> axis-aligned Gaussian over a global latent vector: the prior/posterior net of the PU-Net.

    ``ConvEncoder`` -> global average pooling -> 1x1 convolution to ``2 * latent_dim`` numbers: the mean and the
    log standard deviation of ``N(mean, diag(exp(log_sigma)**2))`` (Kohl et al., "A Probabilistic U-Net for
    Segmentation of Ambiguous Images", NeurIPS 2018).

    Two changes from the reference keep training and sampling finite whatever the encoder outputs:
    ``log_sigma`` is soft-clamped to ``(-max_log_sigma, max_log_sigma)`` and the mean to
    ``(-max_abs_mean, max_abs_mean)`` (:py:func:`soft_clamp`, the identity near 0); and the 1x1 head starts
    with small weights (normal, std ``head_init_std``, zero bias), so that both prior and posterior start near
    ``N(0, I)`` and the KL term starts near 0 (the reference initialises the head like the other layers).

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3.
        in_channels: number of input channels (image channels, plus label channels for a posterior net).
        latent_dim: dimension of the latent vector (6 in the paper).
        channels: encoder channels per level (the paper: 32, 64, 128, 192).
        num_convs_per_block: convolutions per level (3 in the reference).
        act: activation type and arguments. Defaults to ReLU.
        norm: feature normalisation type and arguments, ``None`` (the reference) for none.
        dropout: dropout ratio, ``None`` for none.
        bias: whether the convolutions have a bias.
        max_log_sigma: bound on ``|log_sigma|``; the standard deviation lies in ``(exp(-b), exp(b))``.
        max_abs_mean: bound on ``|mean|``; ``None`` for no bound.
        head_init_std: standard deviation of the initial weights of the 1x1 head.

    Example::

        prior = GaussianLatentEncoder(2, in_channels=1, latent_dim=6, channels=(8, 16, 32))
        mean, log_sigma = prior(torch.rand(2, 1, 32, 32))  # each (2, 6)
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        latent_dim: int,
        channels: Sequence[int] = (32, 64, 128, 192),
        num_convs_per_block: int = 3,
        act: tuple | str | None = Act.RELU,
        norm: tuple | str | None = None,
        dropout: float | None = None,
        bias: bool = True,
        max_log_sigma: float = 5.0,
        max_abs_mean: float | None = 100.0,
        head_init_std: float = 1e-3,
    ) -> None:
        super().__init__()
        self.latent_dim = check_positive_int(latent_dim, "latent_dim")
        if not max_log_sigma > 0:
            raise ValueError(f"max_log_sigma must be > 0, got {max_log_sigma}.")
        if max_abs_mean is not None and not max_abs_mean > 0:
            raise ValueError(f"max_abs_mean must be > 0 or None, got {max_abs_mean}.")
        self.max_log_sigma = float(max_log_sigma)
        self.max_abs_mean = None if max_abs_mean is None else float(max_abs_mean)
        self.encoder = ConvEncoder(spatial_dims, in_channels, channels, num_convs_per_block, act, norm, dropout, bias)
        _init_conv_weights(self.encoder)
        self.head = Conv[Conv.CONV, spatial_dims](self.encoder.channels[-1], 2 * self.latent_dim, kernel_size=1)
        nn.init.normal_(self.head.weight, std=head_init_std)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(mean, log_sigma)``, each ``(B, latent_dim)``.

        Args:
            x: image (and label) ``(B, in_channels, *spatial)``.
        """
        feats = self.encoder(x)[-1]
        pooled = feats.flatten(2).mean(2, keepdim=True)  # global average pooling, (B, F, 1)
        for _ in range(feats.dim() - 3):
            pooled = pooled.unsqueeze(-1)  # (B, F, 1, 1[, 1]) for the 1x1 head
        out = self.head(pooled).flatten(1)
        mean, log_sigma = out[:, : self.latent_dim], out[:, self.latent_dim :]
        if self.max_abs_mean is not None:
            mean = soft_clamp(mean, self.max_abs_mean)
        return mean, soft_clamp(log_sigma, self.max_log_sigma)


class LatentCombiner(nn.Module):
    """The "fcomb" of the Probabilistic U-Net: combine decoder features and a latent sample into logits.

    Kohl et al., "A Probabilistic U-Net for Segmentation of Ambiguous Images", NeurIPS 2018: the latent vector
    ``z`` is tiled over space, concatenated with the features ``f`` of the last decoder layer, and passed through
    ``num_layers`` 1x1 convolutions (ReLU between them; 3 layers in the paper) to ``out_channels`` logits.

    A 1x1 convolution of a concatenation is a sum, ``W [f; z] + b = (W_f f + b) + W_z z``, so the first layer is
    stored as two parts, :py:attr:`feature_proj` (``W_f``, ``b``) and :py:attr:`latent_proj` (``W_z``). The feature
    part does not depend on ``z``: :py:meth:`project_features` computes it once and :py:meth:`combine` adds the
    latent part for any number of samples; this is what makes drawing many samples cheap. The arithmetic equals
    the concatenation form of the paper exactly.

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3.
        feature_channels: channels of the decoder features ``F``.
        latent_dim: dimension of the latent vector ``D``.
        out_channels: number of output channels (classes).
        num_layers: number of 1x1 convolutions (3 in the paper), at least 1.
        hidden_channels: channels between the 1x1 convolutions; defaults to ``feature_channels`` (the reference).
        act: activation between the 1x1 convolutions. Defaults to ReLU.

    Example::

        fcomb = LatentCombiner(2, feature_channels=32, latent_dim=6, out_channels=2)
        logits = fcomb(torch.rand(2, 32, 64, 64), torch.randn(2, 6))  # (2, 2, 64, 64)
    """

    def __init__(
        self,
        spatial_dims: int,
        feature_channels: int,
        latent_dim: int,
        out_channels: int,
        num_layers: int = 3,
        hidden_channels: int | None = None,
        act: tuple | str | None = Act.RELU,
    ) -> None:
        super().__init__()
        self.spatial_dims = check_spatial_dims(spatial_dims)
        self.feature_channels = check_positive_int(feature_channels, "feature_channels")
        self.latent_dim = check_positive_int(latent_dim, "latent_dim")
        self.out_channels = check_positive_int(out_channels, "out_channels")
        self.num_layers = check_positive_int(num_layers, "num_layers")
        hidden = feature_channels if hidden_channels is None else check_positive_int(hidden_channels, "hidden_channels")
        first_out = hidden if num_layers > 1 else out_channels
        conv = Conv[Conv.CONV, spatial_dims]
        self.feature_proj = conv(feature_channels, first_out, kernel_size=1, bias=True)
        self.latent_proj = conv(latent_dim, first_out, kernel_size=1, bias=False)
        layers: list[nn.Module] = []
        for i in range(1, num_layers):
            layers.append(get_act_layer(act) if act is not None else nn.Identity())
            layers.append(conv(hidden, hidden if i < num_layers - 1 else out_channels, kernel_size=1))
        self.head = nn.Sequential(*layers)
        self.projected_channels = first_out
        # He-normal as the reference, for the whole first layer as one convolution over (F + D) channels
        w = torch.empty(first_out, feature_channels + latent_dim)
        nn.init.kaiming_normal_(w, mode="fan_in", nonlinearity="relu")
        with torch.no_grad():
            self.feature_proj.weight.copy_(w[:, :feature_channels].view_as(self.feature_proj.weight))
            self.latent_proj.weight.copy_(w[:, feature_channels:].view_as(self.latent_proj.weight))
            nn.init.zeros_(self.feature_proj.bias)
        _init_conv_weights(self.head)

    def project_features(self, features: torch.Tensor) -> torch.Tensor:
        """The feature part of the first 1x1 convolution, ``W_f f + b``: ``(B, H, *spatial)``. Compute once, reuse.

        The result is stored channels-last in memory (a ``(B, *spatial, H)`` buffer seen as ``(B, H, *spatial)``),
        the layout :py:meth:`combine` works in.
        """
        if features.dim() != self.spatial_dims + 2 or features.shape[1] != self.feature_channels:
            raise ValueError(
                f"features must have shape (B, {self.feature_channels}, *spatial) with {self.spatial_dims} spatial "
                f"dims, got {tuple(features.shape)}."
            )
        projected = self.feature_proj(features)
        b, h = projected.shape[:2]
        rows = projected.flatten(2).transpose(1, 2).contiguous()  # (B, V, H)
        return rows.transpose(1, 2).view(b, h, *projected.shape[2:])

    def _head_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Apply the layers after the first to ``(num_voxels, H)`` rows: 1x1 convolutions as matrix products."""
        for layer in self.head:
            if isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                rows = F.linear(rows, layer.weight.flatten(1), layer.bias)
            elif type(layer) is nn.ReLU:  # the reference's activation; in place on the fresh intermediate
                rows = rows.relu_()
            else:  # element-wise activation (channel-wise parameters, e.g. PReLU, see dim 1 as the channel)
                rows = layer(rows)
        return rows

    def combine(self, projected: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Logits for ``n`` latent samples per batch item, from :py:meth:`project_features` output.

        The 1x1 convolutions run as matrix products over ``(voxels, channels)`` rows, which is several times faster
        than batched 1x1 convolutions on CPU for many samples.

        Args:
            projected: ``(B, H, *spatial)`` from :py:meth:`project_features`.
            z: ``(B, n, D)`` global latent vectors (tiled over space), or ``(B, n, D, *spatial)`` latent maps
                (a different vector per voxel, e.g. stitched from sliding windows).

        Returns:
            logits ``(B, n, out_channels, *spatial)``.
        """
        b, h = projected.shape[:2]
        spatial = tuple(projected.shape[2:])
        rows = projected.flatten(2).transpose(1, 2)  # (B, V, H), a view for project_features' layout
        weight = self.latent_proj.weight.flatten(1)  # (H, D)
        if z.dim() == 3 and z.shape[0] == b and z.shape[2] == self.latent_dim:
            hidden = rows.unsqueeze(1) + F.linear(z, weight).unsqueeze(2)
        elif (
            z.dim() == 3 + len(spatial)
            and z.shape[0] == b
            and z.shape[2] == self.latent_dim
            and tuple(z.shape[3:]) == spatial
        ):
            hidden = rows.unsqueeze(1) + F.linear(z.flatten(3).transpose(2, 3), weight)
        else:
            raise ValueError(
                f"z must have shape (B={b}, n, D={self.latent_dim}) or (B={b}, n, D={self.latent_dim}, "
                f"*{spatial}), got {tuple(z.shape)}."
            )
        n, v = hidden.shape[1], hidden.shape[2]
        out = self._head_rows(hidden.reshape(b * n * v, h))
        return out.view(b, n, v, self.out_channels).transpose(2, 3).reshape(b, n, self.out_channels, *spatial)

    def forward(self, features: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, out_channels, *spatial)`` for one latent sample per item: ``head(W_f f + b + W_z z)``.

        The 1x1 convolutions in their plain form (TorchScript-compatible); :py:meth:`combine` is the fast form for
        many samples and gives the same values.

        Args:
            features: decoder features ``(B, F, *spatial)``.
            z: a latent vector per item ``(B, D)`` (tiled over space), or a latent map ``(B, D, *spatial)``.
        """
        if not torch.jit.is_scripting():
            self._check_forward_inputs(features, z)
        if z.dim() == 2:
            z = z.view([z.shape[0], z.shape[1]] + [1] * self.spatial_dims)  # broadcast over space
        return self.head(self.feature_proj(features) + self.latent_proj(z))

    def _check_forward_inputs(self, features: torch.Tensor, z: torch.Tensor) -> None:
        if features.dim() != self.spatial_dims + 2 or features.shape[1] != self.feature_channels:
            raise ValueError(
                f"features must have shape (B, {self.feature_channels}, *spatial) with {self.spatial_dims} spatial "
                f"dims, got {tuple(features.shape)}."
            )
        b, spatial = features.shape[0], tuple(features.shape[2:])
        global_z = z.dim() == 2 and tuple(z.shape) == (b, self.latent_dim)
        if not global_z and tuple(z.shape) != (b, self.latent_dim, *spatial):
            raise ValueError(
                f"z must have shape (B={b}, D={self.latent_dim}) or (B={b}, D={self.latent_dim}, *{spatial}), "
                f"got {tuple(z.shape)}."
            )
