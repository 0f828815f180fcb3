# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""Single-process behaviour of the distributed helpers (the 2-process runs are in tests/bundles)."""

from __future__ import annotations

import torch

from monai_probseg.bundle import (
    default_backend,
    distributed_device,
    gather_objects,
    init_distributed,
    partition_items,
    rank_and_world_size,
)


def test_without_process_group(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    assert init_distributed() is False  # not launched by torchrun
    assert rank_and_world_size() == (0, 1)
    assert partition_items([3, 1, 2]) == [3, 1, 2]
    assert gather_objects({"a": 1}) == [{"a": 1}]
    assert default_backend() == ("nccl" if torch.cuda.is_available() else "gloo")
    assert distributed_device().type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_partition_shares(monkeypatch):
    import monai_probseg.bundle.distributed as d

    items = list(range(5))
    shares = []
    for rank in range(2):
        monkeypatch.setattr(d, "rank_and_world_size", lambda rank=rank: (rank, 2))
        shares.append(d.partition_items(items))
    assert shares == [[0, 2, 4], [1, 3]]  # every case exactly once, no padding
