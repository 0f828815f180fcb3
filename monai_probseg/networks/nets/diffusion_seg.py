# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""Diffusion segmentation with implicit ensembles, on MONAI's ``DiffusionModelUNet`` and schedulers.

Wolleb, J., Sandkühler, R., Bieder, F., Valmaggia, P., Cattin, P. C. (2022) Diffusion Models for Implicit Image
Segmentation Ensembles. MIDL 2022.

Ho, J., Jain, A., Abbeel, P. (2020) Denoising Diffusion Probabilistic Models. NeurIPS 2020.

Song, J., Meng, C., Ermon, S. (2021) Denoising Diffusion Implicit Models. ICLR 2021.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.networks.nets import DiffusionModelUNet
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler
from monai.networks.utils import one_hot

from monai_probseg.networks.contract import IterativeSampler, WindowFn, whole_image
from monai_probseg.utils import check_positive_int, check_spatial_dims, make_generator

__all__ = ["DiffusionSegmentation"]

SAMPLERS = ("ddim", "ddpm")
PREDICTION_TYPES = ("epsilon", "v_prediction")

# probabilities are clamped to this before the log that turns them into logits (log(1e-6) = -13.8)
_LOG_EPS = 1e-6


class DiffusionSegmentation(IterativeSampler):
    """Denoising diffusion model of the segmentation given the image: sampling it gives an implicit ensemble.

    Wolleb et al. (2022) Diffusion Models for Implicit Image Segmentation Ensembles. MIDL 2022.

    A MONAI ``DiffusionModelUNet`` is trained to denoise the *segmentation*: at every step its input is the image
    (the condition, never noised) concatenated along the channels with the noisy segmentation ``x_t``, and it
    predicts the noise ``epsilon`` (Ho et al., NeurIPS 2020) or the velocity ``v`` (``prediction_type``). Running
    the reverse process from ``N`` independent draws of Gaussian noise gives ``N`` plausible segmentations; their
    mean is the ensemble prediction and their spread the uncertainty (Wolleb et al. report BraTS2020 Dice 0.866
    with one sample and 0.881 with the mean of five).

    Segmentation encoding (``x_0`` of the diffusion process, values in ``{-1, 1}``):

    - binary (``num_classes == 2``): one channel, ``x_0 = 2 * label - 1`` (foreground 1, background -1);
    - multi-class (``num_classes > 2``): ``C`` channels, ``x_0 = 2 * one_hot(label) - 1``.

    A final sample ``x_0`` (clipped to ``[-1, 1]`` by the scheduler) is turned into class probabilities by
    ``q = clamp((x_0 + 1) / 2, 0, 1)``: binary gives ``(1 - q, q)``; multi-class renormalises ``q`` over the
    channels, ``p_c = (q_c + 1e-6) / sum_k (q_k + 1e-6)``. This is the identity on exact codes (a one-hot code
    gives the one-hot probabilities) and monotone in every channel; unlike a softmax it needs no temperature.

    Sampling (:py:meth:`sample`) folds the ``N`` ensemble members into the batch, so each denoising step is ONE
    UNet call on ``B * N`` items (one blended sliding-window pass with a ``window_fn``). Samplers:

    - ``"ddpm"``: the ancestral sampler of Ho et al. (2020) with MONAI's ``DDPMScheduler`` over all
      ``num_train_timesteps`` steps (that scheduler's step assumes consecutive timesteps, so fewer steps are
      refused);
    - ``"ddim"``: Song et al. (ICLR 2021) with MONAI's ``DDIMScheduler`` and ``k = num_inference_steps`` steps
      (``eta = 0`` deterministic given the initial noise, ``eta = 1`` DDPM-like). The timesteps are
      ``t_i = i * (T // k)`` (``T = num_train_timesteps``), the spacing ``DDIMScheduler.step`` assumes when it
      computes the previous timestep as ``t - T // k``; ``set_timesteps`` rounds a ``linspace`` instead, which does
      not match that stride when ``k`` does not divide ``T - 1``, so the timesteps are set to the stride after it.

    Every random draw (initial noise and the noise the schedulers add at each step) uses one ``torch.Generator``:
    the same seed gives the same samples on the same device. A generator on another device than the inputs (for
    instance a CPU generator for CUDA inputs) seeds a generator on the inputs' device from one draw of its own.

    Whole volumes (``sample(..., window_fn=...)``): the noise is drawn once for the whole volume and every denoising
    step runs the UNet through sliding windows whose outputs are blended, then the scheduler step runs on the whole
    volume. Sample ``n`` is therefore one coherent reverse process over the volume (no seams), at the cost of the
    window passes at every step. :py:class:`monai_probseg.inferers.StochasticSlidingWindowInferer` passes its
    window function.

    Model contract (an :py:class:`~monai_probseg.networks.IterativeSampler`, see docs/design.rst):

    - eval ``forward(x)`` returns segmentation logits ``(B, C, *spatial)``: ``log`` of the probabilities of ONE
      deterministic DDIM sample (``eta = 0``, ``forward_steps`` steps, initial noise from ``forward_seed``), so
      MONAI's ``SimpleInferer``/``SlidingWindowInferer`` and ``verify_net_in_out`` work. Cost: ``forward_steps``
      UNet passes per call (a fixed seed, not the ensemble mean: use :py:meth:`sample` for that). MONAI's
      ``DiffusionModelUNet`` cannot be scripted, so TorchScript export traces it (``ckpt_export --use_trace True
      --input_shape ...``); the initial noise is then a constant of the trace, which takes inputs of that one shape;
    - training ``forward(x, noisy_seg=x_t, timesteps=t)`` returns the UNet's prediction of ``epsilon`` (or ``v``);
      :py:class:`monai_probseg.engines.DiffusionPrepareBatch` builds ``x_t`` and ``t`` from the label and the loss
      is the mean squared error to the target (``torch.nn.MSELoss``);
    - ``distribution(x)`` returns the condition ``{"image": x}`` (the whole volume);
    - ``sample(maps, num_samples, generator, window_fn=None)`` returns ``(B, N, C, *spatial)`` logits, the ``log``
      of the probabilities of the ``N`` final samples (clamped at 1e-6, so ``softmax`` gives them back), with the
      UNet run through ``window_fn`` at every step.

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3.
        image_channels: number of image channels (the condition, e.g. 4 MRI modalities).
        num_classes: number of classes ``C`` including background (``2`` for binary: one diffused channel).
        channels: output channels of the UNet levels; every entry must be divisible by ``norm_num_groups``.
        attention_levels: whether each level has self-attention.
        num_res_blocks: residual blocks per level (an int or one per level).
        norm_num_groups: groups of the UNet's group normalisation.
        num_head_channels: channels per attention head (an int or one per level); ``None`` uses
            ``gcd(channels[i], 32)`` per level. MONAI's UNet always has attention in its middle block, so the last
            entry must divide ``channels[-1]``.
        resblock_updown: use residual blocks for down/upsampling.
        num_train_timesteps: number of diffusion steps ``T`` (1000 in Ho et al. and Wolleb et al.).
        schedule: noise schedule of ``monai.networks.schedulers.NoiseSchedules`` (``"linear_beta"`` with Ho et
            al.'s ``beta`` from 1e-4 to 0.02, used by Wolleb et al.; ``"cosine"``; ``"scaled_linear_beta"``, ...).
        prediction_type: ``"epsilon"`` (noise, Ho et al.) or ``"v_prediction"`` (velocity).
        num_inference_steps: default number of DDIM steps of :py:meth:`sample` (ignored by ``"ddpm"``);
            ``None`` gives ``min(20, num_train_timesteps)``.
        sampler: default sampler, ``"ddim"`` or ``"ddpm"``.
        eta: default DDIM ``eta`` (0: deterministic given the initial noise). With 20 steps and v-prediction on the
            2D benchmark set, ``eta = 1`` matched DDPM with 1000 steps within 1 Dice point while ``eta = 0`` was 8-9
            points below (``benchmarks/results/diffusion.md``): prefer ``eta = 1`` for few steps.
        forward_steps: number of DDIM steps of the eval :py:meth:`forward` (``num_inference_steps`` if ``None``).
        forward_seed: seed of the initial noise of the eval :py:meth:`forward`.
        schedule_args: extra arguments of the schedule function, e.g. ``{"beta_start": 1e-4, "beta_end": 0.02}``.
        hard_samples: make each sample of :py:meth:`sample` the one-hot of its final label map (its argmax), as
            the implicit ensembles of Wolleb et al. are segmentations: the uncertainty maps then measure the
            disagreement between samples only, not the softness of an incompletely denoised ``x_0`` (which,
            after few DDIM steps, leaves an entropy of about 0.4 nats everywhere). ``False`` keeps the soft
            probabilities of :py:meth:`to_probabilities`.

    Example::

        net = DiffusionSegmentation(2, image_channels=1, num_classes=2, num_inference_steps=20)
        maps = net.distribution(torch.randn(2, 1, 64, 64))
        logits = net.sample(maps, num_samples=5, generator=0)  # (2, 5, 2, 64, 64)
        mean_prob = logits.softmax(2).mean(1)
    """

    def __init__(
        self,
        spatial_dims: int,
        image_channels: int,
        num_classes: int,
        channels: Sequence[int] = (32, 64, 64),
        attention_levels: Sequence[bool] = (False, False, True),
        num_res_blocks: Sequence[int] | int = 1,
        norm_num_groups: int = 32,
        num_head_channels: Sequence[int] | int | None = None,
        resblock_updown: bool = False,
        num_train_timesteps: int = 1000,
        schedule: str = "linear_beta",
        prediction_type: str = "epsilon",
        num_inference_steps: int | None = None,
        sampler: str = "ddim",
        eta: float = 0.0,
        forward_steps: int | None = None,
        forward_seed: int = 0,
        schedule_args: dict[str, Any] | None = None,
        hard_samples: bool = False,
    ) -> None:
        super().__init__()
        self.hard_samples = bool(hard_samples)
        self.spatial_dims = check_spatial_dims(spatial_dims)
        self.image_channels = check_positive_int(image_channels, "image_channels")
        # the channels of the model's input (the image), as inferers read it
        self.in_channels = self.image_channels
        self.num_classes = check_positive_int(num_classes, "num_classes", minimum=2)
        self.seg_channels = 1 if self.num_classes == 2 else self.num_classes
        self.num_train_timesteps = check_positive_int(num_train_timesteps, "num_train_timesteps", minimum=2)
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}.")
        self.prediction_type = prediction_type
        self.sampler = self._check_sampler(sampler)
        if num_inference_steps is None:
            num_inference_steps = min(20, self.num_train_timesteps)
        self.num_inference_steps = self._check_steps(num_inference_steps, "num_inference_steps")
        self.eta = self._check_eta(eta)
        self.forward_steps = self._check_steps(
            num_inference_steps if forward_steps is None else forward_steps, "forward_steps"
        )
        self.forward_seed = int(forward_seed)
        channels = tuple(int(c) for c in channels)
        if any(c % norm_num_groups for c in channels):
            raise ValueError(
                f"every entry of channels must be divisible by norm_num_groups={norm_num_groups}, "
                f"got channels={channels}."
            )
        self.channels = channels
        # the UNet halves the resolution len(channels) - 1 times
        self.size_divisor = 2 ** (len(channels) - 1)
        if num_head_channels is None:
            num_head_channels = tuple(math.gcd(c, 32) for c in channels)

        self.unet = DiffusionModelUNet(
            spatial_dims=self.spatial_dims,
            in_channels=self.image_channels + self.seg_channels,
            out_channels=self.seg_channels,
            num_res_blocks=num_res_blocks,
            channels=channels,
            attention_levels=tuple(bool(a) for a in attention_levels),
            norm_num_groups=norm_num_groups,
            num_head_channels=num_head_channels,
            resblock_updown=resblock_updown,
        )
        schedule_args = dict(schedule_args or {})
        # the schedulers hold no parameters: they add nothing to the state dict
        self.scheduler = DDPMScheduler(
            num_train_timesteps=self.num_train_timesteps,
            schedule=schedule,
            prediction_type=prediction_type,
            clip_sample=True,
            **schedule_args,
        )
        self.ddim_scheduler = DDIMScheduler(
            num_train_timesteps=self.num_train_timesteps,
            schedule=schedule,
            prediction_type=prediction_type,
            clip_sample=True,
            **schedule_args,
        )

    # ------------------------------------------------------------------ checks
    def _check_sampler(self, sampler: str) -> str:
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}.")
        return sampler

    def _check_steps(self, steps: int, name: str) -> int:
        steps = check_positive_int(steps, name)
        if steps > self.num_train_timesteps:
            raise ValueError(f"{name} must be at most num_train_timesteps={self.num_train_timesteps}, got {steps}.")
        return steps

    @staticmethod
    def _check_eta(eta: float) -> float:
        if not 0.0 <= float(eta) <= 1.0:
            raise ValueError(f"eta must be in [0, 1], got {eta!r}.")
        return float(eta)

    def _check_images(self, images: torch.Tensor, name: str = "images") -> None:
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(images).__name__}.")
        if images.ndim != self.spatial_dims + 2 or images.shape[1] != self.image_channels:
            raise ValueError(
                f"{name} must have shape (B, {self.image_channels}, *spatial) with {self.spatial_dims} spatial dims, "
                f"got {tuple(images.shape)}."
            )

    def _check_divisible(self, spatial: Sequence[int], name: str) -> None:
        if any(s % self.size_divisor for s in spatial):
            raise ValueError(
                f"the spatial size of {name} must be divisible by {self.size_divisor} (the UNet has "
                f"{len(self.channels)} levels), got {tuple(spatial)}; pad it (monai.transforms.DivisiblePad) or use "
                "sliding windows (sample(..., window_fn=...))."
            )

    # ---------------------------------------------------------------- encoding
    def encode_label(self, labels: torch.Tensor) -> torch.Tensor:
        """Encode class-index label maps ``(B, 1, *spatial)`` as the diffusion's ``x_0`` in ``{-1, 1}``.

        Binary (``num_classes == 2``): ``(B, 1, *spatial)``, ``2 * label - 1``. Multi-class: ``(B, C, *spatial)``,
        ``2 * one_hot(label) - 1``.

        Args:
            labels: integer (or integer-valued float) class indices in ``[0, num_classes)``, shape
                ``(B, 1, *spatial)``.

        Example::

            x0 = net.encode_label(torch.randint(0, 2, (2, 1, 32, 32)))
        """
        if labels.ndim != self.spatial_dims + 2 or labels.shape[1] != 1:
            raise ValueError(
                f"labels must be class-index maps (B, 1, *spatial) with {self.spatial_dims} spatial dims, got "
                f"{tuple(labels.shape)} (one-hot labels: take the argmax over channels first)."
            )
        index = labels[:, 0].round().long() if labels.is_floating_point() else labels[:, 0].long()
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= self.num_classes):
            raise ValueError(
                f"labels must hold class indices in [0, {self.num_classes}), got values in "
                f"[{int(index.min())}, {int(index.max())}]."
            )
        if self.seg_channels == 1:
            return (2.0 * index.unsqueeze(1) - 1.0).float()
        one_hot = F.one_hot(index, self.num_classes).movedim(-1, 1)
        return (2.0 * one_hot - 1.0).float()

    def to_probabilities(self, x0: torch.Tensor) -> torch.Tensor:
        """Map an (approximate) ``x_0`` of ``seg_channels`` channels to class probabilities ``(..., C, *spatial)``.

        ``q = clamp((x_0 + 1) / 2, 0, 1)``; binary: ``(1 - q, q)``; multi-class: ``q`` renormalised over channels
        (``(q + 1e-6) / sum(q + 1e-6)``). The channel axis is ``-(spatial_dims + 1)``.

        Args:
            x0: final samples in the ``[-1, 1]`` encoding, shape ``(..., seg_channels, *spatial)``.

        Example::

            probs = net.to_probabilities(torch.tensor([-1.0, 0.0, 1.0]).view(1, 1, 3, 1))  # p(fg) = 0, 0.5, 1
        """
        dim = -(self.spatial_dims + 1)
        if x0.shape[dim] != self.seg_channels:
            raise ValueError(f"x0 must have {self.seg_channels} channels at dim {dim}, got shape {tuple(x0.shape)}.")
        q = ((x0 + 1.0) * 0.5).clamp(0.0, 1.0)
        if self.seg_channels == 1:
            return torch.cat([1.0 - q, q], dim=dim)
        q = q + _LOG_EPS
        return q / q.sum(dim=dim, keepdim=True)

    # ---------------------------------------------------------------- training
    def denoise(self, images: torch.Tensor, noisy_seg: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Run the UNet on ``concat(images, noisy_seg)`` at ``timesteps``: the prediction of ``epsilon`` (or ``v``).

        Args:
            images: the condition ``(B, image_channels, *spatial)``.
            noisy_seg: the noisy segmentation ``x_t`` ``(B, seg_channels, *spatial)``.
            timesteps: integer timesteps ``(B,)`` (or a scalar, used for the whole batch).

        Example::

            eps_hat = net.denoise(img, x_t, torch.randint(0, 1000, (img.shape[0],)))
        """
        self._check_images(images)
        if (
            noisy_seg.shape[0] != images.shape[0]
            or noisy_seg.shape[1] != self.seg_channels
            or (noisy_seg.shape[2:] != images.shape[2:])
        ):
            raise ValueError(
                f"noisy_seg must have shape (B, {self.seg_channels}, *spatial) matching the images "
                f"{tuple(images.shape)}, got {tuple(noisy_seg.shape)}."
            )
        timesteps = torch.as_tensor(timesteps, device=images.device).long()
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(images.shape[0])
        return self.unet(torch.cat([images, noisy_seg.to(images.dtype)], dim=1), timesteps=timesteps)

    def forward(
        self, x: torch.Tensor, *args: Any, noisy_seg: torch.Tensor | None = None, timesteps: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Denoiser output (training) or segmentation logits of one deterministic DDIM sample (inference).

        Args:
            x: images ``(B, image_channels, *spatial)``.
            args: not accepted (raises), see below.
            noisy_seg: the noisy segmentation ``x_t``; with ``timesteps``, returns :py:meth:`denoise`.
            timesteps: the timesteps of ``noisy_seg``.

        Returns:
            ``(B, seg_channels, *spatial)`` prediction of ``epsilon``/``v`` when ``noisy_seg`` is given, otherwise
            ``(B, num_classes, *spatial)`` logits (``log`` of clamped probabilities) of one DDIM sample with
            ``eta = 0``, ``forward_steps`` steps and initial noise seeded with ``forward_seed``.
        """
        if args:
            raise TypeError(
                f"DiffusionSegmentation.forward got {len(args)} extra positional argument(s); the training inputs come "
                "from DiffusionPrepareBatch as keywords (noisy_seg=..., timesteps=...). With ProbSegTrainer pass "
                "label_to_network=False: the label reaches the network diffused, as noisy_seg."
            )
        if (noisy_seg is None) != (timesteps is None):
            raise ValueError("noisy_seg and timesteps must be given together (training) or both left out (inference).")
        if noisy_seg is not None:
            return self.denoise(x, noisy_seg, timesteps)  # type: ignore[arg-type]
        logits = self.sample(
            self.distribution(x),
            num_samples=1,
            generator=make_generator(self.forward_seed, x.device),
            num_inference_steps=self.forward_steps,
            sampler="ddim",
            eta=0.0,
        )
        return logits[:, 0]

    # ---------------------------------------------------------------- sampling
    def inference_timesteps(self, sampler: str | None = None, num_inference_steps: int | None = None) -> list[int]:
        """Prepare the scheduler of ``sampler`` and return the timesteps of the reverse process, first to last.

        Args:
            sampler: ``"ddim"`` or ``"ddpm"`` (the network's default if ``None``).
            num_inference_steps: number of DDIM steps (the network's default if ``None``); ``"ddpm"`` accepts
                only ``None`` or ``num_train_timesteps``.

        Example::

            ts = net.inference_timesteps("ddim", 20)  # [950, 900, ..., 0] for T = 1000
        """
        sampler = self._check_sampler(self.sampler if sampler is None else sampler)
        if sampler == "ddpm":
            if num_inference_steps is not None and num_inference_steps != self.num_train_timesteps:
                raise ValueError(
                    f"sampler='ddpm' runs all num_train_timesteps={self.num_train_timesteps} steps (MONAI's "
                    f"DDPMScheduler.step assumes consecutive timesteps), got num_inference_steps={num_inference_steps};"
                    " use sampler='ddim' for fewer steps."
                )
            self.scheduler.set_timesteps(self.num_train_timesteps)
            return self.scheduler.timesteps.tolist()
        steps = self._check_steps(
            self.num_inference_steps if num_inference_steps is None else num_inference_steps, "num_inference_steps"
        )
        sched = self.ddim_scheduler
        sched.set_timesteps(steps)
        stride = self.num_train_timesteps // steps
        # DDIMScheduler.step goes from t to t - T // k: use exactly that stride (see the class docstring)
        sched.timesteps = torch.arange(steps - 1, -1, -1, dtype=torch.long) * stride + sched.steps_offset
        return sched.timesteps.tolist()

    def _device_generator(
        self, generator: int | torch.Generator | None, device: torch.device
    ) -> torch.Generator | None:
        """A generator on ``device`` (where the schedulers draw their step noise)."""
        if generator is None or isinstance(generator, int):
            return make_generator(generator, device)
        if not isinstance(generator, torch.Generator):
            raise TypeError(
                f"generator must be an int seed, a torch.Generator or None, got {type(generator).__name__}."
            )
        if generator.device.type == device.type:
            return generator
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
        return make_generator(seed, device)

    def _reverse_process(
        self,
        images: torch.Tensor,
        num_samples: int,
        denoise_fn: Callable[[torch.Tensor, int], torch.Tensor],
        generator: int | torch.Generator | None,
        num_inference_steps: int | None,
        sampler: str | None,
        eta: float | None,
    ) -> torch.Tensor:
        """Shared reverse process; ``denoise_fn(concat(image_rep, x_t), t)`` is the UNet (direct or windowed)."""
        self._check_images(images)
        num_samples = check_positive_int(num_samples, "num_samples")
        sampler = self._check_sampler(self.sampler if sampler is None else sampler)
        eta = self._check_eta(self.eta if eta is None else eta)
        timesteps = self.inference_timesteps(sampler, num_inference_steps)
        scheduler = self.ddim_scheduler if sampler == "ddim" else self.scheduler
        device = images.device
        gen = self._device_generator(generator, device)
        batch, spatial = images.shape[0], tuple(images.shape[2:])
        # N members folded into the batch: item b * N + n is member n of image b
        cond = images.repeat_interleave(num_samples, dim=0)
        x = torch.randn(
            (batch * num_samples, self.seg_channels, *spatial), generator=gen, device=device, dtype=images.dtype
        )
        if torch.jit.is_tracing():
            # torch.jit.trace records randn with the generator as a constant whose state moves on at every call of
            # the traced module, which would then draw new noise each time; make this draw a constant of the trace
            x = torch.from_numpy(x.cpu().numpy()).to(device)
        for t in timesteps:
            model_output = denoise_fn(torch.cat([cond, x], dim=1), t)
            if sampler == "ddim":
                model_output = self.clip_consistent_output(model_output, x, t)
                x, _ = scheduler.step(model_output, t, x, eta=eta, generator=gen)
            else:
                x, _ = scheduler.step(model_output, t, x, generator=gen)
        return x.reshape(batch, num_samples, self.seg_channels, *spatial)

    def clip_consistent_output(self, model_output: torch.Tensor, x: torch.Tensor, t: int) -> torch.Tensor:
        """The model output that agrees with the clipped prediction of ``x_0`` at timestep ``t`` (for DDIM).

        MONAI's ``DDIMScheduler.step`` clips the predicted ``x_0`` to [-1, 1] but moves along the *unclipped*
        noise prediction, so the update mixes two inconsistent estimates; for segmentations, which sit exactly on
        the clip bounds, that degrades few-step sampling a lot. Like guided-diffusion's DDIM (Nichol & Dhariwal
        2021; the code base of Wolleb et al. 2022), this recomputes the noise from the clipped ``x_0``:
        ``x0 = clip((x_t - sqrt(1 - a_t) eps) / sqrt(a_t))``, ``eps' = (x_t - sqrt(a_t) x0) / sqrt(1 - a_t)``
        (for v-prediction ``v' = sqrt(a_t) eps' - sqrt(1 - a_t) x0``), and returns ``eps'`` (or ``v'``), for which
        the scheduler's own clipping is a no-op.

        Args:
            model_output: the network's prediction (``epsilon`` or ``v``) at ``x_t``.
            x: the current sample ``x_t``.
            t: the timestep.
        """
        alpha = self.ddim_scheduler.alphas_cumprod[t].to(device=x.device, dtype=x.dtype)
        sqrt_a, sqrt_1ma = alpha.sqrt(), (1 - alpha).sqrt()
        if self.prediction_type == "epsilon":
            x0 = ((x - sqrt_1ma * model_output) / sqrt_a).clamp(-1.0, 1.0)
            return (x - sqrt_a * x0) / sqrt_1ma
        x0 = (sqrt_a * x - sqrt_1ma * model_output).clamp(-1.0, 1.0)
        eps = (x - sqrt_a * x0) / sqrt_1ma
        return sqrt_a * eps - sqrt_1ma * x0

    def _unet_at(self, t: int) -> Callable[[torch.Tensor], torch.Tensor]:
        """The UNet at timestep ``t`` as a function of its input ``concat(image, x_t)`` (any batch size)."""

        def _patch_fn(window: torch.Tensor) -> torch.Tensor:
            steps = torch.full((window.shape[0],), t, dtype=torch.long, device=window.device)
            return self.unet(window, timesteps=steps)

        return _patch_fn

    def distribution(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The condition of the reverse process: ``{"image": x}`` (the whole volume; the distribution is implicit).

        Args:
            x: images ``(B, image_channels, *spatial)``.
        """
        self._check_images(x)
        return {"image": x}

    @torch.no_grad()
    def sample(
        self,
        maps: dict[str, torch.Tensor],
        num_samples: int,
        generator: int | torch.Generator | None = None,
        window_fn: WindowFn | None = None,
        num_inference_steps: int | None = None,
        sampler: str | None = None,
        eta: float | None = None,
    ) -> torch.Tensor:
        """Draw ``num_samples`` segmentations of every image: the implicit ensemble of Wolleb et al. (2022).

        The ``N`` members are one batch of ``B * N`` items, so each denoising step is one UNet call (one blended
        sliding-window pass with ``window_fn``): ``k`` calls in all for ``k`` DDIM steps (``num_train_timesteps``
        for DDPM). The initial noise ``(B * N, seg_channels, *spatial)`` is drawn once for the whole volume; at every
        step ``window_fn(concat(image_rep, x_t), patch_fn)`` runs the UNet (``patch_fn``) over windows and blends
        them, then the scheduler step (and its noise) runs on the whole volume, so every sample is one coherent
        reverse process. With a window covering the whole image (and the same generator) the result equals the
        direct one (``window_fn=None``) up to the rounding of the window blending.

        Args:
            maps: ``{"image": images}`` from :py:meth:`distribution`, images ``(B, image_channels, *spatial)``;
                without ``window_fn`` the spatial size must be divisible by ``2 ** (len(channels) - 1)``.
            num_samples: number of ensemble members ``N``.
            generator: seed or ``torch.Generator`` for the initial noise and every step's noise.
            window_fn: ``window_fn(tensor, patch_fn) -> tensor``, e.g. MONAI's ``sliding_window_inference`` with
                ``predictor=patch_fn``; ``patch_fn`` maps a window batch ``(b, image_channels + seg_channels, *roi)``
                to ``(b, seg_channels, *roi)``. ``None``: the UNet runs on the whole image.
            num_inference_steps: DDIM steps ``k`` (the network's default if ``None``).
            sampler: ``"ddim"`` or ``"ddpm"`` (the network's default if ``None``).
            eta: DDIM ``eta`` (the network's default if ``None``).

        Returns:
            ``(B, N, num_classes, *spatial)`` logits: ``log`` of :py:meth:`to_probabilities` of the final samples,
            clamped at 1e-6 (``softmax`` over the class axis gives the probabilities back).

        Example::

            from monai.inferers import sliding_window_inference

            def window_fn(x, patch_fn):
                return sliding_window_inference(x, (48, 48, 48), 4, patch_fn, overlap=0.25, mode="gaussian")

            logits = net.sample(net.distribution(volume), 2, generator=0, window_fn=window_fn)
            probs = logits.softmax(2)  # (1, 2, num_classes, *spatial)
        """
        if "image" not in maps:
            raise KeyError(f"maps must hold 'image' (from distribution(x)), got {sorted(maps)}.")
        images = maps["image"]
        self._check_images(images)
        if window_fn is None:
            self._check_divisible(images.shape[2:], "images")
            window_fn = whole_image

        def _denoise(tensor: torch.Tensor, t: int) -> torch.Tensor:
            out = window_fn(tensor, self._unet_at(t))
            if not isinstance(out, torch.Tensor) or out.shape != (
                tensor.shape[0],
                self.seg_channels,
                *tensor.shape[2:],
            ):
                raise ValueError(
                    f"window_fn must return a tensor of shape ({tensor.shape[0]}, {self.seg_channels}, "
                    f"*{tuple(tensor.shape[2:])}), got {getattr(out, 'shape', type(out).__name__)}."
                )
            out = out.as_tensor() if isinstance(out, MetaTensor) else out
            return out.to(device=tensor.device, dtype=tensor.dtype)

        x0 = self._reverse_process(images, num_samples, _denoise, generator, num_inference_steps, sampler, eta)
        probs = self.to_probabilities(x0)
        if self.hard_samples:
            probs = one_hot(probs.argmax(2, keepdim=True), probs.shape[2], dtype=probs.dtype, dim=2)
        return torch.log(probs.clamp_min(_LOG_EPS))
