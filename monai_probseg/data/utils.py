# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""Checks shared by the datalist builders and the bundles' per-case input validation."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["check_same_geometry"]


def check_same_geometry(headers: Sequence[tuple[str, str, Any]], atol: float = 1e-3) -> None:
    """Check that image files share their spatial shape and affine with the first one.

    Spatial shapes are compared over the leading axes two files have in common (at most 3, NIfTI's spatial
    axes), so a multi-channel image ``(H, W, D, C)`` may sit next to ``(H, W, D)`` masks.

    Args:
        headers: ``(name, path, image)`` per file, ``image`` with ``shape`` and ``affine`` (e.g. a lazily loaded
            ``nibabel`` image: only the header is read); ``name`` describes the file in messages (e.g. ``"t2w"``,
            or ``""``).
        atol: absolute tolerance on the affines.

    Raises:
        ValueError: naming the file, what it has and what was expected, e.g.
            ``t2w file 'c-t2w.nii.gz' has shape (6, 6, 5), expected (6, 6, 6) like the t1n file 'c-t1n.nii.gz'``.

    Example::

        check_same_geometry([(m, p, nib.load(p)) for m, p in zip(("t1n", "t1c"), paths)])
    """
    if not headers:
        return
    ref_name, ref_path, ref = headers[0]

    def describe(name: str, path: str) -> str:
        return f"{name + ' ' if name else ''}file '{os.path.basename(path)}'"

    for name, path, img in headers[1:]:
        n = min(len(ref.shape), len(img.shape), 3)
        if tuple(img.shape[:n]) != tuple(ref.shape[:n]):
            raise ValueError(
                f"{describe(name, path)} has shape {tuple(img.shape)}, expected {tuple(ref.shape[:n])} like the "
                f"{describe(ref_name, ref_path)}"
            )
        if not np.allclose(np.asarray(img.affine), np.asarray(ref.affine), atol=atol):
            raise ValueError(
                f"{describe(name, path)} has affine {np.round(img.affine, 3).tolist()}, expected "
                f"{np.round(ref.affine, 3).tolist()} like the {describe(ref_name, ref_path)} (atol {atol})"
            )
