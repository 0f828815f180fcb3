# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""The model contract: one interface for every way of drawing samples of a segmentation.

Every probabilistic model in monai_probseg (and any model a user adds) is an ``nn.Module`` that subclasses ONE of
the base classes below. The base class *declares* the model's :py:class:`SamplingKind`, and that declaration is all
:py:class:`~monai_probseg.inferers.StochasticSlidingWindowInferer` reads to choose how to draw samples: it never
inspects a network's attributes. A plain ``nn.Module`` that subclasses none of them (an ordinary MONAI ``UNet``) is
a deterministic model: one pass, every sample equal to it.

The roles every model fills (see docs/design.rst):

- ``forward(x)`` in eval mode returns a plain tensor of logits ``(B, C, *spatial)``: the model's best single answer
  (prior mean, distribution mean, ensemble mean), so every ordinary MONAI inferer, ``verify_net_in_out`` and
  TorchScript export keep working;
- in training, ``forward(x, y)`` (or the call its trainer makes) returns what its loss needs, e.g. logits and KL
  terms;
- ``distribution(x) -> dict[str, Tensor]`` returns spatial maps ``(B, ch, *spatial)`` (the parameters of the
  model's output distribution, or what its sampler needs);
- ``sample(maps, num_samples, generator) -> Tensor`` returns ``(B, N, C, *spatial)`` logits; the same generator
  state gives the same samples.

The kinds differ in what the maps are and in how the inferer runs the network over a large volume:

- :py:class:`DistributionModel` (kind ``"distribution"``; Probabilistic U-Net, SSN): the maps are the parameters
  of the output distribution, one value per voxel. The inferer runs ``distribution`` over sliding windows and
  stitches the maps like logits, then calls ``sample(maps, n, generator)`` on the whole volume with noise drawn once
  per sample for it: N samples cost one backbone pass plus N cheap heads, and no seams.
- :py:class:`IterativeSampler` (kind ``"iterative"``; diffusion): the maps are the condition (the image) of the
  whole volume. The inferer calls ``sample(maps, n, generator, window_fn=...)``: the sampler runs its process (a
  reverse diffusion) on the whole volume with noise drawn once for it, and calls ``window_fn`` (a
  :py:class:`WindowFn`) whenever it needs a blended sliding-window pass of its network.
- :py:class:`RepeatedPassSampler` (kind ``"repeated"``; MC dropout, deep ensembles, test-time augmentation): the
  maps are the image. The inferer calls ``sample(maps, n, generator, window_fn=..., start=k)``: sample ``k`` is one
  full sliding-window pass of member ``k``.
- any other ``nn.Module`` (kind ``"deterministic"``, e.g. a MONAI ``UNet``): one sliding-window pass of
  ``forward``; every sample equals it.

Adding a method means one network file (a subclass of one of these classes) and one loss; the inferer, the
bundles and the metrics need no change.

Example::

    class GaussianLogitNoise(DistributionModel):  # mean + iid Gaussian noise on the logits
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3, padding=1)

        def forward(self, x):
            return self.conv(x)

        def distribution(self, x):
            return {"mean": self.conv(x)}

        def mean_logits(self, maps):
            return maps["mean"]

        def sample(self, maps, num_samples, generator=None):
            mean = maps["mean"].unsqueeze(1)
            noise = torch.randn((mean.shape[0], num_samples, *mean.shape[2:]), generator=generator)
            return mean + noise.to(mean)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from enum import Enum
from typing import Protocol

import torch
import torch.nn as nn

from monai_probseg.utils import check_positive_int

__all__ = [
    "SamplingKind",
    "WindowFn",
    "ProbabilisticModel",
    "DistributionModel",
    "IterativeSampler",
    "RepeatedPassSampler",
    "sampling_kind",
    "unwrap_parallel",
    "whole_image",
]


class SamplingKind(str, Enum):
    """How a model draws samples; declared by its base class, read by the inferer.

    - ``DISTRIBUTION``: spatial parameter maps plus a cheap sampler with global noise (:py:class:`DistributionModel`).
    - ``ITERATIVE``: a process over the whole volume that runs the network through windows at every step
      (:py:class:`IterativeSampler`).
    - ``REPEATED``: one full pass of the network per sample (:py:class:`RepeatedPassSampler`).
    - ``DETERMINISTIC``: a plain network with no declared kind: one pass.
    """

    DISTRIBUTION = "distribution"
    ITERATIVE = "iterative"
    REPEATED = "repeated"
    DETERMINISTIC = "deterministic"


class WindowFn(Protocol):
    """A blended sliding-window pass: ``window_fn(inputs, predictor) -> outputs`` over a whole tensor.

    ``predictor`` maps a batch of windows ``(b, ch_in, *roi)`` to ``(b, ch_out, *roi)``; the window function cuts
    ``inputs`` ``(B, ch_in, *spatial)`` into windows, runs ``predictor`` on them and blends the outputs into
    ``(B, ch_out, *spatial)``, like MONAI's ``sliding_window_inference(inputs, roi_size, sw_batch_size,
    predictor, ...)``. The inferer builds one from its own window settings; :py:func:`whole_image` is the trivial
    one (the whole tensor is one window).
    """

    def __call__(self, inputs: torch.Tensor, predictor: Callable[..., torch.Tensor]) -> torch.Tensor: ...


def whole_image(inputs: torch.Tensor, predictor: Callable[..., torch.Tensor]) -> torch.Tensor:
    """The trivial :py:class:`WindowFn`: run ``predictor`` on the whole tensor at once.

    Args:
        inputs: the tensor ``(B, ch_in, *spatial)``.
        predictor: the function to run on it.
    """
    return predictor(inputs)


class ProbabilisticModel(nn.Module):
    """Root of the model contract: an ``nn.Module`` with a declared :py:class:`SamplingKind`.

    Do not subclass this directly: subclass :py:class:`DistributionModel`, :py:class:`IterativeSampler` or
    :py:class:`RepeatedPassSampler`, which declare the kind and document what ``distribution`` and ``sample`` mean
    for it. The base classes hold no parameters or buffers, so they add nothing to ``state_dict()``.

    Attributes:
        sampling_kind: the :py:class:`SamplingKind`, a class attribute set by the base class (not annotated, so
            that TorchScript leaves it alone).
        in_channels: the number of image channels the model expects, or ``None`` if it does not say; the inferer
            checks its inputs against it.
    """

    sampling_kind = None
    in_channels = None

    def distribution(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Spatial maps ``{name: (B, ch, *spatial)}`` that ``sample`` draws from (what they are depends on the kind).

        Args:
            x: image ``(B, in_channels, *spatial)``.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement distribution(x) -> dict[str, Tensor].")

    def sample(
        self, maps: dict[str, torch.Tensor], num_samples: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``num_samples`` logit samples ``(B, N, C, *spatial)`` from the maps of :py:meth:`distribution`.

        Args:
            maps: the output of :py:meth:`distribution` (stitched over windows for a distribution model).
            num_samples: number of samples ``N``.
            generator: ``torch.Generator`` (or seed) of every random draw; ``None``: torch's global random state.
        """
        raise NotImplementedError(
            f"{type(self).__name__} must implement sample(maps, num_samples, generator) -> (B, N, C, *spatial)."
        )


class DistributionModel(ProbabilisticModel):
    """A model whose output distribution is a set of spatial parameter maps plus a cheap sampler (global noise).

    Kind ``"distribution"``: the Probabilistic U-Net (decoder features and the prior's latent Gaussian tiled over
    space) and the Stochastic Segmentation Network (mean, covariance factor and diagonal of a low-rank normal over
    logits). The inferer runs ``distribution`` over sliding windows and stitches the maps exactly like logits, then
    calls ``sample`` on the stitched whole-volume maps, so the expensive network runs once per window and the
    sampler once per sample, with noise drawn once per sample for the whole volume (no seams between windows).

    A subclass implements:

    - ``forward(x)`` (eval): logits ``(B, C, *spatial)``, the best single answer;
    - ``distribution(x) -> dict[str, Tensor]``: maps ``(B, ch, *spatial)`` whose value at a voxel depends only on
      the image around it (so that blending windows is meaningful);
    - ``sample(maps, num_samples, generator) -> (B, N, C, *spatial)`` logits, any spatial size (the whole volume,
      or the voxels of a region laid out as a ``(1, ch, V, 1[, 1])`` image: the sampler must be per voxel given its
      global noise);
    - ``mean_logits(maps) -> (B, C, *spatial)``: the best single answer from maps (equal to ``forward(x)`` for one
      window), given to the voxels where sampling is skipped.

    and may override ``sampling_mask(maps)`` (default ``None``: sample every voxel) and ``sample_moments(maps,
    num_samples, generator)`` (default ``None``: the inferer folds the chunks of ``sample`` itself), and, together,
    ``window_maps(x)`` and ``complete_maps(maps)`` (default: ``distribution`` and the identity) when fewer maps
    blend to the same result: the inferer blends ``window_maps`` and completes only the voxels it needs.
    """

    sampling_kind = SamplingKind.DISTRIBUTION

    def mean_logits(self, maps: dict[str, torch.Tensor]) -> torch.Tensor:
        """The best single answer ``(B, C, *spatial)`` from (stitched) maps.

        Args:
            maps: the output of :py:meth:`distribution`.
        """
        raise NotImplementedError(
            f"{type(self).__name__} must implement mean_logits(maps) -> (B, C, *spatial) logits: the inferer gives it "
            "to the voxels outside a sampling region."
        )

    def window_maps(self, x: torch.Tensor, *args, **kwargs) -> dict[str, torch.Tensor]:
        """The maps the inferer blends over sliding windows; by default :py:meth:`distribution` itself.

        A model whose distribution maps are, voxel by voxel, an affine function of fewer maps (the SSN's covariance
        factor is a 1x1 convolution of the head's features) returns those instead, and :py:meth:`complete_maps`
        finishes them after blending. Blending is a convex combination per voxel, so the pair must satisfy
        ``complete_maps(blend(window_maps(x))) == blend(distribution(x))``. :py:meth:`mean_logits` must accept the
        window maps too: the inferer computes the mean prediction of the whole volume from them.

        Args:
            x: image ``(B, in_channels, *spatial)``.
            args: extra positional arguments, as for :py:meth:`distribution`.
            kwargs: extra keyword arguments, as for :py:meth:`distribution`.
        """
        return self.distribution(x, *args, **kwargs)

    def complete_maps(self, maps: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The maps of :py:meth:`distribution` from (blended) :py:meth:`window_maps`; by default ``maps`` itself.

        Voxel by voxel, like :py:meth:`sampling_mask`: the inferer calls it on the whole volume, or on the voxels of
        a region only, laid out as a ``(1, ch, V, 1[, 1])`` image.

        Args:
            maps: the (stitched) output of :py:meth:`window_maps`.
        """
        return maps

    def sampling_mask(self, maps: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """Voxels ``(B, 1, *spatial)`` bool where samples can differ from :py:meth:`mean_logits`, or ``None`` (all).

        The inferer samples only inside the mask; outside it every sample equals the mean prediction. The default
        samples every voxel. The mask must be a function of each voxel's maps alone: with a ``sample_roi``, the
        inferer evaluates it on the region's voxels only, laid out as a ``(1, ch, V, 1[, 1])`` image.

        Args:
            maps: the (stitched) output of :py:meth:`distribution`.
        """
        return None

    def sample_moments(
        self,
        maps: dict[str, torch.Tensor],
        num_samples: int,
        generator: torch.Generator | None = None,
        keep_labels: bool = False,
    ) -> dict[str, torch.Tensor] | None:
        """Optional fused sampler: the moments of the probabilities of ``num_samples`` samples, or ``None``.

        A model whose samples can be summarised without materialising them (e.g. the low-rank normal of the SSN,
        :py:func:`~monai_probseg.distributions.low_rank_moments`) returns ``{"mean": (B, C, *spatial) mean
        probabilities, "m2": (B, C, *spatial) sum of squared deviations, "expected_entropy": (B, 1, *spatial)
        mean entropy}`` (plus ``"labels"`` ``(B, N, *spatial)`` uint8 with ``keep_labels``), all from samples of
        the same distribution as :py:meth:`sample`. The inferer then uses it instead of calling :py:meth:`sample`
        chunk by chunk. The default, ``None``, means the model has no such form.

        Args:
            maps: the (stitched) output of :py:meth:`distribution`.
            num_samples: number of samples ``N``.
            generator: the generator of the draws (same state, same moments).
            keep_labels: also return every sample's label map.
        """
        return None


class _ImageConditioned(ProbabilisticModel):
    """Base of the kinds whose "maps" are the image itself (the network runs on it at every step or pass)."""

    def distribution(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"image": x}``: the sampler reads the whole image itself.

        Args:
            x: image ``(B, in_channels, *spatial)``, the whole volume.
        """
        return {"image": x}


class IterativeSampler(_ImageConditioned):
    """A model that draws a sample by a process over the whole volume, running its network at every step.

    Kind ``"iterative"``: diffusion segmentation (a reverse diffusion of the segmentation conditioned on the image).
    Its distribution has no stitchable parameter maps; instead ``sample`` receives a ``window_fn``
    (:py:class:`WindowFn`) and runs every network evaluation of the process through it, as a blended sliding-window
    pass over the whole volume, while the state and the noise of the process live on the whole volume (drawn once
    for it): each sample is one coherent process, with no seams between windows.

    A subclass implements:

    - ``forward(x)`` (eval): logits ``(B, C, *spatial)``, the best single answer;
    - ``distribution(x)``: the condition of the process for the whole volume; the default, ``{"image": x}``, is the
      image itself (the inferer calls it once, on the whole volume, not per window);
    - ``sample(maps, num_samples, generator=None, window_fn=None) -> (B, N, C, *spatial)`` logits, running the
      network through ``window_fn`` (:py:func:`whole_image` when ``None``).
    """

    sampling_kind = SamplingKind.ITERATIVE

    def sample(
        self,
        maps: dict[str, torch.Tensor],
        num_samples: int,
        generator: torch.Generator | None = None,
        window_fn: WindowFn | None = None,
    ) -> torch.Tensor:
        """``num_samples`` logit samples ``(B, N, C, *spatial)`` of the whole volume.

        Args:
            maps: the output of :py:meth:`distribution`.
            num_samples: number of samples ``N``.
            generator: ``torch.Generator`` (or seed) of every random draw of the process.
            window_fn: runs the network over windows of a whole-volume tensor; :py:func:`whole_image` if ``None``.
        """
        raise NotImplementedError(
            f"{type(self).__name__} must implement sample(maps, num_samples, generator, window_fn) -> "
            "(B, N, C, *spatial)."
        )


class RepeatedPassSampler(_ImageConditioned):
    """A model whose samples are full passes of networks: MC dropout, deep ensembles, test-time augmentation.

    Kind ``"repeated"``: sample ``k`` is one full pass of :py:meth:`member` ``k`` over the whole volume (a
    sliding-window pass through ``window_fn``), so ``N`` samples cost ``N`` passes. A subclass implements:

    - ``forward(x)`` (eval): logits ``(B, C, *spatial)``, the best single answer (e.g. the log of the members' mean
      probability, or the network without dropout);
    - ``member(index)``: the callable ``(x, *args, **kwargs) -> logits`` of pass ``index``;

    and sets ``num_members`` when the set of passes is fixed (an ensemble of 5 networks gives 5 samples, whatever
    the inferer asks); ``None`` (the default) means any number (MC dropout). ``distribution(x)`` is ``{"image":
    x}`` and :py:meth:`sample` is implemented here, once for every such model: it runs the passes inside a fork of
    torch's random state seeded from ``generator``, so random layers (dropout) are reproducible and the caller's
    global random state is left untouched.
    """

    sampling_kind = SamplingKind.REPEATED
    num_members = None

    def member(self, index: int) -> Callable[..., torch.Tensor]:
        """The network of pass ``index``: a callable ``(x, *args, **kwargs) -> (B, C, *spatial)`` logits.

        Args:
            index: the sample index, ``0 <= index < num_members`` when ``num_members`` is set.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement member(index) -> the network of pass index.")

    def sample(
        self,
        maps: dict[str, torch.Tensor],
        num_samples: int,
        generator: torch.Generator | None = None,
        window_fn: WindowFn | None = None,
        start: int = 0,
    ) -> torch.Tensor:
        """Logits ``(B, N, C, *spatial)`` of passes ``start, ..., start + num_samples - 1``.

        Args:
            maps: ``{"image": x}`` from :py:meth:`distribution`.
            num_samples: number of passes ``N`` in this call.
            generator: ``torch.Generator`` (or seed) from which the random state of the passes is seeded; ``None``
                runs them on torch's global random state.
            window_fn: runs a member over windows of the whole image; :py:func:`whole_image` if ``None``.
            start: index of the first pass (the inferer draws the samples in chunks).
        """
        num_samples = check_positive_int(num_samples, "num_samples")
        start = check_positive_int(start, "start", minimum=0)
        if "image" not in maps:
            raise KeyError(f"maps must hold 'image' (from distribution(x)), got {sorted(maps)}.")
        if self.num_members is not None and start + num_samples > self.num_members:
            raise ValueError(
                f"{type(self).__name__} has {self.num_members} members, got passes {start}..{start + num_samples - 1}."
            )
        image = maps["image"]
        window_fn = whole_image if window_fn is None else window_fn
        with _forked_rng(generator, image.device):
            return torch.stack([window_fn(image, self.member(start + k)) for k in range(num_samples)], 1)


def sampling_kind(network: nn.Module) -> SamplingKind:
    """The :py:class:`SamplingKind` a network declares: that of its base class, ``DETERMINISTIC`` for any other module.

    Args:
        network: a model; ``DataParallel``/``DistributedDataParallel`` wrappers count as the module they wrap.

    Example::

        sampling_kind(StochasticSegmentationNetwork(2, 1, 2))  # SamplingKind.DISTRIBUTION
        sampling_kind(monai.networks.nets.UNet(2, 1, 2, (4, 8), (2,)))  # SamplingKind.DETERMINISTIC
    """
    network = unwrap_parallel(network)
    if not isinstance(network, ProbabilisticModel):
        return SamplingKind.DETERMINISTIC
    if network.sampling_kind is None:
        raise TypeError(
            f"{type(network).__name__} subclasses ProbabilisticModel directly and declares no sampling kind; subclass "
            "DistributionModel, IterativeSampler or RepeatedPassSampler instead."
        )
    return SamplingKind(network.sampling_kind)


def unwrap_parallel(network: nn.Module) -> nn.Module:
    """The module inside ``DataParallel``/``DistributedDataParallel`` wrappers (``network`` itself otherwise).

    Args:
        network: a module, possibly wrapped.
    """
    while isinstance(network, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        network = network.module
    return network


def _forked_rng(
    generator: int | torch.Generator | None, device: torch.device
) -> contextlib.AbstractContextManager[None]:
    """Fork torch's global random state and seed it from ``generator`` (nothing for ``None``)."""
    if generator is None:
        return contextlib.nullcontext()
    if isinstance(generator, torch.Generator):
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    else:
        seed = int(generator)
    devices = [device] if device.type == "cuda" else []

    @contextlib.contextmanager
    def _ctx() -> Iterator[None]:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            yield

    return _ctx()
