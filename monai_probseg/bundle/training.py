# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""Guards for the bundles' training configs."""

from __future__ import annotations

import os

__all__ = ["check_checkpoint_dir"]


def check_checkpoint_dir(
    ckpt_dir: str | os.PathLike, bundle_root: str | os.PathLike, overwrite_shipped: bool = False
) -> str:
    """Refuse to train into the bundle's own ``models/`` folder unless ``overwrite_shipped`` is set.

    A bundle ships its weights in ``<bundle_root>/models/model.pt``; a training run that saves its best
    checkpoint there replaces them. The training configs therefore save under ``outputs/<bundle>_train/`` (in
    the working directory) by default, and this check, run first by ``train.json``, stops a run whose
    ``--ckpt_dir`` points into ``models/`` before anything is written.

    Args:
        ckpt_dir: the checkpoint folder of the run (``--ckpt_dir``).
        bundle_root: the bundle's folder.
        overwrite_shipped: allow ``ckpt_dir`` inside ``<bundle_root>/models`` (``--overwrite_shipped True``).

    Returns:
        the absolute checkpoint folder.

    Raises:
        ValueError: when ``ckpt_dir`` is inside the shipped ``models/`` folder and ``overwrite_shipped`` is not set.
    """
    path = os.path.realpath(os.fspath(ckpt_dir))
    shipped = os.path.realpath(os.path.join(os.fspath(bundle_root), "models"))
    inside = path == shipped or path.startswith(shipped + os.sep)
    if inside and str(overwrite_shipped).lower() not in ("true", "1"):
        raise ValueError(
            f"ckpt_dir {os.fspath(ckpt_dir)!r} is the bundle's shipped models folder ({shipped}): training would "
            "overwrite models/model.pt. Pass another --ckpt_dir (default outputs/<bundle>_train/models), or "
            "--overwrite_shipped True to replace the shipped weights on purpose."
        )
    return path
