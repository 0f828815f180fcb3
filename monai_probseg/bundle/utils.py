# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""Helpers for bundle configs: where the bundle lives, which checkpoint to resume from, loading weights."""

from __future__ import annotations

import glob
import logging
import os

import torch

from monai_probseg.bundle.validation import ConfigError

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


def latest_checkpoint(
    ckpt_dir: str | os.PathLike, pattern: str = "checkpoint*.pt", required: bool = False
) -> str | None:
    """The most recently written checkpoint in ``ckpt_dir`` matching ``pattern``.

    Args:
        ckpt_dir: the checkpoint folder.
        pattern: glob pattern of the checkpoint files (``CheckpointSaver``'s epoch checkpoints by default).
        required: raise when there is none (for ``--resume True``: the training configs evaluate this expression
            even when they do not resume, so they pass ``required=@resume``; strings "true"/"1" count as true);
            otherwise return ``None``.

    Raises:
        ConfigError: (``required``) no file matches, naming the folder.

    Example::

        "load_path": "$monai_probseg.bundle.latest_checkpoint(@ckpt_dir, required=@resume)"
    """
    folder = os.fspath(ckpt_dir)
    files = glob.glob(os.path.join(folder, pattern))
    if files:
        return max(files, key=os.path.getmtime)
    if str(required).strip().lower() in ("true", "1"):
        state = "does not exist" if not os.path.isdir(folder) else "holds no file matching " + repr(pattern)
        raise ConfigError(
            f"--resume: ckpt_dir '{folder}' {state}: expected the checkpoints of an earlier run; pass that run's "
            "--ckpt_dir, or train without --resume."
        )
    return None


def _key_list(keys: list[str], limit: int = 3) -> str:
    shown = ", ".join(keys[:limit])
    return f"{len(keys)} ({shown}{', ...' if len(keys) > limit else ''})"


def load_weights(network: torch.nn.Module, checkpoint: str | os.PathLike, key: str = "model") -> torch.nn.Module:
    """Load a state dict saved by ``CheckpointSaver`` (plain, or under ``key``) into ``network`` (unwrapping DDP).

    Args:
        network: the network (or a ``DistributedDataParallel`` around it).
        checkpoint: path of the ``.pt`` file.
        key: the entry holding the weights when the file stores several objects.

    Raises:
        FileNotFoundError: when the file does not exist.
        RuntimeError: when the file is not a checkpoint or its weights do not fit the network (one line naming the
            file, the network and how many keys are missing, unexpected or of another shape).

    Example::

        load_weights(net, "bundles/brats_ssn/models/model.pt")
    """
    path = os.fspath(checkpoint)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"checkpoint '{path}' does not exist: train the bundle (configs/train.json) or pass --checkpoint <file>."
        )
    device = next(network.parameters()).device
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:
        detail = " ".join(str(e).split())[:200]
        raise RuntimeError(f"checkpoint '{path}' cannot be read as torch weights ({type(e).__name__}: {detail})") from e
    if isinstance(state, dict) and key in state and isinstance(state[key], dict):
        state = state[key]
    module = network.module if hasattr(network, "module") else network
    if not isinstance(state, dict):
        raise RuntimeError(f"checkpoint '{path}' holds a {type(state).__name__}, expected a state dict of weights.")
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [k for k in own if k in state and tuple(getattr(state[k], "shape", ())) != tuple(own[k].shape)]
    if missing or unexpected or mismatched:
        raise RuntimeError(
            f"the weights in '{path}' do not fit the network {type(module).__name__}: {_key_list(missing)} missing, "
            f"{_key_list(unexpected)} unexpected, {_key_list(mismatched)} of another shape; is network_def the one "
            "the checkpoint was trained with?"
        )
    module.load_state_dict(state)
    return network
