# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""Helpers for bundle configs: where the bundle lives, which checkpoint to resume from, loading weights."""

from __future__ import annotations

import glob
import logging
import os

import torch

__all__ = ["bundle_root", "latest_checkpoint", "load_weights"]

logger = logging.getLogger(__name__)


def _is_bundle(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, "configs", "metadata.json"))


def bundle_root(name: str) -> str:
    """The folder of bundle ``name``, so that its configs run from any working directory.

    Configs call it as ``"bundle_root": "$monai_probseg.bundle.bundle_root('<name>')"``. Tried in order (a bundle
    folder is one with ``configs/metadata.json``):

    1. the current directory, when it is the bundle ``name`` (``cd bundles/brats_ssn``);
    2. ``bundles/<name>`` under the current directory (the root of a checkout);
    3. ``bundles/<name>`` of the source tree this package is imported from, so ``python -m monai.bundle run
       --config_file <checkout>/bundles/brats_ssn/configs/inference.json`` works from any directory.

    The command line is not read. A bundle copied somewhere else is run with MONAI's own override,
    ``python -m monai.bundle run --config_file <copy>/configs/inference.json --bundle_root <copy>``, which replaces
    this expression.

    Args:
        name: the bundle's folder name, e.g. ``"brats_ssn"``.

    Returns:
        the bundle folder (absolute); the current directory, with a warning, when none of the above is a bundle.

    Example::

        "bundle_root": "$monai_probseg.bundle.bundle_root('brats_ssn')"
    """
    cwd = os.getcwd()
    package_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    candidates = [cwd] if os.path.basename(cwd) == name else []
    candidates += [os.path.join(cwd, "bundles", name), os.path.join(package_parent, "bundles", name)]
    for folder in candidates:
        if _is_bundle(folder):
            return os.path.normpath(folder)
    logger.warning(
        "cannot locate bundle '%s' (looked for configs/metadata.json in %s); using the current directory: pass "
        "--bundle_root <bundle folder>",
        name,
        ", ".join(candidates),
    )
    return cwd


def latest_checkpoint(ckpt_dir: str | os.PathLike, pattern: str = "checkpoint*.pt") -> str | None:
    """The most recently written checkpoint in ``ckpt_dir`` matching ``pattern``, ``None`` if there is none.

    Args:
        ckpt_dir: the checkpoint folder.
        pattern: glob pattern of the checkpoint files (``CheckpointSaver``'s epoch checkpoints by default).

    Example::

        "resume_from": "$monai_probseg.bundle.latest_checkpoint(@ckpt_dir)"
    """
    files = glob.glob(os.path.join(os.fspath(ckpt_dir), pattern))
    return max(files, key=os.path.getmtime) if files else None


def load_weights(network: torch.nn.Module, checkpoint: str | os.PathLike, key: str = "model") -> torch.nn.Module:
    """Load a state dict saved by ``CheckpointSaver`` (plain, or under ``key``) into ``network`` (unwrapping DDP).

    Args:
        network: the network (or a ``DistributedDataParallel`` around it).
        checkpoint: path of the ``.pt`` file.
        key: the entry holding the weights when the file stores several objects.

    Raises:
        FileNotFoundError: when the file does not exist.
        RuntimeError: when the weights do not fit the network (naming the file).

    Example::

        load_weights(net, "bundles/brats_ssn/models/model.pt")
    """
    path = os.fspath(checkpoint)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"checkpoint '{path}' does not exist: train the bundle (configs/train.json) or pass --checkpoint <file>."
        )
    device = next(network.parameters()).device
    state = torch.load(path, map_location=device, weights_only=True)
    if isinstance(state, dict) and key in state and isinstance(state[key], dict):
        state = state[key]
    module = network.module if hasattr(network, "module") else network
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        raise RuntimeError(
            f"the weights in '{path}' do not fit the network {type(module).__name__}: is network_def the one the "
            f"checkpoint was trained with? {e}"
        ) from e
    return network
