# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""The Probabilistic U-Net (Kohl et al., NeurIPS 2018) for 2D and 3D, following the monai_probseg model contract."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.networks.blocks import Convolution, UpSample
from monai.networks.layers.factories import Act

from monai_probseg.distributions import gaussian_kl_divergence
from monai_probseg.networks.blocks.latent import ConvEncoder, GaussianLatentEncoder, LatentCombiner, _init_conv_weights
from monai_probseg.networks.contract import DistributionModel
from monai_probseg.utils import check_positive_int, check_spatial_dims, make_generator

__all__ = ["ProbabilisticUNet", "ProbUNet"]

# elements of the per-chunk hidden tensor (B * n * H * voxels) that ``sample`` aims at by default: cache-sized on
# CPU (larger chunks were several times slower on CPU), large on GPUs (fewer kernel launches)
_SAMPLE_CHUNK_ELEMENTS = {"cpu": 2**19, "other": 2**26}


class _UNetFeatures(nn.Module):
    """The U-Net of the Probabilistic U-Net without a final layer: image -> features of the last decoder level.

    Encoder: :py:class:`ConvEncoder` (convolutions per level, average pooling down). Decoder: per level, linear
    (bilinear/trilinear, ``align_corners=False``) 2x upsampling, concatenation with the skip connection and
    ``num_convs_per_block`` convolutions, as the reference.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        channels: Sequence[int],
        num_convs_per_block: int,
        act: tuple | str | None,
        norm: tuple | str | None,
        dropout: float | None,
        bias: bool,
    ) -> None:
        super().__init__()
        self.encoder = ConvEncoder(spatial_dims, in_channels, channels, num_convs_per_block, act, norm, dropout, bias)
        self.upsample = UpSample(
            spatial_dims, scale_factor=2, mode="nontrainable", pre_conv=None, interp_mode="linear", align_corners=False
        )
        self.decoder = nn.ModuleList()
        for i in range(len(channels) - 2, -1, -1):
            convs = [
                Convolution(
                    spatial_dims,
                    channels[i + 1] + channels[i] if j == 0 else channels[i],
                    channels[i],
                    kernel_size=3,
                    act=act,
                    norm=norm,
                    dropout=dropout,
                    bias=bias,
                )
                for j in range(num_convs_per_block)
            ]
            self.decoder.append(nn.Sequential(*convs))
        _init_conv_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = self.encoder(x)
        x = skips[-1]
        for i, block in enumerate(self.decoder):  # the skip of the level above, deepest first
            x = block(torch.cat([skips[-2 - i], self.upsample(x)], dim=1))
        return x


class ProbabilisticUNet(DistributionModel):
    """Probabilistic U-Net: a U-Net combined with a conditional VAE over a global latent vector.

    Kohl et al., "A Probabilistic U-Net for Segmentation of Ambiguous Images", NeurIPS 2018. A U-Net computes
    features of the image; a prior net gives ``p(z|x) = N(mu_p(x), diag(sigma_p(x)^2))`` over a ``latent_dim``
    vector; a posterior net gives ``q(z|x,y)`` from the image and the one-hot label; ``fcomb``
    (:py:class:`LatentCombiner`) tiles ``z`` over space, concatenates it with the last decoder features and
    applies ``num_fcomb_layers`` 1x1 convolutions to logits. Training minimises the ELBO
    (:py:class:`monai_probseg.losses.ELBOLoss`); sampling draws ``z`` from the prior. The paper's hyperparameters
    are the defaults: ``latent_dim=6``, channels ``(32, 64, 128, 192)``, 3 convolutions per level, 3 fcomb layers,
    ReLU, no normalisation, average pooling down and bilinear (trilinear in 3D) upsampling.

    Calling conventions (a :py:class:`~monai_probseg.networks.DistributionModel` of the monai_probseg model contract):

    - ``forward(x)``: logits ``(B, C, *spatial)`` at the prior mean ``z = mu_p(x)``, the model's best single
      answer, a plain tensor (in training and eval mode), so MONAI inferers, ``verify_net_in_out`` and TorchScript
      (``torch.jit.script`` of ``forward(x)``, which ``python -m monai.bundle ckpt_export`` runs) work.
    - ``forward(x, y)``: a dict for the loss: ``"logits"`` from a reparameterised posterior sample (from the
      posterior mean in eval mode: a reconstruction), ``"z"`` ``(B, D)``, ``"prior_mean"``, ``"prior_log_sigma"``,
      ``"posterior_mean"``, ``"posterior_log_sigma"`` ``(B, D)`` and ``"kl"`` ``(B,)``, the analytic
      ``KL(q || p)``. ``y`` is a label map ``(B, 1, *spatial)`` with values in ``[0, posterior_label_channels - 1]``
      or one-hot ``(B, posterior_label_channels, *spatial)``.
    - ``distribution(x)``: spatial maps that sliding-window inference can stitch: ``"features"`` ``(B, F,
      *spatial)``, and the prior's ``"latent_mean"`` and ``"latent_std"`` ``(B, D, *spatial)`` tiled over space.
    - ``sample(maps, num_samples, generator)``: ``(B, N, C, *spatial)`` logits, ``z_k = latent_mean + latent_std *
      eps_k`` with one ``eps_k`` (``D`` numbers) per sample for the whole image (global noise); only fcomb runs,
      with its feature part computed once for all samples.
    - ``mean_logits(maps)``: logits at the prior mean from the maps (equal to ``forward(x)`` for one window).

    The log standard deviations are soft-clamped to ``(-max_log_sigma, max_log_sigma)`` and the means to
    ``(-max_abs_mean, max_abs_mean)`` so nothing overflows (see :py:class:`GaussianLatentEncoder`).

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3.
        in_channels: number of image channels.
        out_channels: number of classes (binary segmentation: 2).
        latent_dim: dimension of the latent vector (6 in the paper).
        channels: channels of each U-Net level, also used by the prior and posterior encoders; the spatial size of
            the input must be divisible by ``2 ** (len(channels) - 1)``.
        num_convs_per_block: convolutions per level (3 in the reference).
        num_fcomb_layers: 1x1 convolutions in fcomb (3 in the paper).
        fcomb_channels: channels between the fcomb convolutions; defaults to ``channels[0]`` (the reference).
        act: activation type and arguments. Defaults to ReLU.
        norm: feature normalisation type and arguments (MONAI ``Norm``); ``None`` (the reference) for none.
        dropout: dropout ratio of the convolutions, ``None`` for none.
        bias: whether the convolutions have a bias.
        posterior_label_channels: number of label channels fed to the posterior net (the label is one-hot encoded
            to this many channels); defaults to ``out_channels``.
        max_log_sigma: bound on the absolute log standard deviation of prior and posterior.
        max_abs_mean: bound on the absolute mean of prior and posterior, ``None`` for none.
        sample_scale: multiplies the prior's standard deviation when sampling (``z = mean + s * std * eps``); 1 (the
            default) is the trained prior. A post-hoc calibration of the spread, like temperature scaling, chosen
            on validation data (lowest GED against the raters). Not used in training or by ``forward``.

    Example::

        net = ProbabilisticUNet(spatial_dims=2, in_channels=1, out_channels=2)
        out = net(image, label)  # training: dict with "logits", "kl", ...
        net.eval()
        logits = net(image)  # (B, 2, H, W), prior mean
        samples = net.sample(net.distribution(image), num_samples=16, generator=0)  # (B, 16, 2, H, W)
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        latent_dim: int = 6,
        channels: Sequence[int] = (32, 64, 128, 192),
        num_convs_per_block: int = 3,
        num_fcomb_layers: int = 3,
        fcomb_channels: int | None = None,
        act: tuple | str | None = Act.RELU,
        norm: tuple | str | None = None,
        dropout: float | None = None,
        bias: bool = True,
        posterior_label_channels: int | None = None,
        max_log_sigma: float = 5.0,
        max_abs_mean: float | None = 100.0,
        sample_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if not (math.isfinite(float(sample_scale)) and float(sample_scale) > 0):
            raise ValueError(f"sample_scale must be a finite number > 0, got {sample_scale!r}.")
        self.sample_scale = float(sample_scale)
        self.spatial_dims = check_spatial_dims(spatial_dims)
        self.in_channels = check_positive_int(in_channels, "in_channels")
        self.out_channels = check_positive_int(out_channels, "out_channels")
        self.latent_dim = check_positive_int(latent_dim, "latent_dim")
        channels = tuple(channels)
        if len(channels) < 2:
            raise ValueError(f"channels must have at least 2 entries (levels), got {channels}.")
        self.channels = channels
        self.posterior_label_channels = (
            self.out_channels
            if posterior_label_channels is None
            else check_positive_int(posterior_label_channels, "posterior_label_channels")
        )
        self.divisor = 2 ** (len(channels) - 1)
        enc_args = {
            "channels": channels,
            "num_convs_per_block": num_convs_per_block,
            "act": act,
            "norm": norm,
            "dropout": dropout,
            "bias": bias,
            "max_log_sigma": max_log_sigma,
            "max_abs_mean": max_abs_mean,
        }
        self.unet = _UNetFeatures(spatial_dims, in_channels, channels, num_convs_per_block, act, norm, dropout, bias)
        self.prior_net = GaussianLatentEncoder(spatial_dims, in_channels, latent_dim, **enc_args)
        self.posterior_net = GaussianLatentEncoder(
            spatial_dims, in_channels + self.posterior_label_channels, latent_dim, **enc_args
        )
        self.fcomb = LatentCombiner(
            spatial_dims, channels[0], latent_dim, out_channels, num_fcomb_layers, fcomb_channels, act
        )

    # ------------------------------------------------------------------ input checks
    def _check_image(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}.")
        if x.dim() != self.spatial_dims + 2:
            raise ValueError(
                f"x must have shape (B, {self.in_channels}, *spatial) with {self.spatial_dims} spatial dims, "
                f"got {tuple(x.shape)}."
            )
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"x has {x.shape[1]} channels, expected in_channels={self.in_channels} (shape {tuple(x.shape)}); "
                "is the channel axis second?"
            )
        spatial = tuple(x.shape[2:])
        if any(s % self.divisor for s in spatial):
            raise ValueError(
                f"the spatial size {spatial} of x must be divisible by {self.divisor} (2 ** (len(channels) - 1) for "
                f"channels={self.channels}); pad or crop it, e.g. with monai.transforms.DivisiblePad(k={self.divisor})."
            )

    def _posterior_input(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if not isinstance(y, torch.Tensor):
            raise TypeError(f"y must be a torch.Tensor, got {type(y).__name__}.")
        k = self.posterior_label_channels
        if y.dim() != x.dim() or y.shape[0] != x.shape[0] or y.shape[2:] != x.shape[2:]:
            raise ValueError(
                f"y has shape {tuple(y.shape)}, expected (B={x.shape[0]}, 1 or {k}, *{tuple(x.shape[2:])}) to match "
                f"x of shape {tuple(x.shape)}."
            )
        if y.shape[1] == k:  # one-hot (or class probabilities); with k == 1 the label itself
            return torch.cat([x, y.to(x.dtype)], dim=1)
        if y.shape[1] != 1:
            raise ValueError(f"y has {y.shape[1]} channels, expected 1 (label map) or {k} (one-hot).")
        if not _is_integer_label(y):
            raise ValueError("y is a label map (one channel) but holds non-integer values.")
        labels = y.long()
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= k:
            raise ValueError(
                f"y label values must lie in [0, {k - 1}] (posterior_label_channels={k}), got [{lo}, {hi}]."
            )
        onehot = torch.zeros((y.shape[0], k, *y.shape[2:]), dtype=x.dtype, device=x.device)
        onehot.scatter_(1, labels, 1.0)
        return torch.cat([x, onehot], dim=1)

    # ------------------------------------------------------------------ model contract
    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor | dict[str, torch.Tensor]:
        """Prior-mean logits for ``forward(x)``; the dict for the ELBO for ``forward(x, y)`` (see the class doc).

        Args:
            x: image ``(B, in_channels, *spatial)``.
            y: label for the posterior net, ``(B, 1, *spatial)`` class indices or ``(B, posterior_label_channels,
                *spatial)`` one-hot; ``None`` for the prior-mean logits. A TorchScript export computes only
                ``forward(x)``.
        """
        if not torch.jit.is_scripting():
            self._check_image(x)
            if y is not None:
                return self._elbo_outputs(x, y)
        elif y is not None:
            raise RuntimeError("the TorchScript module computes only the eval forward(x), without a label.")
        return self.fcomb(self.unet(x), self.prior_net(x)[0])

    def _elbo_outputs(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """The training outputs of ``forward(x, y)``, see the class doc."""
        features = self.unet(x)
        prior_mean, prior_log_sigma = self.prior_net(x)
        post_mean, post_log_sigma = self.posterior_net(self._posterior_input(x, y))
        if self.training:
            z = post_mean + torch.exp(post_log_sigma) * torch.randn_like(post_mean)
        else:
            z = post_mean
        kl = gaussian_kl_divergence(post_mean, post_log_sigma, prior_mean, prior_log_sigma).sum(1)
        return {
            "logits": self.fcomb(features, z),
            "z": z,
            "prior_mean": prior_mean,
            "prior_log_sigma": prior_log_sigma,
            "posterior_mean": post_mean,
            "posterior_log_sigma": post_log_sigma,
            "kl": kl,
        }

    def distribution(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Spatial maps of the predictive distribution, stitchable by sliding-window inference.

        Returns:
            ``"features"`` ``(B, F, *spatial)`` (last decoder layer), ``"latent_mean"`` and ``"latent_std"``
            ``(B, latent_dim, *spatial)``: the prior's mean and standard deviation, constant over space.
        """
        self._check_image(x)
        features = self.unet(x)
        mean, log_sigma = self.prior_net(x)
        tile = (-1, -1, *x.shape[2:])
        view = (*mean.shape, *([1] * self.spatial_dims))
        return {
            "features": features,
            "latent_mean": mean.view(view).expand(tile).contiguous(),
            "latent_std": torch.exp(log_sigma).view(view).expand(tile).contiguous(),
        }

    def mean_logits(self, maps: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits ``(B, C, *spatial)`` at the prior mean from (stitched) maps: ``fcomb(features, latent_mean)``.

        For one window this equals the eval ``forward(x)``; the stochastic inferer uses it outside a sampling region.
        """
        if "features" not in maps or "latent_mean" not in maps:
            raise KeyError(f"maps must hold 'features' and 'latent_mean' (from distribution(x)), got {sorted(maps)}.")
        return self.fcomb(maps["features"], maps["latent_mean"])

    def sample(
        self,
        maps: dict[str, torch.Tensor],
        num_samples: int,
        generator: int | torch.Generator | None = None,
        chunk_size: int | None = None,
        return_noise: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Draw ``num_samples`` logits from the maps of :py:meth:`distribution` (possibly stitched from windows).

        Sample ``k`` uses ``z_k = latent_mean + latent_std * eps_k`` at every voxel with one standard normal
        ``eps_k`` of ``latent_dim`` numbers for the whole image (global noise: the same "style" everywhere, no
        seams between windows). Only fcomb runs: the feature part of its first 1x1 convolution is computed once,
        then samples are processed ``chunk_size`` at a time, folded into the batch axis. When the latent maps are
        constant over space (one window), ``z_k`` is handled as a vector, which is cheaper.

        Args:
            maps: dict with ``"features"`` ``(B, F, *spatial)``, ``"latent_mean"`` and ``"latent_std"``
                ``(B, latent_dim, *spatial)``.
            num_samples: number of samples ``N``.
            generator: seed or ``torch.Generator`` for ``eps``; same seed, same samples (on CPU and GPU: ``eps`` is
                drawn on the generator's device, the CPU for a seed or ``None``, and then moved).
            chunk_size: samples per fcomb pass; by default as many as keep the hidden tensor near 0.5M elements
                on CPU (cache-sized, measured fastest) and 64M elements on GPU.
            return_noise: also return ``eps`` ``(B, N, latent_dim)``.

        Returns:
            logits ``(B, N, out_channels, *spatial)`` (and ``eps`` if ``return_noise``).
        """
        num_samples = check_positive_int(num_samples, "num_samples")
        missing = [k for k in ("features", "latent_mean", "latent_std") if k not in maps]
        if missing:
            raise KeyError(f"maps is missing {missing}; expected the dict returned by distribution(x).")
        features, mean, std = maps["features"], maps["latent_mean"], maps["latent_std"]
        if self.sample_scale != 1.0:
            std = std * self.sample_scale
        b, spatial = features.shape[0], tuple(features.shape[2:])
        for name, t in (("latent_mean", mean), ("latent_std", std)):
            if tuple(t.shape) != (b, self.latent_dim, *spatial):
                raise ValueError(
                    f"maps['{name}'] has shape {tuple(t.shape)}, expected {(b, self.latent_dim, *spatial)} to match "
                    f"maps['features'] of shape {tuple(features.shape)}."
                )
        # eps is tiny (B x N x D): draw it on the generator's device (CPU for a seed) so that a seed gives the same
        # samples on CPU and GPU, then move it
        gen = make_generator(generator)
        eps_device = gen.device if gen is not None else torch.device("cpu")
        eps = torch.randn((b, num_samples, self.latent_dim), generator=gen, device=eps_device)
        eps = eps.to(device=features.device, dtype=mean.dtype)

        projected = self.fcomb.project_features(features)
        flat_mean, flat_std = mean.flatten(2), std.flatten(2)
        is_global = bool((flat_mean == flat_mean[..., :1]).all() and (flat_std == flat_std[..., :1]).all())
        if chunk_size is None:
            per_sample = b * self.fcomb.projected_channels * max(1, projected[0, 0].numel())
            budget = _SAMPLE_CHUNK_ELEMENTS["cpu" if features.device.type == "cpu" else "other"]
            chunk_size = max(1, budget // per_sample)
        chunk_size = check_positive_int(chunk_size, "chunk_size")

        out = []
        for start in range(0, num_samples, chunk_size):
            e = eps[:, start : start + chunk_size]
            if is_global:
                z = flat_mean[:, None, :, 0] + flat_std[:, None, :, 0] * e
            else:
                view = (b, e.shape[1], self.latent_dim, *([1] * len(spatial)))
                z = mean.unsqueeze(1) + std.unsqueeze(1) * e.view(view)
            out.append(self.fcomb.combine(projected, z))
        logits = torch.cat(out, dim=1) if len(out) > 1 else out[0]
        return (logits, eps) if return_noise else logits


def _is_integer_label(y: torch.Tensor) -> bool:
    return not y.is_floating_point() or bool(torch.equal(y, y.round()))


ProbUNet = ProbabilisticUNet
