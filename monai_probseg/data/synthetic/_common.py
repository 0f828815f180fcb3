# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""Helpers shared by the synthetic data generators: smooth random fields, argument checks, atomic writes, datalists."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from typing import Any

import numpy as np

from monai_probseg.utils import atomic_write, write_json_atomic

__all__ = [
    "MIN_SIZE",
    "check_size",
    "draw_level",
    "prepare_out_dir",
    "smooth_field",
    "split_cases",
    "save_nifti",
    "save_json",
    "save_npz",
]

MIN_SIZE = 16


def check_size(spatial_size: Any, ndim: int, name: str = "spatial_size", minimum: int = MIN_SIZE) -> tuple[int, ...]:
    """Check that ``spatial_size`` holds ``ndim`` integers, each >= ``minimum``, and return them as a tuple."""
    if isinstance(spatial_size, (int, np.integer)) and not isinstance(spatial_size, bool):
        spatial_size = (int(spatial_size),) * ndim
    try:
        size = tuple(spatial_size)
    except TypeError:
        raise ValueError(f"{name} must be a sequence of {ndim} integers, got {spatial_size!r}.") from None
    if len(size) != ndim or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in size):
        raise ValueError(f"{name} must be {ndim} integers, got {spatial_size!r}.")
    if min(size) < minimum:
        raise ValueError(f"{name} must be >= {minimum} along every axis, got {tuple(int(s) for s in size)}.")
    return tuple(int(s) for s in size)


def draw_level(value: float | Sequence[float], name: str, rng: np.random.Generator) -> float:
    """A per-case level: ``value`` itself, or drawn log-uniformly from ``value = (low, high)``."""
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        low = high = float(value)
    else:
        try:
            low, high = (float(v) for v in value)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a number >= 0 or a (low, high) range, got {value!r}.") from None
    if not (np.isfinite(low) and np.isfinite(high) and 0 <= low <= high):
        raise ValueError(f"{name} must be a finite number >= 0 or a range 0 <= low <= high, got {value!r}.")
    if low == high or low == 0:
        return float(rng.uniform(low, high)) if high > low else low
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def prepare_out_dir(out_dir: str | os.PathLike) -> str:
    """Create ``out_dir`` (with parents) if needed and check that files can be written there.

    Raises:
        ValueError: when ``out_dir`` is an existing file, cannot be created, or is not writable.
    """
    path = os.path.abspath(os.fspath(out_dir))
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"out_dir {path!r} exists and is not a directory.")
    try:
        os.makedirs(path, exist_ok=True)
        # a real write is the only reliable check (os.access is wrong for root and some file systems)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as e:
        raise ValueError(f"out_dir {path!r} cannot be created or is not writable: {e.strerror or e}.") from None
    return path


def _cosine_basis(length: int, num_basis: int, rng: np.random.Generator) -> np.ndarray:
    """``(num_basis, length)`` cosines of increasing frequency (0.5 .. num_basis/2 periods) with random phases."""
    t = np.arange(length, dtype=np.float32) / max(length - 1, 1)
    freq = np.arange(1, num_basis + 1, dtype=np.float32)[:, None] * 0.5
    phase = rng.uniform(0, 2 * np.pi, size=(num_basis, 1)).astype(np.float32)
    return np.cos(2 * np.pi * freq * t[None] + phase).astype(np.float32)


def smooth_field(shape: Sequence[int], num_basis: int, rng: np.random.Generator, decay: float = 1.0) -> np.ndarray:
    """A smooth random field of ``shape`` with values of about unit standard deviation.

    The field is a sum of separable products of low-frequency cosines (``num_basis`` per axis, random phases,
    coefficient size decaying as ``1 / (1 + sum of frequency indices) ** decay``). It is evaluated axis by
    axis with tensor contractions, so the cost is ``prod(shape) * num_basis`` multiply-adds: fast for
    240x240x155 volumes, unlike Gaussian filtering of white noise.

    Args:
        shape: spatial shape of the field (1 to 3 axes).
        num_basis: number of cosines per axis; more means finer detail.
        rng: numpy random generator.
        decay: how quickly higher frequencies fade.
    """
    shape = tuple(int(s) for s in shape)
    ndim = len(shape)
    grids = np.meshgrid(*[np.arange(num_basis)] * ndim, indexing="ij")
    scale = 1.0 / (1.0 + sum(grids)) ** decay
    field = (rng.standard_normal(size=(num_basis,) * ndim) * scale).astype(np.float32)
    bases = [_cosine_basis(length, num_basis, rng) for length in shape]  # (num_basis, L) per axis
    # contract the coefficient axes from the last to the second (small intermediate arrays) ...
    for axis in range(ndim - 1, 0, -1):
        field = np.moveaxis(np.tensordot(field, bases[axis], axes=([axis], [0])), -1, axis)
    # ... and the first with one matrix product that writes the full-size C-contiguous field
    field = (bases[0].T @ np.ascontiguousarray(field).reshape(num_basis, -1)).reshape(shape)
    std = float(field[tuple(slice(None, None, max(1, s // 32)) for s in shape)].std())
    field /= np.float32(std if std > 0 else 1.0)
    return field


def split_cases(num_cases: int, split: Sequence[float] = (0.6, 0.2, 0.2)) -> tuple[int, int, int]:
    """Numbers of (training, validation, test) cases for ``num_cases``; at least one training case."""
    if len(split) != 3 or any(f < 0 for f in split) or sum(split) <= 0:
        raise ValueError(f"split must be 3 non-negative fractions (training, validation, test), got {split!r}.")
    total = float(sum(split))
    n_val = int(round(num_cases * split[1] / total))
    n_test = int(round(num_cases * split[2] / total))
    while n_val + n_test > num_cases - 1 and n_val + n_test > 0:
        if n_test >= n_val:
            n_test -= 1
        else:
            n_val -= 1
    return num_cases - n_val - n_test, n_val, n_test


def save_nifti(array: np.ndarray, affine: np.ndarray, path: str) -> str:
    """Write ``array`` as NIfTI-1 with ``affine`` (qform and sform, scanner/RAS, mm) atomically."""
    import nibabel as nib

    img = nib.Nifti1Image(array, affine)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    return atomic_write(path, lambda tmp: nib.save(img, tmp))


def save_json(obj: Any, path: str) -> str:
    """Write ``obj`` as indented JSON atomically (:func:`monai_probseg.utils.write_json_atomic`)."""
    return write_json_atomic(obj, path)


def save_npz(path: str, **arrays: Any) -> str:
    """Write ``arrays`` to a compressed ``.npz`` atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)

    return atomic_write(path, write)
