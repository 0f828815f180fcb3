# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""Test fixture: a tiny two-mode problem with a known answer, for fast learning tests of probabilistic models.

Every image shows the same faint blob. Its true segmentation is ambiguous: with probability
``p_large`` the annotator draws a large disc, otherwise a small disc. A probabilistic model that
learns p(segmentation | image) must reproduce these frequencies in its samples; a deterministic
model can only give one of them (or a blend).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from monai_probseg.utils import make_generator

__all__ = ["two_mode_toy", "two_mode_masks", "classify_two_mode"]


def two_mode_masks(spatial_size: Sequence[int] = (16, 16)) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the two true masks ``(small, large)`` of the toy problem, each ``(*spatial)`` uint8.

    Args:
        spatial_size: 2 or 3 spatial sizes, each at least 8.
    """
    size = tuple(int(s) for s in spatial_size)
    if len(size) not in (2, 3) or min(size) < 8:
        raise ValueError(f"spatial_size must have 2 or 3 entries, each >= 8, got {size}.")
    grids = torch.meshgrid(*[torch.arange(s, dtype=torch.float32) - (s - 1) / 2 for s in size], indexing="ij")
    radius = torch.sqrt(sum(g**2 for g in grids))
    r = min(size) / 2
    small = (radius <= 0.25 * r).to(torch.uint8)
    large = (radius <= 0.6 * r).to(torch.uint8)
    return small, large


def two_mode_toy(
    num_samples: int,
    spatial_size: Sequence[int] = (16, 16),
    p_large: float = 0.3,
    noise: float = 0.1,
    seed: int | torch.Generator | None = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``num_samples`` (image, label) pairs of the two-mode toy problem.

    Args:
        num_samples: number of pairs.
        spatial_size: 2 or 3 spatial sizes.
        p_large: probability that the label is the large disc (the other mode is the small disc).
        noise: standard deviation of the Gaussian noise added to the image.
        seed: seed or generator.

    Returns:
        images ``(num_samples, 1, *spatial)`` float32 and labels ``(num_samples, 1, *spatial)`` int64
        in {0, 1}.

    Example::

        images, labels = two_mode_toy(64, (16, 16), p_large=0.3, seed=0)
    """
    if not 0.0 <= p_large <= 1.0:
        raise ValueError(f"p_large must be in [0, 1], got {p_large}.")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}.")
    gen = make_generator(seed)
    small, large = two_mode_masks(spatial_size)
    # the image: a blob between the two discs, brighter in the small core, the same for every case
    blob = 0.5 * large.float() + 0.5 * small.float()
    images = blob.expand(num_samples, 1, *blob.shape).clone()
    images += noise * torch.randn(images.shape, generator=gen)
    is_large = torch.rand(num_samples, generator=gen) < p_large
    labels = torch.where(is_large.view(-1, *([1] * blob.dim())), large, small).long().unsqueeze(1)
    return images, labels


def classify_two_mode(masks: torch.Tensor, spatial_size: Sequence[int] | None = None) -> torch.Tensor:
    """Say for each binary mask ``(..., *spatial)`` whether it is closer (IoU) to the large disc.

    Returns a bool tensor of the leading shape: ``True`` where the mask is nearer the large mode.
    """
    size = tuple(spatial_size) if spatial_size is not None else None
    if size is None:
        raise ValueError("spatial_size is required to build the reference masks.")
    small, large = two_mode_masks(size)
    sd = tuple(range(-len(size), 0))
    m = masks.bool()

    def iou(ref: torch.Tensor) -> torch.Tensor:
        ref = ref.bool().to(m.device)
        inter = (m & ref).sum(sd).float()
        union = (m | ref).sum(sd).float().clamp_min(1)
        return inter / union

    return iou(large) > iou(small)
