# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""ProbSegTrainer(autocast_dtype="bfloat16"): the forward pass runs in bfloat16, the weights stay float32."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Events
from monai.utils import CommonKeys as Keys
from torch.utils.data import DataLoader

from monai_probseg.engines import ProbSegTrainer
from monai_probseg.losses import LowRankMVNNLLLoss
from monai_probseg.networks.nets import StochasticSegmentationNetwork

from ..toy import two_mode_toy


def _run(autocast_dtype):
    torch.manual_seed(0)
    images, labels = two_mode_toy(8, (16, 16), p_large=0.3, seed=0)
    loader = DataLoader([{"image": i, "label": lab} for i, lab in zip(images, labels)], batch_size=4)
    net = StochasticSegmentationNetwork(2, 1, 2, rank=3, channels=(8, 16), strides=(2,), num_res_units=0)
    before = [p.detach().clone() for p in net.parameters()]
    seen = []
    net.backbone.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    losses = []
    trainer = ProbSegTrainer(
        device="cpu",
        max_epochs=1,
        train_data_loader=loader,
        network=net,
        optimizer=torch.optim.Adam(net.parameters(), 1e-3),
        loss_function=LowRankMVNNLLLoss(num_mc_samples=4, generator=0),
        autocast_dtype=autocast_dtype,
    )
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(e.state.output[0][Keys.LOSS]))
    trainer.run()
    return net, before, seen, losses


def test_bfloat16_autocast_trains_in_float32_weights():
    net, before, seen, losses = _run("bfloat16")
    assert seen and all(d == torch.bfloat16 for d in seen)  # the convolutions ran in bfloat16
    assert all(p.dtype == torch.float32 for p in net.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters()))
    assert len(losses) == 2 and all(torch.isfinite(torch.as_tensor(loss)) for loss in losses)
    _, _, seen32, losses32 = _run(None)
    assert all(d == torch.float32 for d in seen32)
    # same data, same seed: the bfloat16 loss is close to the float32 one (bfloat16 keeps ~3 significant digits)
    assert float(losses[0]) == pytest.approx(float(losses32[0]), rel=0.05)


def test_rejects_float16():
    with pytest.raises(ValueError, match="autocast_dtype"):
        net = torch.nn.Conv2d(1, 2, 1)
        ProbSegTrainer(
            "cpu", 1, [], net, torch.optim.SGD(net.parameters(), 0.1), lambda p, y: p.sum(), autocast_dtype="float16"
        )
