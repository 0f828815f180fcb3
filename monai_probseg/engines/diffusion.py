# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""Training inputs of the diffusion segmentation model: the *label* is diffused, the image is the condition.

Wolleb, J., Sandkühler, R., Bieder, F., Valmaggia, P., Cattin, P. C. (2022) Diffusion Models for Implicit Image
Segmentation Ensembles. MIDL 2022.

Ho, J., Jain, A., Abbeel, P. (2020) Denoising Diffusion Probabilistic Models. NeurIPS 2020.
"""

from __future__ import annotations

from typing import Any

import torch
from monai.engines.utils import DiffusionPrepareBatch as _MonaiDiffusionPrepareBatch
from monai.engines.utils import default_prepare_batch

from monai_probseg.networks.nets.diffusion_seg import DiffusionSegmentation
from monai_probseg.utils import make_generator

__all__ = ["DiffusionPrepareBatch"]


class DiffusionPrepareBatch(_MonaiDiffusionPrepareBatch):
    """``prepare_batch`` for training :py:class:`~monai_probseg.networks.nets.DiffusionSegmentation` with MONAI engines.

    A subclass of MONAI's ``monai.engines.utils.DiffusionPrepareBatch`` (its ``get_timesteps``/``get_noise``/
    ``get_target`` hooks draw here from one seeded generator, and ``get_target`` gives the velocity for
    v-prediction). MONAI's version diffuses the *image* and passes the condition as a keyword for its
    ``DiffusionInferer``; this one diffuses the *label* and keeps the image as the condition, which the network
    concatenates to the noisy label (Wolleb et al.), and it draws one of several annotators per item.

    For a batch with ``image`` ``(B, image_channels, *spatial)`` and ``label`` ``(B, K, *spatial)`` (class indices;
    ``K`` annotators), it

    1. picks one annotator per item (uniformly at random when ``K > 1``, the usual way to train on several
       annotations, e.g. Kohl et al., NeurIPS 2018) and encodes it as ``x_0`` in ``{-1, 1}``
       (:py:meth:`DiffusionSegmentation.encode_label`);
    2. draws ``t ~ U{0, ..., T - 1}`` per item and ``epsilon ~ N(0, I)``;
    3. builds ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) epsilon`` with the network's ``DDPMScheduler.add_noise``
       (Ho et al., 2020, eq. 4);
    4. returns ``(image, target, (), {"noisy_seg": x_t, "timesteps": t})`` with ``target = epsilon`` (or the
       velocity ``v = sqrt(abar_t) epsilon - sqrt(1 - abar_t) x_0`` for ``prediction_type="v_prediction"``).

    The image is returned as loaded (never noised): the engine then calls
    ``network(image, noisy_seg=x_t, timesteps=t)``, which concatenates the image to ``x_t`` as Wolleb et al. do,
    and the loss compares the output with ``target`` (``torch.nn.MSELoss``: the ``L_simple`` of Ho et al.). Use it
    with MONAI's ``SupervisedTrainer``, or with
    :py:class:`~monai_probseg.engines.ProbSegTrainer` and ``label_to_network=False`` (the label reaches the network
    diffused, through ``noisy_seg``). ``engine.state.output["label"]`` then holds the target (noise), not the mask.

    Args:
        network: the model being trained (its encoding, scheduler and ``prediction_type`` are used).
        generator: seed or ``torch.Generator`` for the annotator choice, the timesteps and the noise (global torch
            random state if ``None``); the draws happen on the generator's device and are moved to the batch's.
        image_key: key of the image in a dict batch.
        label_key: key of the label in a dict batch.

    Example::

        net = DiffusionSegmentation(2, image_channels=1, num_classes=2)
        trainer = ProbSegTrainer(
            device="cpu", max_epochs=100, train_data_loader=loader, network=net,
            optimizer=torch.optim.AdamW(net.parameters(), 1e-4), loss_function=torch.nn.MSELoss(),
            prepare_batch=DiffusionPrepareBatch(net, generator=0), label_to_network=False,
        )
    """

    def __init__(
        self,
        network: DiffusionSegmentation,
        generator: int | torch.Generator | None = None,
        image_key: str = "image",
        label_key: str = "label",
    ) -> None:
        if not isinstance(network, DiffusionSegmentation):
            raise TypeError(f"network must be a DiffusionSegmentation, got {type(network).__name__}.")
        super().__init__(num_train_timesteps=network.num_train_timesteps)
        self.network = network
        self.generator = make_generator(generator)
        self.image_key = image_key
        self.label_key = label_key

    def _draw_device(self) -> torch.device:
        return self.generator.device if self.generator is not None else torch.device("cpu")

    def get_timesteps(self, images: torch.Tensor) -> torch.Tensor:
        """Timesteps ``t ~ U{0, ..., T - 1}``, one per item of ``images`` (the encoded labels ``x_0``).

        Args:
            images: the tensor that is diffused, ``(B, ch, *spatial)``.
        """
        draw = torch.randint(
            0, self.num_train_timesteps, (images.shape[0],), generator=self.generator, device=self._draw_device()
        )
        return draw.to(images.device)

    def get_noise(self, images: torch.Tensor) -> torch.Tensor:
        """Standard normal noise of the shape of ``images`` (the encoded labels ``x_0``).

        Args:
            images: the tensor that is diffused, ``(B, ch, *spatial)``.
        """
        noise = torch.randn(images.shape, generator=self.generator, device=self._draw_device(), dtype=images.dtype)
        return noise.to(images.device)

    def get_target(self, images: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The noise, or the velocity ``sqrt(abar_t) epsilon - sqrt(1 - abar_t) x_0`` for v-prediction.

        Args:
            images: the encoded labels ``x_0``.
            noise: the noise ``epsilon``.
            timesteps: the timesteps ``t``.
        """
        if self.network.prediction_type == "v_prediction":
            return self.network.scheduler.get_velocity(sample=images, noise=noise, timesteps=timesteps)
        return noise

    def __call__(
        self,
        batchdata: dict[str, torch.Tensor],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor, tuple, dict[str, torch.Tensor]]:
        if isinstance(batchdata, dict):
            if self.image_key not in batchdata or self.label_key not in batchdata:
                raise KeyError(
                    f"the batch must hold '{self.image_key}' and '{self.label_key}', got keys {sorted(batchdata)}."
                )
            batchdata = {"image": batchdata[self.image_key], "label": batchdata[self.label_key]}
        images, labels = default_prepare_batch(batchdata, device, non_blocking, **kwargs)
        if labels is None:
            raise ValueError("the batch has no label: the diffusion model is trained on the diffused label.")
        net = self.network
        if labels.ndim != images.ndim or labels.shape[0] != images.shape[0] or labels.shape[2:] != images.shape[2:]:
            raise ValueError(
                f"label must be class-index maps (B, K, *spatial) matching the image {tuple(images.shape)}, got "
                f"{tuple(labels.shape)}."
            )
        batch, num_annotators = labels.shape[0], labels.shape[1]
        if num_annotators > 1:
            choice = torch.randint(0, num_annotators, (batch,), generator=self.generator, device=self._draw_device())
            labels = labels[torch.arange(batch, device=labels.device), choice.to(labels.device)].unsqueeze(1)
        x0 = net.encode_label(labels).to(device=images.device, dtype=images.dtype)
        # the draws in this order: annotators, timesteps, noise
        timesteps = self.get_timesteps(x0)
        noise = self.get_noise(x0)
        noisy_seg = net.scheduler.add_noise(original_samples=x0, noise=noise, timesteps=timesteps)
        return images, self.get_target(x0, noise, timesteps), (), {"noisy_seg": noisy_seg, "timesteps": timesteps}
