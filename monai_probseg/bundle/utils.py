# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""Helpers for bundle configs: where the bundle lives, which checkpoint to resume from, loading weights."""

from __future__ import annotations

import glob
import logging
import os
import re
import sys
from collections.abc import Sequence

import torch

__all__ = ["bundle_root", "latest_checkpoint", "load_weights"]

logger = logging.getLogger(__name__)


def _config_files_from_argv(argv: Sequence[str]) -> list[str]:
    """The ``--config_file`` value(s) of a ``python -m monai.bundle ...`` command line."""
    files: list[str] = []
    for i, arg in enumerate(argv):
        value = None
        if arg == "--config_file" and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith("--config_file="):
            value = arg.split("=", 1)[1]
        if value:
            files.extend(re.findall(r"[^\s'\",\[\]]+\.(?:json|yaml|yml)", value))
    return files


def _bundle_dir_of(config_file: str) -> str:
    folder = os.path.dirname(os.path.abspath(config_file))
    return os.path.dirname(folder) if os.path.basename(folder) == "configs" else folder


def bundle_root(name: str, argv: Sequence[str] | None = None) -> str:
    """The folder of bundle ``name``, for configs run from any working directory.

    Tried in order: the bundle of the ``--config_file`` on the command line (``python -m monai.bundle run
    --config_file <bundle>/configs/inference.json``); the current directory when it is a bundle called ``name``;
    ``bundles/<name>`` of the source tree this package was installed from. Override with ``--bundle_root``.

    Args:
        name: the bundle's folder name, e.g. ``"brats_ssn"``.
        argv: the command line (default ``sys.argv``).

    Example::

        "bundle_root": "$monai_probseg.bundle.bundle_root('brats_ssn')"
    """
    for config in _config_files_from_argv(sys.argv if argv is None else argv):
        root = _bundle_dir_of(config)
        if os.path.isfile(os.path.join(root, "configs", "metadata.json")):
            return root
    cwd = os.getcwd()
    if os.path.basename(cwd) == name and os.path.isfile(os.path.join(cwd, "configs", "metadata.json")):
        return cwd
    source = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), os.pardir, "bundles", name)
    source = os.path.normpath(source)
    if os.path.isdir(source):
        return source
    logger.warning("cannot locate bundle '%s'; using the current directory (set --bundle_root)", name)
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
