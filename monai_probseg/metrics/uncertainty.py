# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""Voxel uncertainty maps from sample probabilities, in one pass or streamed chunk by chunk."""

from __future__ import annotations

import torch

from monai_probseg.distributions import merge_moments

__all__ = [
    "CASE_OUTPUTS",
    "DEFAULT_UNCERTAINTY_MAPS",
    "UNCERTAINTY_MAP_KEYS",
    "StreamingUncertaintyMaps",
    "class_probabilities",
    "constant_uncertainty_maps",
    "uncertainty_maps",
]

# The names of the outputs, defined once here and used by the inferers, transforms, bundles and benchmarks.
#: every map :func:`uncertainty_maps` and :class:`StreamingUncertaintyMaps` compute
UNCERTAINTY_MAP_KEYS = ("prob", "seg", "entropy", "expected_entropy", "mutual_info", "variance")
#: the outputs a user gets per case (``docs/design.rst``, "Outputs"), in the order a bundle writes them: the label
#: map of the mean, the mean probabilities, the ``N`` sample label maps and the uncertainty maps
CASE_OUTPUTS = ("seg", "prob", "samples", "entropy", "mutual_info", "variance")
#: the summary maps of :data:`CASE_OUTPUTS` (all but the samples): what is computed when no maps are named
DEFAULT_UNCERTAINTY_MAPS = tuple(k for k in CASE_OUTPUTS if k in UNCERTAINTY_MAP_KEYS)


def _prepare_probs(probs: torch.Tensor, from_logits: bool, dtype: torch.dtype | None, name: str) -> torch.Tensor:
    """Check ``(B, N, C, *spatial)``, apply softmax/sigmoid if needed, expand ``C = 1`` to two channels."""
    if not isinstance(probs, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(probs).__name__}.")
    if probs.ndim not in (5, 6):
        raise ValueError(
            f"{name} must be sample probabilities of shape (B, N, C, H, W) or (B, N, C, H, W, D), "
            f"got shape {tuple(probs.shape)}."
        )
    if not probs.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor of probabilities or logits, got {probs.dtype}.")
    probs = probs.to(dtype or torch.promote_types(probs.dtype, torch.float32))
    if from_logits:
        return class_probabilities(probs, dim=2)
    return torch.cat([1.0 - probs, probs], dim=2) if probs.shape[2] == 1 else probs


def class_probabilities(logits: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Class probabilities of ``logits`` along ``dim`` in at least float32: softmax, or for a single channel the
    sigmoid expanded to two channels ``(1 - p, p)`` (the convention of every map here).

    Args:
        logits: logits with the classes on ``dim``.
        dim: the class axis.
    """
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    if logits.shape[dim] == 1:
        fg = torch.sigmoid(logits)
        return torch.cat([1.0 - fg, fg], dim=dim)
    return torch.softmax(logits, dim=dim)


def constant_uncertainty_maps(
    probs: torch.Tensor, keys: tuple[str, ...] | list[str] = UNCERTAINTY_MAP_KEYS, eps: float = 1e-12
) -> dict[str, torch.Tensor]:
    """The maps of :py:func:`uncertainty_maps` for samples that all equal ``probs`` ``(B, C, *spatial)``.

    What any number of identical samples gives, without them: the mean is ``probs``, the expected entropy equals
    the entropy, the mutual information and the variance are zero (a deterministic network, or the voxels where an
    inferer skips sampling). Only ``keys`` are computed; every returned tensor is its own storage.

    Args:
        probs: class probabilities ``(B, C, *spatial)``, ``C >= 2``.
        keys: which maps, from :data:`UNCERTAINTY_MAP_KEYS`.
        eps: lower clamp of the probabilities inside the logarithm.
    """
    unknown = [k for k in keys if k not in UNCERTAINTY_MAP_KEYS]
    if unknown:
        raise ValueError(f"unknown maps {unknown}, expected some of {UNCERTAINTY_MAP_KEYS}.")
    probs = probs.to(torch.promote_types(probs.dtype, torch.float32))
    out: dict[str, torch.Tensor] = {}
    if "prob" in keys:
        out["prob"] = probs
    if "seg" in keys:
        out["seg"] = probs.argmax(dim=1, keepdim=True)
    if "entropy" in keys or "expected_entropy" in keys:
        entropy = _entropy(probs, dim=1, eps=eps)
        if "entropy" in keys:
            out["entropy"] = entropy
        if "expected_entropy" in keys:
            out["expected_entropy"] = entropy.clone() if "entropy" in keys else entropy
    if "mutual_info" in keys:
        out["mutual_info"] = probs.new_zeros((probs.shape[0], 1, *probs.shape[2:]))
    if "variance" in keys:
        out["variance"] = torch.zeros_like(probs)
    return out


def _entropy(probs: torch.Tensor, dim: int, eps: float) -> torch.Tensor:
    """Shannon entropy (natural log) over ``dim`` (kept), with ``p`` clamped to ``>= eps`` inside the log."""
    return -(probs * torch.log(probs.clamp_min(eps))).sum(dim=dim, keepdim=True)


def _maps_from_moments(
    mean: torch.Tensor, variance: torch.Tensor, expected_entropy: torch.Tensor, eps: float
) -> dict[str, torch.Tensor]:
    """Assemble the map dict from the running mean, variance and mean entropy."""
    entropy = _entropy(mean, dim=1, eps=eps)
    return {
        "prob": mean,
        "seg": mean.argmax(dim=1, keepdim=True),
        "entropy": entropy,
        "expected_entropy": expected_entropy,
        "mutual_info": (entropy - expected_entropy).clamp_min(0.0),
        "variance": variance,
    }


def uncertainty_maps(
    probs: torch.Tensor, from_logits: bool = False, eps: float = 1e-12, dtype: torch.dtype | None = None
) -> dict[str, torch.Tensor]:
    """Voxel uncertainty maps from the class probabilities of ``N`` samples.

    With ``p_n`` the probabilities of sample ``n`` and ``p = E_n[p_n]`` their mean (natural logarithm,
    ``p`` clamped to ``>= eps`` inside the log):

    - ``"prob"`` ``(B, C, *s)``: mean probabilities ``p``;
    - ``"seg"`` ``(B, 1, *s)``: ``argmax`` of ``p`` over classes (int64);
    - ``"entropy"`` ``(B, 1, *s)``: predictive entropy ``H[p]`` (total uncertainty);
    - ``"expected_entropy"`` ``(B, 1, *s)``: ``E_n[H[p_n]]`` (aleatoric part);
    - ``"mutual_info"`` ``(B, 1, *s)``: ``H[p] - E_n[H[p_n]]`` (epistemic part, BALD; Houlsby et al. 2011,
      Gal et al., ICML 2017), clamped at 0 against rounding;
    - ``"variance"`` ``(B, C, *s)``: per-class population variance (divided by ``N``) of ``p_n``.

    :py:class:`StreamingUncertaintyMaps` computes the same maps from chunks of samples.

    Args:
        probs: sample probabilities ``(B, N, C, *spatial)``, 2D or 3D (logits with ``from_logits=True``).
            ``C = 1`` is a sigmoid foreground probability and is expanded to two channels
            ``(1 - p, p)``, so ``"prob"`` and ``"variance"`` then have two channels and ``"seg"`` is 0/1.
        from_logits: apply softmax over ``C`` (sigmoid for ``C = 1``) first.
        eps: lower clamp of the probabilities inside the logarithm.
        dtype: computation dtype; defaults to the input dtype promoted to at least float32.

    Returns:
        dict with the keys listed above.

    Example::

        probs = torch.softmax(torch.randn(2, 10, 3, 32, 32), dim=2)
        maps = uncertainty_maps(probs)
        maps["mutual_info"].shape  # (2, 1, 32, 32)
    """
    probs = _prepare_probs(probs, from_logits, dtype, "probs")
    mean = probs.mean(dim=1)
    variance = (probs - mean[:, None]).square().mean(dim=1)
    expected_entropy = _entropy(probs, dim=2, eps=eps).mean(dim=1)
    return _maps_from_moments(mean, variance, expected_entropy, eps)


class StreamingUncertaintyMaps:
    """Accumulate the maps of :py:func:`uncertainty_maps` from chunks of samples, in memory independent of ``N``.

    The state is the running mean of the probabilities, the running sum of squared deviations and the running mean
    of the per-sample entropy, each the size of one probability map; chunks are merged with the pairwise update of
    Chan, Golub and LeVeque ("Algorithms for computing the sample variance", The American Statistician, 1983;
    Welford's update when a chunk holds one sample), which is numerically stable in float32. Chunks may have
    different numbers of samples; the result equals :py:func:`uncertainty_maps` on all samples at once up to
    rounding.

    Args:
        from_logits: apply softmax over ``C`` (sigmoid for ``C = 1``) to each chunk first.
        eps: lower clamp of the probabilities inside the logarithm.
        dtype: accumulator dtype (float32 by default; float64 for extra precision).

    Example::

        acc = StreamingUncertaintyMaps()
        for _ in range(4):
            acc.update(torch.softmax(torch.randn(1, 5, 3, 32, 32), dim=2))  # 5 samples per chunk
        maps = acc.compute()  # maps of 20 samples
        acc.reset()
    """

    def __init__(self, from_logits: bool = False, eps: float = 1e-12, dtype: torch.dtype = torch.float32) -> None:
        self.from_logits = from_logits
        self.eps = eps
        self.dtype = dtype
        self.reset()

    def reset(self) -> None:
        """Forget all samples seen so far."""
        self._count = 0
        self._mean: torch.Tensor | None = None
        self._m2: torch.Tensor | None = None
        self._expected_entropy: torch.Tensor | None = None

    @property
    def num_samples(self) -> int:
        """Number of samples accumulated since the last reset."""
        return self._count

    def update(self, probs_chunk: torch.Tensor) -> None:
        """Add a chunk of samples.

        Args:
            probs_chunk: sample probabilities (or logits with ``from_logits=True``) ``(B, n, C, *spatial)``;
                every chunk must have the same ``B``, ``C`` and spatial shape.
        """
        probs = _prepare_probs(probs_chunk, self.from_logits, self.dtype, "probs_chunk")
        num_new = probs.shape[1]
        if num_new == 0:
            return
        mean_new = probs.mean(dim=1)
        m2_new = (probs - mean_new[:, None]).square().sum(dim=1)
        entropy_new = _entropy(probs, dim=2, eps=self.eps).mean(dim=1)
        self.merge(num_new, mean_new, m2_new, entropy_new)

    def merge(self, num_new: int, mean_new: torch.Tensor, m2_new: torch.Tensor, entropy_new: torch.Tensor) -> None:
        """Add ``num_new`` samples given by their moments (what a fused sampler such as
        :py:func:`~monai_probseg.distributions.low_rank_moments` returns instead of the samples).

        Args:
            num_new: number of samples the moments summarise.
            mean_new: their mean probabilities ``(B, C, *spatial)``.
            m2_new: their sum of squared deviations from ``mean_new`` ``(B, C, *spatial)``.
            entropy_new: their mean entropy ``(B, 1, *spatial)``.
        """
        num_new = int(num_new)
        if num_new <= 0:
            return
        mean_new, m2_new, entropy_new = (t.to(self.dtype) for t in (mean_new, m2_new, entropy_new))
        if m2_new.shape != mean_new.shape or entropy_new.shape != (mean_new.shape[0], 1, *mean_new.shape[2:]):
            raise ValueError(
                f"moments must be mean and m2 (B, C, *spatial) and expected entropy (B, 1, *spatial), got shapes "
                f"{tuple(mean_new.shape)}, {tuple(m2_new.shape)} and {tuple(entropy_new.shape)}."
            )
        if self._mean is None or self._m2 is None or self._expected_entropy is None:
            self._count, self._mean, self._m2, self._expected_entropy = num_new, mean_new, m2_new, entropy_new
            return
        if mean_new.shape != self._mean.shape:
            raise ValueError(
                f"new samples have per-chunk mean shape {tuple(mean_new.shape)}, which does not match the earlier "
                f"chunks ({tuple(self._mean.shape)}); call reset() before a new case."
            )
        merged = merge_moments(
            self._count,
            {"mean": self._mean, "m2": self._m2, "expected_entropy": self._expected_entropy},
            num_new,
            {"mean": mean_new, "m2": m2_new, "expected_entropy": entropy_new},
        )
        self._mean, self._m2, self._expected_entropy = merged["mean"], merged["m2"], merged["expected_entropy"]
        self._count += num_new

    def compute(self) -> dict[str, torch.Tensor]:
        """Return the maps of all samples seen since the last reset (same keys as :py:func:`uncertainty_maps`)."""
        if self._mean is None or self._m2 is None or self._expected_entropy is None:
            raise RuntimeError("StreamingUncertaintyMaps.compute() called before any update(); no samples seen.")
        return _maps_from_moments(self._mean.clone(), self._m2 / self._count, self._expected_entropy.clone(), self.eps)
