# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""A MONAI ``SupervisedTrainer`` for probabilistic segmentation models.

Probabilistic models differ from an ordinary segmentation network in two ways that the stock trainer
does not cover:

- the label is an input of the training forward pass (the Probabilistic U-Net's posterior net reads it;
  a diffusion model is trained on a noised label), and
- the forward pass returns several outputs (logits, distribution parameters, KL terms), and the loss has
  several terms that users want to log separately (reconstruction, KL, GECO multiplier, ...).

:py:class:`ProbSegTrainer` keeps everything else of ``SupervisedTrainer`` (handlers, AMP, gradient
accumulation, decollation, checkpointing through ``CheckpointSaver``/``CheckpointLoader``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents, PrepareBatch, default_prepare_batch
from monai.utils import CommonKeys as Keys

__all__ = ["ProbSegTrainer", "PrepareBatchWithLabel", "LossTermsRecorder", "KeywordLoss", "loss_terms_transform"]


class PrepareBatchWithLabel(PrepareBatch):
    """Wrap a ``prepare_batch`` callable so that the label is also passed to the network.

    MONAI's ``SupervisedTrainer`` calls ``inferer(inputs, network, *args, **kwargs)``, and
    ``SimpleInferer`` calls ``network(inputs, *args, **kwargs)``. This wrapper returns the label as the
    first of ``args``, so the network is called as ``network(inputs, label)``.

    Args:
        prepare_batch: the callable that extracts ``(inputs, targets)`` (or ``(inputs, targets, args, kwargs)``)
            from a batch; MONAI's ``default_prepare_batch`` by default.

    Example::

        trainer = SupervisedTrainer(..., prepare_batch=PrepareBatchWithLabel())
    """

    def __init__(self, prepare_batch: Callable = default_prepare_batch) -> None:
        self.prepare_batch = prepare_batch

    def __call__(
        self,
        batchdata: dict[str, torch.Tensor],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor, tuple, dict]:
        batch = self.prepare_batch(batchdata, device, non_blocking, **kwargs)
        if not isinstance(batch, (tuple, list)) or len(batch) not in (2, 4):
            raise ValueError(
                "prepare_batch must return (inputs, targets) or (inputs, targets, args, kwargs), "
                f"got {type(batch).__name__} of length {len(batch) if isinstance(batch, (tuple, list)) else 'n/a'}."
            )
        if len(batch) == 2:
            inputs, targets = batch
            args: tuple = ()
            net_kwargs: dict = {}
        else:
            inputs, targets, args, net_kwargs = batch
        if targets is None:
            keys = sorted(batchdata) if isinstance(batchdata, Mapping) else type(batchdata).__name__
            raise ValueError(
                f"the training batch has no label (batch keys: {keys}); a probabilistic model needs "
                f"'{Keys.LABEL}' in the forward pass."
            )
        return inputs, targets, (targets, *tuple(args)), dict(net_kwargs)


class LossTermsRecorder:
    """Call a loss function and keep the extra terms it returns, for logging.

    The wrapped loss may return a tensor (as every MONAI loss does) or a mapping with a ``"loss"`` entry
    (the tensor to back-propagate) and other entries (scalars or per-item tensors such as
    ``"reconstruction"``, ``"kl"``, ``"beta"``). The extra entries are detached and kept in
    :py:attr:`terms` until the next call.

    Args:
        loss_function: the loss to call as ``loss_function(prediction, target)``.
    """

    def __init__(self, loss_function: Callable) -> None:
        if not callable(loss_function):
            raise TypeError(f"loss_function must be callable, got {type(loss_function).__name__}.")
        self.loss_function = loss_function
        self.terms: dict[str, Any] = {}

    def __call__(self, prediction: Any, target: torch.Tensor) -> torch.Tensor:
        result = self.loss_function(prediction, target)
        self.terms = {}
        if isinstance(result, Mapping):
            if "loss" not in result:
                raise KeyError(
                    f"a loss that returns a mapping must give the tensor to optimise under 'loss', got keys "
                    f"{sorted(result)}."
                )
            for key, value in result.items():
                if key != "loss":
                    self.terms[key] = value.detach().mean() if isinstance(value, torch.Tensor) else value
            return result["loss"]
        return result


class KeywordLoss:
    """Call a loss that takes its tensors by name with a network's training output dict: ``loss(**outputs)``.

    Losses such as :py:class:`~monai_probseg.losses.AnatomicalPriorELBOLoss` take ``(logits, image, latent_mean,
    ...)`` by keyword, and the models' training forward passes return exactly those entries. The trainer calls
    ``loss_function(outputs, target)``; this adapter turns that into ``loss(**outputs)`` or, with ``target_key``,
    ``loss(**outputs, <target_key>=target)``.

    Args:
        loss: the loss to call.
        target_key: the keyword the trainer's target is passed as (``"target"`` for
            :py:class:`~monai_probseg.losses.AnatomicalPriorVAELoss`); ``None``: the target is not passed (an
            unsupervised loss, whose batches need not hold a label).

    Example::

        trainer = ProbSegTrainer(..., network=prior_vae, loss_function=KeywordLoss(AnatomicalPriorVAELoss(), "target"),
                                 label_to_network=False)
    """

    def __init__(self, loss: Callable, target_key: str | None = None) -> None:
        if not callable(loss):
            raise TypeError(f"loss must be callable, got {type(loss).__name__}.")
        self.loss = loss
        self.target_key = target_key

    def __call__(self, outputs: Mapping[str, Any], target: Any = None) -> Any:
        if not isinstance(outputs, Mapping):
            raise TypeError(
                f"{type(self.loss).__name__} needs the dict of a training forward pass, got {type(outputs).__name__}: "
                "is the network in train mode (and built to return its loss inputs)?"
            )
        kwargs = dict(outputs)
        if self.target_key is not None:
            if target is None:
                raise ValueError(f"{type(self.loss).__name__} needs the label of the batch as '{self.target_key}'.")
            kwargs[self.target_key] = target
        return self.loss(**kwargs)


class ProbSegTrainer(SupervisedTrainer):
    """``SupervisedTrainer`` for models that need the label in the forward pass and return several outputs.

    One iteration:

    1. ``inputs, labels = prepare_batch(batch)`` (MONAI's ``default_prepare_batch`` unless given);
    2. ``outputs = inferer(inputs, network, labels)``, i.e. ``network(inputs, labels)`` with the default
       ``SimpleInferer`` (set ``label_to_network=False`` for models whose forward takes the image alone);
    3. ``loss = loss_function(outputs, labels)``; the loss returns a tensor or a mapping with ``"loss"`` and
       extra terms;
    4. back-propagation and the optimiser step, exactly as ``SupervisedTrainer`` does.

    ``engine.state.output`` then holds ``image``, ``label``, ``pred`` and ``loss`` as usual, plus every extra
    loss term (e.g. ``reconstruction``, ``kl``) so that ``StatsHandler``/``TensorBoardStatsHandler`` can log
    them (see :py:func:`loss_terms_transform`). When the network returns a mapping, ``pred`` is its
    ``"logits"`` entry (or the whole mapping if there is none), so ordinary training metrics keep working.

    The trainer knows nothing about a particular model: the Probabilistic U-Net, the Stochastic
    Segmentation Network and the diffusion model all use it, each with its own loss.

    Args:
        device: device to run on.
        max_epochs: number of epochs.
        train_data_loader: the training data (a ``DataLoader`` or any iterable of batches).
        network: the model; called as ``network(inputs, labels)`` (or ``network(inputs)``).
        optimizer: the optimiser.
        loss_function: called as ``loss_function(network_output, labels)``; a tensor or a mapping with ``"loss"``.
        label_to_network: pass the label to the network as its second argument.
        autocast_dtype: ``"bfloat16"`` runs the forward pass and the loss under ``torch.autocast`` with bfloat16 on
            the trainer's device (CPU or CUDA; the backward pass and the optimiser stay float32, no gradient scaler
            is needed for bfloat16). On CPUs with AVX-512 BF16 / AMX it makes convolutions about twice as fast
            (``benchmarks/results/train_step.md``). The losses accumulate in float32 whatever the autocast. For
            float16 on CUDA use MONAI's ``amp=True`` (with its gradient scaler) instead. ``None`` (default): off.
        kwargs: every other argument of ``monai.engines.SupervisedTrainer`` (``prepare_batch``, ``inferer``,
            ``train_handlers``, ``amp``, ``epoch_length``, ``accumulation_steps``, ...).

    Example::

        net = ProbabilisticUNet(2, 1, 2)
        trainer = ProbSegTrainer(
            device="cpu", max_epochs=10, train_data_loader=loader, network=net,
            optimizer=torch.optim.Adam(net.parameters(), 1e-4), loss_function=ELBOLoss(beta=1.0),
            train_handlers=[StatsHandler(output_transform=loss_terms_transform(("loss", "kl")))],
        )
        trainer.run()
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable,
        network: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_function: Callable,
        label_to_network: bool = True,
        autocast_dtype: str | torch.dtype | None = None,
        **kwargs: Any,
    ) -> None:
        prepare_batch = kwargs.pop("prepare_batch", default_prepare_batch)
        if label_to_network:
            prepare_batch = PrepareBatchWithLabel(prepare_batch)
        if autocast_dtype not in (None, "bfloat16", torch.bfloat16):
            raise ValueError(
                f"autocast_dtype must be None or 'bfloat16', got {autocast_dtype!r} (float16 on CUDA: amp=True)."
            )
        self.autocast_dtype = None if autocast_dtype is None else torch.bfloat16
        self.loss_terms = LossTermsRecorder(loss_function)
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            network=network,
            optimizer=optimizer,
            loss_function=self.loss_terms,
            prepare_batch=prepare_batch,
            **kwargs,
        )
        # runs before the outputs are decollated (at MODEL_COMPLETED), so terms are decollated like the loss
        self.add_event_handler(IterationEvents.LOSS_COMPLETED, self._store_loss_terms)
        if self.autocast_dtype is not None:
            device_type = torch.device(device).type
            self.inferer = _Autocast(self.inferer, device_type, self.autocast_dtype)
            self.loss_function = _Autocast(self.loss_function, device_type, self.autocast_dtype)

    def _store_loss_terms(self, engine: ProbSegTrainer) -> None:
        output = engine.state.output
        pred = output.get(Keys.PRED)
        if isinstance(pred, Mapping) and "logits" in pred:
            output[Keys.PRED] = pred["logits"]
        for key, value in self.loss_terms.terms.items():
            if key in (Keys.IMAGE, Keys.LABEL, Keys.PRED, Keys.LOSS):
                raise KeyError(f"loss term '{key}' would overwrite the engine output of the same name; rename it.")
            output[key] = value


class _Autocast:
    """Call ``fn`` under ``torch.autocast(device_type, dtype)`` (the forward pass and the loss of a trainer)."""

    def __init__(self, fn: Callable, device_type: str, dtype: torch.dtype) -> None:
        self.fn, self.device_type, self.dtype = fn, device_type, dtype

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with torch.autocast(self.device_type, dtype=self.dtype):
            return self.fn(*args, **kwargs)


def loss_terms_transform(keys: Sequence[str] = ("loss",)) -> Callable[[Any], dict[str, float]]:
    """Make an ``output_transform`` for ``StatsHandler``/``TensorBoardStatsHandler`` that logs several loss terms.

    The returned callable reads ``engine.state.output`` (a dict, or the list of per-item dicts left by
    decollation) and returns ``{key: float}`` for every key in ``keys`` that is present.

    Args:
        keys: names of the terms to log, e.g. ``("loss", "reconstruction", "kl")``.

    Example::

        StatsHandler(name="train", output_transform=loss_terms_transform(("loss", "kl")))
    """
    keys = (keys,) if isinstance(keys, str) else tuple(keys)

    def _transform(output: Any) -> dict[str, float]:
        first = output[0] if isinstance(output, (list, tuple)) and output else output
        if not isinstance(first, Mapping):
            raise TypeError(f"expected the engine output to be a dict (or list of dicts), got {type(first).__name__}.")
        values = {}
        for key in keys:
            if key in first:
                value = first[key]
                values[key] = float(value.float().mean()) if isinstance(value, torch.Tensor) else float(value)
        return values

    return _transform
