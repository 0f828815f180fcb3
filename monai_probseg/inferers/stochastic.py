# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""Sliding-window inference that draws N coherent samples of a whole volume at about the cost of one pass.

See docs/design.rst, "The model contract: spatial parameter maps plus global noise": a stochastic network exposes
its output distribution as spatial parameter maps that sliding-window inference stitches like logits, plus a
sampler that turns the stitched maps and *global* noise into samples. The expensive backbone then runs once
per window, the cheap head once per sample, and sample k has the same "style" in every window (no seams).

The inferer has one path per kind of the model contract (:py:mod:`monai_probseg.networks.contract`) and chooses it
from the kind the model declares (:py:func:`~monai_probseg.networks.sampling_kind`), never from its attributes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from monai.data import MetaTensor
from monai.inferers import Inferer, sliding_window_inference
from monai.utils import BlendMode, PytorchPadMode, look_up_option
from tqdm.auto import tqdm

from monai_probseg.inferers.baselines import DeepEnsemble
from monai_probseg.metrics import StreamingUncertaintyMaps, class_probabilities, constant_uncertainty_maps
from monai_probseg.networks.contract import (
    DistributionModel,
    IterativeSampler,
    ProbabilisticModel,
    RepeatedPassSampler,
    SamplingKind,
    sampling_kind,
    unwrap_parallel,
)
from monai_probseg.utils import check_finite, check_positive_int, make_generator

__all__ = ["StochasticSlidingWindowInferer", "SAMPLE_OUTPUTS"]

logger = logging.getLogger(__name__)

#: the maps the inferer can return (besides ``"samples"``, see ``keep_samples``)
SAMPLE_OUTPUTS = ("seg", "prob", "entropy", "expected_entropy", "mutual_info", "variance")


class StochasticSlidingWindowInferer(Inferer):
    """Draw ``num_samples`` segmentations of whole images with sliding windows and summarise them while streaming.

    What it does depends on the kind the network declares in the model contract
    (:py:mod:`monai_probseg.networks.contract`; ``DataParallel``/``DistributedDataParallel`` wrappers are looked
    through), one path per kind:

    - **distribution** (:py:class:`~monai_probseg.networks.DistributionModel`, such as
      :py:class:`~monai_probseg.networks.nets.ProbabilisticUNet` and
      :py:class:`~monai_probseg.networks.nets.StochasticSegmentationNetwork`): one sliding-window pass over
      ``distribution()`` (MONAI's ``sliding_window_inference`` stitches the dict of maps), then ``num_samples``
      samples from the stitched maps in chunks of ``sample_batch_size``, with noise drawn once per sample for the
      whole volume. Only voxels inside the network's ``sampling_mask(maps)`` (and ``sample_roi``) are sampled;
      outside them every sample equals the network's mean prediction ``mean_logits(maps)``. With ``sample_roi``
      the mask is evaluated on the region's voxels only, laid out as a ``(1, ch, V, 1[, 1])`` image (a
      distribution model's sampler and mask work voxel by voxel).
    - **iterative** (:py:class:`~monai_probseg.networks.IterativeSampler`, e.g. diffusion):
      ``sample(distribution(inputs), n, generator, window_fn=...)`` once per chunk; ``window_fn(tensor, patch_fn)``
      runs a blended sliding-window pass of ``patch_fn`` over a whole tensor, which the sampler uses at every step.
    - **repeated** (:py:class:`~monai_probseg.networks.RepeatedPassSampler`): one full sliding-window pass per
      sample, ``sample(distribution(inputs), n, generator, window_fn=..., start=k)`` per chunk. This serves MC
      dropout (:py:func:`~monai_probseg.inferers.mc_dropout`), deep ensembles (a list of networks or a
      :py:class:`~monai_probseg.inferers.DeepEnsemble`: one pass per member, ``num_members`` samples) and test-time
      augmentation (:py:class:`~monai_probseg.inferers.FlipTTA`). Random layers draw from a fork of torch's random
      state seeded from ``seed``, so the caller's global random state is left untouched.
    - **deterministic** (any other ``nn.Module``, e.g. a MONAI ``UNet``): one sliding-window pass; every sample
      equals it (zero mutual information and variance).

    Memory does not grow with ``num_samples``: the probabilities of each chunk are folded into
    :py:class:`~monai_probseg.metrics.StreamingUncertaintyMaps` and dropped, unless ``keep_samples=True``
    (then ``"samples"``, ``(B, N, *spatial)`` uint8 label maps, is returned too).

    Args:
        roi_size: the window size (an int for every spatial axis, or one per axis; see MONAI's
            ``sliding_window_inference``: a window larger than the image pads it, and outputs are cropped back).
        sw_batch_size: windows per network call.
        overlap: window overlap (fraction of ``roi_size``).
        mode: blending of overlapping windows, ``"gaussian"`` or ``"constant"``.
        num_samples: number of samples N (>= 1).
        sample_batch_size: samples drawn per chunk (memory vs speed).
        outputs: which maps to return, from ``SAMPLE_OUTPUTS``.
        keep_samples: also return the N label maps as ``"samples"`` ``(B, N, *spatial)`` uint8.
        sw_device: device for the windows (where the network runs); default: the device of ``inputs``.
        device: device for the stitched maps, the samples and the outputs; default: the device of ``inputs``.
        progress: show tqdm bars over the windows and the sample chunks.
        seed: seed of the sampling noise (same seed, same samples); ``None`` draws from torch's global generator.
        sigma_scale: Gaussian blending width (MONAI's ``sigma_scale``).
        padding_mode: padding when the window is larger than the image (MONAI's ``padding_mode``).
        cval: padding value for ``padding_mode="constant"``.
        in_channels: expected number of image channels; by default the ``in_channels`` the network declares in the
            model contract (no check for a plain network).
        sample_roi: restrict sampling to a region of interest (for distribution models): ``"nonzero"`` samples only
            where some input channel is non-zero (skull-stripped
            MRI such as BraTS: the air is zero), a callable ``inputs -> (B, 1, *spatial)`` bool gives the region
            itself; ``None`` (default) samples everywhere the network's ``sampling_mask`` (if any) asks. Outside the
            region every sample equals the mean prediction.
        sampling: ``"shared"`` (default) draws one noise per sample for the whole volume. ``"per_window"`` is the
            naive approach, for comparison only: a full sliding-window pass per sample in which every window draws
            its own noise, so a sample is a patchwork of windows (seams), at N times the cost.

    Example::

        inferer = StochasticSlidingWindowInferer(roi_size=(96, 96, 96), num_samples=16, seed=0)
        with torch.no_grad():
            out = inferer(image, network)  # image (1, 4, 240, 240, 155)
        out["seg"], out["entropy"], out["mutual_info"]
    """

    def __init__(
        self,
        roi_size: Sequence[int] | int,
        sw_batch_size: int = 1,
        overlap: Sequence[float] | float = 0.25,
        mode: BlendMode | str = BlendMode.GAUSSIAN,
        num_samples: int = 16,
        sample_batch_size: int = 4,
        outputs: Sequence[str] = ("seg", "prob", "entropy", "mutual_info", "variance"),
        keep_samples: bool = False,
        sw_device: torch.device | str | None = None,
        device: torch.device | str | None = None,
        progress: bool = False,
        seed: int | None = None,
        sigma_scale: Sequence[float] | float = 0.125,
        padding_mode: PytorchPadMode | str = PytorchPadMode.CONSTANT,
        cval: float = 0.0,
        in_channels: int | None = None,
        sample_roi: str | Callable[[torch.Tensor], torch.Tensor] | None = None,
        sampling: str = "shared",
    ) -> None:
        super().__init__()
        self.roi_size = roi_size
        self.sw_batch_size = check_positive_int(sw_batch_size, "sw_batch_size")
        self.overlap = overlap
        self.mode = look_up_option(mode, BlendMode)
        self.num_samples = check_positive_int(num_samples, "num_samples")
        self.sample_batch_size = check_positive_int(sample_batch_size, "sample_batch_size")
        outputs = (outputs,) if isinstance(outputs, str) else tuple(outputs)
        for name in outputs:
            if name not in SAMPLE_OUTPUTS:
                raise ValueError(f"unknown output '{name}', expected some of {SAMPLE_OUTPUTS}.")
        if not outputs and not keep_samples:
            raise ValueError("outputs is empty and keep_samples is False: the inferer would return nothing.")
        self.outputs = outputs
        self.keep_samples = bool(keep_samples)
        self.sw_device = sw_device
        self.device = device
        self.progress = bool(progress)
        self.seed = seed
        self.sigma_scale = sigma_scale
        self.padding_mode = look_up_option(padding_mode, PytorchPadMode)
        self.cval = cval
        self.in_channels = in_channels
        if sample_roi is not None and not callable(sample_roi) and sample_roi != "nonzero":
            raise ValueError(f"sample_roi must be None, 'nonzero' or a callable, got {sample_roi!r}.")
        self.sample_roi = sample_roi
        self.sampling = look_up_option(sampling, ("shared", "per_window"))

    # ------------------------------------------------------------------ entry point
    def __call__(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> dict:
        """Sample ``network`` over ``inputs`` ``(B, C_in, *spatial)`` and return a dict of output maps.

        Args:
            inputs: the image batch.
            network: a model of the contract (distribution model, iterative or repeated-pass sampler), any other
                network (deterministic), or a list of networks (a :py:class:`~monai_probseg.inferers.DeepEnsemble`).
            args: extra positional arguments for the network's ``distribution`` (distribution models) or for each
                pass (repeated-pass samplers and deterministic networks).
            kwargs: extra keyword arguments, passed like ``args``.

        Returns:
            a dict with the maps named in ``outputs`` (``"seg"`` and the scalar maps have one channel, ``"prob"`` and
            ``"variance"`` C channels), plus ``"samples"`` if ``keep_samples``.
        """
        if isinstance(network, (list, tuple)):
            network = DeepEnsemble(network)
        network = unwrap_parallel(network)
        self._check_inputs(inputs, network)
        device = torch.device(self.device) if self.device is not None else inputs.device
        # samples are drawn where the network runs (sw_device), then summarised on `device`
        sample_device = torch.device(self.sw_device) if self.sw_device is not None else device
        generator = make_generator(self.seed, sample_device)

        kind = sampling_kind(network)
        if self.sampling == "per_window" and kind is not SamplingKind.DISTRIBUTION:
            raise ValueError(
                "sampling='per_window' is the naive comparison for distribution models (DistributionModel); "
                f"{type(network).__name__} is a {kind.value} model."
            )
        if kind is SamplingKind.DISTRIBUTION:
            if self.sampling == "per_window":
                result = self._summarise(self._per_window_chunks(inputs, network, generator, args, kwargs), device)
            else:
                result = self._sample_distribution(inputs, network, generator, device, args, kwargs)
        elif kind is SamplingKind.ITERATIVE:
            result = self._sample_iterative(inputs, network, generator, device)
        elif kind is SamplingKind.REPEATED:
            result = self._sample_repeated(inputs, network, generator, device, args, kwargs)
        else:
            result = self._sample_deterministic(inputs, network, device, args, kwargs)
        return _as_meta(result, inputs)

    # ------------------------------------------------------------------ checks
    def _check_inputs(self, inputs: torch.Tensor, network: Any) -> None:
        if not isinstance(inputs, torch.Tensor):
            raise TypeError(f"inputs must be a torch.Tensor (B, C, *spatial), got {type(inputs).__name__}.")
        if inputs.ndim not in (4, 5):
            raise ValueError(
                f"inputs must be (B, C, H, W) or (B, C, H, W, D), got shape {tuple(inputs.shape)}: "
                "is the batch or the channel axis missing?"
            )
        spatial_dims = inputs.ndim - 2
        if not isinstance(self.roi_size, int) and len(self.roi_size) != spatial_dims:
            raise ValueError(
                f"roi_size {tuple(self.roi_size)} has {len(self.roi_size)} axes but the inputs {tuple(inputs.shape)} "
                f"have {spatial_dims} spatial dimensions."
            )
        expected = self.in_channels
        if expected is None and isinstance(network, ProbabilisticModel):
            expected = network.in_channels
        if expected is not None and inputs.shape[1] != expected:
            raise ValueError(
                f"inputs have {inputs.shape[1]} channels (shape {tuple(inputs.shape)}), the network expects "
                f"{expected}: are the modalities stacked on axis 1?"
            )
        check_finite(inputs, f"inputs of shape {tuple(inputs.shape)}")

    def _chunks(self, desc: str, total: int | None = None) -> Iterator[tuple[int, int]]:
        """``(first sample index, number of samples)`` of each chunk of ``total`` (``num_samples``) samples."""
        total = self.num_samples if total is None else total
        chunks = [(i, min(self.sample_batch_size, total - i)) for i in range(0, total, self.sample_batch_size)]
        yield from tqdm(chunks, desc=desc, unit="chunk", disable=not self.progress, leave=False)

    def _window_fn(self, args: tuple, kwargs: dict, progress: bool = False) -> Callable[[torch.Tensor, Callable], Any]:
        """A function ``(tensor, patch_fn) -> blended output`` with this inferer's window settings."""

        def window_fn(tensor: torch.Tensor, patch_fn: Callable) -> Any:
            return sliding_window_inference(
                tensor,
                self.roi_size,
                self.sw_batch_size,
                patch_fn,
                self.overlap,
                self.mode,
                self.sigma_scale,
                self.padding_mode,
                self.cval,
                self.sw_device,
                self.device,
                progress,
                None,
                None,
                None,
                -1,
                False,
                *args,
                **kwargs,
            )

        return window_fn

    # ------------------------------------------------------------------ distribution models
    def _stitched_maps(self, inputs: torch.Tensor, network: Any, args: tuple, kwargs: dict) -> dict[str, torch.Tensor]:
        """The network's ``window_maps`` (by default its ``distribution``) blended over the windows."""
        maps = self._window_fn(args, kwargs, progress=self.progress)(inputs, network.window_maps)
        if not isinstance(maps, Mapping):
            raise TypeError(f"{type(network).__name__}.window_maps() must return a dict of maps, got {type(maps)}.")
        return {k: v.as_tensor() if isinstance(v, MetaTensor) else v for k, v in maps.items()}

    def _sample_distribution(
        self,
        inputs: torch.Tensor,
        network: DistributionModel,
        generator: torch.Generator | None,
        device: torch.device,
        args: tuple,
        kwargs: dict,
    ) -> dict[str, torch.Tensor]:
        sample_device = torch.device(self.sw_device) if self.sw_device is not None else device
        maps = {k: v.to(sample_device) for k, v in self._stitched_maps(inputs, network, args, kwargs).items()}
        spatial = next(iter(maps.values())).shape[2:]
        roi = self._roi(inputs).to(sample_device) if self.sample_roi is not None else None
        mask = None
        if roi is None:
            maps = network.complete_maps(maps)
            mask = network.sampling_mask(maps)
            if mask is not None:
                self._check_mask(mask, (inputs.shape[0], 1, *spatial))
            if mask is None or bool(mask.all()):  # nothing to skip: no compaction
                return self._sample_maps(network, maps, generator, device, "sampling")

        # sample only inside the ROI and the mask; elsewhere every sample equals the mean prediction
        full = self._constant(class_probabilities(network.mean_logits(maps)), device)
        for b in range(inputs.shape[0]):
            index = (mask if roi is None else roi)[b].reshape(-1).nonzero().squeeze(1)
            compact = _compact(maps, b, index, len(spatial))
            if roi is not None:
                # the maps completed and the network's mask evaluated on the ROI's voxels only (the bulk of a
                # volume is often outside)
                compact = network.complete_maps(compact)
                inner = network.sampling_mask(compact) if index.numel() else None
                if inner is not None:
                    self._check_mask(inner, (1, 1, index.numel(), *([1] * (len(spatial) - 1))))
                    keep = inner.reshape(-1).nonzero().squeeze(1)
                    index = index[keep]
                    compact = _compact(compact, 0, keep, len(spatial))
            if index.numel() == 0:
                continue
            part = self._sample_maps(network, compact, generator, device, f"sampling item {b}")
            for key, value in part.items():
                target = full[key][b].flatten(1)
                target[:, index.to(target.device)] = value[0].flatten(1).to(target.dtype)
        return full

    @staticmethod
    def _check_mask(mask: torch.Tensor, expected: tuple[int, ...]) -> None:
        if tuple(mask.shape) != tuple(expected):
            raise ValueError(f"sampling_mask returned shape {tuple(mask.shape)}, expected {tuple(expected)}.")

    def _sample_maps(
        self,
        network: DistributionModel,
        maps: dict[str, torch.Tensor],
        generator: torch.Generator | None,
        device: torch.device,
        desc: str,
    ) -> dict[str, torch.Tensor]:
        """The summary of ``num_samples`` samples of ``maps``: the network's fused ``sample_moments`` when it has
        one, else its ``sample`` chunk by chunk."""
        moments = network.sample_moments(maps, self.num_samples, generator, keep_labels=self.keep_samples)
        if moments is None:
            chunks = (network.sample(maps, n, generator) for _, n in self._chunks(desc))
            return self._summarise((class_probabilities(c, 2) for c in chunks), device)
        acc = StreamingUncertaintyMaps()
        acc.merge(self.num_samples, *(moments[k].to(device) for k in ("mean", "m2", "expected_entropy")))
        summary = acc.compute()
        result = {k: summary[k] for k in self.outputs}
        if self.keep_samples:
            result["samples"] = moments["labels"].to(device)
        return result

    def _roi(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.sample_roi == "nonzero":
            return (inputs != 0).any(dim=1, keepdim=True)
        roi = self.sample_roi(inputs)
        if not isinstance(roi, torch.Tensor) or roi.shape[0] != inputs.shape[0] or roi.shape[2:] != inputs.shape[2:]:
            got = tuple(roi.shape) if isinstance(roi, torch.Tensor) else type(roi).__name__
            raise ValueError(f"sample_roi returned {got}, expected a (B, 1, *spatial) mask for inputs {inputs.shape}.")
        return roi.bool()

    def _per_window_chunks(self, inputs, network, generator, args, kwargs) -> Iterator[torch.Tensor]:
        def one_window_sample(patch: torch.Tensor, *a: Any, **kw: Any) -> torch.Tensor:
            return class_probabilities(network.sample(network.distribution(patch, *a, **kw), 1, generator)[:, 0])

        window_fn = self._window_fn(args, kwargs)
        for _, n in self._chunks("naive sampling"):
            yield torch.stack([window_fn(inputs, one_window_sample) for _ in range(n)], 1)

    # ------------------------------------------------------------------ iterative samplers
    def _sample_iterative(
        self, inputs: torch.Tensor, network: IterativeSampler, generator: torch.Generator | None, device: torch.device
    ) -> dict[str, torch.Tensor]:
        maps = network.distribution(inputs)  # the condition of the process, for the whole volume
        window_fn = self._window_fn(args=(), kwargs={})
        chunks = (
            class_probabilities(network.sample(maps, n, generator, window_fn=window_fn), 2)
            for _, n in self._chunks("iterative sampling")
        )
        return self._summarise(chunks, device)

    # ------------------------------------------------------------------ one full pass per sample
    def _sample_repeated(
        self,
        inputs: torch.Tensor,
        network: RepeatedPassSampler,
        generator: torch.Generator | None,
        device: torch.device,
        args: tuple,
        kwargs: dict,
    ) -> dict[str, torch.Tensor]:
        total = self.num_samples if network.num_members is None else network.num_members
        if total != self.num_samples:
            logger.warning(
                "%s has %d members and gives %d samples; num_samples=%d is ignored.",
                type(network).__name__,
                total,
                total,
                self.num_samples,
            )
        maps = network.distribution(inputs)
        window_fn = self._window_fn(args, kwargs)
        chunks = (
            class_probabilities(network.sample(maps, n, generator, window_fn=window_fn, start=start), 2)
            for start, n in self._chunks("sampling (one pass per sample)", total)
        )
        return self._summarise(chunks, device, num_samples=total)

    # ------------------------------------------------------------------ deterministic networks
    def _sample_deterministic(
        self,
        inputs: torch.Tensor,
        network: Callable[..., torch.Tensor],
        device: torch.device,
        args: tuple,
        kwargs: dict,
    ) -> dict[str, torch.Tensor]:
        logits = self._window_fn(args, kwargs, progress=self.progress)(inputs, network)
        return self._constant(class_probabilities(logits), device)

    def _constant(self, probs: torch.Tensor, device: torch.device) -> dict[str, torch.Tensor]:
        """The summary of ``num_samples`` samples that all equal ``probs`` ``(B, C, *spatial)`` (``C >= 2``)."""
        keys = tuple(self.outputs) + (("seg",) if self.keep_samples and "seg" not in self.outputs else ())
        maps = constant_uncertainty_maps(probs.to(device), keys)
        full = {k: maps[k] for k in self.outputs}
        if self.keep_samples:
            labels = maps["seg"].to(torch.uint8)
            full["samples"] = labels.expand(-1, self.num_samples, *probs.shape[2:]).clone()
        return full

    # ------------------------------------------------------------------ summary
    def _summarise(
        self, prob_chunks: Iterator[torch.Tensor], device: torch.device, num_samples: int | None = None
    ) -> dict[str, torch.Tensor]:
        acc = StreamingUncertaintyMaps()
        kept: list[torch.Tensor] = []
        count = 0
        for probs in prob_chunks:
            probs = probs.to(device)
            if probs.ndim < 4:
                raise ValueError(f"samples must be (B, n, C, *spatial), got shape {tuple(probs.shape)}.")
            acc.update(probs)
            count += probs.shape[1]
            if self.keep_samples:
                kept.append(probs.argmax(2).to(torch.uint8))
        expected = self.num_samples if num_samples is None else num_samples
        if count != expected:
            raise RuntimeError(f"drew {count} samples, expected {expected}: the sampler returned the wrong number.")
        maps = acc.compute()
        result = {k: maps[k] for k in self.outputs}
        if self.keep_samples:
            result["samples"] = torch.cat(kept, 1)
        return result


def _as_meta(result: dict[str, torch.Tensor], inputs: torch.Tensor) -> dict[str, torch.Tensor]:
    """Give every output the metadata of ``inputs`` (affine, filename...) so ``Invertd``/``SaveImaged`` can use it."""
    if not isinstance(inputs, MetaTensor):
        return result
    out = {}
    for key, value in result.items():
        meta_value = MetaTensor(value)
        meta_value.copy_meta_from(inputs, copy_attr=True)
        out[key] = meta_value
    return out


def _compact(maps: dict[str, torch.Tensor], b: int, index: torch.Tensor, spatial_dims: int) -> dict[str, torch.Tensor]:
    """The voxels ``index`` (flat) of batch item ``b`` of every map as a ``(1, ch, V, 1[, 1])`` "image": the
    samplers and sampling masks of the distribution models work per voxel, so the layout is free."""
    shape = (index.numel(),) + (1,) * (spatial_dims - 1)
    return {k: v[b : b + 1].flatten(2)[..., index].reshape(1, v.shape[1], *shape) for k, v in maps.items()}
