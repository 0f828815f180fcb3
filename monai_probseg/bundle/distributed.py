# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""Small torch.distributed helpers for bundles launched with ``torchrun`` (any backend, CPU or GPU)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from monai.data import DistributedSampler, partition_dataset

__all__ = [
    "default_backend",
    "distributed_device",
    "gather_objects",
    "init_distributed",
    "partition_items",
    "rank_and_world_size",
    "validation_sampler",
]

logger = logging.getLogger(__name__)


def default_backend() -> str:
    """``"nccl"`` when CUDA is available, else ``"gloo"`` (CPU)."""
    return "nccl" if torch.cuda.is_available() else "gloo"


def rank_and_world_size() -> tuple[int, int]:
    """``(rank, world_size)`` of the initialised process group, ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed(backend: str | None = None) -> bool:
    """Initialise the default process group from ``torchrun``'s environment if it is not initialised yet.

    Args:
        backend: ``"nccl"``, ``"gloo"``, ...; ``None`` picks :func:`default_backend`.

    Returns:
        whether a process group is initialised (``False`` in a plain run, not launched by ``torchrun``).

    Example::

        init_distributed()  # in a script launched by: torchrun --nproc_per_node=2 script.py
    """
    if not dist.is_available():
        return False
    if dist.is_initialized():
        return True
    if "RANK" not in os.environ or "MASTER_ADDR" not in os.environ:  # not launched by torchrun
        return False
    dist.init_process_group(backend=backend or default_backend())
    logger.info(
        "initialised %s process group: rank %d of %d", dist.get_backend(), dist.get_rank(), dist.get_world_size()
    )
    return True


def distributed_device() -> torch.device:
    """``cuda:<LOCAL_RANK>`` when CUDA is available (the device is also made current), else ``cpu``."""
    if torch.cuda.is_available():
        device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
        torch.cuda.set_device(device)
        return device
    return torch.device("cpu")


def partition_items(items: Sequence[Any]) -> list[Any]:
    """This rank's share of ``items`` (every world_size-th item, no padding: ``even_divisible=False``).

    Args:
        items: the whole list (the same on every rank).
    """
    rank, world = rank_and_world_size()
    if world == 1:
        return list(items)
    return list(partition_dataset(list(items), num_partitions=world, shuffle=False, even_divisible=False)[rank])


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` without a process group.

    Args:
        obj: this rank's object.
    """
    rank, world = rank_and_world_size()
    if world == 1:
        return [obj]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


def validation_sampler(
    dataset: Sequence[Any], num_replicas: int | None = None, rank: int | None = None
) -> DistributedSampler:
    """A ``DistributedSampler`` for validation that works with fewer cases than processes.

    Every rank gets its share of the cases without padding (``even_divisible=False``: each case is scored once)
    when there are at least as many cases as ranks; with fewer, MONAI's sampler would fail ("dataset length is less
    than the number of participating ranks"), so the list is padded by repeating cases (``even_divisible=True``):
    every rank validates one case, and the repeated cases weigh more in that epoch's mean (a warning says so).

    Args:
        dataset: the validation dataset.
        num_replicas: number of ranks (default: the process group's world size).
        rank: this rank (default: the process group's rank).

    Example::

        "validate#sampler": "$monai_probseg.bundle.validation_sampler(@validate#dataset)"
    """
    if num_replicas is None or rank is None:
        group_rank, world = rank_and_world_size()
        num_replicas = world if num_replicas is None else num_replicas
        rank = group_rank if rank is None else rank
    pad = len(dataset) < num_replicas
    if pad and rank == 0:
        logger.warning(
            "%d validation case(s) for %d processes: repeating cases so that every process validates one (the "
            "repeated cases count more in the validation mean)",
            len(dataset),
            num_replicas,
        )
    return DistributedSampler(dataset, even_divisible=pad, num_replicas=num_replicas, rank=rank, shuffle=False)
