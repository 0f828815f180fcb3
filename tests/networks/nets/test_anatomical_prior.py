"""AnatomicalPriorVAE and AnatomicalPriorSegmentation (Dalca et al., CVPR 2018): shapes, frozen prior, contract."""

from __future__ import annotations

import pytest
import torch

from monai_probseg.inferers import StochasticSlidingWindowInferer
from monai_probseg.losses import AnatomicalPriorELBOLoss, AnatomicalPriorVAELoss
from monai_probseg.networks import DistributionModel, SamplingKind, sampling_kind
from monai_probseg.networks.nets import AnatomicalPriorSegmentation, AnatomicalPriorVAE


def _prior(dims=2, classes=4, latent=2):
    torch.manual_seed(0)
    return AnatomicalPriorVAE(dims, classes, latent, channels=(4, 8), strides=(2, 2))


def _net(dims=2, in_channels=2, classes=4, **kwargs):
    return AnatomicalPriorSegmentation(dims, in_channels, classes, _prior(dims, classes), **kwargs)


@pytest.mark.parametrize("dims,spatial", [(2, (13, 16)), (3, (9, 8, 7))])
def test_shapes(dims, spatial):
    prior = _prior(dims)
    labels = torch.randint(0, 4, (2, 1, *spatial))
    grid = tuple(-(-s // 4) for s in spatial)
    mu, log_var = prior.encode(labels)
    assert mu.shape == log_var.shape == (2, 2, *grid) and prior.latent_shape(spatial) == (2, *grid)
    assert prior(labels).shape == (2, 4, *spatial)
    assert prior.decode(mu).shape == (2, 4, *(g * 4 for g in grid))
    assert prior.sample_prior(3, spatial, generator=0).shape == (3, 4, *spatial)
    out = prior.reconstruct(labels, generator=0)
    assert out["logits"].shape == (2, 4, *spatial) and out["latent_mean"].shape == (2, 2, *grid)

    net = AnatomicalPriorSegmentation(dims, 2, 4, prior, num_mc_samples=3)
    x = torch.randn(2, 2, *spatial)
    train = net.train()(x)
    assert train["logits"].shape == (2, 3, 4, *spatial)
    assert train["latent_mean"].shape == (2, 2, *grid) and train["intensity_log_var"].shape == (4, 2)
    net.eval()
    with torch.no_grad():
        logits = net(x)
        maps = net.distribution(x)
        samples = net.sample(maps, 5, torch.Generator().manual_seed(0))
    assert logits.shape == (2, 4, *spatial)
    assert set(maps) == {"latent_mean", "latent_log_var"} and maps["latent_mean"].shape == (2, 2, *spatial)
    assert samples.shape == (2, 5, 4, *spatial) and torch.isfinite(samples).all()
    # the mean of the maps decodes to the eval forward (the best single answer), also for sizes not a multiple of 4
    torch.testing.assert_close(net.mean_logits(maps), logits)


def test_contract_kind():
    net = _net()
    assert sampling_kind(net) is SamplingKind.DISTRIBUTION and isinstance(net, DistributionModel)
    assert net.in_channels == 2


def test_same_seed_same_samples():
    net = _net().eval()
    x = torch.randn(1, 2, 8, 8)
    with torch.no_grad():
        maps = net.distribution(x)
        a = net.sample(maps, 3, torch.Generator().manual_seed(7))
        b = net.sample(maps, 3, torch.Generator().manual_seed(7))
        c = net.sample(maps, 3, 8)
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert not torch.equal(a, c)
    assert not torch.equal(a[:, 0], a[:, 1])  # the draws differ
    prior = _prior()
    torch.testing.assert_close(
        prior.eval().sample_prior(2, (8, 8), 3), prior.sample_prior(2, (8, 8), 3), atol=0, rtol=0
    )


def test_prior_decoder_frozen_during_unsupervised_training():
    prior = _prior()
    prior.train()(torch.randint(0, 4, (2, 1, 8, 8)))  # non-trivial batch-norm statistics
    net = AnatomicalPriorSegmentation(2, 1, 4, prior)
    frozen = {k: v.clone() for k, v in net.decoder.state_dict().items()}  # weights and batch-norm statistics
    trainable = {k: v.detach().clone() for k, v in net.named_parameters() if not k.startswith("decoder.")}
    assert all(not p.requires_grad for p in net.decoder.parameters())
    assert any(k.endswith("running_mean") for k in frozen)
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-2)
    loss_fn = AnatomicalPriorELBOLoss()
    net.train()
    assert net.training and not net.decoder.training  # the prior's decoder stays in eval mode
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        x = torch.rand(2, 1, 8, 8, generator=g)
        loss = loss_fn(**net(x, generator=g))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    for k, v in net.decoder.state_dict().items():
        torch.testing.assert_close(v, frozen[k], atol=0, rtol=0, msg=f"decoder {k} changed")
    changed = {k for k, p in net.named_parameters() if k in trainable and not torch.equal(p, trainable[k])}
    assert "intensity_mean" in changed and "_intensity_log_var_raw" in changed
    assert any(k.startswith("encoder.") for k in changed)
    # the prior passed in is not touched: its decoder is a copy
    assert all(p.requires_grad for p in prior.decoder.parameters()) and prior.decoder.training


def test_supervised_variant_uses_the_label():
    net = _net(in_channels=1, supervised=True).train()
    x, y = torch.rand(2, 1, 8, 8), torch.randint(0, 4, (2, 1, 8, 8))
    with pytest.raises(ValueError, match="label map"):
        net(x)
    out = net(x, y, generator=0)
    assert out["target"] is y
    loss = AnatomicalPriorELBOLoss(supervised=True)(**out)["loss"]
    loss.backward()
    assert torch.isfinite(loss) and net.intensity_mean.grad is not None


def test_no_nan_with_air_and_extreme_intensities():
    net = _net(in_channels=1).train()
    x = torch.zeros(2, 1, 16, 16)  # air everywhere but a block
    x[:, :, 4:12, 4:12] = torch.rand(2, 1, 8, 8) * 1e4
    x[0, 0, 5, 5] = -1e4
    loss = AnatomicalPriorELBOLoss()(**net(x, generator=0))["loss"]
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)
    lo, hi = net.intensity_log_var_bounds
    assert (net.intensity_log_var >= lo).all() and (net.intensity_log_var <= hi).all()


def test_prior_vae_learns_to_reconstruct_fixed_label_maps():
    torch.manual_seed(0)
    labels = torch.zeros(4, 1, 16, 16, dtype=torch.long)
    for i in range(4):  # a "brain" (1) with a "core" (2) and a "ventricle" (3) at shifting positions
        labels[i, 0, 2 : 14 - i, 2 + i : 14] = 1
        labels[i, 0, 5 : 10 - i // 2, 6:11] = 2
        labels[i, 0, 7:9, 3 + i : 5 + i] = 3
    prior = AnatomicalPriorVAE(2, 4, 4, channels=(8, 16), strides=(2, 2))
    loss_fn = AnatomicalPriorVAELoss(reconstruction="mean")

    def eval_ce():
        prior.eval()
        with torch.no_grad():
            return float(torch.nn.functional.cross_entropy(prior(labels), labels[:, 0]))

    before = eval_ce()
    opt = torch.optim.Adam(prior.parameters(), lr=2e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(60):
        prior.train()
        loss = loss_fn(**prior.reconstruct(labels, generator=g), target=labels)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = eval_ce()
    assert after < 0.5 * before, (before, after)


@pytest.mark.parametrize("roi", [(16, 16), (8, 8)])
def test_runs_through_stochastic_sliding_window_inferer(roi):
    net = _net(in_channels=1).eval()
    x = torch.rand(1, 1, 16, 16)
    inferer = StochasticSlidingWindowInferer(roi, num_samples=4, overlap=0.5, seed=0, keep_samples=True)
    with torch.no_grad():
        out = inferer(x, net)
        again = inferer(x, net)
    assert out["prob"].shape == (1, 4, 16, 16) and out["samples"].shape == (1, 4, 16, 16)
    assert out["entropy"].shape == out["mutual_info"].shape == (1, 1, 16, 16)
    for key in ("prob", "entropy", "mutual_info", "variance"):
        assert torch.isfinite(torch.as_tensor(out[key])).all(), key
    assert float(out["mutual_info"].min()) >= -1e-5
    assert float(out["mutual_info"].max()) <= float(out["entropy"].max()) + 1e-5
    torch.testing.assert_close(torch.as_tensor(out["prob"]), torch.as_tensor(again["prob"]))  # seeded
    if roi == (16, 16):  # one window: the inferer's samples are those of sample(distribution(x)) with its seed
        with torch.no_grad():
            probs = torch.softmax(net.sample(net.distribution(x), 4, torch.Generator().manual_seed(0)), 2)
        torch.testing.assert_close(torch.as_tensor(out["prob"]), probs.mean(1), atol=1e-5, rtol=1e-4)


def test_validation():
    prior = _prior()
    with pytest.raises(ValueError, match="grid"):
        AnatomicalPriorSegmentation(2, 1, 4, prior, channels=(4,), strides=(2,))
    with pytest.raises(ValueError, match="num_classes"):
        AnatomicalPriorSegmentation(2, 1, 3, prior)
    with pytest.raises(TypeError, match="AnatomicalPriorVAE"):
        AnatomicalPriorSegmentation(2, 1, 4, torch.nn.Identity())
    with pytest.raises(ValueError, match="channels"):
        _net(in_channels=1).eval()(torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match="label values"):
        prior.encode(torch.full((1, 1, 8, 8), 5))


def test_intensity_posterior_adds_the_likelihood_to_every_eval_output():
    """p(s | z, x) ∝ p(s | z) p(x | s): forward, mean_logits and sample all carry log p(x | s)."""
    from monai_probseg.losses import label_log_likelihood

    net = _net(in_channels=1).eval()
    x = torch.rand(2, 1, 12, 12)
    with torch.no_grad():
        prior_logits = net(x)
        maps = net.distribution(x)
        prior_samples = net.sample(maps, 3, 7)
        net.intensity_posterior = True
        log_lik = label_log_likelihood(x, net.intensity_mean, net.intensity_log_var)
        post = net(x)
        maps_post = net.distribution(x)
        samples = net.sample(maps_post, 3, 7)
    assert set(maps_post) == {"latent_mean", "latent_log_var", "intensity_log_likelihood"}
    torch.testing.assert_close(maps_post["intensity_log_likelihood"], log_lik)
    torch.testing.assert_close(post, torch.log_softmax(prior_logits, 1) + log_lik)
    torch.testing.assert_close(net.mean_logits(maps_post), post)
    torch.testing.assert_close(samples, torch.log_softmax(prior_samples, 2) + log_lik[:, None])
    with pytest.raises(KeyError, match="intensity_log_likelihood"):
        net.sample(maps, 1, 0)


@pytest.mark.parametrize("dims,spatial", [(2, (13, 16)), (3, (9, 8, 7))])
def test_bias_field_outputs(dims, spatial):
    """With ``bias_field_order`` the likelihood reads ``x / b``, ``b`` fitted by EM; ``b = 1`` in air."""
    from monai_probseg.losses import label_log_likelihood

    net = _net(dims, in_channels=2, bias_field_order=2, intensity_posterior=True)
    x = torch.rand(2, 2, *spatial) + 0.1
    x[:, :, :2] = 0  # air
    out = net.train()(x)
    assert out["log_bias"].shape == x.shape and torch.isfinite(out["log_bias"]).all()
    assert (out["log_bias"][:, :, :2] == 0).all() and out["log_bias"].abs().sum() > 0
    torch.testing.assert_close(out["image"], x * torch.exp(-out["log_bias"]))
    terms = AnatomicalPriorELBOLoss(reconstruction="mean")(**out)
    assert torch.isfinite(terms["loss"])
    terms["loss"].backward()
    assert net.intensity_mean.grad is not None and net.encoder.head.conv.weight.grad is not None
    assert all(p.grad is None for p in net.decoder.parameters())  # the prior stays frozen
    net.eval()
    with torch.no_grad():
        maps = net.distribution(x)
        corrected, log_bias = net.bias_corrected(x)
        log_lik = label_log_likelihood(corrected, net.intensity_mean, net.intensity_log_var)
        torch.testing.assert_close(maps["intensity_log_likelihood"], log_lik)
        torch.testing.assert_close(net.mean_logits(maps), net(x))
    with pytest.raises(ValueError, match="bias_field_order"):
        _net(dims, bias_field_order=-1)


@pytest.mark.parametrize("bias_order", [0, 2])
def test_per_image_tissue_gaussians_recover_each_images_contrast(bias_order):
    """``intensity_fit_iterations``: two images whose tissues are darker / brighter than the learnt means get their own.

    Three labels (0 air, 1 tissue A, 2 tissue B, in stripes); the learnt means are 0.4 / 0.8, the images' true
    means 0.3 / 0.6 and 0.5 / 1.0 (noise 0.02). The learnt Gaussians put much of the dark image's tissue B into A;
    each image's own fit (a prior weight of 1 voxel against 72 per tissue) recovers its means and the labels.
    """
    torch.manual_seed(0)
    prior = AnatomicalPriorVAE(2, 3, latent_channels=2, channels=(4,), strides=(2,))
    net = AnatomicalPriorSegmentation(
        2,
        1,
        3,
        prior,
        intensity_posterior=True,
        intensity_means=[0.0, 0.4, 0.8],
        bias_field_order=bias_order,
        intensity_fit_iterations=20,
        intensity_prior_count=1.0,
    ).eval()
    with torch.no_grad():
        net._intensity_log_var_raw.fill_(-2.0)  # sd 0.02: the likelihood decides, not the untrained prior
    label = torch.zeros(16, 16, dtype=torch.long)
    label[2:14, 2:14] = 1
    label[2:14, 2:14][:, torch.arange(12) % 4 >= 2] = 2  # stripes 2 voxels wide: no smooth gain mimics them
    truth = torch.tensor([[0.0, 0.3, 0.6], [0.0, 0.5, 1.0]])
    x = torch.stack([t[label] for t in truth])[:, None] + 0.02 * torch.randn(2, 1, 16, 16) * (label > 0)
    with torch.no_grad():
        fit = net.intensity_model(x)
        pred = net(x).argmax(1)
        net.intensity_fit_iterations = 0
        learnt = net(x).argmax(1)
    assert fit["intensity_mean"].shape == (2, 3, 1) and fit["intensity_log_var"].shape == (2, 3, 1)
    if bias_order == 0:  # with a bias field the field may take a little of the scale; the labels are what count
        torch.testing.assert_close(fit["intensity_mean"][:, 1:, 0], truth[:, 1:], atol=0.01, rtol=0)
    assert (pred == label).all(), (pred != label).sum()
    assert (learnt[0] != label).sum() > 20  # the learnt means alone mislabel the dark image's tissue B
    assert torch.isfinite(fit["intensity_log_var"]).all()
    with pytest.raises(ValueError, match="intensity_fit_iterations"):
        _net(intensity_fit_iterations=-1)
    with pytest.raises(ValueError, match="intensity_prior_count"):
        _net(intensity_prior_count=float("nan"))
