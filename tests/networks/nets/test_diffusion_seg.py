from __future__ import annotations

import pytest
import torch
from monai.inferers import sliding_window_inference

from monai_probseg.networks.nets import DiffusionSegmentation

TINY = {
    "channels": (8, 8, 8),
    "attention_levels": (False, False, False),
    "norm_num_groups": 8,
    "num_inference_steps": 5,
}


def _net(spatial_dims=2, num_classes=2, seed=0, randomize_output=True, **kwargs):
    torch.manual_seed(seed)
    net = DiffusionSegmentation(spatial_dims, image_channels=1, num_classes=num_classes, **{**TINY, **kwargs})
    if randomize_output:
        # MONAI zero-initialises the output convolution: give the untrained UNet a non-trivial output
        out_conv = net.unet.out[2].conv
        torch.nn.init.normal_(out_conv.weight, std=0.05)
    return net.eval()


def _probs(net, images, num_samples, **kwargs):
    """The probabilities of the samples: softmax of the logits of sample(distribution(images), ...)."""
    logits = net.sample(net.distribution(images), num_samples, **kwargs)
    assert logits.shape[:2] == (images.shape[0], num_samples) and torch.isfinite(logits).all()
    return logits.softmax(2)


def _count_calls(net):
    calls = []
    handle = net.unet.register_forward_hook(lambda module, args, kwargs_out: calls.append(args[0].shape[0]))
    return calls, handle


@pytest.mark.parametrize(
    "spatial_dims,num_classes,size",
    [(2, 2, (16, 16)), (2, 4, (16, 16)), (3, 2, (16, 16, 16)), (3, 3, (16, 16, 16))],
)
def test_shapes_and_probabilities(spatial_dims, num_classes, size):
    net = _net(spatial_dims, num_classes)
    images = torch.randn(2, 1, *size)
    probs = _probs(net, images, num_samples=3, generator=0, num_inference_steps=3)
    assert probs.shape == (2, 3, num_classes, *size)
    assert probs.min() >= 0 and probs.max() <= 1
    torch.testing.assert_close(probs.sum(2), torch.ones(2, 3, *size))
    logits = net(images)
    assert logits.shape == (2, num_classes, *size)
    assert torch.isfinite(logits).all()
    # logits are the log of the probabilities of one deterministic DDIM sample
    again = _probs(net, images, 1, generator=net.forward_seed, num_inference_steps=net.forward_steps, eta=0.0)
    torch.testing.assert_close(logits.softmax(1), again[:, 0], atol=1e-4, rtol=0)
    # training forward: the denoiser output has the segmentation channels
    seg_channels = 1 if num_classes == 2 else num_classes
    eps_hat = net(images, noisy_seg=torch.randn(2, seg_channels, *size), timesteps=torch.tensor([3, 900]))
    assert eps_hat.shape == (2, seg_channels, *size)


def test_encoding_and_probabilities_values():
    binary = _net(2, 2)
    label = torch.tensor([[0, 1], [1, 0]]).view(1, 1, 2, 2)
    assert binary.encode_label(label).tolist() == [[[[-1.0, 1.0], [1.0, -1.0]]]]
    x0 = torch.tensor([-1.0, 0.0, 1.0, 2.0, -3.0]).view(1, 1, 5, 1)
    probs = binary.to_probabilities(x0)
    torch.testing.assert_close(probs[0, 1, :, 0], torch.tensor([0.0, 0.5, 1.0, 1.0, 0.0]))
    torch.testing.assert_close(probs[0, 0, :, 0], torch.tensor([1.0, 0.5, 0.0, 0.0, 1.0]))

    multi = _net(2, 3)
    code = multi.encode_label(torch.tensor([2, 0]).view(1, 1, 1, 2))
    assert code[0, :, 0].tolist() == [[-1.0, 1.0], [-1.0, -1.0], [1.0, -1.0]]
    # a one-hot code decodes to the one-hot probabilities; (0, 0, -1) -> (0.5, 0.5, 0)
    x0 = torch.tensor([[1.0, -1.0, -1.0], [0.0, 0.0, -1.0]]).T.reshape(1, 3, 2, 1)
    probs = multi.to_probabilities(x0)
    torch.testing.assert_close(probs[0, :, 0, 0], torch.tensor([1.0, 0.0, 0.0]), atol=1e-5, rtol=0)
    torch.testing.assert_close(probs[0, :, 1, 0], torch.tensor([0.5, 0.5, 0.0]), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="class indices"):
        multi.encode_label(torch.full((1, 1, 2, 2), 3))


@pytest.mark.parametrize("steps", [1, 4, 7])
def test_ddim_calls_unet_once_per_step_with_members_in_one_batch(steps):
    net = _net(2, 2)
    calls, handle = _count_calls(net)
    _probs(net, torch.randn(2, 1, 16, 16), num_samples=5, generator=0, num_inference_steps=steps, sampler="ddim")
    handle.remove()
    assert calls == [2 * 5] * steps
    # the timesteps follow the stride DDIMScheduler.step assumes (t -> t - T // k)
    timesteps = net.inference_timesteps("ddim", steps)
    stride = net.num_train_timesteps // steps
    assert timesteps == [stride * i for i in range(steps - 1, -1, -1)]


def test_ddpm_runs_every_timestep():
    net = _net(2, 2, num_train_timesteps=12)
    calls, handle = _count_calls(net)
    probs = _probs(net, torch.randn(1, 1, 16, 16), num_samples=2, generator=0, sampler="ddpm")
    handle.remove()
    assert calls == [2] * 12
    assert probs.shape == (1, 2, 2, 16, 16)
    with pytest.raises(ValueError, match="consecutive"):
        _probs(net, torch.randn(1, 1, 16, 16), 1, sampler="ddpm", num_inference_steps=4)


def test_ddim_chain_values_with_a_zero_denoiser():
    """eps_hat = 0: the deterministic DDIM chain is x_s = sqrt(abar_s) clip(x_t / sqrt(abar_t)) (by hand)."""
    net = _net(2, 2, randomize_output=False)  # MONAI's zero output conv: the UNet predicts eps = 0
    images = torch.randn(1, 1, 16, 16)
    probs = _probs(net, images, num_samples=2, generator=7, num_inference_steps=4, eta=0.0)
    abar = net.ddim_scheduler.alphas_cumprod.double()
    x = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(7)).double()
    timesteps = [750, 500, 250, 0]
    for i, t in enumerate(timesteps):
        x0 = (x / abar[t].sqrt()).clamp(-1, 1)
        prev = abar[timesteps[i + 1]] if i + 1 < len(timesteps) else torch.tensor(1.0, dtype=torch.float64)
        x = prev.sqrt() * x0
    expected = ((x + 1) / 2).clamp(0, 1).float()
    torch.testing.assert_close(probs[0, :, 1], expected[:, 0], atol=1e-5, rtol=0)


def test_v_prediction_chain_values_with_a_zero_denoiser():
    """v_hat = 0: x0_hat = sqrt(abar_t) x_t, eps_hat = sqrt(1 - abar_t) x_t (Salimans & Ho 2022), by hand."""
    net = _net(2, 2, randomize_output=False, prediction_type="v_prediction")
    probs = _probs(net, torch.randn(1, 1, 16, 16), num_samples=1, generator=5, num_inference_steps=2, eta=0.0)
    abar = net.ddim_scheduler.alphas_cumprod.double()
    x = torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(5)).double()
    for t, s in ((500, 0), (0, None)):
        x0 = (abar[t].sqrt() * x).clamp(-1, 1)
        eps = (1 - abar[t]).sqrt() * x
        prev = abar[s] if s is not None else torch.tensor(1.0, dtype=torch.float64)
        x = prev.sqrt() * x0 + (1 - prev).sqrt() * eps
    torch.testing.assert_close(probs[0, 0, 1], ((x[0, 0] + 1) / 2).clamp(0, 1).float(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("sampler,eta", [("ddim", 0.0), ("ddim", 1.0), ("ddpm", None)])
def test_same_seed_same_samples_different_seed_different(sampler, eta):
    net = _net(2, 2, num_train_timesteps=20)
    images = torch.randn(1, 1, 16, 16)
    kwargs = {"sampler": sampler, "eta": eta, "num_inference_steps": 5 if sampler == "ddim" else None}
    a = _probs(net, images, 3, generator=torch.Generator().manual_seed(1), **kwargs)
    b = _probs(net, images, 3, generator=1, **kwargs)
    c = _probs(net, images, 3, generator=2, **kwargs)
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert (a - c).abs().max() > 1e-3
    # the members of one call differ from each other
    assert (a[:, 0] - a[:, 1]).abs().max() > 1e-3


def _window_fn(roi_size, overlap=0.25, mode="gaussian"):
    def window_fn(tensor, patch_fn):
        return sliding_window_inference(tensor, roi_size, 4, patch_fn, overlap=overlap, mode=mode)

    return window_fn


@pytest.mark.parametrize(
    "spatial_dims,num_classes,size,roi",
    [(2, 2, (16, 16), (8, 8)), (2, 3, (16, 24), (8, 16)), (3, 2, (16, 16, 16), (8, 8, 8))],
)
def test_sample_with_window_fn(spatial_dims, num_classes, size, roi):
    net = _net(spatial_dims, num_classes)
    images = torch.randn(1, 1, *size)
    calls, handle = _count_calls(net)
    probs = _probs(net, images, 2, window_fn=_window_fn(roi), generator=torch.Generator().manual_seed(3))
    handle.remove()
    assert probs.shape == (1, 2, num_classes, *size)
    torch.testing.assert_close(probs.sum(2), torch.ones(1, 2, *size))
    assert len(calls) > net.num_inference_steps  # several windows per step
    # a window covering the whole image reproduces sample() with the same generator
    whole = _probs(net, images, 2, window_fn=_window_fn(size), generator=torch.Generator().manual_seed(3))
    direct = _probs(net, images, 2, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(whole, direct, atol=1e-4, rtol=0)
    # plain identity window function: exactly sample()
    plain = _probs(net, images, 2, window_fn=lambda t, f: f(t), generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(plain, direct, atol=0, rtol=0)


def test_windowed_sample_draws_noise_for_the_whole_volume():
    """With an identity 'UNet' per window, the windowed result does not depend on the windows."""
    net = _net(2, 2)
    images = torch.randn(1, 1, 16, 16)
    seen = []

    def fake_window_fn(tensor, patch_fn):
        seen.append(tuple(tensor.shape))
        return torch.zeros(tensor.shape[0], 1, *tensor.shape[2:])  # eps_hat = 0 everywhere

    a = _probs(net, images, 3, window_fn=fake_window_fn, generator=4, num_inference_steps=2)
    assert seen == [(3, 2, 16, 16)] * 2  # the whole volume (image + x_t of 3 members) at every step
    b = _probs(net, images, 3, window_fn=fake_window_fn, generator=4, num_inference_steps=2)
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_errors():
    net = _net(2, 2)
    with pytest.raises(TypeError, match="label_to_network=False"):
        net(torch.randn(1, 1, 16, 16), torch.randn(1, 1, 16, 16))
    with pytest.raises(ValueError, match="divisible by 4"):
        _probs(net, torch.randn(1, 1, 18, 16), 1)
    with pytest.raises(ValueError, match="shape"):
        _probs(net, torch.randn(1, 2, 16, 16), 1)
    with pytest.raises(ValueError, match="sampler"):
        _probs(net, torch.randn(1, 1, 16, 16), 1, sampler="euler")
    with pytest.raises(ValueError, match="num_inference_steps"):
        _probs(net, torch.randn(1, 1, 16, 16), 1, num_inference_steps=5000)
    with pytest.raises(ValueError, match="prediction_type"):
        DiffusionSegmentation(2, 1, 2, prediction_type="sample", **TINY)
    with pytest.raises(ValueError, match="together"):
        net(torch.randn(1, 1, 16, 16), noisy_seg=torch.randn(1, 1, 16, 16))
    with pytest.raises(ValueError, match="window_fn"):
        _probs(net, torch.randn(1, 1, 16, 16), 1, window_fn=lambda t, f: t)


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")
def test_traced_eval_forward_holds_its_initial_noise():
    net = _net(2, 3, num_inference_steps=2)
    x = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        traced = torch.jit.trace(net, x)
        first, second = traced(x), traced(x)
        torch.testing.assert_close(first, net(x), atol=1e-6, rtol=0)
    torch.testing.assert_close(second, first, atol=0, rtol=0)  # not a new draw at every call


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cpu_generator_with_cuda_inputs():
    net = _net(2, 2).cuda()
    images = torch.randn(1, 1, 16, 16, device="cuda")
    a = _probs(net, images, 2, generator=torch.Generator().manual_seed(0), eta=1.0)
    b = _probs(net, images, 2, generator=torch.Generator().manual_seed(0), eta=1.0)
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    c = _probs(net, images, 2, generator=torch.Generator(device="cuda").manual_seed(0), eta=1.0)
    assert c.shape == a.shape


def test_stochastic_inferer_output_dict():
    """The inferer's iterative path: chunks of sample(..., window_fn) streamed into the uncertainty maps."""
    from monai_probseg.inferers import StochasticSlidingWindowInferer
    from monai_probseg.metrics import uncertainty_maps
    from monai_probseg.utils import make_generator

    net = _net(2, 3, num_inference_steps=3)
    images = torch.randn(1, 1, 16, 16)
    inferer = StochasticSlidingWindowInferer((16, 16), num_samples=4, sample_batch_size=2, seed=0, keep_samples=True)
    out = inferer(images, net)
    # the whole image is one window: equal to two chunks of sample() with the inferer's generator
    gen = make_generator(0, "cpu")
    probs = torch.cat([_probs(net, images, 2, generator=gen), _probs(net, images, 2, generator=gen)], dim=1)
    expected = uncertainty_maps(probs)
    for key in ("prob", "entropy", "mutual_info", "variance"):
        torch.testing.assert_close(torch.as_tensor(out[key]).float(), expected[key].float(), atol=1e-5, rtol=0)
    # the label map agrees wherever the mean probability is not a tie (the window blending rounds differently)
    top2 = expected["prob"].topk(2, dim=1).values
    decided = (top2[:, 0] - top2[:, 1]) > 1e-4
    assert torch.equal(torch.as_tensor(out["seg"])[:, 0][decided], expected["seg"][:, 0][decided])
    torch.testing.assert_close(expected["variance"], probs.var(1, unbiased=False))
    assert tuple(out["samples"].shape) == (1, 4, 16, 16)
    # windows smaller than the image
    small = StochasticSlidingWindowInferer((8, 8), num_samples=2, sample_batch_size=2, seed=0)(images, net)
    assert tuple(small["prob"].shape) == (1, 3, 16, 16)
    torch.testing.assert_close(torch.as_tensor(small["prob"]).sum(1), torch.ones(1, 16, 16))


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_clip_consistent_output_matches_clipped_x0(prediction_type):
    net = DiffusionSegmentation(
        2,
        1,
        2,
        channels=(8, 8, 8),
        attention_levels=(False, False, False),
        norm_num_groups=4,
        prediction_type=prediction_type,
    )
    t = 500
    a = net.ddim_scheduler.alphas_cumprod[t]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, 8, 8, generator=g)
    out = 3.0 * torch.randn(2, 1, 8, 8, generator=g)  # implies x0 far outside [-1, 1] in places

    def implied_x0(o):
        if prediction_type == "epsilon":
            return (x - (1 - a).sqrt() * o) / a.sqrt()
        return a.sqrt() * x - (1 - a).sqrt() * o

    fixed = net.clip_consistent_output(out, x, t)
    x0 = implied_x0(out)
    assert float(x0.abs().max()) > 1.5
    torch.testing.assert_close(implied_x0(fixed), x0.clamp(-1, 1), atol=1e-5, rtol=0)
    inside = x0.abs() <= 1
    torch.testing.assert_close(fixed[inside], out[inside], atol=1e-4, rtol=0)  # unchanged where nothing clips


def test_hard_samples_are_the_one_hot_of_the_soft_samples():
    """``hard_samples``: each sample is the one-hot of the argmax of the same soft sample (same seed)."""
    soft = _net(2, num_classes=3, seed=0)
    hard = _net(2, num_classes=3, seed=0, hard_samples=True)
    hard.load_state_dict(soft.state_dict())
    images = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        p_soft = soft.sample(soft.distribution(images), 3, generator=0).softmax(2)
        p_hard = hard.sample(hard.distribution(images), 3, generator=0).softmax(2)
    torch.testing.assert_close(p_hard.argmax(2), p_soft.argmax(2))
    assert torch.allclose(p_hard.amax(2), torch.ones(()), atol=1e-4)  # one-hot up to the 1e-6 clamp
