"""The model contract: every way of drawing samples declares its kind and satisfies one interface.

A new method (tests/inferers/toy_method.py: one network, one loss) runs through the inferer and through a bundle-style
config without any change to the package.
"""

from __future__ import annotations

import pytest
import torch
from monai.bundle import ConfigParser
from monai.inferers import sliding_window_inference
from monai.networks.nets import UNet
from torch import nn

from monai_probseg.inferers import DeepEnsemble, FlipTTA, StochasticSlidingWindowInferer, mc_dropout
from monai_probseg.networks import (
    DistributionModel,
    IterativeSampler,
    ProbabilisticModel,
    RepeatedPassSampler,
    SamplingKind,
    sampling_kind,
)
from monai_probseg.networks.nets import (
    AnatomicalPriorSegmentation,
    AnatomicalPriorVAE,
    DiffusionSegmentation,
    ProbabilisticUNet,
    StochasticSegmentationNetwork,
)

from .toy_method import GaussianLogitNoise, GaussianLogitNoiseLoss


def _unet(dropout=0.0):
    return UNet(2, 1, 2, channels=(4, 8), strides=(2,), num_res_units=0, dropout=dropout)


MODELS = {
    "anatomical_prior": (
        lambda: AnatomicalPriorSegmentation(2, 1, 2, AnatomicalPriorVAE(2, 2, 2, channels=(4, 8), strides=(2, 2))),
        SamplingKind.DISTRIBUTION,
    ),
    "prob_unet": (
        lambda: ProbabilisticUNet(2, 1, 2, latent_dim=3, channels=(4, 8), num_convs_per_block=1),
        SamplingKind.DISTRIBUTION,
    ),
    "ssn": (
        lambda: StochasticSegmentationNetwork(2, 1, 2, rank=2, channels=(4, 8), strides=(2,), num_res_units=0),
        SamplingKind.DISTRIBUTION,
    ),
    "diffusion": (
        lambda: DiffusionSegmentation(
            2, 1, 2, channels=(8, 8), attention_levels=(False, False), norm_num_groups=8, num_inference_steps=2
        ),
        SamplingKind.ITERATIVE,
    ),
    "mc_dropout": (lambda: mc_dropout(_unet(dropout=0.3)), SamplingKind.REPEATED),
    "ensemble": (lambda: DeepEnsemble([_unet(), _unet()]), SamplingKind.REPEATED),
    "flip_tta": (lambda: FlipTTA(_unet(), spatial_axes=(0,)), SamplingKind.REPEATED),
    "toy": (lambda: GaussianLogitNoise(2, 1, 2, sigma=1.0), SamplingKind.DISTRIBUTION),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_declares_its_kind_and_satisfies_the_contract(name):
    make, kind = MODELS[name]
    torch.manual_seed(0)
    net = make().eval()
    assert sampling_kind(net) is kind
    assert isinstance(
        net,
        {
            SamplingKind.DISTRIBUTION: DistributionModel,
            SamplingKind.ITERATIVE: IterativeSampler,
            SamplingKind.REPEATED: RepeatedPassSampler,
        }[kind],
    )
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        logits = net(x)  # eval forward: a plain tensor of logits, the best single answer
        assert isinstance(logits, torch.Tensor) and logits.shape == (2, 2, 8, 8)
        maps = net.distribution(x)
        assert all(v.shape[0] == 2 and v.shape[2:] == (8, 8) for v in maps.values())
        a = net.sample(maps, 2, torch.Generator().manual_seed(1))
        b = net.sample(maps, 2, torch.Generator().manual_seed(1))
    assert a.shape == (2, 2, 2, 8, 8) and torch.isfinite(a).all()
    torch.testing.assert_close(a, b, atol=0, rtol=0)  # same generator state, same samples


def test_plain_modules_are_deterministic_and_wrappers_are_looked_through():
    assert sampling_kind(_unet()) is SamplingKind.DETERMINISTIC
    assert sampling_kind(nn.DataParallel(GaussianLogitNoise(2, 1, 2))) is SamplingKind.DISTRIBUTION

    class Undeclared(ProbabilisticModel):
        pass

    with pytest.raises(TypeError, match="DistributionModel, IterativeSampler or RepeatedPassSampler"):
        sampling_kind(Undeclared())


def test_repeated_pass_sampler_checks_its_members():
    ensemble = DeepEnsemble([_unet(), _unet()])
    maps = ensemble.distribution(torch.randn(1, 1, 8, 8))
    with torch.no_grad():
        second = ensemble.sample(maps, 1, start=1)
        torch.testing.assert_close(second[:, 0], ensemble.members[1](maps["image"]))
    with pytest.raises(ValueError, match="2 members"):
        ensemble.sample(maps, 2, start=1)


def test_an_ensemble_gives_one_sample_per_member_whatever_num_samples(caplog):
    members = [nn.Conv2d(1, 2, 3, padding=1) for _ in range(3)]
    with torch.no_grad():
        out = StochasticSlidingWindowInferer((8, 8), num_samples=5, keep_samples=True)(torch.randn(1, 1, 8, 8), members)
    assert out["samples"].shape[1] == 3
    assert "3 members" in caplog.text


@pytest.mark.parametrize("sigma", [0.0, 1.5])
def test_a_new_method_runs_through_the_inferer(sigma):
    torch.manual_seed(0)
    net = GaussianLogitNoise(2, 1, 3, sigma=sigma).eval()
    x = torch.randn(1, 1, 20, 16)
    make = lambda seed: StochasticSlidingWindowInferer(  # noqa: E731
        (8, 8), num_samples=64, sample_batch_size=16, keep_samples=True, seed=seed
    )
    with torch.no_grad():
        a, b, c = make(0)(x, net), make(0)(x, net), make(1)(x, net)
        mean = sliding_window_inference(x, (8, 8), 1, net, overlap=0.25, mode="gaussian")  # the stitched maps
    assert a["samples"].shape == (1, 64, 20, 16) and a["prob"].shape == (1, 3, 20, 16)
    for key in a:
        assert torch.equal(a[key], b[key]), key  # same seed, same samples
    if sigma == 0:
        # no noise: every sample is the mean prediction
        torch.testing.assert_close(a["prob"], torch.softmax(mean, 1), atol=1e-5, rtol=0)
        assert float(a["mutual_info"].max()) < 1e-5 and torch.equal(a["samples"], c["samples"])
        return
    assert not torch.equal(a["samples"], c["samples"])
    # the inferer's draws: 4 chunks of 16 samples from the stitched maps with the seed's generator
    gen = torch.Generator().manual_seed(0)
    samples = torch.cat([net.sample({"mean": mean}, 16, gen) for _ in range(4)], 1)
    assert torch.equal(a["samples"], samples.argmax(2).to(torch.uint8))
    # draws around the mean: the average of 64 samples is the mean logit within 4 standard errors
    torch.testing.assert_close(samples.mean(1), mean, atol=4 * sigma / 8, rtol=0)
    expected = torch.softmax(samples, 2).mean(1)
    torch.testing.assert_close(a["prob"], expected, atol=1e-5, rtol=0)
    assert float(a["mutual_info"].mean()) > 0.01


def test_a_new_method_runs_from_a_bundle_config():
    config = {
        "imports": ["$import torch"],
        "network_def": {
            "_target_": "tests.inferers.toy_method.GaussianLogitNoise",
            "spatial_dims": 2,
            "in_channels": 1,
            "out_channels": 2,
            "sigma": 1.0,
        },
        "network": "$@network_def.eval()",
        "loss": {"_target_": "tests.inferers.toy_method.GaussianLogitNoiseLoss"},
        "inferer": {
            "_target_": "monai_probseg.inferers.StochasticSlidingWindowInferer",
            "roi_size": [8, 8],
            "num_samples": 6,
            "sample_batch_size": 4,
            "keep_samples": True,
            "seed": 3,
        },
        "image": "$torch.randn(1, 1, 16, 12, generator=torch.Generator().manual_seed(0))",
        "label": "$(@image > 0).long()",
        "outputs": "$torch.no_grad()(lambda: @inferer(@image, @network))()",
        "train_loss": "$@loss(@network_def(@image, @label), @label)",
    }
    torch.manual_seed(0)
    parser = ConfigParser(config)
    out = parser.get_parsed_content("outputs")
    net = parser.get_parsed_content("network")
    assert isinstance(net, GaussianLogitNoise)
    assert out["samples"].shape == (1, 6, 16, 12) and out["seg"].shape == (1, 1, 16, 12)
    assert out["prob"].shape == (1, 2, 16, 12) and out["entropy"].shape == (1, 1, 16, 12)
    torch.testing.assert_close(out["prob"].sum(1), torch.ones(1, 16, 12))
    # the same inferer object called again (same seed): the same samples
    again = parser.get_parsed_content("inferer")(parser.get_parsed_content("image"), net)
    assert torch.equal(out["samples"], again["samples"])
    assert isinstance(parser.get_parsed_content("loss"), GaussianLogitNoiseLoss)
    loss = parser.get_parsed_content("train_loss")
    assert loss.ndim == 0 and torch.isfinite(loss) and loss.requires_grad
