# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""The untrained quality estimate of the bundles that ship no quality network."""

from __future__ import annotations

import pytest
import torch

from monai_probseg.metrics import LESION_REGIONS, QUALITY_REPORT_KEYS
from monai_probseg.quality import SampleAgreementQuality


def _outputs(samples: torch.Tensor) -> dict[str, torch.Tensor]:
    prob = torch.nn.functional.one_hot(samples.long(), 2).float().mean(1).movedim(-1, 1)  # (1, 2, H, W)
    zeros = torch.zeros(1, 1, *samples.shape[2:])
    return {"prob": prob, "entropy": zeros, "mutual_info": zeros, "samples": samples}


def test_agreement_is_the_predicted_dice():
    image = torch.ones(1, 1, 8, 8)
    a = torch.zeros(8, 8, dtype=torch.uint8)
    a[1:5, 1:5] = 1  # 16 voxels
    b = torch.zeros(8, 8, dtype=torch.uint8)
    b[1:5, 3:7] = 1  # 16 voxels, 8 shared with a: Dice 0.5
    quality = SampleAgreementQuality(LESION_REGIONS, failure_threshold=0.7)

    same = quality("same", image, _outputs(torch.stack([a, a])[None]))
    assert list(same)[: len(QUALITY_REPORT_KEYS)] == list(QUALITY_REPORT_KEYS)
    assert same["predicted_dice"] == {"lesion": pytest.approx(1.0)} and not same["failure"]
    assert same["quality_model"] == "sample_dice_agreement"

    half = quality("half", image, _outputs(torch.stack([a, b])[None]))
    assert half["predicted_dice"]["lesion"] == pytest.approx(0.5) and half["failure"]

    empty = quality("empty", image, _outputs(torch.zeros(1, 3, 8, 8, dtype=torch.uint8)))
    assert empty["predicted_dice"]["lesion"] == pytest.approx(1.0) and not empty["failure"]  # confident and empty

    with pytest.raises(KeyError, match="samples"):
        quality("x", image, {k: v for k, v in _outputs(torch.stack([a, a])[None]).items() if k != "samples"})
