from __future__ import annotations

import pytest
import torch
from monai.engines import SupervisedEvaluator
from monai.inferers import sliding_window_inference
from monai.networks.nets import UNet
from torch import nn

from monai_probseg.inferers import DeepEnsemble, FlipTTA, StochasticSlidingWindowInferer, mc_dropout
from monai_probseg.metrics import uncertainty_maps
from monai_probseg.networks import DistributionModel, IterativeSampler
from monai_probseg.networks.nets import StochasticSegmentationNetwork


class UnmaskedToy(DistributionModel):
    """A distribution model (contract of docs/design.rst): logits = mean(x) + scale * eps, eps global per sample."""

    in_channels = 1

    def __init__(self, spatial_dims=2, num_classes=3, masked=False):
        super().__init__()
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        self.conv = conv(1, num_classes, 3, padding=1)
        self.num_classes = num_classes
        self.masked = masked
        self.distribution_calls = 0

    def distribution(self, x):
        self.distribution_calls += 1
        mean = self.conv(x)
        return {"mean": mean, "scale": torch.full_like(mean, 2.0)}

    def sample(self, maps, num_samples, generator=None):
        mean, scale = maps["mean"], maps["scale"]
        b, c = mean.shape[:2]
        eps = torch.randn(b, num_samples, c, generator=generator, device=mean.device)
        eps = eps.view(b, num_samples, c, *([1] * (mean.ndim - 2)))
        return mean.unsqueeze(1) + scale.unsqueeze(1) * eps

    def forward(self, x):
        return self.conv(x)


class ToyWithMean(UnmaskedToy):
    def mean_logits(self, maps):
        return maps["mean"]


class MaskedToy(ToyWithMean):
    def sampling_mask(self, maps):
        # sample only on the left half
        mask = torch.zeros_like(maps["mean"][:, :1], dtype=torch.bool)
        mask[..., : mask.shape[-1] // 2] = True
        return mask


@pytest.fixture
def image2d():
    return torch.randn(2, 1, 24, 20, generator=torch.Generator().manual_seed(0))


def test_deterministic_network_matches_sliding_window_inference(image2d):
    torch.manual_seed(0)
    net = nn.Conv2d(1, 3, 3, padding=1).eval()
    inferer = StochasticSlidingWindowInferer((16, 16), overlap=0.5, mode="gaussian", num_samples=3, sample_batch_size=2)
    with torch.no_grad():
        out = inferer(image2d, net)
        ref = sliding_window_inference(image2d, (16, 16), 1, net, overlap=0.5, mode="gaussian")
    torch.testing.assert_close(out["prob"], torch.softmax(ref, 1), atol=1e-5, rtol=0)
    assert torch.equal(out["seg"][:, 0], ref.argmax(1).to(out["seg"].dtype))
    assert float(out["mutual_info"].abs().max()) < 1e-5  # all passes agree
    assert float(out["variance"].abs().max()) < 1e-10


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_distribution_model_seed_shapes_and_single_pass(spatial_dims):
    torch.manual_seed(0)
    net = UnmaskedToy(spatial_dims)
    shape = (1, 1, 20, 18) if spatial_dims == 2 else (1, 1, 12, 10, 14)
    roi = (8,) * spatial_dims
    x = torch.randn(shape)
    inferer = StochasticSlidingWindowInferer(roi, num_samples=7, sample_batch_size=3, keep_samples=True, seed=1)
    with torch.no_grad():
        a = inferer(x, net)
        calls = net.distribution_calls
        b = inferer(x, net)
        assert net.distribution_calls == 2 * calls
        c = StochasticSlidingWindowInferer(roi, num_samples=7, sample_batch_size=3, keep_samples=True, seed=2)(x, net)
    assert a["samples"].shape == (1, 7, *shape[2:]) and a["samples"].dtype == torch.uint8
    assert a["prob"].shape == (1, 3, *shape[2:]) and a["entropy"].shape == (1, 1, *shape[2:])
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert not torch.equal(a["samples"], c["samples"])
    # one sliding-window pass per call (one distribution() call per window), however many samples
    assert calls == (9 if spatial_dims == 2 else 8)
    # the summary equals the functional maps of the kept samples' probabilities, recomputed by hand
    with torch.no_grad():
        maps = sliding_window_inference(x, roi, 1, net.distribution, overlap=0.25, mode="gaussian")
        gen = torch.Generator().manual_seed(1)
        logits = torch.cat([net.sample(maps, n, gen) for n in (3, 3, 1)], 1)
    ref = uncertainty_maps(torch.softmax(logits, 2))
    for key in ("prob", "entropy", "mutual_info", "variance"):
        torch.testing.assert_close(a[key], ref[key], atol=1e-5, rtol=1e-4)
    assert torch.equal(a["samples"], logits.argmax(2).to(torch.uint8))


def test_sampling_mask_limits_sampling_to_the_mask():
    torch.manual_seed(0)
    net = MaskedToy(2)
    x = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        out = StochasticSlidingWindowInferer((8, 8), num_samples=5, keep_samples=True, seed=0)(x, net)
        full = StochasticSlidingWindowInferer((8, 8), num_samples=5, keep_samples=True, seed=0)(x, UnmaskedToy(2))
    right = (..., slice(8, None))
    # outside the mask: no uncertainty, every sample equals the mean prediction
    assert float(out["mutual_info"][right].abs().max()) == 0.0
    assert float(out["variance"][right].abs().max()) == 0.0
    mean = sliding_window_inference(x, (8, 8), 1, net, overlap=0.25, mode="gaussian")
    torch.testing.assert_close(out["prob"][right], torch.softmax(mean, 1)[right], atol=1e-5, rtol=0)
    assert bool((out["samples"][0][right] == mean.argmax(1)[0][right]).all())
    # inside: sampled (uncertain)
    assert float(out["mutual_info"][..., :8].max()) > 1e-3
    assert float(full["mutual_info"][right].max()) > 1e-3


def test_keep_samples_false_does_not_return_samples(image2d):
    out = StochasticSlidingWindowInferer((8, 8), num_samples=2, seed=0)(image2d, UnmaskedToy(2))
    assert "samples" not in out and set(out) == {"seg", "prob", "entropy", "mutual_info", "variance"}


def test_mc_dropout_baseline_reproducible_and_leaves_global_rng():
    torch.manual_seed(0)
    net = UNet(2, 1, 2, (4, 8), (2,), dropout=0.3, norm="batch").eval()
    x = torch.randn(1, 1, 16, 16)
    inferer = StochasticSlidingWindowInferer((16, 16), num_samples=6, keep_samples=True, seed=3)
    state = torch.random.get_rng_state()
    with torch.no_grad():
        a = inferer(x, mc_dropout(net))
        b = inferer(x, mc_dropout(net))
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(a["prob"], b["prob"])
    assert float(a["mutual_info"].max()) > 0  # dropout made the passes differ
    assert not net.training and all(not m.training for m in net.modules())  # restored
    # batch norm stayed in eval mode: running stats untouched
    bn = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)][0]
    assert int(bn.num_batches_tracked) == 0
    with pytest.raises(ValueError, match="no dropout"):
        mc_dropout(nn.Conv2d(1, 2, 1))


def test_ensemble_one_sample_per_member():
    torch.manual_seed(0)
    members = [nn.Conv2d(1, 2, 3, padding=1) for _ in range(3)]
    x = torch.randn(1, 1, 12, 12)
    inferer = StochasticSlidingWindowInferer((12, 12), num_samples=3, keep_samples=True)
    with torch.no_grad():
        out_list = inferer(x, members)
        out_mod = inferer(x, DeepEnsemble(members))
        ref = torch.stack([torch.softmax(m(x), 1) for m in members], 1)
    assert out_list["samples"].shape[1] == 3
    torch.testing.assert_close(out_list["prob"], ref.mean(1), atol=1e-5, rtol=0)
    torch.testing.assert_close(out_mod["prob"], ref.mean(1), atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.softmax(DeepEnsemble(members)(x), 1), ref.mean(1), atol=1e-5, rtol=0)


def test_flip_tta_members_are_flips():
    torch.manual_seed(0)
    net = nn.Conv2d(1, 2, 3, padding=1)
    x = torch.randn(1, 1, 12, 12)
    tta = FlipTTA(net, spatial_axes=(0, 1))
    assert [m.axes for m in tta.members] == [(), (0,), (1,), (0, 1)]
    with torch.no_grad():
        out = StochasticSlidingWindowInferer((12, 12), num_samples=4)(x, tta)
        ref = torch.stack(
            [
                torch.softmax(torch.flip(net(torch.flip(x, d)), d), 1) if d else torch.softmax(net(x), 1)
                for d in ([], [2], [3], [2, 3])
            ],
            1,
        )
    torch.testing.assert_close(out["prob"], ref.mean(1), atol=1e-5, rtol=0)


class ToyIterative(IterativeSampler):
    """An iterative sampler: two 'denoising' steps, each a blended sliding-window pass over the whole tensor."""

    in_channels = 1

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3, padding=1)
        self.steps = 0

    def forward(self, x):
        return self.sample(self.distribution(x), 1, torch.Generator().manual_seed(0))[:, 0]

    def sample(self, maps, num_samples, generator=None, window_fn=None):
        inputs = maps["image"]
        b = inputs.shape[0]
        state = torch.randn(b * num_samples, 2, *inputs.shape[2:], generator=generator)
        image = inputs.repeat_interleave(num_samples, 0)
        for _ in range(2):
            self.steps += 1
            state = window_fn(torch.cat([image, state], 1), self.conv)
        return state.view(b, num_samples, 2, *inputs.shape[2:])


def test_iterative_sampler_extension_point():
    torch.manual_seed(0)
    net = ToyIterative()
    x = torch.randn(1, 1, 20, 20)
    inferer = StochasticSlidingWindowInferer((8, 8), num_samples=5, sample_batch_size=2, keep_samples=True, seed=0)
    with torch.no_grad():
        a = inferer(x, net)
        b = inferer(x, net)
    assert net.steps == 2 * 3 * 2  # 2 steps for each of 3 chunks, twice
    assert a["samples"].shape == (1, 5, 20, 20)
    assert torch.equal(a["prob"], b["prob"])


def test_bad_inputs():
    net = UnmaskedToy(2)
    inferer = StochasticSlidingWindowInferer((8, 8), num_samples=2)
    with pytest.raises(ValueError, match="2 channels.*expects 1"):
        inferer(torch.randn(1, 2, 16, 16), net)
    with pytest.raises(ValueError, match="spatial dimensions"):
        inferer(torch.randn(1, 1, 16, 16, 16), net)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        inferer(torch.randn(16, 16), net)
    bad = torch.randn(1, 1, 16, 16)
    bad[0, 0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="1 NaN"):
        inferer(bad, net)
    with pytest.raises(ValueError, match="num_samples"):
        StochasticSlidingWindowInferer((8, 8), num_samples=0)
    with pytest.raises(ValueError, match="unknown output"):
        StochasticSlidingWindowInferer((8, 8), outputs=("seg", "bogus"))
    with pytest.raises(ValueError, match="per_window"):
        StochasticSlidingWindowInferer((8, 8), sampling="per_window")(torch.randn(1, 1, 8, 8), nn.Conv2d(1, 2, 1))


def test_roi_larger_than_image_pads():
    net = UnmaskedToy(2)
    x = torch.randn(1, 1, 10, 6)
    with torch.no_grad():
        out = StochasticSlidingWindowInferer((16, 16), num_samples=2, seed=0)(x, net)
    assert out["prob"].shape == (1, 3, 10, 6)


def test_works_as_supervised_evaluator_inferer():
    net = UnmaskedToy(2)
    data = [{"image": torch.randn(1, 16, 16), "label": torch.zeros(1, 16, 16)} for _ in range(2)]
    evaluator = SupervisedEvaluator(
        device="cpu",
        val_data_loader=torch.utils.data.DataLoader(data, batch_size=2),
        network=net,
        inferer=StochasticSlidingWindowInferer((8, 8), num_samples=3, seed=0),
    )
    evaluator.run()
    out = evaluator.state.output
    assert isinstance(out, list) and len(out) == 2
    assert out[0]["pred"]["entropy"].shape == (1, 16, 16)
    assert out[0]["pred"]["prob"].shape == (3, 16, 16)


def test_sample_roi_nonzero():
    torch.manual_seed(0)
    net = ToyWithMean(2)
    x = torch.randn(1, 1, 16, 16)
    x[..., :, 10:] = 0  # "air" on the right
    with torch.no_grad():
        out = StochasticSlidingWindowInferer((8, 8), num_samples=6, keep_samples=True, seed=0, sample_roi="nonzero")(
            x, net
        )
        mean = sliding_window_inference(x, (8, 8), 1, net, overlap=0.25, mode="gaussian")
    assert float(out["variance"][..., 10:].abs().max()) == 0.0
    torch.testing.assert_close(out["prob"][..., 10:], torch.softmax(mean, 1)[..., 10:], atol=1e-5, rtol=0)
    assert float(out["mutual_info"][..., :10].max()) > 1e-3
    custom = StochasticSlidingWindowInferer((8, 8), num_samples=2, seed=0, sample_roi=lambda t: t[:, :1] > 100)
    with torch.no_grad():
        none = custom(x, net)
    assert float(none["variance"].abs().max()) == 0.0  # empty region: nothing sampled
    with pytest.raises(NotImplementedError, match="mean_logits"):
        StochasticSlidingWindowInferer((8, 8), num_samples=2, sample_roi="nonzero")(x, UnmaskedToy(2))
    with pytest.raises(ValueError, match="sample_roi"):
        StochasticSlidingWindowInferer((8, 8), sample_roi="brain")


class _FullMapsSSN(StochasticSegmentationNetwork):
    """The same SSN, stitched the way it was before window maps: every map of distribution() is blended."""

    def window_maps(self, x, roi_mask=None):
        return self.distribution(x, roi_mask=roi_mask)

    def complete_maps(self, maps):
        return maps


@pytest.mark.parametrize("sample_roi", ["nonzero", None])
def test_window_maps_blend_to_the_distribution_maps(sample_roi):
    """The SSN's window maps (features instead of the factor) give the maps and samples of blending distribution()."""
    kwargs = dict(rank=3, channels=(4, 8), strides=(2,), num_res_units=0, backbone_channels=6, roi_from_image=True)
    torch.manual_seed(0)
    net = StochasticSegmentationNetwork(3, 2, 3, **kwargs).eval()
    ref_net = _FullMapsSSN(3, 2, 3, **kwargs).eval()
    ref_net.load_state_dict(net.state_dict())
    x = torch.randn(1, 2, 20, 18, 14, generator=torch.Generator().manual_seed(1))
    x[..., 12:, :, :] = 0  # air
    inferer = StochasticSlidingWindowInferer(
        (12, 12, 8), overlap=0.5, num_samples=7, seed=3, keep_samples=True, sample_roi=sample_roi
    )
    with torch.no_grad():
        window = net.window_maps(x)
        assert window["factor_features"].shape[1] + 1 + 2 * 3 < 3 * (3 + 2)  # fewer channels to blend
        maps = net.complete_maps(window)
        direct = net.distribution(x)
        for key in direct:
            torch.testing.assert_close(maps[key], direct[key], atol=1e-5, rtol=1e-5)
        out, ref = inferer(x, net), inferer(x, ref_net)
    for key in ("prob", "entropy", "mutual_info", "variance"):
        torch.testing.assert_close(out[key], ref[key], atol=1e-4, rtol=0)
    assert float((out["samples"] != ref["samples"]).float().mean()) < 1e-3
    assert float(out["variance"][..., 12:, :, :].abs().max()) == 0.0  # the air is not sampled


def test_single_channel_networks_are_sigmoid_probabilities(image2d):
    """One output channel is a sigmoid foreground (as in the metrics), for deterministic and distribution models."""
    torch.manual_seed(0)
    net = nn.Conv2d(1, 1, 3, padding=1).eval()
    with torch.no_grad():
        out = StochasticSlidingWindowInferer((16, 16), num_samples=2)(image2d, net)
        ref = sliding_window_inference(image2d, (16, 16), 1, net, overlap=0.25, mode="gaussian")
    assert out["prob"].shape[1] == 2
    torch.testing.assert_close(out["prob"][:, 1:], torch.sigmoid(ref), atol=1e-5, rtol=0)
    assert torch.equal(out["seg"], (ref > 0).long())
    ssn = StochasticSegmentationNetwork(2, 1, 1, rank=2, channels=(4, 8), strides=(2,), num_res_units=0).eval()
    x = image2d.clone()
    x[..., 12:] = 0
    with torch.no_grad():
        sampled = StochasticSlidingWindowInferer((16, 16), num_samples=5, seed=0, sample_roi="nonzero")(x, ssn)
        mean = sliding_window_inference(x, (16, 16), 1, ssn, overlap=0.25, mode="gaussian")
    torch.testing.assert_close(sampled["prob"][:, 1:, :, 12:], torch.sigmoid(mean)[..., 12:], atol=1e-5, rtol=0)
    assert float(sampled["prob"][:, 1:, :, :12].sub(torch.sigmoid(mean)[..., :12]).abs().max()) > 1e-3
