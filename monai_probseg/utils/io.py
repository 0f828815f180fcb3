# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""Atomic file writes: a reader never sees a half-written file, and a failed write leaves the previous one intact.

Every file monai_probseg writes (NIfTI outputs and phantoms, datalists, reports, benchmark results) goes through
:func:`atomic_writes`: the files are written under their own names into a temporary folder next to their
destination and moved into place with ``os.replace`` (atomic on one file system) only when all of them are complete.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

__all__ = ["atomic_write", "atomic_writes", "to_jsonable", "write_json_atomic", "write_text_atomic"]


@contextlib.contextmanager
def atomic_writes(folder: str | os.PathLike) -> Iterator[Callable[[str], str]]:
    """Write several files into ``folder``, all or nothing.

    Yields ``staged(name)``, the temporary path to write the file ``name`` to (same file name, so writers that pick
    the format from the extension, such as ``nibabel.save``, work). When the block ends without an error every
    staged file is moved to ``folder/name`` with ``os.replace``, in the order staged; on an error none is. The
    temporary folder (``folder/.partial-*``) is removed in both cases.

    Args:
        folder: the destination folder (created if missing).

    Raises:
        ValueError: when ``name`` is not a plain file name.

    Example::

        with atomic_writes("/tmp/out") as staged:
            nib.save(seg_image, staged("case_seg.nii.gz"))
            nib.save(prob_image, staged("case_prob.nii.gz"))
    """
    folder = os.path.abspath(os.path.expanduser(os.fspath(folder)))
    os.makedirs(folder, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".partial-", dir=folder)
    names: list[str] = []

    def staged(name: str) -> str:
        name = os.fspath(name)
        if not name or os.path.basename(name) != name or name in (".", ".."):
            raise ValueError(f"atomic_writes: expected a plain file name inside '{folder}', got {name!r}.")
        if name not in names:
            names.append(name)
        return os.path.join(tmp, name)

    try:
        yield staged
        for name in names:
            os.replace(os.path.join(tmp, name), os.path.join(folder, name))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def atomic_write(path: str | os.PathLike, write: Callable[[str], Any]) -> str:
    """Call ``write(tmp_path)`` on a temporary path with ``path``'s file name, then move it to ``path`` atomically.

    Args:
        path: the file to write; its folder is created if needed.
        write: writes the file it is given (e.g. ``lambda p: nib.save(image, p)``).

    Returns:
        the absolute path written.

    Example::

        atomic_write("out/seg.nii.gz", lambda tmp: nib.save(image, tmp))
    """
    path = os.path.abspath(os.path.expanduser(os.fspath(path)))
    with atomic_writes(os.path.dirname(path)) as staged:
        write(staged(os.path.basename(path)))
    return path


def write_text_atomic(text: str, path: str | os.PathLike) -> str:
    """Write ``text`` to ``path`` atomically (UTF-8, newlines as given) and return the absolute path.

    Example::

        write_text_atomic("| a | b |\\n", "results/table.md")
    """

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)

    return atomic_write(path, write)


def to_jsonable(value: Any) -> Any:
    """``value`` with JSON types only: NaN/Inf become ``None`` (JSON has neither), numpy scalars and arrays Python
    numbers and lists, paths strings, tuples lists and mapping keys strings."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, np.generic):
        return to_jsonable(value.item())
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    return value


def _not_serialisable(obj: Any) -> Any:
    raise TypeError(f"{type(obj).__name__} value {obj!r} is not JSON serialisable.")


def write_json_atomic(obj: Any, path: str | os.PathLike, indent: int = 2) -> str:
    """Write ``obj`` as JSON atomically (see :func:`to_jsonable` for the conversions) and return the absolute path.

    Args:
        obj: JSON-serialisable content (numpy values, paths and non-finite floats allowed).
        path: the file to write; its folder is created if needed.
        indent: indentation of the JSON.

    Raises:
        TypeError: naming the value that cannot be written as JSON (the previous file, if any, is kept).

    Example::

        write_json_atomic({"case_id": "case1", "dice": float("nan")}, "out/case1.json")  # "dice": null
    """
    text = json.dumps(to_jsonable(obj), indent=indent, default=_not_serialisable) + "\n"
    return write_text_atomic(text, path)
