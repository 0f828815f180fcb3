from __future__ import annotations

import pytest
import torch
from ignite.engine import Events
from monai.engines import SupervisedTrainer
from monai.engines.utils import DiffusionPrepareBatch as MonaiDiffusionPrepareBatch

from monai_probseg.engines import DiffusionPrepareBatch, ProbSegTrainer
from monai_probseg.networks.nets import DiffusionSegmentation

TINY = {"channels": (8, 8, 8), "attention_levels": (False, False, False), "norm_num_groups": 8}


def _net(num_classes=2, spatial_dims=2, **kwargs):
    torch.manual_seed(0)
    return DiffusionSegmentation(spatial_dims, image_channels=1, num_classes=num_classes, **{**TINY, **kwargs})


def _batch(num_annotators=1, num_classes=2, size=(16, 16), batch=2):
    g = torch.Generator().manual_seed(0)
    image = torch.randn(batch, 1, *size, generator=g)
    label = torch.randint(0, num_classes, (batch, num_annotators, *size), generator=g)
    return {"image": image, "label": label}


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_prepare_batch_diffuses_the_label_not_the_image(prediction_type):
    net = _net(prediction_type=prediction_type)
    data = _batch()
    image_before = data["image"].clone()
    image, target, args, kwargs = DiffusionPrepareBatch(net, generator=0)(data)
    # the image is passed untouched; the batch is not modified
    torch.testing.assert_close(image, image_before, atol=0, rtol=0)
    torch.testing.assert_close(data["image"], image_before, atol=0, rtol=0)
    assert args == () and set(kwargs) == {"noisy_seg", "timesteps"}
    t, x_t = kwargs["timesteps"], kwargs["noisy_seg"]
    assert t.shape == (2,) and t.dtype == torch.long and 0 <= int(t.min()) and int(t.max()) < 1000
    # hand-built x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps from the same draws
    g = torch.Generator().manual_seed(0)
    t_ref = torch.randint(0, 1000, (2,), generator=g)
    eps = torch.randn(2, 1, 16, 16, generator=g)
    assert t.tolist() == t_ref.tolist()
    abar = net.scheduler.alphas_cumprod[t_ref].view(2, 1, 1, 1)
    x0 = 2.0 * data["label"].float() - 1.0
    torch.testing.assert_close(x_t, abar.sqrt() * x0 + (1 - abar).sqrt() * eps)
    expected_target = eps if prediction_type == "epsilon" else abar.sqrt() * eps - (1 - abar).sqrt() * x0
    torch.testing.assert_close(target, expected_target)


def test_prepare_batch_picks_one_annotator_and_encodes_multiclass():
    net = _net(num_classes=3)
    data = _batch(num_annotators=4, num_classes=3, batch=6)
    prepare = DiffusionPrepareBatch(net, generator=1)
    _, noise, _, kwargs = prepare(data)
    abar = net.scheduler.alphas_cumprod[kwargs["timesteps"]].view(-1, 1, 1, 1)
    x0 = (kwargs["noisy_seg"] - (1 - abar).sqrt() * noise) / abar.sqrt()
    assert x0.shape == (6, 3, 16, 16)
    for b in range(6):
        codes = [net.encode_label(data["label"][b : b + 1, k : k + 1])[0] for k in range(4)]
        assert any(torch.allclose(x0[b], code, atol=1e-2) for code in codes)
    # same seed, same draws
    _, noise2, _, kwargs2 = DiffusionPrepareBatch(net, generator=1)(data)
    torch.testing.assert_close(noise, noise2, atol=0, rtol=0)
    torch.testing.assert_close(kwargs["noisy_seg"], kwargs2["noisy_seg"], atol=0, rtol=0)


def _fixed_eval_loss(net, data, seed=123):
    """Denoising loss on fixed draws of (t, eps), so that training progress is measured without sampling noise."""
    image, target, _, kwargs = DiffusionPrepareBatch(net, generator=seed)(data)
    with torch.no_grad():
        return float(torch.nn.MSELoss()(net(image, **kwargs), target))


@pytest.mark.parametrize("trainer_cls", ["probseg", "supervised"])
def test_training_lowers_the_loss_on_a_fixed_batch(trainer_cls):
    net = _net(num_train_timesteps=100)
    data = _batch(batch=4)
    data["label"] = (data["image"] > 0).long()  # learnable: x0 is a function of the image
    before = _fixed_eval_loss(net, data)
    assert before == pytest.approx(1.0, abs=0.15)  # MONAI's zero output conv: eps_hat = 0, E[eps^2] = 1
    common = {
        "device": "cpu",
        "max_epochs": 40,
        "train_data_loader": [data],
        "network": net,
        "optimizer": torch.optim.Adam(net.parameters(), lr=3e-3),
        "loss_function": torch.nn.MSELoss(),
        "prepare_batch": DiffusionPrepareBatch(net, generator=0),
    }
    if trainer_cls == "probseg":
        trainer = ProbSegTrainer(label_to_network=False, **common)
    else:
        trainer = SupervisedTrainer(**common)
    losses = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(float(e.state.output[0]["loss"])))
    trainer.run()
    after = _fixed_eval_loss(net, data)
    assert len(losses) == 40
    assert after < 0.8 * before, (before, after)
    assert sum(losses[-10:]) < sum(losses[:10])


def test_probseg_trainer_with_label_to_network_explains_the_fix():
    net = _net()
    trainer = ProbSegTrainer(
        device="cpu",
        max_epochs=1,
        train_data_loader=[_batch()],
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
        loss_function=torch.nn.MSELoss(),
        prepare_batch=DiffusionPrepareBatch(net),
    )
    with pytest.raises(TypeError, match="label_to_network=False"):
        trainer.run()


def test_prepare_batch_is_monai_diffusion_prepare_batch_with_its_hooks():
    net = _net(prediction_type="v_prediction")
    prepare = DiffusionPrepareBatch(net, generator=0)
    assert isinstance(prepare, MonaiDiffusionPrepareBatch) and prepare.num_train_timesteps == 1000
    x0 = net.encode_label(_batch()["label"])
    # the hooks draw from the one seeded generator: timesteps, then noise, as in __call__
    g = torch.Generator().manual_seed(0)
    t = prepare.get_timesteps(x0)
    noise = prepare.get_noise(x0)
    assert t.tolist() == torch.randint(0, 1000, (2,), generator=g).tolist()
    torch.testing.assert_close(noise, torch.randn(x0.shape, generator=g), atol=0, rtol=0)
    velocity = net.scheduler.get_velocity(sample=x0, noise=noise, timesteps=t)
    torch.testing.assert_close(prepare.get_target(x0, noise, t), velocity, atol=0, rtol=0)


def test_prepare_batch_errors():
    with pytest.raises(ValueError, match="class-index"):
        DiffusionPrepareBatch(_net())({"image": torch.zeros(1, 1, 16, 16), "label": torch.zeros(1, 1, 8, 8)})
    with pytest.raises(TypeError, match="DiffusionSegmentation"):
        DiffusionPrepareBatch(torch.nn.Linear(1, 1))
