# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""Sliding-window inference that draws N coherent samples of a whole volume at about the cost of one pass.

See docs/design.rst, "The model contract: spatial parameter maps plus global noise": a stochastic network exposes
its output distribution as spatial parameter maps that sliding-window inference stitches like logits, plus a
sampler that turns the stitched maps and *global* noise into samples. The expensive backbone then runs once
per window, the cheap head once per sample, and sample k has the same "style" in every window (no seams).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from monai.data import MetaTensor
from monai.inferers import Inferer, sliding_window_inference
from monai.utils import BlendMode, PytorchPadMode, look_up_option
from tqdm.auto import tqdm

from monai_probseg.metrics import StreamingUncertaintyMaps
from monai_probseg.utils import check_finite, check_positive_int, make_generator

__all__ = ["StochasticSlidingWindowInferer", "SAMPLE_OUTPUTS"]

logger = logging.getLogger(__name__)

#: the maps the inferer can return (besides ``"samples"``, see ``keep_samples``)
SAMPLE_OUTPUTS = ("seg", "prob", "entropy", "expected_entropy", "mutual_info", "variance")


class StochasticSlidingWindowInferer(Inferer):
    """Draw ``num_samples`` segmentations of whole images with sliding windows and summarise them while streaming.

    What it does depends on the network:

    - **Distribution models** (a ``distribution(x)`` and a ``sample(maps, num_samples, generator)`` method, such as
      :py:class:`~monai_probseg.networks.nets.ProbabilisticUNet` and
      :py:class:`~monai_probseg.networks.nets.StochasticSegmentationNetwork`): one sliding-window pass over
      ``distribution()`` (MONAI's ``sliding_window_inference`` stitches the dict of maps), then ``num_samples``
      samples from the stitched maps in chunks of ``sample_batch_size``, with noise drawn once per sample for the
      whole volume. If the network also has ``sampling_mask(maps) -> (B, 1, *spatial)`` bool, only voxels inside the
      mask are sampled; outside it every sample equals the network's mean prediction ``mean_logits(maps)``.
    - **Iterative samplers** (a ``sample_windowed(inputs, num_samples, window_fn, generator)`` method returning
      ``(B, n, C, *spatial)`` probabilities, e.g. diffusion): called once per chunk; ``window_fn(tensor, patch_fn)``
      runs a blended sliding-window pass of ``patch_fn`` over a whole tensor, which the sampler uses at every step.
    - **Any other network** (fallback): ``num_samples`` independent sliding-window passes. This serves MC dropout
      (:py:func:`~monai_probseg.inferers.mc_dropout`), deep ensembles (a list of networks or a
      :py:class:`~monai_probseg.inferers.DeepEnsemble`: one pass per member) and test-time augmentation
      (:py:class:`~monai_probseg.inferers.FlipTTA`). Random layers draw from a seeded, forked RNG, so the caller's
      global random state is left untouched.

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
        in_channels: expected number of image channels; by default read from ``network.in_channels`` when present.
        sample_roi: restrict sampling to a region of interest (for distribution models that have
            ``mean_logits(maps)``): ``"nonzero"`` samples only where some input channel is non-zero (skull-stripped
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
            network: a distribution model, an iterative sampler, a network, or a list of networks (an ensemble).
            args: extra positional arguments for the network's ``forward``/``distribution``.
            kwargs: extra keyword arguments for the network's ``forward``/``distribution``.

        Returns:
            a dict with the maps named in ``outputs`` (``"seg"`` and the scalar maps have one channel, ``"prob"`` and
            ``"variance"`` C channels), plus ``"samples"`` if ``keep_samples``.
        """
        self._check_inputs(inputs, network)
        device = torch.device(self.device) if self.device is not None else inputs.device
        # samples are drawn where the network runs (sw_device), then summarised on `device`
        sample_device = torch.device(self.sw_device) if self.sw_device is not None else device
        generator = make_generator(self.seed, sample_device)

        if isinstance(network, (list, tuple)):
            from monai_probseg.inferers.baselines import DeepEnsemble

            network = DeepEnsemble(network)
        if self.sampling == "per_window":
            if not _is_distribution_model(network):
                raise ValueError(
                    "sampling='per_window' is the naive comparison for distribution models (with distribution() and "
                    f"sample()); {type(network).__name__} has no such methods."
                )
            chunks = self._per_window_chunks(inputs, network, generator, args, kwargs)
            result = self._summarise(chunks, device)
        elif _is_distribution_model(network):
            result = self._sample_distribution(inputs, network, generator, device, args, kwargs)
        elif callable(getattr(network, "sample_windowed", None)):
            window_fn = self._window_fn(args=(), kwargs={})
            chunks = (
                network.sample_windowed(inputs, n, window_fn, generator)
                for n in self._chunk_sizes("iterative sampling")
            )
            result = self._summarise(chunks, device)
        else:
            chunks = self._repeated_pass_chunks(inputs, network, args, kwargs)
            result = self._summarise(chunks, device)
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
        members = network if isinstance(network, (list, tuple)) else [network]
        expected = self.in_channels
        if expected is None:
            expected = getattr(members[0], "in_channels", None)
            expected = expected if isinstance(expected, int) else None
        if expected is not None and inputs.shape[1] != expected:
            raise ValueError(
                f"inputs have {inputs.shape[1]} channels (shape {tuple(inputs.shape)}), the network expects "
                f"{expected}: are the modalities stacked on axis 1?"
            )
        check_finite(inputs, f"inputs of shape {tuple(inputs.shape)}")

    def _chunk_sizes(self, desc: str) -> Iterator[int]:
        sizes = [
            min(self.sample_batch_size, self.num_samples - i)
            for i in range(0, self.num_samples, self.sample_batch_size)
        ]
        yield from tqdm(sizes, desc=desc, unit="chunk", disable=not self.progress, leave=False)

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
        maps = self._window_fn(args, kwargs, progress=self.progress)(inputs, network.distribution)
        if not isinstance(maps, Mapping):
            raise TypeError(f"{type(network).__name__}.distribution() must return a dict of maps, got {type(maps)}.")
        return {k: v.as_tensor() if isinstance(v, MetaTensor) else v for k, v in maps.items()}

    def _sample_distribution(
        self, inputs: torch.Tensor, network: Any, generator: torch.Generator | None, device: torch.device, args, kwargs
    ) -> dict[str, torch.Tensor]:
        sample_device = torch.device(self.sw_device) if self.sw_device is not None else device
        maps = {k: v.to(sample_device) for k, v in self._stitched_maps(inputs, network, args, kwargs).items()}
        mask_fn = getattr(network, "sampling_mask", None)
        mask = mask_fn(maps) if callable(mask_fn) else None
        if self.sample_roi is not None:
            roi = self._roi(inputs).to(sample_device)
            mask = roi if mask is None else mask.to(sample_device) & roi
        if mask is not None and not callable(getattr(network, "mean_logits", None)):
            raise TypeError(
                f"{type(network).__name__} has no mean_logits(maps): sampling restricted to a region needs the mean "
                "prediction for the voxels outside it."
            )
        if mask is None:
            chunks = (network.sample(maps, n, generator) for n in self._chunk_sizes("sampling"))
            return self._summarise((torch.softmax(c.float(), 2) for c in chunks), device)

        # sample only inside the mask; outside it every sample equals the mean prediction
        spatial = next(iter(maps.values())).shape[2:]
        if mask.shape[0] != inputs.shape[0] or tuple(mask.shape[2:]) != tuple(spatial):
            raise ValueError(f"sampling_mask returned shape {tuple(mask.shape)}, expected (B, 1, *{tuple(spatial)}).")
        mean_probs = torch.softmax(network.mean_logits(maps).float(), 1).unsqueeze(1)
        full = self._summarise(iter([mean_probs]), device, num_samples=1)
        if self.keep_samples:
            full["samples"] = full["samples"].expand(-1, self.num_samples, *spatial).clone()
        for b in range(inputs.shape[0]):
            index = mask[b].reshape(-1).nonzero().squeeze(1)
            if index.numel() == 0:
                continue
            # the active voxels as a (1, ch, V, 1[, 1]) "image": the sampler is per voxel, so the layout is free
            compact_shape = (index.numel(),) + (1,) * (len(spatial) - 1)
            compact = {
                k: v[b : b + 1].flatten(2)[..., index].reshape(1, v.shape[1], *compact_shape) for k, v in maps.items()
            }
            chunks = (network.sample(compact, n, generator) for n in self._chunk_sizes(f"sampling item {b}"))
            part = self._summarise((torch.softmax(c.float(), 2) for c in chunks), device)
            for key, value in part.items():
                target = full[key][b].flatten(1)
                target[:, index.to(target.device)] = value[0].flatten(1).to(target.dtype)
        return full

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
            return torch.softmax(network.sample(network.distribution(patch, *a, **kw), 1, generator)[:, 0].float(), 1)

        window_fn = self._window_fn(args, kwargs)
        for n in self._chunk_sizes("naive sampling"):
            yield torch.stack([window_fn(inputs, one_window_sample) for _ in range(n)], 1)

    # ------------------------------------------------------------------ fallback: one full pass per sample
    def _repeated_pass_chunks(self, inputs: torch.Tensor, network: Any, args, kwargs) -> Iterator[torch.Tensor]:
        members = getattr(network, "members", None)
        if members is not None and len(members) != self.num_samples:
            logger.warning(
                "an ensemble of %d members gives %d samples; num_samples=%d is ignored.",
                len(members),
                len(members),
                self.num_samples,
            )
        passes: Sequence[Callable] = list(members) if members is not None else [network] * self.num_samples
        window_fn = self._window_fn(args, kwargs)
        rng = _forked_rng(self.seed, torch.device(self.sw_device) if self.sw_device is not None else inputs.device)
        with rng:
            for start in tqdm(
                range(0, len(passes), self.sample_batch_size),
                desc="sampling (one pass per sample)",
                disable=not self.progress,
                leave=False,
            ):
                chunk = passes[start : start + self.sample_batch_size]
                yield torch.stack([torch.softmax(window_fn(inputs, net).float(), 1) for net in chunk], 1)

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


def _is_distribution_model(network: Any) -> bool:
    return callable(getattr(network, "distribution", None)) and callable(getattr(network, "sample", None))


def _forked_rng(seed: int | None, device: torch.device) -> contextlib.AbstractContextManager:
    """Seed torch's global RNG inside a fork: random layers (dropout) are reproducible, the caller's state is kept."""
    if seed is None:
        return contextlib.nullcontext()
    devices = [device] if device.type == "cuda" else []

    @contextlib.contextmanager
    def _ctx():
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            yield

    return _ctx()


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
