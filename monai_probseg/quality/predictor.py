# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""Predict one case's segmentation quality from the stage-1 inferer's outputs and write its ``<case>_quality.json``."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from monai_probseg.metrics.quality import DEFAULT_FAILURE_THRESHOLD, quality_report, quality_scores
from monai_probseg.metrics.regions import BRATS_REGIONS
from monai_probseg.networks.nets.quality_net import SegmentationQualityNet
from monai_probseg.quality.data import quality_net_inputs, score_names, score_vector

__all__ = ["QualityPredictor", "SampleAgreementQuality"]

#: scores reported in every quality JSON (more are computed)
REPORTED_SCORES = (
    "mean_entropy",
    "mean_mutual_info",
    "sample_dice_agreement",
    "ged_to_mean",
    "uncertainty_volume_ratio",
)


def _case_scores(
    image: torch.Tensor,
    outputs: Mapping[str, torch.Tensor],
    regions: Mapping[str, Sequence[int]],
    brain: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, float]]:
    """Check one case's stage-1 outputs, bring them to the CPU as float and score them
    (:py:func:`~monai_probseg.metrics.quality_scores`; the brain defaults to the non-zero image voxels)."""
    for key in ("prob", "entropy", "mutual_info"):
        if key not in outputs:
            raise KeyError(f"outputs miss {key!r}; the inferer must return prob, entropy and mutual_info.")
    if image.ndim < 3 or image.shape[0] != 1:
        raise ValueError(f"image must have shape (1, C_img, *spatial) (one case), got {tuple(image.shape)}.")
    image = image.detach().float().cpu()
    prob, entropy, mutual_info = (outputs[k].detach().float().cpu() for k in ("prob", "entropy", "mutual_info"))
    samples = outputs.get("samples")
    samples = None if samples is None else samples.detach().cpu()[0]
    if brain is None:
        brain = image[0].ne(0).any(0)
    scores = quality_scores(prob[0], entropy[0], mutual_info[0], samples, regions, brain)
    return image, prob, entropy, mutual_info, scores


class QualityPredictor:
    """Stage 2 of DeVries & Taylor (2018): the predicted Dice per region and a failure flag for one case.

    It computes the scalar scores (:py:func:`~monai_probseg.metrics.quality_scores`), builds the network input
    (:py:func:`~monai_probseg.quality.quality_net_inputs`) and runs the
    :py:class:`~monai_probseg.networks.nets.SegmentationQualityNet`. A case whose standardised scores lie far outside
    those of the training cases (any ``|z| > ood_z``, with the statistics stored in the network's ``score_mean`` /
    ``score_std`` buffers) is unlike anything the predictor saw: it is reported with ``"out_of_distribution": true``
    and flagged as a failure rather than trusted.

    Args:
        network: the quality network (its ``num_scores`` must be 0 or ``len(score_names(regions))``).
        checkpoint: path of its state dict (e.g. ``bundles/brats_ssn/models/quality_model.pt``); ``None`` if the
            network already holds its weights.
        regions: region name -> labels, in the order of the network's outputs.
        input_size: spatial size of the network input.
        failure_threshold: predicted mean Dice below which a case is flagged.
        ood_z: z-score beyond which a score is out of distribution (``None``: no check).
        device: where the network runs.
        flips: test-time augmentation: the network's predictions on the input flipped along each of these tuples of
            spatial axes (``()``: as it is) are averaged, e.g. ``[[], [0], [1], [0, 1]]`` for a network trained with
            random flips along axes 0 and 1 (``configs/train_quality.json``). The default, ``[[]]``, runs it once.

    Example::

        predictor = QualityPredictor(SegmentationQualityNet(3, 10, 3, num_scores=18), "models/quality_model.pt")
        out = inferer(image, network)  # keep_samples=True, outputs include prob, entropy, mutual_info
        report = predictor("BraTS-0001", image, out)  # the <case>_quality.json dict
    """

    def __init__(
        self,
        network: SegmentationQualityNet,
        checkpoint: str | os.PathLike | None = None,
        regions: Mapping[str, Sequence[int]] = BRATS_REGIONS,
        input_size: Sequence[int] = (32, 32, 32),
        failure_threshold: float = DEFAULT_FAILURE_THRESHOLD,
        ood_z: float | None = 8.0,
        device: torch.device | str = "cpu",
        flips: Sequence[Sequence[int]] = ((),),
    ) -> None:
        self.regions = dict(regions)
        self.names = score_names(self.regions)
        if network.num_regions != len(self.regions):
            raise ValueError(
                f"the quality network predicts {network.num_regions} regions, expected {len(self.regions)} "
                f"({tuple(self.regions)})."
            )
        if network.num_scores not in (0, len(self.names)):
            raise ValueError(f"the quality network takes {network.num_scores} scores, expected 0 or {len(self.names)}.")
        self.device = torch.device(device)
        if checkpoint is not None:
            state = torch.load(os.fspath(checkpoint), map_location="cpu", weights_only=True)
            if isinstance(state, Mapping) and "model" in state and not any(k.startswith("encoder") for k in state):
                state = state["model"]
            network.load_state_dict(state)
        self.network = network.to(self.device).eval()
        self.input_size = tuple(int(s) for s in input_size)
        self.failure_threshold = float(failure_threshold)
        self.ood_z = ood_z
        self.flips = _check_flips(flips, network.spatial_dims)

    def predict(
        self, image: torch.Tensor, outputs: Mapping[str, torch.Tensor], brain: torch.Tensor | None = None
    ) -> tuple[dict[str, float], dict[str, float], bool]:
        """Predicted Dice per region, all scores, and whether the case is out of distribution.

        Args:
            image: the stage-1 network input ``(1, C_img, *spatial)`` (after preprocessing, before any inversion).
            outputs: the inferer's outputs for it, ``prob`` ``(1, C, *spatial)``, ``entropy`` and ``mutual_info``
                ``(1, 1, *spatial)``, and ``samples`` ``(1, N, *spatial)`` (optional: sample scores are then 0-filled
                and the case is flagged out of distribution when the network needs them).
            brain: optional ``(*spatial)`` brain mask (default: the non-zero voxels of ``image``).
        """
        image, prob, entropy, mutual_info, scores = _case_scores(image, outputs, self.regions, brain)
        missing = "samples" not in outputs
        full = {name: scores.get(name, 0.0) for name in self.names}
        vector = torch.from_numpy(score_vector(full, self.regions))[None]
        x = quality_net_inputs(image, prob, entropy, mutual_info, self.input_size)
        out_of_distribution = False
        with torch.no_grad():
            if self.network.num_scores > 0:
                z = (vector - self.network.score_mean.cpu()) / self.network.score_std.cpu()
                if self.ood_z is not None and bool((z.abs() > self.ood_z).any()):
                    out_of_distribution = True
                out_of_distribution |= missing
            scores_in = vector.to(self.device) if self.network.num_scores > 0 else None
            dice = predict_with_flips(self.network, x.to(self.device), scores_in, self.flips)[0].cpu()
        if not np.isfinite(dice.numpy()).all():
            out_of_distribution = True
            dice = torch.zeros_like(dice)
        return {name: float(dice[r]) for r, name in enumerate(self.regions)}, scores, out_of_distribution

    def __call__(
        self,
        case_id: str,
        image: torch.Tensor,
        outputs: Mapping[str, torch.Tensor],
        brain: torch.Tensor | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """The ``<case>_quality.json`` dict of one case (see :py:func:`~monai_probseg.metrics.quality_report`), with
        ``"out_of_distribution"`` added; ``extra`` keys (e.g. ``true_dice``) are appended."""
        dice, scores, ood = self.predict(image, outputs, brain)
        report = quality_report(
            case_id,
            dice,
            {name: scores[name] for name in REPORTED_SCORES if name in scores},
            self.failure_threshold,
            type(self.network).__name__,
            out_of_distribution=ood,
            **extra,
        )
        if ood:
            report["failure"] = True  # unlike the training cases: send it to a person rather than trust it
        return report


class SampleAgreementQuality:
    """An untrained quality estimate for bundles without a trained stage-2 network: the predicted Dice of a region
    is the mean Dice between pairs of the case's samples for that region (``sample_dice_agreement_<R>`` of
    :py:func:`~monai_probseg.metrics.quality_scores`).

    Samples that agree with each other are the premise of sample-based quality control (Roy et al. 2018 use the
    agreement of MC-dropout samples as a segmentation-quality proxy); it is also the strongest single-score baseline
    of ``benchmarks/results/quality.md``. It is not calibrated to the true Dice (a model can be consistently wrong),
    so its reports name ``"quality_model": "sample_dice_agreement"``; a bundle that ships a trained
    :py:class:`QualityPredictor` uses that instead. Two empty sample masks agree perfectly: a confident empty
    prediction is a high-quality result.

    Args:
        regions: region name -> labels.
        failure_threshold: predicted mean Dice below which a case is flagged.

    Example::

        quality = SampleAgreementQuality(LESION_REGIONS)
        report = quality("case-0", image, inferer(image, net))  # outputs with prob, entropy, mutual_info, samples
    """

    def __init__(
        self, regions: Mapping[str, Sequence[int]] = BRATS_REGIONS, failure_threshold: float = DEFAULT_FAILURE_THRESHOLD
    ) -> None:
        self.regions = dict(regions)
        self.failure_threshold = float(failure_threshold)

    def __call__(
        self,
        case_id: str,
        image: torch.Tensor,
        outputs: Mapping[str, torch.Tensor],
        brain: torch.Tensor | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """The ``<case>_quality.json`` dict of one case; ``outputs`` as for :py:meth:`QualityPredictor.predict`
        (``samples`` required)."""
        if "samples" not in outputs:
            raise KeyError("outputs miss 'samples'; the inferer must return prob, entropy, mutual_info and samples.")
        scores = _case_scores(image, outputs, self.regions, brain)[-1]
        dice = {name: min(max(scores[f"sample_dice_agreement_{name}"], 0.0), 1.0) for name in self.regions}
        return quality_report(
            case_id,
            dice,
            {name: scores[name] for name in REPORTED_SCORES if name in scores},
            self.failure_threshold,
            "sample_dice_agreement",
            out_of_distribution=False,
            **extra,
        )


def _check_flips(flips: Sequence[Sequence[int]], spatial_dims: int) -> tuple[tuple[int, ...], ...]:
    """Validated test-time flips of :class:`QualityPredictor`: tuples of spatial axes in ``[0, spatial_dims)``."""
    out = tuple(tuple(int(a) for a in axes) for axes in flips)
    if not out or any(not 0 <= a < spatial_dims for axes in out for a in axes):
        raise ValueError(f"flips must be a non-empty list of tuples of spatial axes < {spatial_dims}, got {flips!r}.")
    return out


def predict_with_flips(
    network: torch.nn.Module, x: torch.Tensor, scores: torch.Tensor | None, flips: Sequence[Sequence[int]]
) -> torch.Tensor:
    """The mean of ``network(x flipped along each tuple of spatial axes of flips, scores)`` (``(B, regions)``)."""
    preds = []
    for axes in flips:
        xf = x.flip([a + 2 for a in axes]) if axes else x
        preds.append(network(xf) if scores is None else network(xf, scores))
    return torch.stack(preds).mean(0)
