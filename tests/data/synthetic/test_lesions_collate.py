# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import CacheDataset, DataLoader, Dataset
from monai.transforms import Compose, EnsureTyped, RandFlipd

from monai_probseg.data import ambiguous_lesions_2d, match_modes, sample_oracle


@pytest.mark.parametrize("kind", ["dataset", "cache", "torch"])
def test_cases_collate(kind):
    cases = ambiguous_lesions_2d(6, (24, 24), num_annotators=3, seed=0)
    transform = Compose([EnsureTyped(keys=["image", "label"]), RandFlipd(keys=["image", "label"], prob=0.5)])
    if kind == "dataset":
        loader = DataLoader(Dataset(cases), batch_size=4)
    elif kind == "cache":
        loader = DataLoader(CacheDataset(cases, transform, progress=False), batch_size=4)
    else:
        loader = torch.utils.data.DataLoader(cases, batch_size=4)
    batch = next(iter(loader))
    assert batch["image"].shape == (4, 1, 24, 24) and batch["label"].shape == (4, 3, 24, 24)
    assert batch["annotator_modes"].shape == (4, 3)
    assert batch["case_id"] == [c["case_id"] for c in cases[:4]]
    # the modes stay one list per case, with their masks and probabilities
    assert len(batch["modes"]) == 4 and len(batch["mode_names"]) == 4
    for b, case in enumerate(cases[:4]):
        assert batch["mode_names"][b] == case["mode_names"]
        assert [p for _, p in batch["modes"][b]] == [p for _, p in case["modes"]]
        np.testing.assert_array_equal(
            sample_oracle({"modes": batch["modes"][b]}, 4, seed=0), sample_oracle(case, 4, seed=0)
        )
    params = batch["params"]
    assert params["contrast"].shape == (4,) and params["has_satellite"].dtype == torch.bool
    np.testing.assert_array_equal(torch.isnan(params["satellite"]).numpy(), ~params["has_satellite"].numpy())


def test_match_modes_nearest():
    case = ambiguous_lesions_2d(1, (32, 32), num_annotators=2, seed=3)[0]
    names = case["mode_names"]
    tight = case["modes"][names.index("tight")][0]
    generous = case["modes"][names.index("generous")][0]
    noisy = tight.copy()
    noisy[tight.nonzero()[0][0], tight.nonzero()[1][0]] = 0  # one voxel off: no exact match
    empty = np.zeros_like(tight)
    masks = np.stack([tight, noisy, generous, empty])
    exact = match_modes(masks, case)
    assert exact[0] == names.index("tight") and exact[1] == -1
    nearest = match_modes(masks, case, min_iou=0.9)
    assert list(nearest[:3]) == [names.index("tight"), names.index("tight"), names.index("generous")]
    expected_empty = names.index("empty") if "empty" in names else -1
    assert nearest[3] == expected_empty  # an empty mask is near only an empty mode
    with pytest.raises(ValueError, match="min_iou"):
        match_modes(masks, case, min_iou=0.0)
