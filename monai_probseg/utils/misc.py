# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""Small helpers shared across the package: random generators and input checks."""

from __future__ import annotations

import torch

__all__ = ["make_generator", "check_finite", "check_spatial_dims", "check_positive_int"]


def make_generator(
    seed_or_generator: int | torch.Generator | None, device: torch.device | str | None = None
) -> torch.Generator | None:
    """Return a ``torch.Generator`` on ``device`` for a seed, pass a generator through, or ``None`` for ``None``.

    Every random draw in monai_probseg takes a generator or a seed (see docs/design.rst): the same seed gives
    the same samples. ``None`` means torch's global random state.

    Args:
        seed_or_generator: an integer seed, an existing generator (returned as is), or ``None``.
        device: device of the generator to create from a seed (CPU by default).

    Example::

        g = make_generator(0)
        torch.randn(3, generator=g)
    """
    if seed_or_generator is None or isinstance(seed_or_generator, torch.Generator):
        return seed_or_generator
    if isinstance(seed_or_generator, bool) or not isinstance(seed_or_generator, int):
        raise TypeError(f"seed must be an int, a torch.Generator or None, got {type(seed_or_generator).__name__}.")
    gen = torch.Generator(device=torch.device(device) if device is not None else "cpu")
    gen.manual_seed(int(seed_or_generator))
    return gen


def check_finite(tensor: torch.Tensor, name: str) -> None:
    """Raise ``ValueError`` naming ``name`` if ``tensor`` holds NaN or Inf values."""
    if tensor.is_floating_point() and not torch.isfinite(tensor).all():
        num_nan = int(torch.isnan(tensor).sum())
        num_inf = int(torch.isinf(tensor).sum())
        raise ValueError(f"{name} contains {num_nan} NaN and {num_inf} Inf values; expected finite numbers.")


def check_spatial_dims(spatial_dims: int, name: str = "spatial_dims") -> int:
    """Check that ``spatial_dims`` is 2 or 3 and return it."""
    if spatial_dims not in (2, 3):
        raise ValueError(f"{name} must be 2 or 3, got {spatial_dims!r}.")
    return int(spatial_dims)


def check_positive_int(value: int, name: str, minimum: int = 1) -> int:
    """Check that ``value`` is an integer >= ``minimum`` and return it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)
