# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

from __future__ import annotations

import math

import pytest
import torch

from monai_probseg.losses import MoSELoss, matching_plan, pairwise_seg_cost


def _hard_logits(*foregrounds):
    """Sample logits (1, N, 2, 2, 2) whose softmax is (to float precision) one-hot on the given foreground voxels."""
    fg = torch.zeros(len(foregrounds), 4)
    for n, voxels in enumerate(foregrounds):
        fg[n, list(voxels)] = 1.0
    logits = torch.stack([30.0 * (1 - 2 * fg), 30.0 * (2 * fg - 1)], 1)  # (N, 2, 4)
    return logits.reshape(1, len(foregrounds), 2, 2, 2)


def _labels(*foregrounds):
    y = torch.zeros(len(foregrounds), 4, dtype=torch.long)
    for m, voxels in enumerate(foregrounds):
        y[m, list(voxels)] = 1
    return y.reshape(1, len(foregrounds), 2, 2)


# voxels 0..3 of a 2x2 image; sample A = {0, 1}, sample B = {2, 3}
SAMPLES = _hard_logits((0, 1), (2, 3))


def test_cost_by_hand():
    # soft IoU with smoothing 1 over the foreground: 1 - (I + 1) / (U + 1)
    cost = pairwise_seg_cost(SAMPLES.softmax(2), _labels((0,), (2, 3)))
    expected = torch.tensor([[[1 - 2 / 3, 1 - 1 / 5], [1 - 1 / 4, 1 - 3 / 3]]])
    torch.testing.assert_close(cost, expected)
    # without smoothing it is 1 - IoU
    cost = pairwise_seg_cost(SAMPLES.softmax(2), _labels((0,), (2, 3)), smooth=0.0)
    torch.testing.assert_close(cost, torch.tensor([[[0.5, 1.0], [1.0, 0.0]]]))
    # cross-entropy: mean over voxels of -log p(annotated class)
    probs = torch.tensor([0.8, 0.8, 0.2, 0.2])  # foreground probability per voxel
    probs = torch.stack([1 - probs, probs]).reshape(1, 1, 2, 2, 2)
    ce = pairwise_seg_cost(probs, _labels((0,)), cost="ce")
    expected = -(math.log(0.8) + math.log(0.2) + 2 * math.log(0.8)) / 4
    torch.testing.assert_close(ce, torch.tensor([[[expected]]]))


def test_loss_2x2_by_hand_gamma_half():
    # costs [[1/3, 4/5], [3/4, 0]]; gamma = 1/2 with 2 samples: an assignment, the diagonal one
    loss_fn = MoSELoss(gamma=0.5, return_dict=True)
    weights = torch.tensor([[0.25, 0.75]])
    out = loss_fn(SAMPLES, _labels((0,), (2, 3)), sample_weights=weights)
    match = 0.5 * (1 / 3) + 0.5 * 0.0
    kl = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    torch.testing.assert_close(out["match"], torch.tensor(match))
    torch.testing.assert_close(out["gate_kl"], torch.tensor(kl))
    torch.testing.assert_close(out["loss"], torch.tensor(match + kl))
    plan = matching_plan(pairwise_seg_cost(SAMPLES.softmax(2), _labels((0,), (2, 3))), gamma=0.5)
    torch.testing.assert_close(plan, torch.tensor([[[0.5, 0.0], [0.0, 0.5]]]))


def test_loss_2x2_by_hand_capacity_matters():
    # annotations {0} and {0, 1}: costs [[1/3, 0], [3/4, 4/5]]: both prefer sample A
    labels = _labels((0,), (0, 1))
    weights = torch.tensor([[0.25, 0.75]])
    cost = pairwise_seg_cost(SAMPLES.softmax(2), labels)
    torch.testing.assert_close(cost, torch.tensor([[[1 / 3, 0.0], [3 / 4, 4 / 5]]]))
    # gamma = 1: every annotation goes to its nearest sample
    plan = matching_plan(cost, gamma=1.0)
    torch.testing.assert_close(plan, torch.tensor([[[0.5, 0.5], [0.0, 0.0]]]))
    loss = MoSELoss(gamma=1.0, beta=2.0)(SAMPLES, labels, sample_weights=weights)
    torch.testing.assert_close(loss, torch.tensor(0.5 / 3 + 2.0 * math.log(1 / 0.25)))
    # gamma = 1/2: sample A takes only half; {0, 1} -> A (cost 0) and {0} -> B (3/4) beats {0} -> A, {0, 1} -> B
    plan = matching_plan(cost, gamma=0.5)
    torch.testing.assert_close(plan, torch.tensor([[[0.0, 0.5], [0.5, 0.0]]]))
    loss = MoSELoss(gamma=0.5)(SAMPLES, labels, sample_weights=weights)
    torch.testing.assert_close(loss, torch.tensor(0.5 * 0.75 + 0.5 * math.log(4 / 3)))
    # given annotation weights
    plan = matching_plan(cost, target_weights=torch.tensor([[0.2, 0.8]]), gamma=1.0)
    torch.testing.assert_close(plan, torch.tensor([[[0.2, 0.8], [0.0, 0.0]]]))


def test_plan_constraints_and_sinkhorn_close_to_exact():
    gen = torch.Generator().manual_seed(0)
    cost = torch.rand(3, 8, 4, generator=gen)
    for gamma in (0.125, 0.3, 1.0):
        exact = matching_plan(cost, gamma=gamma)
        torch.testing.assert_close(exact.sum(1), torch.full((3, 4), 0.25))
        assert (exact.sum(2) <= gamma + 1e-6).all() and (exact >= 0).all()
        approx = matching_plan(cost, gamma=gamma, solver="sinkhorn", sinkhorn_eps=0.002, sinkhorn_iters=2000)
        torch.testing.assert_close(approx.sum(1), torch.full((3, 4), 0.25), atol=2e-3, rtol=0)
        exact_cost, approx_cost = (exact * cost).sum((1, 2)), (approx * cost).sum((1, 2))
        assert (approx.sum(2) <= gamma + 2e-3).all()
        torch.testing.assert_close(approx_cost, exact_cost, atol=0.01, rtol=0)


def test_gradients_reach_samples_and_weights():
    logits = torch.randn(2, 4, 3, 6, 6, requires_grad=True)
    gate = torch.randn(2, 2, requires_grad=True)
    weights = gate.softmax(1).repeat_interleave(2, dim=1) / 2
    labels = torch.randint(0, 3, (2, 3, 6, 6))
    loss = MoSELoss(reduction="none")(logits, labels, sample_weights=weights)
    assert loss.shape == (2,)
    loss.sum().backward()
    assert logits.grad.abs().sum() > 0 and gate.grad.abs().sum() > 0
    # 3D, sinkhorn
    loss = MoSELoss(solver="sinkhorn", cost="ce")(
        torch.randn(1, 2, 2, 4, 4, 4), torch.randint(0, 2, (1, 2, 4, 4, 4)), sample_weights=torch.full((1, 2), 0.5)
    )
    assert torch.isfinite(loss)


def test_bad_inputs_are_named():
    loss_fn = MoSELoss()
    with pytest.raises(ValueError, match="sample_weights"):
        loss_fn(SAMPLES, _labels((0,)))
    with pytest.raises(ValueError, match="sample_weights must be"):
        loss_fn(SAMPLES, _labels((0,)), sample_weights=torch.ones(1, 3) / 3)
    with pytest.raises(ValueError, match="spatial"):
        loss_fn(SAMPLES, torch.zeros(1, 2, 3, 3, dtype=torch.long), sample_weights=torch.ones(1, 2) / 2)
    with pytest.raises(KeyError, match="samples"):
        loss_fn({"logits": SAMPLES}, _labels((0,)))
    with pytest.raises(ValueError, match="gamma"):
        matching_plan(torch.rand(1, 2, 3), gamma=0.25)


def test_ce_weight_adds_the_matched_pairs_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(2, 6, 2, 4, 4)
    weights = torch.softmax(torch.randn(2, 6), 1)
    labels = (torch.rand(2, 3, 4, 4) > 0.5).long()
    base = MoSELoss(gamma=0.5, return_dict=True)(logits, labels, sample_weights=weights)
    with_ce = MoSELoss(gamma=0.5, return_dict=True, ce_weight=2.0)(logits, labels, sample_weights=weights)
    # the plan is the IoU cost's; each pair adds 2 x its mean voxel cross-entropy, computed here by hand
    plan = matching_plan(pairwise_seg_cost(logits.softmax(2), labels), gamma=0.5)
    log_p = logits.log_softmax(2)
    ce = torch.zeros(2, 6, 3)
    for b in range(2):
        for n in range(6):
            for m in range(3):
                picked = torch.where(labels[b, m] == 1, log_p[b, n, 1], log_p[b, n, 0])
                ce[b, n, m] = -picked.mean()
    expected = base["match"] + 2.0 * (plan * ce).sum((1, 2)).mean()
    torch.testing.assert_close(with_ce["match"], expected)
    torch.testing.assert_close(with_ce["gate_kl"], base["gate_kl"])
    # a confident mistake still has a gradient (no clamp of the probabilities)
    hard = _hard_logits((0, 1)).requires_grad_(True)
    loss = MoSELoss(gamma=1.0, ce_weight=1.0)(hard * 2, _labels((2, 3)), sample_weights=torch.ones(1, 1))
    loss.backward()
    assert torch.isfinite(loss) and hard.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="ce_weight"):
        MoSELoss(ce_weight=-1.0)
