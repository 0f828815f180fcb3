# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""Exponential moving average (EMA) of model weights, as a helper and as an ignite/MONAI handler.

Diffusion models are usually evaluated with an EMA of their weights (Ho et al., "Denoising Diffusion Probabilistic
Models", NeurIPS 2020, decay 0.9999; Wolleb et al., "Diffusion Models for Implicit Image Segmentation Ensembles",
MIDL 2022, train with an EMA rate as well).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn
from monai.utils import IgniteInfo, min_version, optional_import

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import(
        "ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine", as_type="decorator"
    )

__all__ = ["ExponentialMovingAverage", "EMAHandler"]


def _unwrap(model: nn.Module) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
    return model.module if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)) else model


class ExponentialMovingAverage:
    """A shadow copy of a model whose weights follow ``shadow = decay * shadow + (1 - decay) * weights``.

    Floating-point parameters are averaged; buffers (e.g. batch-norm statistics) and integer parameters are copied.
    With ``warmup=True`` the decay of update ``n`` (counting from 0) is ``min(decay, (1 + n) / (10 + n))``, so the
    shadow forgets its random initialisation quickly in the first updates.

    The shadow is an ordinary module (:py:attr:`shadow`, in eval mode, no gradients): evaluate it directly, or swap
    its weights into the online model for a while with :py:meth:`swapped`.

    Args:
        model: the online model (``DataParallel``/``DistributedDataParallel`` are unwrapped).
        decay: EMA decay in ``[0, 1)`` (0.999 by default; Ho et al. 2020 use 0.9999 for long runs).
        warmup: use the decay warm-up described above.

    Example::

        ema = ExponentialMovingAverage(net, decay=0.999)
        for batch in loader:
            ...; optimizer.step(); ema.update()
        with ema.swapped():
            logits = net.sample(net.distribution(images), 5)
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = False) -> None:
        if not 0.0 <= float(decay) < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay!r}.")
        self.model = _unwrap(model)
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.num_updates = 0
        self.shadow = copy.deepcopy(self.model)
        self.shadow.eval()
        self.shadow.requires_grad_(False)

    def current_decay(self) -> float:
        """The decay the next :py:meth:`update` uses."""
        if self.warmup:
            return min(self.decay, (1.0 + self.num_updates) / (10.0 + self.num_updates))
        return self.decay

    @torch.no_grad()
    def update(self) -> None:
        """Move the shadow weights toward the online model's: one EMA step."""
        decay = self.current_decay()
        for shadow_p, p in zip(self.shadow.parameters(), self.model.parameters()):
            if shadow_p.is_floating_point():
                shadow_p.mul_(decay).add_(p.detach().to(shadow_p.device, shadow_p.dtype), alpha=1.0 - decay)
            else:
                shadow_p.copy_(p.detach())
        for shadow_b, b in zip(self.shadow.buffers(), self.model.buffers()):
            shadow_b.copy_(b.detach())
        self.num_updates += 1

    @contextmanager
    def swapped(self) -> Iterator[nn.Module]:
        """Context in which the online model holds the EMA weights; its own weights are restored on exit.

        Example::

            with ema.swapped() as net:
                evaluator.run()
        """
        backup = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.model.load_state_dict(self.shadow.state_dict())
        try:
            yield self.model
        finally:
            self.model.load_state_dict(backup)

    def state_dict(self) -> dict[str, Any]:
        """Shadow weights and update count, for ``CheckpointSaver``/``CheckpointLoader``."""
        return {"shadow": self.shadow.state_dict(), "num_updates": self.num_updates, "decay": self.decay}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :py:meth:`state_dict` saved."""
        if "shadow" not in state_dict:
            raise KeyError(f"an EMA state dict holds 'shadow' and 'num_updates', got keys {sorted(state_dict)}.")
        self.shadow.load_state_dict(state_dict["shadow"])
        self.num_updates = int(state_dict.get("num_updates", 0))


class EMAHandler(ExponentialMovingAverage):
    """Ignite/MONAI handler keeping an EMA of the trainer's network weights (:py:class:`ExponentialMovingAverage`).

    ``attach(trainer)`` updates the shadow every ``update_every`` iterations once ``start_iteration`` iterations
    have run; ``attach_evaluator(evaluator)`` swaps the EMA weights into the online model while the evaluator runs
    (the evaluator's network and inferer need no change), restoring the trained weights afterwards, also when the
    evaluator raises. Save the handler itself in ``CheckpointSaver(save_dict={"ema": handler, ...})``.

    Unlike ``ignite.handlers.EMAHandler`` (``momentum = 1 - decay``, evaluation of a separate model), this handler
    takes the diffusion literature's ``decay``, offers the decay warm-up and swaps weights into the online model.

    Args:
        model: the online model.
        decay: EMA decay in ``[0, 1)`` (0.999 by default).
        warmup: use the decay warm-up ``min(decay, (1 + n) / (10 + n))``.
        update_every: update the shadow every this many iterations.
        start_iteration: first iteration (``engine.state.iteration``) after which the shadow is updated; before
            it the shadow copies the model.

    Example::

        ema = EMAHandler(net, decay=0.999)
        ema.attach(trainer)
        ema.attach_evaluator(evaluator)
        trainer.run()
    """

    def __init__(
        self,
        model: nn.Module,
        decay: float = 0.999,
        warmup: bool = False,
        update_every: int = 1,
        start_iteration: int = 0,
    ) -> None:
        super().__init__(model, decay=decay, warmup=warmup)
        if isinstance(update_every, bool) or not isinstance(update_every, int) or update_every < 1:
            raise ValueError(f"update_every must be an integer >= 1, got {update_every!r}.")
        if isinstance(start_iteration, bool) or not isinstance(start_iteration, int) or start_iteration < 0:
            raise ValueError(f"start_iteration must be an integer >= 0, got {start_iteration!r}.")
        self.update_every = update_every
        self.start_iteration = start_iteration

    def attach(self, engine: Engine) -> None:
        """
        Args:
            engine: the trainer whose iterations update the shadow.
        """
        engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.update_every), self)

    def __call__(self, engine: Engine) -> None:
        """
        Args:
            engine: the trainer.
        """
        if engine.state.iteration <= self.start_iteration:
            with torch.no_grad():
                self.shadow.load_state_dict(self.model.state_dict())
            return
        self.update()

    def attach_evaluator(self, evaluator: Engine) -> None:
        """Swap the EMA weights into the online model while ``evaluator`` runs.

        Args:
            evaluator: an engine whose network is the online model.
        """
        backup: dict[str, torch.Tensor] = {}

        def _swap_in(_engine: Engine) -> None:
            backup.clear()
            backup.update({k: v.detach().clone() for k, v in self.model.state_dict().items()})
            self.model.load_state_dict(self.shadow.state_dict())

        def _swap_out(_engine: Engine) -> None:
            if backup:
                self.model.load_state_dict(backup)
                backup.clear()

        def _swap_out_and_raise(_engine: Engine, e: Exception) -> None:
            _swap_out(_engine)
            raise e

        evaluator.add_event_handler(Events.STARTED, _swap_in)
        evaluator.add_event_handler(Events.COMPLETED, _swap_out)
        evaluator.add_event_handler(Events.EXCEPTION_RAISED, _swap_out_and_raise)
