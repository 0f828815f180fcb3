from __future__ import annotations

import pytest
import torch

from monai_probseg.utils import check_finite, check_positive_int, check_spatial_dims, make_generator


def test_make_generator_seed_and_passthrough():
    a = torch.randn(4, generator=make_generator(5))
    b = torch.randn(4, generator=make_generator(5))
    assert torch.equal(a, b)
    g = torch.Generator()
    assert make_generator(g) is g
    assert make_generator(None) is None
    with pytest.raises(TypeError, match="seed"):
        make_generator(1.5)


def test_checks():
    check_finite(torch.ones(3), "x")
    with pytest.raises(ValueError, match="image contains 1 NaN and 1 Inf"):
        check_finite(torch.tensor([1.0, float("nan"), float("inf")]), "image")
    assert check_spatial_dims(3) == 3
    with pytest.raises(ValueError, match="spatial_dims must be 2 or 3, got 4"):
        check_spatial_dims(4)
    assert check_positive_int(2, "n") == 2
    with pytest.raises(ValueError, match="num_samples must be an integer >= 1, got 0"):
        check_positive_int(0, "num_samples")
