# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""Anatomical priors for unsupervised segmentation (Dalca, Guttag & Sabuncu, CVPR 2018).

Dalca et al., "Anatomical Priors in Convolutional Networks for Unsupervised Biomedical Segmentation", CVPR 2018
(arXiv:1903.03148; reference code: github.com/adalca/neuron, TensorFlow). Two networks:

- :py:class:`AnatomicalPriorVAE`: a convolutional VAE over one-hot label maps, trained on segmentations alone
  (any data set, any modality). Its latent ``z`` is a low-resolution spatial grid ``(B, L, *spatial / f)`` with
  ``f = prod(strides)``, with prior ``N(0, I)``; its decoder is ``p(s | z)``, a categorical distribution per voxel.
- :py:class:`AnatomicalPriorSegmentation`: the segmentation model of the paper. An image encoder ``q(z | x)`` with
  the prior's latent grid, the prior's decoder ``p(s | z)`` (a frozen copy), and a per-label Gaussian intensity
  likelihood ``p(x_j | s_j = l) = prod_c N(x_jc; mu_lc, sigma_lc^2)`` with learnt means and bounded
  log-variances per label ``l`` and channel ``c``. Trained without labels by the ELBO with the label marginalised
  (the paper's eq. 14, :py:class:`~monai_probseg.losses.AnatomicalPriorELBOLoss`), or with labels by its supervised
  form.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from monai.networks.layers.factories import Act, Norm

from monai_probseg.losses.anatomical_prior import label_log_likelihood
from monai_probseg.networks.blocks.bias_field import fit_log_bias, fit_tissue_gaussians
from monai_probseg.networks.contract import DistributionModel
from monai_probseg.utils import check_positive_int, make_generator

__all__ = ["AnatomicalPriorVAE", "AnatomicalPriorSegmentation"]


def _bounded(raw: torch.Tensor, bounds: tuple[float, float]) -> torch.Tensor:
    """``lo + (hi - lo) * sigmoid(raw)``: a smooth bound with a non-zero gradient everywhere."""
    lo, hi = bounds
    return lo + (hi - lo) * torch.sigmoid(raw)


def _check_bounds(bounds: Sequence[float], name: str) -> tuple[float, float]:
    bounds = tuple(float(b) for b in bounds)
    if len(bounds) != 2 or not all(math.isfinite(b) for b in bounds) or not bounds[0] < bounds[1]:
        raise ValueError(f"{name} must be two finite numbers (low, high) with low < high, got {bounds}.")
    return bounds


class _LatentEncoder(nn.Module):
    """Strided convolutions to a ``(mu, log_var)`` pair of latent maps on the grid ``spatial / prod(strides)``."""

    def __init__(self, spatial_dims, in_channels, latent_channels, channels, strides, kernel_size, act, norm, dropout):
        super().__init__()
        layers = []
        prev = in_channels
        for c, s in zip(channels, strides):
            layers.append(
                Convolution(
                    spatial_dims, prev, c, strides=s, kernel_size=kernel_size, act=act, norm=norm, dropout=dropout
                )
            )
            layers.append(Convolution(spatial_dims, c, c, kernel_size=kernel_size, act=act, norm=norm, dropout=dropout))
            prev = c
        self.features = nn.Sequential(*layers)
        self.head = Convolution(spatial_dims, prev, 2 * latent_channels, kernel_size=1, conv_only=True)
        self.latent_channels = latent_channels

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.head(self.features(x))
        return out[:, : self.latent_channels], out[:, self.latent_channels :]


class _LatentDecoder(nn.Module):
    """Latent grid ``(B, L, *grid)`` to label logits ``(B, C, *grid * prod(strides))`` (transposed convolutions)."""

    def __init__(self, spatial_dims, latent_channels, num_classes, channels, strides, kernel_size, act, norm, dropout):
        super().__init__()
        layers = [
            Convolution(
                spatial_dims,
                latent_channels,
                channels[-1],
                kernel_size=kernel_size,
                act=act,
                norm=norm,
                dropout=dropout,
            )
        ]
        for i in reversed(range(len(channels))):
            out = channels[max(i - 1, 0)]
            layers.append(
                Convolution(
                    spatial_dims,
                    channels[i],
                    out,
                    strides=strides[i],
                    kernel_size=kernel_size,
                    act=act,
                    norm=norm,
                    dropout=dropout,
                    is_transposed=strides[i] > 1,
                )
            )
            layers.append(
                Convolution(spatial_dims, out, out, kernel_size=kernel_size, act=act, norm=norm, dropout=dropout)
            )
        layers.append(Convolution(spatial_dims, channels[0], num_classes, kernel_size=1, conv_only=True))
        self.layers = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.layers(z)


class _LatentGrid:
    """Padding to, and cropping from, multiples of the latent grid's cell size ``f = prod(strides)``."""

    factor: int
    spatial_dims: int

    def _pad(self, x: torch.Tensor, mode: str = "constant") -> torch.Tensor:
        pad = []
        for size in reversed(x.shape[2:]):
            pad += [0, (-size) % self.factor]
        if not any(pad):
            return x
        return F.pad(x, pad, mode=mode) if mode != "constant" else F.pad(x, pad)

    @staticmethod
    def _crop(x: torch.Tensor, spatial: Sequence[int]) -> torch.Tensor:
        return x[(..., *(slice(0, s) for s in spatial))]

    def _check_spatial(self, x: torch.Tensor, name: str, channels: int | None = None) -> None:
        if not isinstance(x, torch.Tensor) or x.ndim != self.spatial_dims + 2:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{name} must be (B, C, *spatial) with {self.spatial_dims} spatial axes, got {shape}.")
        if channels is not None and x.shape[1] != channels:
            raise ValueError(f"{name} has {x.shape[1]} channels (shape {tuple(x.shape)}), expected {channels}.")


class AnatomicalPriorVAE(_LatentGrid, nn.Module):
    """A convolutional VAE over one-hot label maps whose latent is a low-resolution spatial grid: the anatomical prior.

    Dalca et al., "Anatomical Priors in Convolutional Networks for Unsupervised Biomedical Segmentation", CVPR 2018:
    the prior over segmentations ``p(s) = int p(s | z) p(z) dz`` is a VAE trained on label maps alone, with
    ``p(z) = N(0, I)`` on a spatial latent grid and ``p(s | z) = prod_j Cat(s_j; softmax(decoder(z))_j)``. Its
    training loss is :py:class:`~monai_probseg.losses.AnatomicalPriorVAELoss` (cross-entropy of the reconstruction
    plus ``beta`` times the KL to ``N(0, I)``). The decoder is then used, frozen, by
    :py:class:`AnatomicalPriorSegmentation`.

    The encoder is ``len(channels)`` levels of a strided convolution (stride ``strides[i]``) and a stride-1
    convolution, then a 1x1 convolution to ``2 * latent_channels`` maps: ``mu`` and ``log_var`` on the grid
    ``spatial / f`` with ``f = prod(strides)``. The decoder mirrors it with transposed convolutions. Inputs of any
    size are zero-padded (label 0) at the end of each axis to a multiple of ``f``, and outputs cropped back.

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3.
        num_classes: number of labels ``C`` (background included), ``C >= 2``.
        latent_channels: number of latent channels ``L`` per grid cell.
        channels: feature channels of the encoder levels (the decoder uses them in reverse).
        strides: stride of each encoder level; the latent grid is ``prod(strides)`` times coarser than the input.
        kernel_size: convolution kernel size.
        act: activation (MONAI layer factory name or tuple).
        norm: normalisation (MONAI layer factory name or tuple); batch norm by default.
        dropout: dropout rate of the convolution blocks.
        log_var_bounds: ``(low, high)`` of the latent log-variances (a smooth sigmoid bound).
        return_loss_inputs: in train mode, ``forward`` returns the dict of :py:meth:`reconstruct` (the arguments of
            :py:class:`~monai_probseg.losses.AnatomicalPriorVAELoss` besides the target) instead of the logits, so a
            trainer (and ``DistributedDataParallel``) can call the network itself. Eval mode always returns logits.

    Example::

        prior = AnatomicalPriorVAE(2, num_classes=4, latent_channels=4, channels=(16, 32, 64), strides=(2, 2, 2))
        logits = prior(labels)  # (B, 4, H, W) reconstruction logits; labels (B, 1, H, W) in [0, 3] or one-hot
        mu, log_var = prior.encode(labels)  # (B, 4, H / 8, W / 8) each
        shapes = prior.sample_prior(8, spatial_size=(64, 64), generator=0)  # (8, 4, 64, 64) logits
    """

    def __init__(
        self,
        spatial_dims: int,
        num_classes: int,
        latent_channels: int = 4,
        channels: Sequence[int] = (16, 32, 64),
        strides: Sequence[int] = (2, 2, 2),
        kernel_size: int = 3,
        act: tuple | str = Act.PRELU,
        norm: tuple | str = Norm.BATCH,
        dropout: float = 0.0,
        log_var_bounds: Sequence[float] = (-10.0, 4.0),
        return_loss_inputs: bool = False,
    ) -> None:
        super().__init__()
        self.return_loss_inputs = bool(return_loss_inputs)
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        self.num_classes = check_positive_int(num_classes, "num_classes", minimum=2)
        self.latent_channels = check_positive_int(latent_channels, "latent_channels")
        channels, strides = tuple(channels), tuple(strides)
        if len(channels) == 0 or len(channels) != len(strides):
            raise ValueError(
                f"channels and strides must be non-empty and of equal length, got {channels} and {strides}."
            )
        for s in strides:
            check_positive_int(s, "strides entry")
        self.spatial_dims = spatial_dims
        self.channels, self.strides, self.kernel_size = channels, strides, kernel_size
        self.act, self.norm, self.dropout = act, norm, dropout
        self.factor = math.prod(strides)
        self.log_var_bounds = _check_bounds(log_var_bounds, "log_var_bounds")
        self.encoder = _LatentEncoder(
            spatial_dims, num_classes, latent_channels, channels, strides, kernel_size, act, norm, dropout
        )
        self.decoder = _LatentDecoder(
            spatial_dims, latent_channels, num_classes, channels, strides, kernel_size, act, norm, dropout
        )

    def latent_shape(self, spatial_size: Sequence[int]) -> tuple[int, ...]:
        """The latent grid ``(L, *ceil(spatial_size / f))`` of a label map of ``spatial_size``.

        Args:
            spatial_size: spatial shape of the label map.
        """
        return (self.latent_channels, *(-(-int(s) // self.factor) for s in spatial_size))

    def _one_hot(self, labels: torch.Tensor) -> torch.Tensor:
        if labels.ndim == self.spatial_dims + 1:
            labels = labels.unsqueeze(1)
        self._check_spatial(labels, "labels")
        if labels.shape[1] == self.num_classes and labels.is_floating_point():
            return labels
        if labels.shape[1] != 1:
            raise ValueError(
                f"labels have {labels.shape[1]} channels (shape {tuple(labels.shape)}), expected 1 (a label map) or "
                f"{self.num_classes} (one-hot, floating point)."
            )
        index = labels.long()
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= self.num_classes):
            raise ValueError(
                f"label values must lie in [0, {self.num_classes - 1}], got [{int(index.min())}, {int(index.max())}]."
            )
        one_hot = torch.zeros((labels.shape[0], self.num_classes, *labels.shape[2:]), device=labels.device)
        return one_hot.scatter_(1, index, 1.0)

    def encode(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``q(z | s)``: latent mean and log-variance ``(B, L, *grid)`` of a label map.

        Args:
            labels: a label map ``(B, 1, *spatial)`` or ``(B, *spatial)`` with values in ``[0, C - 1]``, or one-hot
                (floating point) ``(B, C, *spatial)``.
        """
        mu, raw = self.encoder(self._pad(self._one_hot(labels)))
        return mu, _bounded(raw, self.log_var_bounds)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """``p(s | z)``: label logits ``(B, C, *grid * f)`` of latent grids ``z`` ``(B, L, *grid)``.

        Args:
            z: latent grids.
        """
        self._check_spatial(z, "z", self.latent_channels)
        return self.decoder(z)

    def reconstruct(
        self, labels: torch.Tensor, generator: int | torch.Generator | None = None, sample: bool = True
    ) -> dict[str, torch.Tensor]:
        """What :py:class:`~monai_probseg.losses.AnatomicalPriorVAELoss` needs, for a batch of label maps.

        Args:
            labels: label maps, as :py:meth:`encode`.
            generator: seed or generator of the reparameterised draw ``z = mu + sigma * eps``.
            sample: decode a draw of ``q(z | s)`` (True, for training) or its mean (False).

        Returns:
            ``{"logits": (B, C, *spatial), "latent_mean": (B, L, *grid), "latent_log_var": (B, L, *grid)}``.
        """
        spatial = labels.shape[-self.spatial_dims :]
        mu, log_var = self.encode(labels)
        z = mu
        if sample:
            gen = make_generator(generator)
            device = gen.device if gen is not None else mu.device
            eps = torch.randn(mu.shape, generator=gen, device=device).to(mu)
            z = mu + torch.exp(0.5 * log_var) * eps
        return {"logits": self._crop(self.decode(z), spatial), "latent_mean": mu, "latent_log_var": log_var}

    def forward(self, labels: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        """Reconstruction logits ``(B, C, *spatial)``: of a draw of ``q(z | s)`` in training, of its mean in eval.

        With ``return_loss_inputs``, train mode returns the whole dict of :py:meth:`reconstruct`.

        Args:
            labels: label maps, as :py:meth:`encode`.
        """
        out = self.reconstruct(labels, sample=self.training)
        return out if self.training and self.return_loss_inputs else out["logits"]

    @torch.no_grad()
    def sample_prior(
        self, num_samples: int, spatial_size: Sequence[int], generator: int | torch.Generator | None = None
    ) -> torch.Tensor:
        """Logits ``(num_samples, C, *spatial_size)`` of label maps drawn from the prior, ``z ~ N(0, I)``.

        Args:
            num_samples: number of draws.
            spatial_size: spatial shape of the label maps.
            generator: seed or generator of ``z`` (drawn on the generator's device, CPU for a seed).
        """
        num_samples = check_positive_int(num_samples, "num_samples")
        if len(spatial_size) != self.spatial_dims:
            raise ValueError(f"spatial_size must have {self.spatial_dims} entries, got {tuple(spatial_size)}.")
        param = next(self.parameters())
        gen = make_generator(generator)
        device = gen.device if gen is not None else param.device
        z = torch.randn((num_samples, *self.latent_shape(spatial_size)), generator=gen, device=device).to(param)
        return self._crop(self.decode(z), spatial_size)


class AnatomicalPriorSegmentation(_LatentGrid, DistributionModel):
    """Segmentation with a learnt anatomical prior: ``q(z | x)``, the prior's frozen ``p(s | z)`` and ``p(x | s)``.

    Dalca et al., "Anatomical Priors in Convolutional Networks for Unsupervised Biomedical Segmentation", CVPR 2018.
    The generative model is ``z ~ N(0, I)`` (the prior's latent grid), ``s ~ p(s | z)`` (the prior's decoder) and
    ``x_j | s_j = l ~ prod_c N(mu_lc, sigma_lc^2)`` (a Gaussian intensity per label and channel). This network holds

    - an image encoder ``q(z | x)``: the prior's encoder architecture with ``in_channels`` inputs, giving latent
      ``mu`` and ``log_var`` on the prior's latent grid;
    - ``decoder``: a deep copy of ``prior.decoder``, FROZEN: its parameters have ``requires_grad=False`` and it stays
      in eval mode (batch-norm statistics fixed) even when this model is in train mode (:py:meth:`train` puts it back
      in eval). The prior passed in is not modified;
    - ``intensity_mean`` ``(C, in_channels)`` and the bounded ``intensity_log_var`` ``(C, in_channels)`` (a smooth
      sigmoid bound to ``intensity_log_var_bounds``, so a label's variance can neither collapse on the exact zeros
      of air nor blow up);
    - with ``bias_field_order > 0``, a smooth multiplicative bias field per image (an extension of the paper, as in
      unified segmentation, Ashburner & Friston 2005): the likelihood becomes ``p(x_j | s_j = l) = prod_c N(x_jc;
      b_jc mu_lc, b_jc^2 sigma_lc^2)`` with ``log b`` a low-order cosine expansion, zero outside the brain ``x !=
      0`` and of mean zero inside it. ``b`` is fitted to each image in the forward pass by
      ``bias_field_iterations`` EM steps, without gradient: label posteriors ``p(s | z = mu(x), x / b)`` from
      the prior decoder and the current tissue Gaussians, then the weighted least-squares log-gain
      (:py:func:`~monai_probseg.networks.blocks.fit_log_bias`), starting from ``b = 1``. The tissue Gaussians
      are then fitted to the corrected image ``x / b``, with the Jacobian ``-log b`` in the ELBO. Without it a
      bias field of the scan (no N4 correction) shifts every tissue boundary, since one Gaussian per tissue must
      then cover the gain's whole range. Having no parameters, the field adapts to each scan's own bias;
    - with ``intensity_fit_iterations > 0``, at inference (eval mode) every image also gets its own tissue
      Gaussians, as in unified segmentation: after the bias steps, ``intensity_fit_iterations`` further EM steps
      alternate the label posteriors, :py:func:`~monai_probseg.networks.blocks.fit_tissue_gaussians` (the
      posterior-weighted means and variances of the image, a MAP estimate with ``intensity_prior_count``
      pseudo-voxels at the learnt ``intensity_mean`` / ``intensity_log_var``) and, with a bias field, the bias
      step with those Gaussians. The learnt Gaussians (trained by the ELBO, which is unchanged) are then the
      starting point and prior of each scan's own. Real scans differ in contrast even after intensity
      normalisation, and one scan's tissue intensities spread less than those of a whole training set (see
      ``benchmarks/results/experiments.md`` for what it does on the phantoms).

    Training: the unsupervised ELBO with the label marginalised (the paper's eq. 14), or, with
    ``supervised=True``, its supervised form that reads the label map: see
    :py:class:`~monai_probseg.losses.AnatomicalPriorELBOLoss`. In train mode ``forward(x, y)`` returns the dict of
    that loss's arguments, so ``loss_fn(**net(x, y))`` is the loss.

    Segmentation posterior (``intensity_posterior=True``): the prior's ``p(s | z)`` alone is only as detailed as a
    decoded low-resolution latent grid. Dalca et al. (sec. 3) segment with the per-voxel posterior given ``z`` *and*
    the image, ``p(s_j = l | z, x_j) ∝ p(s_j = l | z) p(x_j | s_j = l)``: the anatomy from the prior, the voxel's own
    intensity for the detail. With this option every eval output (``forward``, ``mean_logits``, ``sample``) is the
    logits ``log_softmax(decoder(z)) + log p(x_j | s_j = l)`` of that posterior (a softmax of them is the
    normalised posterior), and ``distribution`` adds the ``"intensity_log_likelihood"`` ``(B, C, *spatial)`` (with the
    likelihood fitted to the image: bias field, per-image Gaussians) to its maps.
    Training outputs are unchanged.

    The model contract (:py:class:`~monai_probseg.networks.contract.DistributionModel`):

    - ``forward(x)`` in eval: label logits ``(B, C, *spatial)`` of the posterior mean, ``decoder(mu(x))`` (plus the
      intensity log-likelihoods with ``intensity_posterior``);
    - ``distribution(x)``: ``{"latent_mean", "latent_log_var"}``, the latent grids brought to voxel resolution by
      nearest-neighbour upsampling (every voxel holds its grid cell's values, ``(B, L, *spatial)``), so that the
      sliding-window inferer stitches them like logits (and ``"intensity_log_likelihood"`` with
      ``intensity_posterior``);
    - ``sample(maps, n, generator)``: average-pools the maps back onto the latent grid (cells of ``f^d`` voxels from
      the origin), draws ``z = mu + sigma * eps`` with ``eps`` drawn once per sample for the whole grid, and decodes
      every ``z`` with the frozen decoder: ``(B, n, C, *spatial)`` logits. ``mean_logits(maps)`` decodes the pooled
      mean.

    Sliding windows: the latent is a spatial grid and the decoder is convolutional, so a sample is decoded from the
    whole stitched latent grid at once, with one noise draw for it: no seams in the samples. The latent of a cell
    near a window border is computed from that window's context only and blended with its neighbours' windows; when
    windows are aligned with the grid (``roi_size`` and the window step multiples of ``f``) the pooled maps equal the
    windows' latents (blended), otherwise cells mixing two windows are averaged. For the paper's setting use one
    window for the whole image (``roi_size`` >= the image) where memory allows. The sampler is not per voxel: do not
    use the inferer's ``sample_roi`` with this model.

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3 (that of ``prior``).
        in_channels: number of image channels.
        num_classes: number of labels ``C`` (that of ``prior``).
        prior: the trained :py:class:`AnatomicalPriorVAE`; its decoder is copied and frozen.
        channels: feature channels of the image encoder's levels; those of the prior by default.
        strides: strides of the image encoder's levels; those of the prior by default. Their product must equal the
            prior's, so that ``q(z | x)`` lives on the prior's latent grid.
        kernel_size: convolution kernel size of the image encoder.
        act: activation of the image encoder.
        norm: normalisation of the image encoder.
        dropout: dropout rate of the image encoder.
        log_var_bounds: ``(low, high)`` of the latent log-variances.
        intensity_means: initial intensity means ``(C, in_channels)`` (or ``(C,)`` for every channel); by default
            ``0`` for label 0 (air is exactly 0 in skull-stripped images) and evenly spaced in ``(0, 1]`` for the
            others. The ordering of the initial means decides which label each intensity cluster starts as.
        intensity_log_var_bounds: ``(low, high)`` of the intensity log-variances ``log sigma_lc^2``.
        supervised: train with the supervised form of the ELBO (``forward(x, y)`` then needs the label map ``y``).
        num_mc_samples: number of reparameterised draws of ``q(z | x)`` per training forward pass.
        intensity_posterior: eval outputs are the segmentation posterior ``p(s | z, x)`` (prior times intensity
            likelihood, see above) instead of the prior's ``p(s | z)``.
        bias_field_order: 0 (default): no bias field, the paper's model; ``K >= 1``: a smooth bias field of DCT
            frequencies up to ``K`` per axis in the likelihood (see above).
        bias_field_bound: the largest ``|log b|`` of the bias field (a soft bound).
        bias_field_iterations: EM steps fitting the bias field in every forward pass.
        intensity_fit_iterations: 0 (default): the learnt tissue Gaussians for every image (the paper); ``n >= 1``:
            at inference, ``n`` EM steps fitting each image's own tissue Gaussians (and bias field), see above.
            Training outputs are unchanged.
        intensity_prior_count: the weight, in voxels, of the learnt Gaussians in each image's fit.

    Example::

        prior = AnatomicalPriorVAE(2, num_classes=4, latent_channels=4)  # trained on label maps
        net = AnatomicalPriorSegmentation(2, in_channels=1, num_classes=4, prior=prior)
        loss_fn = AnatomicalPriorELBOLoss()
        loss = loss_fn(**net(image))["loss"]  # train mode, no labels
        net.eval()
        logits = net(image)  # (B, 4, H, W), the posterior mean's segmentation
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        num_classes: int,
        prior: AnatomicalPriorVAE,
        channels: Sequence[int] | None = None,
        strides: Sequence[int] | None = None,
        kernel_size: int | None = None,
        act: tuple | str | None = None,
        norm: tuple | str | None = None,
        dropout: float | None = None,
        log_var_bounds: Sequence[float] | None = None,
        intensity_means: Sequence | torch.Tensor | None = None,
        intensity_log_var_bounds: Sequence[float] = (-9.0, 2.0),
        supervised: bool = False,
        num_mc_samples: int = 1,
        intensity_posterior: bool = False,
        bias_field_order: int = 0,
        bias_field_bound: float = 1.0,
        bias_field_iterations: int = 3,
        intensity_fit_iterations: int = 0,
        intensity_prior_count: float = 10.0,
    ) -> None:
        super().__init__()
        if not isinstance(prior, AnatomicalPriorVAE):
            raise TypeError(f"prior must be an AnatomicalPriorVAE, got {type(prior).__name__}.")
        if spatial_dims != prior.spatial_dims:
            raise ValueError(f"spatial_dims is {spatial_dims} but the prior has {prior.spatial_dims}.")
        if num_classes != prior.num_classes:
            raise ValueError(f"num_classes is {num_classes} but the prior decodes {prior.num_classes} labels.")
        self.spatial_dims = spatial_dims
        self.in_channels = check_positive_int(in_channels, "in_channels")
        self.num_classes = num_classes
        self.latent_channels = prior.latent_channels
        channels = tuple(prior.channels if channels is None else channels)
        strides = tuple(prior.strides if strides is None else strides)
        if len(channels) == 0 or len(channels) != len(strides):
            raise ValueError(
                f"channels and strides must be non-empty and of equal length, got {channels} and {strides}."
            )
        if math.prod(strides) != prior.factor:
            raise ValueError(
                f"strides {strides} downsample by {math.prod(strides)}, the prior's latent grid by {prior.factor}: "
                "q(z | x) must live on the prior's grid."
            )
        self.factor = prior.factor
        self.log_var_bounds = _check_bounds(
            prior.log_var_bounds if log_var_bounds is None else log_var_bounds, "log_var_bounds"
        )
        self.intensity_log_var_bounds = _check_bounds(intensity_log_var_bounds, "intensity_log_var_bounds")
        self.supervised = bool(supervised)
        self.intensity_posterior = bool(intensity_posterior)
        self.num_mc_samples = check_positive_int(num_mc_samples, "num_mc_samples")
        self.encoder = _LatentEncoder(
            spatial_dims,
            in_channels,
            self.latent_channels,
            channels,
            strides,
            prior.kernel_size if kernel_size is None else kernel_size,
            prior.act if act is None else act,
            prior.norm if norm is None else norm,
            prior.dropout if dropout is None else dropout,
        )
        if not isinstance(bias_field_order, int) or isinstance(bias_field_order, bool) or bias_field_order < 0:
            raise ValueError(f"bias_field_order must be an integer >= 0, got {bias_field_order!r}.")
        self.bias_field_order = bias_field_order
        self.bias_field_bound = float(bias_field_bound)
        self.bias_field_iterations = check_positive_int(bias_field_iterations, "bias_field_iterations")
        self.intensity_fit_iterations = check_positive_int(
            intensity_fit_iterations, "intensity_fit_iterations", minimum=0
        )
        if not (math.isfinite(float(intensity_prior_count)) and float(intensity_prior_count) >= 0):
            raise ValueError(f"intensity_prior_count must be a finite number >= 0, got {intensity_prior_count!r}.")
        self.intensity_prior_count = float(intensity_prior_count)
        self.decoder = copy.deepcopy(prior.decoder)
        for p in self.decoder.parameters():
            p.requires_grad_(False)
        self.decoder.eval()

        if intensity_means is None:
            means = torch.linspace(0.0, 1.0, num_classes).unsqueeze(1).repeat(1, in_channels)
        else:
            means = torch.as_tensor(intensity_means, dtype=torch.float32)
            if means.ndim == 1:
                means = means.unsqueeze(1).repeat(1, in_channels)
            if tuple(means.shape) != (num_classes, in_channels):
                raise ValueError(
                    f"intensity_means has shape {tuple(means.shape)}, expected ({num_classes}, {in_channels}) "
                    "(labels, channels) or ({num_classes},)."
                )
        self.intensity_mean = nn.Parameter(means.clone())
        lo, hi = self.intensity_log_var_bounds
        start = min(max(math.log(0.05**2), lo + 1e-3 * (hi - lo)), hi - 1e-3 * (hi - lo))  # sigma 0.05 if in bounds
        raw = math.log((start - lo) / (hi - start))  # the inverse of the sigmoid bound
        self._intensity_log_var_raw = nn.Parameter(torch.full((num_classes, in_channels), raw))

    @property
    def intensity_log_var(self) -> torch.Tensor:
        """Bounded intensity log-variances ``log sigma_lc^2``, ``(C, in_channels)``."""
        return _bounded(self._intensity_log_var_raw, self.intensity_log_var_bounds)

    def train(self, mode: bool = True) -> AnatomicalPriorSegmentation:
        """Set train/eval mode; the frozen prior decoder always stays in eval mode (fixed batch-norm statistics).

        Args:
            mode: train mode (True) or eval mode (False).
        """
        super().train(mode)
        self.decoder.eval()
        return self

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``q(z | x)``: latent mean and log-variance ``(B, L, *grid)`` of an image (zero-padded to the grid).

        Args:
            x: image ``(B, in_channels, *spatial)``.
        """
        self._check_spatial(x, "image", self.in_channels)
        mu, raw = self.encoder(self._pad(x))
        return mu, _bounded(raw, self.log_var_bounds)

    def _bias_correct(
        self, x: torch.Tensor, mu: torch.Tensor, prior_logits: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(x / b, log b)`` with ``b`` fitted for the latent mean ``mu`` and the learnt Gaussians (training).

        ``(x, None)`` without a bias field. ``prior_logits``: the decoder's logits of ``mu`` cropped to ``x``, when the
        caller already has them.
        """
        if self.bias_field_order == 0:
            return x, None
        if prior_logits is None:
            prior_logits = self._crop(self.decode(mu), x.shape[2:])
        fit = self._em_fit(x, prior_logits, 0)
        return fit["image"], fit["log_bias"]

    @torch.no_grad()
    def _em_fit(self, x: torch.Tensor, prior_logits: torch.Tensor, intensity_iterations: int) -> dict:
        """The per-image EM of the likelihood given the prior's ``p(s | z)`` (``prior_logits``), without gradient.

        ``bias_field_iterations`` bias steps with the learnt Gaussians (with a bias field), then
        ``intensity_iterations`` steps of each image's own Gaussians and bias field. Returns ``{"image"}`` (``x / b``),
        ``"log_bias"`` (or None), ``"intensity_mean"`` and ``"intensity_log_var"`` (``(B, C, ch)``).
        """
        mask = (x != 0).any(1, keepdim=True)
        log_prior = F.log_softmax(prior_logits.float(), dim=1)
        prior_mean, prior_log_var = self.intensity_mean.detach().float(), self.intensity_log_var.detach().float()
        mean = prior_mean.expand(x.shape[0], -1, -1)
        log_var = prior_log_var.expand(x.shape[0], -1, -1)
        log_bias = None
        corrected = x.float()

        def posterior() -> torch.Tensor:
            return torch.softmax(log_prior + label_log_likelihood(corrected, mean, log_var), dim=1)

        def bias_step() -> None:
            nonlocal log_bias, corrected
            log_bias = fit_log_bias(
                x, posterior(), mean, log_var, mask, self.bias_field_order, self.bias_field_bound
            ).to(log_prior.dtype)
            corrected = x.float() * torch.exp(-log_bias)

        if self.bias_field_order > 0:
            for _ in range(self.bias_field_iterations):
                bias_step()
        for _ in range(intensity_iterations):
            mean, log_var = fit_tissue_gaussians(
                corrected,
                posterior(),
                mask,
                prior_mean,
                prior_log_var,
                self.intensity_prior_count,
                self.intensity_log_var_bounds,
            )
            if self.bias_field_order > 0:
                bias_step()
        return {
            "image": corrected.to(x.dtype),
            "log_bias": None if log_bias is None else log_bias.to(x.dtype),
            "intensity_mean": mean,
            "intensity_log_var": log_var,
        }

    def intensity_model(self, x: torch.Tensor) -> dict:
        """The likelihood fitted to each image at inference: ``{"image": x / b, "log_bias", "intensity_mean",
        "intensity_log_var"}``.

        ``log_bias`` ``(B, in_channels, *spatial)`` (None without a bias field); the tissue Gaussians ``(B, C,
        in_channels)`` are each image's own with ``intensity_fit_iterations > 0``, else the learnt ones.

        Args:
            x: image ``(B, in_channels, *spatial)``.
        """
        mu = self.encode(x)[0]
        return self._em_fit(x, self._crop(self.decode(mu), x.shape[2:]), self.intensity_fit_iterations)

    def bias_corrected(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The image divided by its estimated bias field, ``x / b``, and ``log b`` (``x`` and None without one).

        The field of :py:meth:`intensity_model` (fitted with each image's own Gaussians when
        ``intensity_fit_iterations > 0``).

        Args:
            x: image ``(B, in_channels, *spatial)``.
        """
        if self.bias_field_order == 0:  # no field: nothing to fit (the per-scan Gaussians do not change x)
            return x, None
        fit = self.intensity_model(x)
        return fit["image"], fit["log_bias"]

    def _intensity_log_likelihood(self, x: torch.Tensor, prior_logits: torch.Tensor) -> torch.Tensor:
        """``log p(x_j | s_j = l)`` ``(B, C, *spatial)`` with the likelihood fitted to each image (inference)."""
        fit = self._em_fit(x, prior_logits, self.intensity_fit_iterations)
        return label_log_likelihood(fit["image"], fit["intensity_mean"], fit["intensity_log_var"])

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The frozen ``p(s | z)``: label logits ``(B, C, *grid * f)`` of latent grids ``(B, L, *grid)``.

        Args:
            z: latent grids.
        """
        self._check_spatial(z, "z", self.latent_channels)
        return self.decoder(z)

    def _with_intensity(self, logits: torch.Tensor, log_lik: torch.Tensor | None) -> torch.Tensor:
        """``log p(s | z) + log p(x | s)`` (the segmentation posterior's logits) with ``intensity_posterior``.

        ``logits`` is ``(B, C, *spatial)`` or ``(B, N, C, *spatial)``; ``log_lik`` ``(B, C, *spatial)``.
        """
        if not self.intensity_posterior:
            return logits
        if log_lik is None:
            raise KeyError(
                "maps must hold the 'intensity_log_likelihood' (from distribution(x)) when intensity_posterior is set."
            )
        self._check_spatial(log_lik, "maps['intensity_log_likelihood']", self.num_classes)
        log_prior = F.log_softmax(logits.float(), dim=-self.spatial_dims - 1)
        log_lik = log_lik.float()
        if logits.ndim == log_lik.ndim + 1:
            log_lik = log_lik.unsqueeze(1)
        return (log_prior + log_lik).to(logits.dtype)

    def _decode_samples(self, z: torch.Tensor, spatial: Sequence[int]) -> torch.Tensor:
        """``(B, N, L, *grid)`` latents to ``(B, N, C, *spatial)`` logits."""
        batch, num = z.shape[:2]
        logits = self.decode(z.reshape(batch * num, *z.shape[2:]))
        return self._crop(logits, spatial).reshape(batch, num, self.num_classes, *spatial)

    def _draw(self, mu: torch.Tensor, log_var: torch.Tensor, num_samples: int, generator) -> torch.Tensor:
        gen = make_generator(generator)
        device = gen.device if gen is not None else mu.device
        eps = torch.randn((mu.shape[0], num_samples, *mu.shape[1:]), generator=gen, device=device).to(mu)
        return mu.unsqueeze(1) + torch.exp(0.5 * log_var).unsqueeze(1) * eps

    def forward(
        self, x: torch.Tensor, y: torch.Tensor | None = None, generator: int | torch.Generator | None = None
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        """Eval: the posterior mean's label logits ``(B, C, *spatial)``. Train: the arguments of the ELBO loss.

        In train mode returns ``{"logits": (B, M, C, *spatial)`` (``M = num_mc_samples`` reparameterised draws of
        ``q(z | x)`` through the frozen decoder), ``"image"``, ``"latent_mean"``, ``"latent_log_var"`` ``(B, L,
        *grid)``, ``"intensity_mean"``, ``"intensity_log_var"`` ``(C, in_channels)``}, plus ``"log_bias"`` ``(B,
        in_channels, *spatial)`` with a bias field (``"image"`` is then the corrected ``x / b``) and ``"target"``
        (``y``) when ``supervised``: ``AnatomicalPriorELBOLoss(supervised=...)(**outputs)`` is the loss.

        Args:
            x: image ``(B, in_channels, *spatial)``.
            y: label map ``(B, 1, *spatial)``; needed in training when ``supervised``, ignored otherwise.
            generator: seed or generator of the training draws.
        """
        spatial = tuple(x.shape[2:])
        mu, log_var = self.encode(x)
        if not self.training:
            logits = self._crop(self.decode(mu), spatial)
            if not self.intensity_posterior:
                return logits
            return self._with_intensity(logits, self._intensity_log_likelihood(x, logits))
        image, log_bias = self._bias_correct(x, mu)
        if self.supervised and y is None:
            raise ValueError("the supervised AnatomicalPriorSegmentation needs the label map y in training: net(x, y).")
        z = self._draw(mu, log_var, self.num_mc_samples, generator)
        outputs = {
            "logits": self._decode_samples(z, spatial),
            "image": image,
            "latent_mean": mu,
            "latent_log_var": log_var,
            "intensity_mean": self.intensity_mean,
            "intensity_log_var": self.intensity_log_var,
        }
        if log_bias is not None:
            outputs["log_bias"] = log_bias
        if self.supervised:
            outputs["target"] = y
        return outputs

    def distribution(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"latent_mean", "latent_log_var"}`` ``(B, L, *spatial)``: the latent grids of ``q(z | x)`` at voxel scale.

        Args:
            x: image ``(B, in_channels, *spatial)`` (a window of it under the sliding-window inferer).
        """
        spatial = tuple(x.shape[2:])
        mu, log_var = self.encode(x)
        maps = {
            "latent_mean": self._crop(self._upsample(mu), spatial),
            "latent_log_var": self._crop(self._upsample(log_var), spatial),
        }
        if self.intensity_posterior:
            prior_logits = self._crop(self.decode(mu), spatial)
            maps["intensity_log_likelihood"] = self._intensity_log_likelihood(x, prior_logits).to(mu.dtype)
        return maps

    def _upsample(self, grid: torch.Tensor) -> torch.Tensor:
        for axis in range(2, grid.ndim):
            grid = grid.repeat_interleave(self.factor, dim=axis)
        return grid

    def _grid(self, maps: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, tuple[int, ...]]:
        for key in ("latent_mean", "latent_log_var"):
            if key not in maps:
                raise KeyError(
                    f"maps must hold 'latent_mean' and 'latent_log_var' (from distribution(x)), got {sorted(maps)}."
                )
            self._check_spatial(maps[key], f"maps['{key}']", self.latent_channels)
        mean, log_var = maps["latent_mean"], maps["latent_log_var"]
        if mean.shape != log_var.shape:
            raise ValueError(f"latent_mean {tuple(mean.shape)} and latent_log_var {tuple(log_var.shape)} differ.")
        spatial = tuple(mean.shape[2:])
        pool = F.avg_pool2d if self.spatial_dims == 2 else F.avg_pool3d
        stacked = self._pad(torch.cat([mean, log_var], 1), mode="replicate")
        grid = pool(stacked, self.factor) if self.factor > 1 else stacked
        return grid[:, : self.latent_channels], grid[:, self.latent_channels :], spatial

    def mean_logits(self, maps: dict[str, torch.Tensor]) -> torch.Tensor:
        """Label logits ``(B, C, *spatial)`` of the (stitched) latent mean.

        Args:
            maps: the output of :py:meth:`distribution`.
        """
        mean, _, spatial = self._grid(maps)
        return self._with_intensity(self._crop(self.decode(mean), spatial), maps.get("intensity_log_likelihood"))

    def sample(
        self, maps: dict[str, torch.Tensor], num_samples: int, generator: int | torch.Generator | None = None
    ) -> torch.Tensor:
        """``num_samples`` logit samples ``(B, N, C, *spatial)``: draws of ``q(z | x)`` through the frozen decoder.

        ``eps = randn(B, N, L, *grid)`` is drawn once per sample for the whole latent grid, on the generator's device
        (CPU for a seed; the maps' device for ``None``): the same generator state gives the same samples.

        Args:
            maps: the output of :py:meth:`distribution` (stitched over windows by the inferer).
            num_samples: number of samples ``N``.
            generator: seed or ``torch.Generator`` of the draws; ``None``: torch's global random state.
        """
        num_samples = check_positive_int(num_samples, "num_samples")
        mean, log_var, spatial = self._grid(maps)
        logits = self._decode_samples(self._draw(mean, log_var, num_samples, generator), spatial)
        return self._with_intensity(logits, maps.get("intensity_log_likelihood"))
