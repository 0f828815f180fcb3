# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

from __future__ import annotations

import math

import pytest
import torch

from monai_probseg.inferers import StochasticSlidingWindowInferer
from monai_probseg.losses import MoSELoss
from monai_probseg.networks import SamplingKind, sampling_kind
from monai_probseg.networks.nets import MixtureOfStochasticExperts, gate_weights

from ...toy import classify_two_mode, two_mode_masks


def _tiny(dims, in_channels=1, out_channels=2, num_experts=3, rank=2, **kwargs):
    return MixtureOfStochasticExperts(
        dims,
        in_channels,
        out_channels,
        num_experts=num_experts,
        rank=rank,
        samples_per_expert=2,
        backbone_channels=4,
        channels=(4, 8),
        strides=(2,),
        num_res_units=0,
        **kwargs,
    )


def _two_expert_net(gate=(0.3, 0.7)):
    """Expert 0 predicts class 0 everywhere, expert 1 class 1, with negligible noise; the gate is fixed."""
    torch.manual_seed(0)
    net = _tiny(2, num_experts=2)
    with torch.no_grad():
        for conv in (net.head.mean, net.head.log_cov_diag, net.head.cov_factor):
            conv.weight.zero_()
        net.head.mean.bias.copy_(torch.tensor([5.0, -5.0, -5.0, 5.0]))  # channel k * C + c
        net.head.log_cov_diag.bias.fill_(-10.0)
        net.head.cov_factor.bias.zero_()
        net.gate[-1].weight.zero_()
        net.gate[-1].bias.copy_(torch.log(torch.tensor(gate)))
    return net.eval()


@pytest.mark.parametrize("dims,size", [(2, (8, 12)), (3, (8, 8, 4))])
@pytest.mark.parametrize("batch", [1, 2])
def test_shapes_and_gate(dims, size, batch):
    torch.manual_seed(0)
    net = _tiny(dims, in_channels=2, out_channels=3).eval()
    assert sampling_kind(net) is SamplingKind.DISTRIBUTION
    x = torch.randn(batch, 2, *size)
    with torch.no_grad():
        maps = net.distribution(x)
        assert maps["mean"].shape == (batch, 3 * 3, *size)
        assert maps["cov_factor"].shape == (batch, 3 * 3 * 2, *size)
        assert maps["cov_diag"].shape == (batch, 3 * 3, *size)
        assert maps["gate"].shape == (batch, 3, *size)
        w = gate_weights(maps)
        assert w.shape == (batch, 3)
        torch.testing.assert_close(w.sum(1), torch.ones(batch))
        torch.testing.assert_close(maps["gate"].sum(1), torch.ones(batch, *size))
        assert (w > 0).all()
        samples = net.sample(maps, 5, generator=0)
        assert samples.shape == (batch, 5, 3, *size)
        logits = net(x)
        assert logits.shape == (batch, 3, *size)
        torch.testing.assert_close(logits, net.mean_logits(maps))
        # the best answer is the gate-weighted mean of the experts' mean probabilities
        mean = maps["mean"].reshape(batch, 3, 3, *size).softmax(2)
        expected = (w.reshape(batch, 3, 1, *([1] * dims)) * mean).sum(1)
        torch.testing.assert_close(logits.softmax(1), expected)
    net.train()
    out = net(x, None)
    assert out["samples"].shape == (batch, 3 * 2, 3, *size)
    torch.testing.assert_close(out["sample_weights"].sum(1), torch.ones(batch))
    torch.testing.assert_close(out["gate_weights"], w, atol=1e-6, rtol=0)  # eval and train have no batch norm here


def test_same_seed_same_samples():
    torch.manual_seed(0)
    net = _tiny(2).eval()
    with torch.no_grad():
        maps = net.distribution(torch.randn(2, 1, 8, 8))
        a, b = net.sample(maps, 6, generator=3), net.sample(maps, 6, generator=3)
        c = net.sample(maps, 6, generator=4)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, c)


def test_sample_frequencies_follow_the_gate():
    net = _two_expert_net((0.3, 0.7))
    with torch.no_grad():
        maps = net.distribution(torch.randn(1, 1, 8, 8))
        torch.testing.assert_close(gate_weights(maps), torch.tensor([[0.3, 0.7]]))
        samples = net.sample(maps, 2000, generator=0)
    labels = samples.argmax(2)  # (1, 2000, 8, 8)
    # every sample is one coherent mode: all background (expert 0) or all foreground (expert 1)
    per_sample = labels.flatten(2).float().mean(2)[0]
    assert set(per_sample.unique().tolist()) <= {0.0, 1.0}
    freq = float(per_sample.mean())
    assert abs(freq - 0.7) <= 0.05, freq
    experts = net.choose_experts(maps, 2000, generator=0)
    torch.testing.assert_close(experts[0].float().mean(), torch.tensor(freq))


def test_expert_choices_are_stratified_and_marginally_follow_the_gate():
    net = _two_expert_net((0.3, 0.7))
    with torch.no_grad():
        maps = net.distribution(torch.randn(2, 1, 8, 8))
    for n in (1, 7, 10, 100):
        experts = net.choose_experts(maps, n, generator=n)
        assert experts.shape == (2, n) and experts.dtype == torch.long
        counts = (experts == 1).sum(1).float()
        assert bool(((counts - 0.7 * n).abs() <= 1.0).all()), (n, counts)  # N w_k up to one
    # each single choice is marginally k ~ w: the first of 10 choices over many seeds
    first = torch.stack([net.choose_experts(maps, 10, generator=seed)[0, 0] for seed in range(2000)])
    assert abs(float(first.float().mean()) - 0.7) < 0.04
    # and the choices are in random order, not sorted by expert
    experts = net.choose_experts(maps, 100, generator=0)[0]
    assert not bool((experts[:30] == 0).all())


def test_gate_is_learnt_on_a_toy_two_mode_problem():
    """A few steps of the OT loss move the gate toward the annotations' mode frequencies."""
    net = _two_expert_net((0.5, 0.5))
    net.train()
    opt = torch.optim.Adam(net.gate.parameters(), lr=0.05)
    x = torch.randn(4, 1, 8, 8)
    # 10 annotations per image: 3 all foreground, 7 all background
    target = torch.zeros(4, 10, 8, 8, dtype=torch.long)
    target[:, :3] = 1
    loss_fn = MoSELoss(gamma=1.0)
    for _ in range(60):
        opt.zero_grad()
        loss_fn(net(x), target).backward()
        opt.step()
    with torch.no_grad():
        w = gate_weights(net.eval().distribution(x))
    torch.testing.assert_close(w[:, 1], torch.full((4,), 0.3), atol=0.05, rtol=0)


def test_learns_the_mode_frequencies_of_a_toy_two_mode_problem():
    """Trained end to end with the OT loss (10 annotations per image: 3 large discs, 7 small), the samples draw the
    large mode at 0.3 within 5 points (about 3 s on one CPU thread)."""
    torch.manual_seed(0)
    size = (16, 16)
    small, large = two_mode_masks(size)
    blob = 0.5 * large.float() + 0.5 * small.float()
    net = MixtureOfStochasticExperts(
        2, 1, 2, num_experts=2, rank=2, samples_per_expert=2, backbone_channels=8, channels=(8, 16), strides=(2,),
        num_res_units=0,
    )  # fmt: skip
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    loss_fn = MoSELoss(gamma=0.5)
    labels = torch.stack([large] * 3 + [small] * 7).long().expand(4, -1, -1, -1)
    for step in range(150):
        if step == 100:
            loss_fn.gamma = 1.0  # the paper's schedule: capacity 1/2, then 1
        x = blob.expand(4, 1, *size) + 0.1 * torch.randn(4, 1, *size)
        opt.zero_grad()
        loss_fn(net(x), labels).backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        maps = net.distribution(blob.expand(1, 1, *size) + 0.1 * torch.randn(1, 1, *size))
        is_large = classify_two_mode(net.sample(maps, 2000, generator=0).argmax(2), size)
    assert abs(float(is_large.float().mean()) - 0.3) <= 0.05
    assert sorted(gate_weights(maps)[0].tolist()) == pytest.approx([0.3, 0.7], abs=0.05)


@pytest.mark.parametrize("dims,size,roi", [(2, (20, 16), (8, 8)), (3, (12, 10, 8), (8, 8, 8))])
def test_runs_through_the_sliding_window_inferer(dims, size, roi):
    torch.manual_seed(0)
    net = _tiny(dims).eval()
    x = torch.randn(1, 1, *size)
    make = lambda: StochasticSlidingWindowInferer(  # noqa: E731
        roi, num_samples=6, sample_batch_size=4, keep_samples=True, seed=1, overlap=0.5
    )
    with torch.no_grad():
        out, again = make()(x, net), make()(x, net)
    assert out["samples"].shape == (1, 6, *size)
    assert out["prob"].shape == (1, 2, *size)
    for key in ("entropy", "mutual_info"):
        assert out[key].shape == (1, 1, *size)
        assert torch.isfinite(out[key]).all()
        assert (out[key] >= -1e-6).all()
    assert (out["entropy"] <= math.log(2) + 1e-5).all()
    assert (out["mutual_info"] <= out["entropy"] + 1e-5).all()
    torch.testing.assert_close(out["samples"], again["samples"], rtol=0, atol=0)
    torch.testing.assert_close(out["prob"].sum(1), torch.ones(1, *size))


def test_inferer_draws_modes_from_the_gate():
    """Through the inferer (several windows) a fixed gate gives whole-image modes at its frequencies."""
    net = _two_expert_net((0.3, 0.7))
    inferer = StochasticSlidingWindowInferer((8, 8), num_samples=400, sample_batch_size=100, keep_samples=True, seed=0)
    with torch.no_grad():
        out = inferer(torch.randn(1, 1, 16, 16), net)
    per_sample = out["samples"].flatten(2).float().mean(2)[0]
    assert set(per_sample.unique().tolist()) <= {0.0, 1.0}  # no seams: one mode for the whole image
    assert abs(float(per_sample.mean()) - 0.7) <= 0.07
    # the mutual information of a 0.3 / 0.7 mixture of certain modes is its entropy, H(0.3)
    h = -(0.3 * math.log(0.3) + 0.7 * math.log(0.7))
    assert abs(float(out["mutual_info"].mean()) - h) < 0.06


def test_bad_inputs_are_named():
    net = _tiny(2)
    with pytest.raises(ValueError, match="input must be"):
        net.distribution(torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match="out_channels"):
        MixtureOfStochasticExperts(2, 1, 1)
    maps = net.eval().distribution(torch.randn(1, 1, 8, 8))
    with pytest.raises(KeyError, match="gate"):
        net.sample({k: v for k, v in maps.items() if k != "gate"}, 2)


def test_inferer_sample_roi_keeps_the_mixture_mean_outside():
    net = _two_expert_net((0.3, 0.7))
    x = torch.randn(1, 1, 16, 16)
    x[..., :8] = 0.0
    inferer = StochasticSlidingWindowInferer(
        (8, 8), num_samples=200, sample_batch_size=50, keep_samples=True, seed=0, sample_roi="nonzero"
    )
    with torch.no_grad():
        out = inferer(x, net)
    samples = out["samples"][0]
    assert (samples[..., :8] == 1).all()  # outside: the mixture mean (0.7 on the foreground expert)
    inside = samples[..., 8:].flatten(1).float().mean(1)
    assert set(inside.unique().tolist()) <= {0.0, 1.0}
    assert abs(float(inside.mean()) - 0.7) <= 0.1


def test_sample_moments_equal_the_maps_of_the_samples():
    from monai_probseg.metrics import uncertainty_maps

    # noise-free experts: every sample is its expert's mean, so the fused moments must equal the maps of sample()
    net = _two_expert_net(gate=(0.3, 0.7))
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        maps = net.distribution(x)
        moments = net.sample_moments(maps, 50, generator=3, keep_labels=True)
        probs = torch.softmax(net.sample(maps, 50, generator=3).float(), 2)
    expected = uncertainty_maps(probs)
    assert moments["mean"].shape == (2, 2, 8, 8) and moments["labels"].shape == (2, 50, 8, 8)
    torch.testing.assert_close(moments["mean"], expected["prob"], atol=1e-5, rtol=0)
    torch.testing.assert_close(moments["m2"] / 50, expected["variance"], atol=1e-5, rtol=0)
    torch.testing.assert_close(moments["labels"].long(), probs.argmax(2))  # same experts: the first draw


def test_sample_moments_follow_the_mixture_distribution():
    from monai_probseg.metrics import uncertainty_maps

    torch.manual_seed(0)
    net = _tiny(2, out_channels=3).eval()
    x = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        maps = net.distribution(x)
        moments = net.sample_moments(maps, 4000, generator=0)
        reference = uncertainty_maps(torch.softmax(net.sample(maps, 4000, generator=1).float(), 2))
    # within Monte-Carlo error of 4000 samples (probabilities in [0, 1]: standard error <= 0.008)
    assert float((moments["mean"] - reference["prob"]).abs().max()) < 0.04
    assert float((moments["m2"] / 4000 - reference["variance"]).abs().max()) < 0.02


def test_mean_max_gate_reads_a_small_bright_structure():
    """``gate_pooling="mean_max"`` feeds the gate the features' maximum beside their average (2 F inputs)."""
    torch.manual_seed(0)
    net = _tiny(2, gate_pooling="mean_max").eval()
    assert net.gate[0].in_features == 2 * net.backbone_channels
    feats = torch.zeros(2, net.backbone_channels, 16, 16)
    feats[1, 0, 3, 3] = 50.0  # one voxel: its average is 50 / 256, its maximum 50
    with torch.no_grad():
        pooled = torch.cat([feats.flatten(2).mean(2), feats.flatten(2).amax(2)], 1)
        assert torch.allclose(net.gate_logits(feats), net.gate(pooled))
        weights = gate_weights(net.distribution(torch.randn(1, 1, 16, 16)))
    assert torch.allclose(weights.sum(1), torch.ones(1))
    with pytest.raises(ValueError, match="gate_pooling"):
        _tiny(2, gate_pooling="max")


def test_sample_scale_multiplies_the_noise():
    """``sample_scale`` s: every sample is ``mu_k + s * noise`` with the same draws and experts."""
    torch.manual_seed(0)
    net = _tiny(2).eval()
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        maps = net.distribution(x)
        experts = net.choose_experts(maps, 6, 3)
        base = net.sample(maps, 6, torch.Generator().manual_seed(1), experts=experts)
        net.sample_scale = 0.5
        half = net.sample(maps, 6, torch.Generator().manual_seed(1), experts=experts)
    mean = net._split(maps)[0]
    mu = mean[torch.arange(2)[:, None], experts]  # (B, N, C, H, W): each sample's expert mean
    torch.testing.assert_close(half - mu, 0.5 * (base - mu), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="sample_scale"):
        _tiny(2, sample_scale=0.0)
