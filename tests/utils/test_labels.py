# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_probseg.utils import majority_vote

RATERS = np.array([[0, 1, 2, 0], [0, 1, 1, 2], [2, 2, 1, 3]], dtype=np.uint8)


def test_majority_and_tie_to_largest_label():
    # columns: clear 0, clear 1, clear 1, 3-way tie (0, 2, 3) -> the largest tied label
    out = majority_vote(RATERS)
    np.testing.assert_array_equal(out, [0, 1, 1, 3])
    assert isinstance(out, np.ndarray) and out.dtype == np.uint8
    # two raters: every disagreement is a tie -> the larger label (foreground over background)
    np.testing.assert_array_equal(majority_vote(RATERS[:2]), [0, 1, 2, 2])
    binary = np.array([[1, 1, 0, 0], [1, 0, 1, 0]])  # 2 annotators: 1 vs 1 votes is lesion
    np.testing.assert_array_equal(majority_vote(binary), [1, 1, 1, 0])


def test_tie_break_map():
    # the tie-break label wins a tie when it is among the tied labels, otherwise the largest tied label does
    np.testing.assert_array_equal(majority_vote(RATERS, tie_break=np.array([2, 2, 2, 0])), [0, 1, 1, 0])
    np.testing.assert_array_equal(majority_vote(RATERS[:2], tie_break=np.array([0, 0, 1, 1])), [0, 1, 1, 2])
    # a label outside 0..num_labels-1 never wins
    np.testing.assert_array_equal(
        majority_vote(RATERS[:2], tie_break=np.array([9, 9, 9, -1]), num_labels=4), [0, 1, 2, 2]
    )
    with pytest.raises(ValueError, match=r"tie_break has shape \(3,\), expected the raters' spatial shape \(4,\)"):
        majority_vote(RATERS, tie_break=np.zeros(3, dtype=np.int64))


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64])
def test_torch_in_torch_out(dtype):
    raters = torch.as_tensor(RATERS).to(dtype).reshape(3, 2, 2)
    out = majority_vote(raters, num_labels=4)
    assert isinstance(out, torch.Tensor) and out.dtype == dtype and out.shape == (2, 2)
    assert out.flatten().tolist() == [0, 1, 1, 3]
    np.testing.assert_array_equal(majority_vote(RATERS.astype(np.uint16)), [0, 1, 1, 3])  # counted on int64


def test_bad_input():
    with pytest.raises(ValueError, match=r"raters must be label maps \(R, \*spatial\), got shape \(4,\)"):
        majority_vote(np.zeros(4, dtype=np.uint8))
    with pytest.raises(ValueError, match="integer label maps, got dtype torch.float32"):
        majority_vote(torch.zeros(2, 3))
