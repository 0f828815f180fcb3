# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

from __future__ import annotations

import math

import pytest
import torch

from monai_probseg.metrics import (
    UNCERTAINTY_MAP_KEYS,
    StreamingUncertaintyMaps,
    class_probabilities,
    constant_uncertainty_maps,
    uncertainty_maps,
)

SPATIAL = [(6, 7), (3, 4, 5)]


@pytest.mark.parametrize("spatial", SPATIAL)
def test_one_hot_and_uniform(spatial):
    labels = torch.randint(0, 3, (2, 1, *spatial), generator=torch.Generator().manual_seed(0))
    one_hot = torch.nn.functional.one_hot(labels, 3).movedim(-1, 2).float().expand(-1, 4, -1, *spatial)
    maps = uncertainty_maps(one_hot)
    assert set(maps) == set(UNCERTAINTY_MAP_KEYS)
    for key in ("entropy", "expected_entropy", "mutual_info"):
        assert maps[key].shape == (2, 1, *spatial)
        torch.testing.assert_close(maps[key], torch.zeros(2, 1, *spatial))
    torch.testing.assert_close(maps["variance"], torch.zeros(2, 3, *spatial))
    torch.testing.assert_close(maps["seg"], labels[:, 0:1])
    assert maps["seg"].dtype == torch.int64

    uniform = torch.full((2, 5, 4, *spatial), 0.25)
    maps = uncertainty_maps(uniform)
    torch.testing.assert_close(maps["entropy"], torch.full((2, 1, *spatial), math.log(4)))
    torch.testing.assert_close(maps["expected_entropy"], torch.full((2, 1, *spatial), math.log(4)))
    torch.testing.assert_close(maps["mutual_info"], torch.zeros(2, 1, *spatial))


def test_disagreeing_one_hot_samples_hand_values():
    # two confident samples that disagree: mean (1/2, 1/2) -> H = log 2, E[H] = 0, MI = log 2, var = 1/4
    probs = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).reshape(1, 2, 2, 1, 1)
    maps = uncertainty_maps(probs)
    assert maps["entropy"].item() == pytest.approx(math.log(2))
    assert maps["expected_entropy"].item() == pytest.approx(0.0)
    assert maps["mutual_info"].item() == pytest.approx(math.log(2))
    torch.testing.assert_close(maps["variance"].flatten(), torch.tensor([0.25, 0.25]))
    # a (0.9, 0.1) and a (0.5, 0.5) sample, by hand
    probs = torch.tensor([[0.9, 0.1], [0.5, 0.5]]).reshape(1, 2, 2, 1, 1)
    maps = uncertainty_maps(probs)
    h = lambda p: -sum(x * math.log(x) for x in p)  # noqa: E731
    assert maps["entropy"].item() == pytest.approx(h([0.7, 0.3]), rel=1e-6)
    assert maps["expected_entropy"].item() == pytest.approx((h([0.9, 0.1]) + h([0.5, 0.5])) / 2, rel=1e-6)
    torch.testing.assert_close(maps["variance"].flatten(), torch.tensor([0.04, 0.04]))


@pytest.mark.parametrize("spatial", SPATIAL)
def test_mutual_info_zero_when_samples_agree(spatial):
    p = torch.softmax(torch.randn(2, 1, 3, *spatial, generator=torch.Generator().manual_seed(1)), dim=2)
    maps = uncertainty_maps(p.expand(-1, 6, -1, *spatial))
    torch.testing.assert_close(maps["mutual_info"], torch.zeros(2, 1, *spatial), atol=1e-6, rtol=0)
    assert (maps["mutual_info"] >= 0).all()
    assert (maps["entropy"] > 0).all()
    torch.testing.assert_close(maps["variance"], torch.zeros(2, 3, *spatial), atol=1e-7, rtol=0)


def test_sigmoid_single_channel_and_logits():
    fg = torch.tensor([0.5, 1.0]).reshape(1, 2, 1, 1, 1)  # two samples of one voxel
    maps = uncertainty_maps(fg)
    assert maps["prob"].shape == (1, 2, 1, 1)
    torch.testing.assert_close(maps["prob"].flatten(), torch.tensor([0.25, 0.75]))
    assert maps["expected_entropy"].item() == pytest.approx(math.log(2) / 2)
    assert maps["seg"].item() == 1
    logits = torch.randn(2, 4, 3, 5, 5, generator=torch.Generator().manual_seed(2))
    from_logits = uncertainty_maps(logits, from_logits=True)
    from_probs = uncertainty_maps(torch.softmax(logits, dim=2))
    for key in UNCERTAINTY_MAP_KEYS:
        torch.testing.assert_close(from_logits[key], from_probs[key])
    sig = uncertainty_maps(logits[:, :, :1], from_logits=True)
    torch.testing.assert_close(sig["prob"][:, 1], torch.sigmoid(logits[:, :, 0]).mean(1))


@pytest.mark.parametrize("spatial", SPATIAL)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_streaming_equals_functional(spatial, dtype):
    g = torch.Generator().manual_seed(3)
    probs = torch.softmax(3 * torch.randn(2, 16, 3, *spatial, generator=g), dim=2)
    expected = uncertainty_maps(probs)
    acc = StreamingUncertaintyMaps(dtype=dtype)
    for lo, hi in [(0, 3), (3, 4), (4, 9), (9, 9), (9, 16)]:  # uneven chunks, one empty
        acc.update(probs[:, lo:hi])
    assert acc.num_samples == 16
    got = acc.compute()
    for key in UNCERTAINTY_MAP_KEYS:
        torch.testing.assert_close(got[key].to(expected[key].dtype), expected[key], atol=1e-5, rtol=1e-5)
    # one sample at a time (Welford) gives the same
    acc.reset()
    for n in range(16):
        acc.update(probs[:, n : n + 1])
    torch.testing.assert_close(acc.compute()["variance"], expected["variance"].to(dtype), atol=1e-6, rtol=1e-5)


def test_streaming_logits_state_and_errors():
    logits = torch.randn(1, 6, 2, 4, 4, generator=torch.Generator().manual_seed(4))
    acc = StreamingUncertaintyMaps(from_logits=True)
    with pytest.raises(RuntimeError, match="before any update"):
        acc.compute()
    acc.update(logits[:, :2])
    acc.update(logits[:, 2:])
    torch.testing.assert_close(acc.compute()["entropy"], uncertainty_maps(logits, from_logits=True)["entropy"])
    # compute returns copies: editing the result does not change the state
    maps = acc.compute()
    maps["prob"].zero_()
    assert acc.compute()["prob"].sum() > 0
    with pytest.raises(ValueError, match="reset"):
        acc.update(torch.randn(1, 2, 2, 4, 5))
    acc.reset()
    assert acc.num_samples == 0
    acc.update(torch.randn(1, 2, 2, 4, 5))
    assert acc.compute()["prob"].shape == (1, 2, 4, 5)


def test_input_errors():
    with pytest.raises(ValueError, match=r"\(B, N, C, H, W\)"):
        uncertainty_maps(torch.rand(2, 3, 4, 4))
    with pytest.raises(TypeError, match="floating-point"):
        uncertainty_maps(torch.zeros(1, 2, 3, 4, 4, dtype=torch.long))


@pytest.mark.parametrize("spatial", SPATIAL)
def test_constant_maps_equal_the_maps_of_identical_samples(spatial):
    probs = torch.softmax(torch.randn(2, 3, *spatial, generator=torch.Generator().manual_seed(0)), 1)
    ref = uncertainty_maps(probs.unsqueeze(1).expand(-1, 4, -1, *spatial))
    maps = constant_uncertainty_maps(probs)
    assert set(maps) == set(UNCERTAINTY_MAP_KEYS)
    for key in UNCERTAINTY_MAP_KEYS:
        torch.testing.assert_close(maps[key], ref[key], atol=1e-6, rtol=0)
    assert maps["entropy"].data_ptr() != maps["expected_entropy"].data_ptr()  # written into separately
    assert set(constant_uncertainty_maps(probs, ("seg", "variance"))) == {"seg", "variance"}
    with pytest.raises(ValueError, match="unknown maps"):
        constant_uncertainty_maps(probs, ("samples",))


def test_class_probabilities():
    logits = torch.tensor([[[0.0, 2.0]], [[1.0, -1.0]]]).half()  # (2, 1, 2): one channel
    probs = class_probabilities(logits)
    assert probs.dtype == torch.float32 and probs.shape == (2, 2, 2)
    torch.testing.assert_close(probs[:, 1], torch.sigmoid(logits.float()[:, 0]))
    torch.testing.assert_close(probs.sum(1), torch.ones(2, 2))
    many = torch.randn(2, 4, 3)
    torch.testing.assert_close(class_probabilities(many, dim=1), torch.softmax(many, 1))
