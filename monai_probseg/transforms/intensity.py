# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""Intensity scaling of skull-stripped images that keeps air at exactly 0.

A model with a Gaussian intensity likelihood per label (the anatomical prior of Dalca et al., CVPR 2018) needs
intensities on one scale for every scan, and background (air, exactly 0 after skull stripping) kept at 0: z-scoring
would move air into the middle of the tissue intensities. :py:class:`ScaleBrainIntensity` divides each channel by a
robust high percentile of its brain voxels (the non-zero ones), so a scan of any scanner scale, bit depth or
bias-free offset maps brain tissue onto ``(0, ~1]`` and air stays 0.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends, convert_to_tensor

__all__ = ["ScaleBrainIntensity", "ScaleBrainIntensityd", "fill_background"]


class ScaleBrainIntensity(Transform):
    """Scale each channel so that the ``percentile`` of its brain voxels (non-zero, finite) becomes 1; air stays 0.

    ``x' = max(x, 0) / q`` with ``q`` the ``percentile`` of the channel's voxels where ``x > 0``. Negative values
    (interpolation undershoot, some reconstructions) are set to 0 first. A channel with fewer than ``min_voxels``
    brain voxels, or with fewer than ``min_background`` of its voxels at 0, raises a one-line error naming the file
    (from the ``MetaTensor``'s metadata), the value found and what was expected: it is not a skull-stripped brain
    image.

    Args:
        percentile: the brain-voxel percentile mapped to 1 (99: about the brightest tissue of a T1, white matter,
            without the few brightest voxels such as vessels or residual fat).
        min_voxels: fewest brain voxels accepted per channel.
        min_background: smallest fraction of voxels at 0 (air) accepted per channel; 0 accepts any image.

    Example::

        scaled = ScaleBrainIntensity(percentile=99)(t1)  # (1, H, W, D), air 0, white matter about 0.9-1
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, percentile: float = 99.0, min_voxels: int = 10, min_background: float = 0.0) -> None:
        if not 0.0 < float(percentile) <= 100.0:
            raise ValueError(f"percentile must be in (0, 100], got {percentile!r}.")
        if not 0.0 <= float(min_background) < 1.0:
            raise ValueError(f"min_background must be in [0, 1), got {min_background!r}.")
        self.percentile = float(percentile)
        self.min_voxels = int(min_voxels)
        self.min_background = float(min_background)

    def __call__(self, img: NdarrayOrTensor) -> torch.Tensor:
        """
        Args:
            img: channel-first image ``(C, *spatial)``.
        """
        x = convert_to_tensor(img, track_meta=True)
        if x.ndim < 2:
            raise ValueError(f"expected a channel-first image (C, *spatial), got shape {tuple(x.shape)}.")
        x = x.float()
        name = getattr(x, "meta", {}).get("filename_or_obj") if hasattr(x, "meta") else None
        where = f"'{name}'" if name else "the image"
        out = torch.clamp(torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0), min=0.0)
        for c in range(out.shape[0]):
            values = out[c][out[c] > 0].flatten()
            if values.numel() < self.min_voxels:
                raise ValueError(
                    f"channel {c} of {where} (shape {tuple(x.shape)}) has {values.numel()} voxel(s) above 0, "
                    f"expected at least {self.min_voxels}: is it a skull-stripped brain image (air exactly 0)?"
                )
            background = 1.0 - values.numel() / max(out[c].numel(), 1)
            if background < self.min_background:
                raise ValueError(
                    f"channel {c} of {where} (shape {tuple(x.shape)}) has {100 * background:.1f}% of its voxels at 0 "
                    f"or below, expected at least {100 * self.min_background:.0f}% air: is it skull-stripped (the "
                    "background exactly 0)?"
                )
            k = max(1, min(values.numel(), int(round(self.percentile / 100.0 * values.numel()))))
            scale = values.kthvalue(k).values
            out[c] = out[c] / scale
        return out


class ScaleBrainIntensityd(MapTransform):
    """Dictionary version of :py:class:`ScaleBrainIntensity`.

    Args:
        keys: keys of the images to scale.
        percentile: the brain-voxel percentile mapped to 1.
        min_voxels: fewest brain voxels accepted per channel.
        min_background: smallest fraction of voxels at 0 accepted per channel.
        allow_missing_keys: do not raise for missing keys.
    """

    backend = ScaleBrainIntensity.backend

    def __init__(
        self,
        keys: KeysCollection,
        percentile: float = 99.0,
        min_voxels: int = 10,
        min_background: float = 0.0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.scaler = ScaleBrainIntensity(percentile, min_voxels, min_background)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.scaler(d[key])
        return d


def fill_background(prob: torch.Tensor) -> torch.Tensor:
    """Give the probability mass a class map lacks to the background channel 0: ``p_0 += max(0, 1 - sum_c p_c)``.

    After a crop to the brain is inverted (MONAI's ``Invertd`` pads with zeros), every class probability outside the
    cropped box is 0; there the voxel is air for sure, and this makes its background probability 1. Inside the box
    (probabilities summing to 1) nothing changes.

    Args:
        prob: class probabilities ``(C, *spatial)``, channel 0 the background.
    """
    missing = (1.0 - prob.sum(0, keepdim=True)).clamp_min(0.0)
    return torch.cat([prob[:1] + missing, prob[1:]], 0)
