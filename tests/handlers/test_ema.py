from __future__ import annotations

import pytest
import torch
from ignite.engine import Engine

from monai_probseg.handlers import EMAHandler, ExponentialMovingAverage


def _linear(value=0.0):
    net = torch.nn.Linear(2, 1)
    with torch.no_grad():
        net.weight.fill_(value)
        net.bias.fill_(value)
    return net


def _set(net, value):
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(value)


def test_update_moves_shadow_toward_model():
    net = _linear(0.0)
    ema = ExponentialMovingAverage(net, decay=0.9)
    _set(net, 1.0)
    ema.update()
    torch.testing.assert_close(ema.shadow.weight, torch.full((1, 2), 0.1))
    ema.update()
    torch.testing.assert_close(ema.shadow.bias, torch.full((1,), 1 - 0.9**2))
    assert not any(p.requires_grad for p in ema.shadow.parameters())
    # warm-up decay: min(decay, (1 + n) / (10 + n)), 0.1 for the first update
    ema_w = ExponentialMovingAverage(_linear(0.0), decay=0.999, warmup=True)
    assert ema_w.current_decay() == pytest.approx(0.1)
    _set(ema_w.model, 1.0)
    ema_w.update()
    torch.testing.assert_close(ema_w.shadow.weight, torch.full((1, 2), 0.9))
    assert ema_w.current_decay() == pytest.approx(2 / 11)


def test_handler_updates_every_iteration_and_swaps_for_evaluation():
    net = _linear(0.0)
    handler = EMAHandler(net, decay=0.5)

    def step(engine, batch):
        _set(net, float(engine.state.iteration))  # the "training" sets the weights to the iteration number

    trainer = Engine(step)
    handler.attach(trainer)
    trainer.run([0] * 3, max_epochs=1)
    # shadow: 0 -> 0.5 * 0 + 0.5 * 1 = 0.5 -> 0.5 * 0.5 + 0.5 * 2 = 1.25 -> 0.5 * 1.25 + 0.5 * 3 = 2.125
    torch.testing.assert_close(handler.shadow.weight, torch.full((1, 2), 2.125))
    assert handler.num_updates == 3

    seen = []
    evaluator = Engine(lambda e, b: seen.append(float(net.weight[0, 0].detach())))
    handler.attach_evaluator(evaluator)
    evaluator.run([0, 0], max_epochs=1)
    assert seen == [2.125, 2.125]  # evaluated with the EMA weights
    assert float(net.weight[0, 0].detach()) == 3.0  # trained weights restored

    with handler.swapped() as model:
        assert float(model.weight[0, 0].detach()) == 2.125
    assert float(net.weight[0, 0].detach()) == 3.0


def test_evaluator_exception_restores_weights():
    net = _linear(1.0)
    handler = EMAHandler(net, decay=0.9)
    _set(handler.shadow, 5.0)

    def fail(engine, batch):
        raise RuntimeError("boom")

    evaluator = Engine(fail)
    handler.attach_evaluator(evaluator)
    with pytest.raises(RuntimeError, match="boom"):
        evaluator.run([0], max_epochs=1)
    assert float(net.weight[0, 0].detach()) == 1.0


def test_start_iteration_every_and_state_dict():
    net = _linear(0.0)
    handler = EMAHandler(net, decay=0.5, update_every=2, start_iteration=2)

    def step(engine, batch):
        _set(net, float(engine.state.iteration))

    trainer = Engine(step)
    handler.attach(trainer)
    trainer.run([0] * 4, max_epochs=1)
    # iteration 2 (<= start): the shadow copies the model (2); iteration 4: 0.5 * 2 + 0.5 * 4 = 3
    torch.testing.assert_close(handler.shadow.weight, torch.full((1, 2), 3.0))
    state = handler.state_dict()
    other = EMAHandler(_linear(0.0), decay=0.5)
    other.load_state_dict(state)
    torch.testing.assert_close(other.shadow.weight, torch.full((1, 2), 3.0))
    assert other.num_updates == 1
    with pytest.raises(ValueError, match="decay"):
        EMAHandler(net, decay=1.0)
    with pytest.raises(ValueError, match="update_every"):
        EMAHandler(net, update_every=0)
    with pytest.raises(TypeError, match="Module"):
        ExponentialMovingAverage("net")
