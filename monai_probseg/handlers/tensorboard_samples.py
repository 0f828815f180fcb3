# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""A TensorBoard handler that shows samples and uncertainty maps, not only scalars, during validation."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from monai.utils import min_version, optional_import

from monai_probseg.visualize import figure_to_array, plot_sample_grid

Events, _ = optional_import("ignite.engine", "0.4.11", min_version, "Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", "0.4.11", min_version, "Engine")

__all__ = ["TensorBoardSampleHandler", "DEFAULT_GRID_KEYS"]

#: the roles of :func:`~monai_probseg.visualize.plot_sample_grid` and the engine output keys read for them
DEFAULT_GRID_KEYS = {
    "image": "image",
    "raters": "raters",
    "seg": "seg",
    "samples": "samples",
    "entropy": "entropy",
    "mutual_info": "mutual_info",
}


class TensorBoardSampleHandler:
    """Write a grid of image, raters, mean segmentation, samples, entropy and mutual information to TensorBoard.

    Like MONAI's ``TensorBoardImageHandler``, but for sets of samples: at the end of every ``interval``-th epoch
    (or iteration) of the engine it is attached to, usually a validation ``SupervisedEvaluator`` whose inferer is
    :py:class:`~monai_probseg.inferers.StochasticSlidingWindowInferer` (``keep_samples=True``), it draws
    :func:`~monai_probseg.visualize.plot_sample_grid` for the first ``max_cases`` items of the last batch and adds
    the figure as an RGB image with ``SummaryWriter.add_image``.

    The items come from ``output_transform(engine.state.output)``: a list of dicts (MONAI's decollated engine
    output, where each item holds the batch keys and the postprocessed outputs) or a dict of batched tensors.
    ``keys`` maps each panel to an item key; panels whose key is missing are left out. An item whose ``"pred"``
    is a dict (the inferer's maps, not flattened by ``FlattenSubKeysd``) is read from that dict too.

    Args:
        summary_writer: a ``torch.utils.tensorboard.SummaryWriter`` (or any writer with ``add_image``); default: a
            new one writing to ``log_dir``.
        log_dir: where a new ``SummaryWriter`` writes.
        interval: write every ``interval`` epochs (``epoch_level=True``) or iterations.
        epoch_level: write at ``EPOCH_COMPLETED`` (from the last batch) or at ``ITERATION_COMPLETED``.
        output_transform: maps ``engine.state.output`` to the items (default: identity).
        global_iter_transform: maps the engine's epoch or iteration to the TensorBoard step; for an evaluator run
            by a trainer pass ``lambda _: trainer.state.epoch`` so that steps follow training.
        keys: ``{panel: item key}``, panels as in :data:`DEFAULT_GRID_KEYS` (``"raters"`` ``(K, *spatial)``
            label maps, ``"seg"``, ``"samples"`` ``(N, *spatial)``, ``"entropy"``, ``"mutual_info"``).
        max_cases: how many items of the batch are drawn (one row each, or one per slice).
        tag_name: the TensorBoard tag.
        grid_kwargs: more arguments of :func:`~monai_probseg.visualize.plot_sample_grid` (``num_samples``,
            ``image_channel``, ``slice_index``, ``num_classes``...).

    Example::

        evaluator = SupervisedEvaluator(device, val_loader, network, inferer=StochasticSlidingWindowInferer(
            roi_size=(64, 64), num_samples=8, keep_samples=True), postprocessing=FlattenSubKeysd("pred", ...))
        TensorBoardSampleHandler(writer, global_iter_transform=lambda _: trainer.state.epoch,
                                 keys={"raters": "label"}).attach(evaluator)
    """

    def __init__(
        self,
        summary_writer: Any = None,
        log_dir: str = "./runs",
        interval: int = 1,
        epoch_level: bool = True,
        output_transform: Callable[[Any], Any] = lambda x: x,
        global_iter_transform: Callable[[int], int] = lambda x: x,
        keys: Mapping[str, str] | None = None,
        max_cases: int = 2,
        tag_name: str = "samples",
        grid_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        if summary_writer is None:
            from torch.utils.tensorboard import SummaryWriter

            summary_writer = SummaryWriter(log_dir=log_dir)
            self._owns_writer = True
        else:
            self._owns_writer = False
        if not hasattr(summary_writer, "add_image"):
            raise TypeError(f"summary_writer must have add_image (a SummaryWriter), got {type(summary_writer)}.")
        if int(interval) < 1 or int(max_cases) < 1:
            raise ValueError(f"interval and max_cases must be >= 1, got {interval} and {max_cases}.")
        self._writer = summary_writer
        self.interval = int(interval)
        self.epoch_level = bool(epoch_level)
        self.output_transform = output_transform
        self.global_iter_transform = global_iter_transform
        roles = dict(DEFAULT_GRID_KEYS)
        for role, key in (keys or {}).items():
            if role not in DEFAULT_GRID_KEYS:
                raise ValueError(f"unknown panel {role!r} in keys, expected some of {sorted(DEFAULT_GRID_KEYS)}.")
            roles[role] = key
        self.keys = roles
        self.max_cases = int(max_cases)
        self.tag_name = tag_name
        self.grid_kwargs = dict(grid_kwargs or {})

    def attach(self, engine: Engine) -> None:
        """Register the handler on ``engine`` (``EPOCH_COMPLETED`` or ``ITERATION_COMPLETED`` every ``interval``)."""
        event = Events.EPOCH_COMPLETED if self.epoch_level else Events.ITERATION_COMPLETED
        engine.add_event_handler(event(every=self.interval), self)

    def cases(self, output: Any) -> list[dict[str, Any]]:
        """The dicts given to :func:`~monai_probseg.visualize.plot_sample_grid` for an engine output."""
        items = self.output_transform(output)
        if isinstance(items, Mapping):  # batched: split the first max_cases items
            size = len(items[self.keys["image"]])
            items = [{k: v[b] for k, v in items.items() if _indexable(v, size)} for b in range(size)]
        if not isinstance(items, Sequence) or not items:
            raise ValueError(f"output_transform must give a non-empty list of dicts or a dict, got {type(items)}.")
        cases = []
        for item in list(items)[: self.max_cases]:
            flat = dict(item)
            if isinstance(flat.get("pred"), Mapping):
                flat = {**flat["pred"], **{k: v for k, v in flat.items() if k != "pred"}}
            if self.keys["image"] not in flat:
                raise KeyError(f"the engine output has no {self.keys['image']!r} (keys: {sorted(map(str, flat))}).")
            case = {role: flat[key] for role, key in self.keys.items() if flat.get(key) is not None}
            if "case_id" in flat:
                case["case_id"] = str(flat["case_id"])
            cases.append(case)
        return cases

    def __call__(self, engine: Engine) -> None:
        """Draw the grid of the engine's last output and add it to TensorBoard."""
        step = self.global_iter_transform(engine.state.epoch if self.epoch_level else engine.state.iteration)
        fig = plot_sample_grid(self.cases(engine.state.output), **self.grid_kwargs)
        self._writer.add_image(self.tag_name, figure_to_array(fig), step, dataformats="HWC")
        self._writer.flush()

    def close(self) -> None:
        """Close the writer if this handler created it."""
        if self._owns_writer:
            self._writer.close()


def _indexable(value: Any, size: int) -> bool:
    return hasattr(value, "__getitem__") and hasattr(value, "__len__") and len(value) == size
