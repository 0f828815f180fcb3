# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""MONAI handlers for metrics over sets of samples, usable for checkpoint selection.

The generalized energy distance (GED) is an error: lower is better. MONAI's evaluators and ``CheckpointSaver``
assume a greater-is-better key metric, so a user who makes the GED the key metric of a validation run with the
defaults keeps the *worst* model. :py:class:`GeneralizedEnergyDistance` states the direction
(:py:attr:`GeneralizedEnergyDistance.greater_is_better` is ``False``); pass :py:func:`lower_is_better` as the
evaluator's ``metric_cmp_fn`` and ``key_metric_negative_sign=True`` to ``CheckpointSaver``::

    "key_metric": {"val_ged": {"_target_": "monai_probseg.handlers.GeneralizedEnergyDistance", "num_classes": 4,
                               "output_transform": "$monai.handlers.from_engine(['samples', 'raters'])"}},
    "evaluator": {"_target_": "SupervisedEvaluator", ..., "metric_cmp_fn": "$monai_probseg.handlers.lower_is_better"},
    {"_target_": "CheckpointSaver", "save_key_metric": true, "key_metric_negative_sign": true, ...}
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from monai.handlers import IgniteMetricHandler
from monai.utils import MetricReduction

from monai_probseg.metrics import GeneralizedEnergyDistanceMetric

__all__ = ["GeneralizedEnergyDistance", "lower_is_better"]


def lower_is_better(current_metric: float, prev_best: float) -> bool:
    """``metric_cmp_fn`` for MONAI workflows whose key metric is an error (GED, HD95): ``current < best``.

    MONAI's ``Workflow`` takes the first validation's value as the best whatever this returns, so the ``-1``
    it starts ``best_metric`` at never wins.

    Args:
        current_metric: the key metric of this validation.
        prev_best: the best key metric so far.
    """
    return float(current_metric) < float(prev_best)


class GeneralizedEnergyDistance(IgniteMetricHandler):
    """The GED of sample sets against annotation sets (Kohl et al., NeurIPS 2018) as a MONAI metric handler.

    Wraps :py:class:`~monai_probseg.metrics.GeneralizedEnergyDistanceMetric`; ``output_transform`` must give
    ``(samples, annotations)``: per item ``(N, *spatial)`` label maps (or ``(N, C, *spatial)`` probabilities) and
    ``(K, *spatial)`` annotator label maps, as lists (decollated engine outputs) or batched tensors.
    Lower is better (:py:attr:`greater_is_better` is ``False``): see the module docstring for the settings that
    make MONAI's evaluator and ``CheckpointSaver`` keep the lowest value.

    Args:
        num_classes: number of classes, background included.
        include_background: whether class 0 contributes to the distance ``d = 1 - IoU``.
        empty_both: ``"zero"`` or ``"nan"``: the distance when a class is empty in both masks.
        reduction: how the per-case values are reduced (MONAI's ``MetricReduction``).
        output_transform: maps ``engine.state.output`` to ``(samples, annotations)``.
        save_details: keep the per-case values in ``engine.state.metric_details``.

    Example::

        ged = GeneralizedEnergyDistance(num_classes=4, output_transform=from_engine(["samples", "raters"]))
        ged.attach(evaluator, "val_ged")
    """

    greater_is_better = False

    def __init__(
        self,
        num_classes: int,
        include_background: bool = False,
        empty_both: str = "zero",
        reduction: MetricReduction | str = MetricReduction.MEAN,
        output_transform: Callable[[Any], Any] = lambda x: x,
        save_details: bool = True,
    ) -> None:
        metric_fn = GeneralizedEnergyDistanceMetric(
            num_classes=num_classes, include_background=include_background, empty_both=empty_both, reduction=reduction
        )
        super().__init__(metric_fn=metric_fn, output_transform=output_transform, save_details=save_details)
