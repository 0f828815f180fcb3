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

__all__ = [
    "PARTIAL_PREFIX",
    "atomic_write",
    "atomic_writes",
    "remove_stale_partials",
    "to_jsonable",
    "write_json_atomic",
    "write_text_atomic",
]

#: prefix of the temporary folders of :func:`atomic_writes`: ``.partial-<pid>-<random>``
PARTIAL_PREFIX = ".partial-"


@contextlib.contextmanager
def atomic_writes(folder: str | os.PathLike) -> Iterator[Callable[[str], str]]:
    """Write several files into ``folder``, all or nothing.

    Yields ``staged(name)``, the temporary path to write the file ``name`` to (same file name, so writers that pick
    the format from the extension, such as ``nibabel.save``, work). When the block ends without an error every
    staged file is moved to ``folder/name`` with ``os.replace``, in the order staged; on an error none is. The
    temporary folder (``folder/.partial-<pid>-*``) is removed in both cases; one left by a killed process is removed
    by :func:`remove_stale_partials`.

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
    tmp = tempfile.mkdtemp(prefix=f"{PARTIAL_PREFIX}{os.getpid()}-", dir=folder)
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


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_partials(folder: str | os.PathLike) -> list[str]:
    """Remove the temporary folders that killed runs of :func:`atomic_writes` left in ``folder``.

    A folder ``.partial-<pid>-*`` is stale when process ``pid`` no longer runs on this machine (older folders without
    a pid, ``.partial-<random>``, are stale too); folders of running processes (another rank writing into the same
    ``folder``) are kept.

    Args:
        folder: the folder to clean (nothing happens when it does not exist).

    Returns:
        the folders removed.

    Example::

        for path in remove_stale_partials("outputs/brats_ssn"):
            logger.warning("removed %s, left by a killed run", path)
    """
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        return []
    removed = []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if not name.startswith(PARTIAL_PREFIX) or not os.path.isdir(path) or os.path.islink(path):
            continue
        pid = name[len(PARTIAL_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and "-" in name[len(PARTIAL_PREFIX) :] and _process_alive(int(pid)):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


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
