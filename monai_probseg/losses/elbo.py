# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""The evidence lower bound (ELBO) of conditional latent-variable segmentation models, with GECO as an option."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from monai.utils import LossReduction
from torch.nn.modules.loss import _Loss

from monai_probseg.distributions import gaussian_kl_divergence

__all__ = ["ELBOLoss", "cross_entropy_map"]

_PARAM_KEYS = ("posterior_mean", "posterior_log_sigma", "prior_mean", "prior_log_sigma")
_GECO_DEFAULTS = {
    "kappa": 0.05,
    "alpha": 0.99,
    "step_size": 0.01,
    "lambda_init": 1.0,
    "lambda_min": 1e-6,
    "lambda_max": 1e6,
}


def cross_entropy_map(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-voxel categorical cross-entropy ``-sum_c y_c log softmax(logits)_c`` with input checks.

    Args:
        logits: ``(B, C, *spatial)`` unnormalised scores, ``C >= 2`` (binary segmentation is ``C = 2``).
        target: a label map ``(B, 1, *spatial)`` or ``(B, *spatial)`` with integer values in ``[0, C - 1]``, or
            one-hot / class probabilities ``(B, C, *spatial)``.

    Returns:
        the cross-entropy of every voxel, ``(B, *spatial)`` float32 (computed in float32 under AMP too).

    Raises:
        ValueError: when the shapes do not match or label values are out of range.

    Example::

        ce = cross_entropy_map(torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 1, 8, 8)))  # (2, 8, 8)
    """
    if not isinstance(logits, torch.Tensor) or logits.dim() < 3:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"logits must have shape (B, C, *spatial), got {shape}.")
    num_classes = logits.shape[1]
    if num_classes < 2:
        raise ValueError(
            f"logits have {num_classes} channel; the categorical likelihood needs C >= 2 (binary segmentation is "
            "C = 2 with softmax)."
        )
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}.")
    if target.dim() == logits.dim() - 1:
        target = target.unsqueeze(1)
    spatial = tuple(logits.shape[2:])
    if target.dim() != logits.dim() or target.shape[0] != logits.shape[0] or tuple(target.shape[2:]) != spatial:
        raise ValueError(
            f"target has shape {tuple(target.shape)}, expected (B={logits.shape[0]}, 1 or {num_classes}, *{spatial}) "
            f"to match logits of shape {tuple(logits.shape)}."
        )
    log_probs = F.log_softmax(logits.float(), dim=1)
    if target.shape[1] == 1:
        labels = target.as_tensor() if hasattr(target, "as_tensor") else target
        if labels.is_floating_point() and not torch.equal(labels, labels.round()):
            raise ValueError("target is a label map (one channel) but holds non-integer values.")
        labels = labels.long()
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= num_classes:
            raise ValueError(
                f"target label values must lie in [0, {num_classes - 1}] (C={num_classes}), got [{lo}, {hi}]."
            )
        return -log_probs.gather(1, labels).squeeze(1)
    if target.shape[1] == num_classes:
        probs = target.float()
        if float(probs.min()) < 0:
            raise ValueError("one-hot target holds negative values; expected one-hot or class probabilities.")
        return -(probs * log_probs).sum(1)
    raise ValueError(
        f"target has {target.shape[1]} channels, expected 1 (label map) or {num_classes} (one-hot) to match logits "
        f"of shape {tuple(logits.shape)}."
    )


class ELBOLoss(_Loss):
    """Negative ELBO of the Probabilistic U-Net: reconstruction cross-entropy + beta * KL(q(z|x,y) || p(z|x)).

    Kohl et al., "A Probabilistic U-Net for Segmentation of Ambiguous Images", NeurIPS 2018, eq. (4):
    ``L = E_{z~q(z|x,y)}[-log P(y | x, z)] + beta * KL(q(z|x,y) || p(z|x))``, with the reconstruction term the
    pixel-wise cross-entropy of the logits computed from one posterior sample, summed over the pixels and
    averaged over the batch (``reconstruction="ce_sum"``, as the reference; ``"ce_mean"`` averages over the
    voxels instead, which makes beta independent of the image size), and ``beta = 1`` in the paper.

    Called as ``loss(outputs, target)`` with ``outputs`` the dict of a model's training forward pass
    (``ProbabilisticUNet(x, y)``): ``"logits"`` ``(B, C, *spatial)`` plus either the four Gaussian parameters
    ``"posterior_mean"``, ``"posterior_log_sigma"``, ``"prior_mean"``, ``"prior_log_sigma"`` ``(B, D)`` or a
    per-item ``"kl"`` ``(B,)``. Returns a dict, as ``ProbSegTrainer`` expects: ``"loss"`` (to back-propagate),
    ``"reconstruction"``, ``"kl"`` (the KL before free bits) and ``"beta"`` (the KL weight used this step), plus
    ``"geco_lambda"`` with GECO.

    Options:

    - ``kl_annealing``: a linear warm-up ``(start_step, end_step)``: the KL weight is 0 up to ``start_step``, rises
      linearly and reaches ``beta`` at ``end_step``; or a callable ``step -> factor`` multiplying ``beta``. The step
      counter is a buffer (saved with ``state_dict``) increased by every call in training mode.
    - ``free_bits`` (Kingma et al., "Improved Variational Inference with Inverse Autoregressive Flow", NeurIPS
      2016): a budget of ``free_bits`` nats for the whole latent vector, shared evenly by its ``D`` dimensions;
      the KL of each dimension, averaged over the batch, is replaced by ``max(free_bits / D, KL_d)`` so the model
      is not pushed to use less information than that (with ``reduction="none"`` the floor is applied per item).
      Needs the four Gaussian parameters.
    - ``geco`` (Rezende & Viola, "Taming VAEs", 2018; used as the objective of the Hierarchical Probabilistic
      U-Net, Kohl et al., 2019): minimise the KL subject to the reconstruction constraint
      ``C = CE_per_voxel - kappa <= 0``. The constraint is tracked as an exponential moving average
      ``C_ma <- alpha * C_ma + (1 - alpha) * C`` (initialised with the first value); the loss is
      ``lambda * scale * (C + stopgrad(C_ma - C)) + w * KL`` (value from the average, gradient from the current
      batch; ``scale`` is the number of voxels for ``"ce_sum"`` and 1 for ``"ce_mean"``, so kappa is a per-voxel
      cross-entropy, as the Hierarchical PU-Net's ``kappa * num_valid_pixels``), and after each training step the
      Lagrange multiplier is updated multiplicatively, ``lambda <- lambda * exp(step_size * C_ma)``, clamped to
      ``[lambda_min, lambda_max]``. lambda grows while the reconstruction is worse than kappa and shrinks once it
      is better, so the KL is traded against a reconstruction target instead of a hand-tuned beta. ``w`` is the
      KL weight (``beta`` with annealing, usually 1). ``lambda`` and ``C_ma`` are buffers (saved with
      ``state_dict``; pass this loss to ``CheckpointSaver``'s ``save_dict`` to resume).

    Buffers are updated only when the loss module is in training mode (the default); call ``.eval()`` to compute
    it without changing them.

    Args:
        beta: weight of the KL term (1 in the paper).
        reconstruction: ``"ce_sum"`` (cross-entropy summed over voxels, averaged over the batch; the reference)
            or ``"ce_mean"`` (averaged over voxels too).
        kl_annealing: ``None``, ``(start_step, end_step)`` for a linear warm-up of the KL weight, or a callable
            ``step -> factor`` multiplying ``beta``.
        free_bits: free-bits budget in nats for the whole latent vector, 0 for none.
        geco: ``None`` for the plain ELBO, ``True`` for GECO with default settings, or a mapping with any of
            ``kappa`` (per-voxel cross-entropy target, 0.05 as the Hierarchical PU-Net), ``alpha`` (EMA decay,
            0.99), ``step_size`` (multiplier update rate, 0.01), ``lambda_init`` (1.0), ``lambda_min`` (1e-6),
            ``lambda_max`` (1e6).
        reduction: ``"mean"`` or ``"sum"`` over the batch, or ``"none"`` for per-item values ``(B,)``.

    Example::

        net = ProbabilisticUNet(2, in_channels=1, out_channels=2)
        loss_fn = ELBOLoss(beta=1.0, kl_annealing=(0, 1000))
        terms = loss_fn(net(image, label), label)
        terms["loss"].backward()
    """

    def __init__(
        self,
        beta: float = 1.0,
        reconstruction: str = "ce_sum",
        kl_annealing: Sequence[int] | Callable[[int], float] | None = None,
        free_bits: float = 0.0,
        geco: Mapping[str, float] | bool | None = None,
        reduction: LossReduction | str = LossReduction.MEAN,
    ) -> None:
        super().__init__(reduction=LossReduction(reduction).value)
        if not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta >= 0):
            raise ValueError(f"beta must be a finite number >= 0, got {beta!r}.")
        self.beta = float(beta)
        if reconstruction not in ("ce_sum", "ce_mean"):
            raise ValueError(f"reconstruction must be 'ce_sum' or 'ce_mean', got {reconstruction!r}.")
        self.reconstruction = reconstruction
        if kl_annealing is not None and not callable(kl_annealing):
            steps = tuple(kl_annealing)
            if len(steps) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) for s in steps):
                raise ValueError(
                    f"kl_annealing must be (start_step, end_step) integers or a callable, got {kl_annealing!r}."
                )
            if not 0 <= steps[0] <= steps[1]:
                raise ValueError(f"kl_annealing must satisfy 0 <= start_step <= end_step, got {steps}.")
            kl_annealing = steps
        self.kl_annealing = kl_annealing
        if not (isinstance(free_bits, (int, float)) and free_bits >= 0):
            raise ValueError(f"free_bits must be a number >= 0, got {free_bits!r}.")
        self.free_bits = float(free_bits)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.geco: dict[str, float] | None = None
        if geco is not None and geco is not False:
            settings = dict(_GECO_DEFAULTS)
            if geco is not True:
                if not isinstance(geco, Mapping):
                    raise TypeError(f"geco must be None, True or a mapping of settings, got {type(geco).__name__}.")
                unknown = sorted(set(geco) - set(_GECO_DEFAULTS))
                if unknown:
                    raise ValueError(f"unknown geco settings {unknown}; expected some of {sorted(_GECO_DEFAULTS)}.")
                settings.update({k: float(v) for k, v in geco.items()})
            if not 0.0 <= settings["alpha"] < 1.0:
                raise ValueError(f"geco alpha must be in [0, 1), got {settings['alpha']}.")
            if not 0 < settings["lambda_min"] <= settings["lambda_init"] <= settings["lambda_max"]:
                raise ValueError(
                    "geco needs 0 < lambda_min <= lambda_init <= lambda_max, got "
                    f"{settings['lambda_min']}, {settings['lambda_init']}, {settings['lambda_max']}."
                )
            if settings["step_size"] < 0:
                raise ValueError(f"geco step_size must be >= 0, got {settings['step_size']}.")
            self.geco = settings
            self.register_buffer("geco_lambda", torch.tensor(settings["lambda_init"], dtype=torch.float32))
            self.register_buffer("geco_constraint_ma", torch.zeros((), dtype=torch.float32))

    def kl_weight(self, step: int | None = None) -> float:
        """The KL weight (``beta`` times the annealing factor) at ``step`` (the current step by default)."""
        step = int(self.step) if step is None else int(step)
        if self.kl_annealing is None:
            factor = 1.0
        elif callable(self.kl_annealing):
            factor = float(self.kl_annealing(step))
        else:
            start, end = self.kl_annealing
            if step >= end:
                factor = 1.0
            elif step <= start:
                factor = 0.0
            else:
                factor = (step - start) / (end - start)
        return self.beta * factor

    def _move_buffers(self, device: torch.device) -> None:
        for name, buf in list(self.named_buffers()):
            if buf.device != device:
                setattr(self, name, buf.to(device))

    def _kl_per_dim(self, outputs: Mapping) -> torch.Tensor | None:
        if all(k in outputs for k in _PARAM_KEYS):
            params = [outputs[k] for k in _PARAM_KEYS]
            shapes = {k: tuple(p.shape) for k, p in zip(_PARAM_KEYS, params)}
            if len(set(shapes.values())) != 1 or params[0].dim() < 2:
                raise ValueError(f"the Gaussian parameters must all have shape (B, D), got {shapes}.")
            return gaussian_kl_divergence(*[p.float() for p in params]).flatten(1)
        return None

    def forward(self, outputs: Mapping[str, torch.Tensor], target: torch.Tensor) -> dict[str, torch.Tensor]:  # type: ignore[override]
        """
        Args:
            outputs: the dict of the model's training forward pass (see the class docstring).
            target: label map ``(B, 1, *spatial)`` with values in ``[0, C - 1]`` or one-hot ``(B, C, *spatial)``.

        Returns:
            dict with ``"loss"``, ``"reconstruction"``, ``"kl"``, ``"beta"`` (and ``"geco_lambda"`` with GECO).
        """
        if not isinstance(outputs, Mapping) or "logits" not in outputs:
            got = sorted(outputs) if isinstance(outputs, Mapping) else type(outputs).__name__
            raise ValueError(
                f"ELBOLoss expects the dict of a training forward pass with 'logits' (network(x, y)), got {got}."
            )
        logits = outputs["logits"]
        batch = logits.shape[0]
        ce = cross_entropy_map(logits, target)
        num_voxels = ce[0].numel()
        rec = ce.flatten(1).sum(1) if self.reconstruction == "ce_sum" else ce.flatten(1).mean(1)

        kl_dims = self._kl_per_dim(outputs)
        if kl_dims is not None:
            if kl_dims.shape[0] != batch:
                raise ValueError(f"the Gaussian parameters have batch size {kl_dims.shape[0]}, logits {batch}.")
            kl = kl_dims.sum(1)
        elif "kl" in outputs:
            kl = outputs["kl"].float()
            kl = kl.expand(batch) if kl.dim() == 0 else kl.reshape(batch, -1).sum(1)
        else:
            raise ValueError(
                f"outputs must hold 'kl' or the Gaussian parameters {list(_PARAM_KEYS)}, got {sorted(outputs)}."
            )
        kl_for_loss = kl
        if self.free_bits > 0:
            if kl_dims is None:
                raise ValueError(f"free_bits needs the Gaussian parameters {list(_PARAM_KEYS)} in outputs.")
            floor = self.free_bits / kl_dims.shape[1]
            if self.reduction == LossReduction.NONE.value:
                kl_for_loss = kl_dims.clamp_min(floor).sum(1)
            else:
                # Kingma et al. 2016: the floor applies to the batch-averaged KL of each dimension
                kl_for_loss = kl_dims.mean(0).clamp_min(floor).sum().expand(batch)

        self._move_buffers(logits.device)
        weight = self.kl_weight()
        terms: dict[str, torch.Tensor] = {}
        if self.geco is None:
            per_item = rec + weight * kl_for_loss
        else:
            scale = float(num_voxels) if self.reconstruction == "ce_sum" else 1.0
            constraint = rec / scale - self.geco["kappa"]  # per-voxel units, (B,)
            current = constraint.detach().mean()
            if self.training:
                with torch.no_grad():
                    if int(self.step) == 0:
                        self.geco_constraint_ma.copy_(current)
                    else:
                        alpha = self.geco["alpha"]
                        self.geco_constraint_ma.mul_(alpha).add_((1.0 - alpha) * current)
                smoothed = constraint + (self.geco_constraint_ma - constraint).detach()
            else:
                smoothed = constraint
            lagrange = self.geco_lambda.detach().clone()
            per_item = lagrange * scale * smoothed + weight * kl_for_loss
            if self.training:
                with torch.no_grad():
                    log_lambda = torch.log(self.geco_lambda) + self.geco["step_size"] * self.geco_constraint_ma
                    log_lambda = log_lambda.clamp(math.log(self.geco["lambda_min"]), math.log(self.geco["lambda_max"]))
                    self.geco_lambda.copy_(torch.exp(log_lambda))
            terms["geco_lambda"] = lagrange
        if self.training:
            self.step.add_(1)

        loss = self._reduce(per_item)
        terms = {
            "loss": loss,
            "reconstruction": self._reduce(rec),
            "kl": self._reduce(kl),
            "beta": torch.tensor(weight, device=logits.device),
            **terms,
        }
        return terms

    def _reduce(self, values: torch.Tensor) -> torch.Tensor:
        if self.reduction == LossReduction.MEAN.value:
            return values.mean()
        if self.reduction == LossReduction.SUM.value:
            return values.sum()
        return values
