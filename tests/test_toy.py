from __future__ import annotations

import pytest
import torch

from .toy import classify_two_mode, two_mode_masks, two_mode_toy


@pytest.mark.parametrize("size", [(16, 16), (12, 12, 12)])
def test_shapes_and_modes(size):
    images, labels = two_mode_toy(50, size, p_large=0.5, seed=1)
    assert images.shape == (50, 1, *size) and labels.shape == (50, 1, *size)
    small, large = two_mode_masks(size)
    assert small.sum() < large.sum()
    # every label is exactly one of the two masks
    is_small = (labels[:, 0] == small).flatten(1).all(1)
    is_large = (labels[:, 0] == large).flatten(1).all(1)
    assert bool((is_small ^ is_large).all())
    assert torch.equal(classify_two_mode(labels[:, 0], size), is_large)


def test_frequency_and_seed():
    _, labels = two_mode_toy(4000, (16, 16), p_large=0.3, seed=0)
    freq = classify_two_mode(labels[:, 0], (16, 16)).float().mean().item()
    assert abs(freq - 0.3) < 0.03
    a = two_mode_toy(8, seed=3)
    b = two_mode_toy(8, seed=3)
    c = two_mode_toy(8, seed=4)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_bad_input():
    with pytest.raises(ValueError, match="p_large"):
        two_mode_toy(4, p_large=1.5)
    with pytest.raises(ValueError, match="spatial_size"):
        two_mode_masks((4, 4))
