from __future__ import annotations

import logging

import pytest
import torch
from ignite.engine import Events
from monai.handlers import CheckpointLoader, CheckpointSaver, StatsHandler, TensorBoardStatsHandler
from torch.utils.data import DataLoader

from monai_probseg.engines import LossTermsRecorder, PrepareBatchWithLabel, ProbSegTrainer, loss_terms_transform


class LabelNet(torch.nn.Module):
    """Records whether it saw the label; returns logits and a fake KL term."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 2, 1)
        self.seen_label = []

    def forward(self, x, y=None):
        self.seen_label.append(y is not None)
        logits = self.conv(x)
        if y is None:
            return logits
        return {"logits": logits, "kl": (self.conv.weight**2).sum().expand(x.shape[0])}


class DictLoss(torch.nn.Module):
    def forward(self, outputs, target):
        ce = torch.nn.functional.cross_entropy(outputs["logits"], target[:, 0].long())
        kl = outputs["kl"].mean()
        return {"loss": ce + 0.5 * kl, "reconstruction": ce, "kl": kl, "beta": 0.5}


def _loader(n=4, batch_size=2):
    g = torch.Generator().manual_seed(0)
    data = [{"image": torch.randn(1, 8, 8, generator=g), "label": (torch.rand(1, 8, 8, generator=g) > 0.5).long()}]
    return DataLoader(data * n, batch_size=batch_size)


def _trainer(net, max_epochs=1, **kwargs):
    return ProbSegTrainer(
        device="cpu",
        max_epochs=max_epochs,
        train_data_loader=_loader(),
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
        loss_function=DictLoss(),
        **kwargs,
    )


def test_label_reaches_network_and_terms_reach_output():
    net = LabelNet()
    trainer = _trainer(net)
    trainer.run()
    assert net.seen_label and all(net.seen_label)
    out = trainer.state.output  # decollated: one dict per batch item
    assert isinstance(out, list) and len(out) == 2
    for item in out:
        assert set(item) >= {"image", "label", "pred", "loss", "reconstruction", "kl", "beta"}
        assert item["pred"].shape == (2, 8, 8)  # the logits, not the dict
    # the terms are consistent with the loss: loss = reconstruction + beta * kl
    item = out[0]
    assert float(item["loss"]) == pytest.approx(float(item["reconstruction"]) + 0.5 * float(item["kl"]), rel=1e-5)


def test_loss_decreases_and_parameters_change():
    torch.manual_seed(0)
    net = LabelNet()
    before = net.conv.weight.detach().clone()
    losses = []
    trainer = _trainer(net, max_epochs=5)

    @trainer.on(Events.ITERATION_COMPLETED)
    def _collect(engine):
        losses.append(float(engine.state.output[0]["loss"]))

    trainer.run()
    assert not torch.equal(before, net.conv.weight)
    assert losses[-1] < losses[0]


def test_label_to_network_false_calls_forward_with_image_only():
    net = LabelNet()

    def loss(pred, target):
        return torch.nn.functional.cross_entropy(pred, target[:, 0].long())

    trainer = ProbSegTrainer(
        device="cpu",
        max_epochs=1,
        train_data_loader=_loader(),
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
        loss_function=loss,
        label_to_network=False,
    )
    trainer.run()
    assert net.seen_label and not any(net.seen_label)
    assert "kl" not in trainer.state.output[0]


def test_missing_label_is_a_clear_error():
    net = LabelNet()
    loader = DataLoader([{"image": torch.randn(1, 8, 8)}] * 2, batch_size=2)
    trainer = ProbSegTrainer(
        device="cpu",
        max_epochs=1,
        train_data_loader=loader,
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
        loss_function=DictLoss(),
    )
    with pytest.raises(ValueError, match="no label"):
        trainer.run()


def test_loss_mapping_without_loss_key():
    rec = LossTermsRecorder(lambda p, t: {"kl": torch.tensor(1.0)})
    with pytest.raises(KeyError, match="'loss'"):
        rec(None, None)


def test_prepare_batch_with_label_passes_extra_args():
    def prep(batch, device=None, non_blocking=False, **kw):
        return batch["image"], batch["label"], ("extra",), {"flag": True}

    inputs, targets, args, kwargs = PrepareBatchWithLabel(prep)({"image": 1, "label": 2})
    assert (inputs, targets, args, kwargs) == (1, 2, (2, "extra"), {"flag": True})


def test_stats_and_tensorboard_handlers_log_terms(tmp_path, caplog, capsys):
    net = LabelNet()
    transform = loss_terms_transform(("loss", "reconstruction", "kl"))
    handlers = [
        StatsHandler(name="probseg_test", output_transform=transform, iteration_log=True, epoch_log=False),
        TensorBoardStatsHandler(log_dir=str(tmp_path / "tb"), output_transform=transform, epoch_log=False),
    ]
    logging.getLogger("probseg_test").setLevel(logging.INFO)
    with caplog.at_level(logging.INFO, logger="probseg_test"):
        _trainer(net, train_handlers=handlers).run()
    text = caplog.text + capsys.readouterr().out + capsys.readouterr().err
    assert "reconstruction" in text and "kl" in text
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "tb").iterdir())
    values = transform([{"loss": torch.tensor(2.0), "kl": torch.tensor([1.0, 3.0])}])
    assert values == {"loss": 2.0, "kl": 2.0}


def test_checkpoint_save_and_resume(tmp_path):
    torch.manual_seed(0)
    net = LabelNet()
    trainer = _trainer(net, max_epochs=2)
    opt = trainer.optimizer
    CheckpointSaver(
        save_dir=str(tmp_path), save_dict={"net": net, "opt": opt, "trainer": trainer}, save_final=True
    ).attach(trainer)
    trainer.run()
    ckpts = sorted(tmp_path.glob("*.pt"))
    assert ckpts, "no checkpoint written"

    net2 = LabelNet()
    trainer2 = _trainer(net2, max_epochs=3)
    CheckpointLoader(
        load_path=str(ckpts[-1]), load_dict={"net": net2, "opt": trainer2.optimizer, "trainer": trainer2}
    ).attach(trainer2)
    trainer2.run()
    # resumed at epoch 2 of 3: exactly one more epoch (2 iterations) ran
    assert trainer2.state.epoch == 3
    assert trainer2.state.iteration == 6
    assert len(net2.seen_label) == 2


def test_keyword_loss_passes_the_outputs_by_name():
    from monai_probseg.engines import KeywordLoss

    def loss(a, b, target=None):
        return {"loss": a + b + (0 if target is None else target)}

    assert KeywordLoss(loss)({"a": 1, "b": 2}, target=100)["loss"] == 3  # unsupervised: no target passed
    assert KeywordLoss(loss, "target")({"a": 1, "b": 2}, 100)["loss"] == 103
    with pytest.raises(TypeError, match="train mode"):
        KeywordLoss(loss)(torch.zeros(1))
    with pytest.raises(ValueError, match="label"):
        KeywordLoss(loss, "target")({"a": 1, "b": 2}, None)
