# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""Training and test data for segmentation-quality prediction (DeVries & Taylor 2018), without optimism.

A quality predictor trained on cases its stage-1 model trained on learns that every segmentation is good. The
cases here are fresh phantoms (:py:func:`monai_probseg.data.synthetic.brats_phantom` with a seed the stage-1
weights never saw: the shipped 3D bundles trained on phantom seed 0), degraded by the corruptions of
:py:mod:`monai_probseg.quality.corruptions` and by tumour variants (small, large, non-enhancing), so the stage-1
Dice covers the whole range from failure to success. For each case the stage-1 network runs exactly as in its
bundle (intensity normalisation, the bundle's stochastic sliding-window inferer) and the case stores:

- the quality network's input at a fixed low resolution (:func:`quality_net_inputs`): image, mean probabilities,
  entropy and mutual information;
- the scalar scores of :py:func:`monai_probseg.metrics.quality_scores`;
- the true Dice of every region against the consensus (BraTS convention: both empty = 1).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import NormalizeIntensity
from tqdm import tqdm

from monai_probseg.data.synthetic import brats_phantom
from monai_probseg.metrics.quality import quality_scores, region_dice
from monai_probseg.metrics.regions import BRATS_REGIONS
from monai_probseg.quality.corruptions import CORRUPTIONS, SEEN_CORRUPTIONS, corrupt_image
from monai_probseg.utils.io import atomic_write, write_json_atomic

__all__ = [
    "TUMOUR_VARIANTS",
    "generate_quality_dataset",
    "load_quality_dataset",
    "quality_datalist",
    "quality_split",
    "quality_net_inputs",
    "score_statistics",
    "score_names",
    "score_vector",
    "simulate_quality_case",
    "weights_fingerprint",
]

logger = logging.getLogger(__name__)

#: tumour variants of the phantoms: keyword arguments of ``brats_phantom``
TUMOUR_VARIANTS: dict[str, dict[str, Any]] = {
    "typical": {},
    "small": {"tumour_size": (0.05, 0.1)},
    "large": {"tumour_size": (0.34, 0.5)},
    "no_enhancing": {"no_enhancing_prob": 1.0},
    "healthy": {"healthy": True},
}
#: the variants drawn for a case with a tumour (besides ``"typical"``), in draw order
_TUMOUR_DRAWS = ("small", "large", "no_enhancing")


def quality_net_inputs(
    image: torch.Tensor,
    prob: torch.Tensor,
    entropy: torch.Tensor,
    mutual_info: torch.Tensor,
    spatial_size: Sequence[int] | None = (32, 32, 32),
) -> torch.Tensor:
    """The input of :py:class:`~monai_probseg.networks.nets.SegmentationQualityNet`: image, mean probabilities,
    entropy and mutual information concatenated on the channel axis and resized to ``spatial_size``.

    Resizing averages over blocks (``area`` interpolation, i.e. adaptive average pooling), so a fraction of the
    foreground or a mean uncertainty survives the downsampling. Channels: ``C_img`` image channels, ``C`` class
    probabilities, entropy, mutual information (``C_img + C + 2`` in all; 4 + 4 + 2 = 10 for the BraTS bundles).

    Args:
        image: the stage-1 network's input ``(B, C_img, *spatial)`` (intensity-normalised).
        prob: mean probabilities ``(B, C, *spatial)``.
        entropy: predictive entropy ``(B, 1, *spatial)``.
        mutual_info: mutual information ``(B, 1, *spatial)``.
        spatial_size: output size (one value per spatial dim), ``None`` to keep the size.

    Returns:
        ``(B, C_img + C + 2, *spatial_size)`` float32.

    Example::

        x = quality_net_inputs(image, out["prob"], out["entropy"], out["mutual_info"], (32, 32, 32))
    """
    maps = {"image": image, "prob": prob, "entropy": entropy, "mutual_info": mutual_info}
    spatial = tuple(image.shape[2:])
    for name, value in maps.items():
        if value.ndim != image.ndim or value.shape[0] != image.shape[0] or tuple(value.shape[2:]) != spatial:
            raise ValueError(
                f"{name} has shape {tuple(value.shape)}, expected (B, channels, *spatial) with B = {image.shape[0]} "
                f"and spatial shape {spatial} of the image."
            )
    for name in ("entropy", "mutual_info"):
        if maps[name].shape[1] != 1:
            raise ValueError(f"{name} must have one channel, got {maps[name].shape[1]}.")
    x = torch.cat([torch.as_tensor(v).float() for v in maps.values()], dim=1)
    if spatial_size is not None:
        size = tuple(int(s) for s in spatial_size)
        if len(size) != len(spatial):
            raise ValueError(f"spatial_size {size} must have {len(spatial)} values, one per spatial dim.")
        if size != spatial:
            x = F.interpolate(x, size=size, mode="area")
    return x


def score_names(regions: Mapping[str, Sequence[int]] = BRATS_REGIONS) -> tuple[str, ...]:
    """The names (and order) of the scalar scores fed to the quality network's head and to the regression baselines."""
    names = ["mean_entropy", "mean_mutual_info", "mean_entropy_brain", "sample_dice_agreement", "ged_to_mean"]
    names.append("uncertainty_volume_ratio")
    for r in regions:
        names += [f"sample_dice_agreement_{r}", f"uncertainty_volume_ratio_{r}", f"volume_{r}", f"mean_max_prob_{r}"]
    return tuple(names)


def score_vector(scores: Mapping[str, float], regions: Mapping[str, Sequence[int]] = BRATS_REGIONS) -> np.ndarray:
    """The scores of :func:`score_names` as a float32 vector, volumes as ``log10(volume + 1e-5)``."""
    values = []
    for name in score_names(regions):
        if name not in scores:
            raise KeyError(f"score {name!r} missing; expected the scores of monai_probseg.metrics.quality_scores.")
        v = float(scores[name])
        values.append(np.log10(v + 1e-5) if name.startswith("volume_") else v)
    return np.asarray(values, dtype=np.float32)


def simulate_quality_case(
    network: torch.nn.Module,
    inferer: Callable[[torch.Tensor, torch.nn.Module], dict],
    seed: int,
    index: int,
    corruption: str | None = None,
    severity: float | None = None,
    variant: str | None = None,
    spatial_size: Sequence[int] = (64, 64, 64),
    corruptions: Sequence[str] = SEEN_CORRUPTIONS,
    clean_fraction: float = 0.25,
    healthy_fraction: float = 0.0,
    regions: Mapping[str, Sequence[int]] = BRATS_REGIONS,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """One phantom, corrupted, segmented by the stage-1 ``network`` with ``inferer``; everything depends on
    ``(seed, index)`` only.

    Unless given, the case draws its tumour variant (:data:`TUMOUR_VARIANTS`: typical half of the time, otherwise small,
    large or non-enhancing; ``"healthy"``, a brain without tumour, with probability ``healthy_fraction`` from a
    separate random stream, so the other cases do not change with it), whether it is corrupted (probability
    ``1 - clean_fraction``), the corruption (uniformly from ``corruptions``) and the severity (uniform in ``[0.2, 1]``).
    A healthy case teaches the quality model that a confident empty segmentation is right (true Dice 1, both masks
    empty) and that tumour found in a healthy brain is a failure (Dice 0).

    Args:
        network: stage-1 network with its weights, in eval mode.
        inferer: e.g. the bundle's :py:class:`~monai_probseg.inferers.StochasticSlidingWindowInferer` with
            ``keep_samples=True`` and at least ``prob``, ``entropy``, ``mutual_info`` in its outputs.
        seed: seed of the set of cases (use one the stage-1 model never trained on).
        index: the case's index.
        corruption: a corruption of :data:`~monai_probseg.quality.corruptions.CORRUPTIONS`, or ``None`` to draw.
        severity: in ``[0, 1]``, or ``None`` to draw.
        variant: a key of :data:`TUMOUR_VARIANTS`, or ``None`` to draw.
        spatial_size: phantom size.
        corruptions: the corruptions drawn from.
        clean_fraction: probability of an uncorrupted case when drawing.
        healthy_fraction: probability of a healthy brain when drawing the variant.
        regions: regions scored.
        device: where the network runs.

    Returns:
        dict with ``image`` (the corrupted, normalised input ``(C_img, *spatial)``), ``prob``, ``entropy``,
        ``mutual_info`` (``(1, *spatial)`` each), ``samples`` ``(N, *spatial)``, ``seg``, ``label`` (the consensus),
        ``brain``, ``scores`` (:py:func:`~monai_probseg.metrics.quality_scores`), ``true_dice`` (region -> Dice) and
        ``meta`` (seed, index, variant, corruption and its parameters).
    """
    if not 0.0 <= float(healthy_fraction) <= 1.0:
        raise ValueError(f"healthy_fraction must be in [0, 1], got {healthy_fraction!r}.")
    rng = _case_rng(seed, index)
    drawn = _draw_variant(rng, seed, index, healthy_fraction)  # drawn always: the later draws do not depend on variant
    variant = drawn if variant is None else variant
    if variant not in TUMOUR_VARIANTS:
        raise ValueError(f"variant must be one of {tuple(TUMOUR_VARIANTS)}, got {variant!r}.")
    if corruption is None:
        corruption = "none" if rng.random() < clean_fraction else str(rng.choice(list(corruptions)))
    if corruption not in CORRUPTIONS:
        raise ValueError(f"corruption must be one of {CORRUPTIONS}, got {corruption!r}.")
    if severity is None:
        severity = float(rng.uniform(0.2, 1.0))
    phantom = brats_phantom(spatial_size, 3, seed=[int(seed), int(index)], **TUMOUR_VARIANTS[variant])
    brain = torch.from_numpy(phantom["image"]).ne(0).any(0)
    image = NormalizeIntensity(nonzero=True, channel_wise=True)(torch.from_numpy(phantom["image"]))
    image = torch.as_tensor(image).float()
    params: dict[str, Any] = {"corruption": "none", "severity": 0.0}
    if corruption != "none":
        image, params = corrupt_image(image, corruption, severity, seed=int(rng.integers(0, 2**31 - 1)), brain=brain)
    with torch.no_grad():
        out = inferer(image[None].to(device), network)
    prob = out["prob"][0].float().cpu()
    entropy = out["entropy"][0].float().cpu()
    mutual_info = out["mutual_info"][0].float().cpu()
    samples = out["samples"][0].cpu()
    seg = prob.argmax(0)
    label = torch.from_numpy(phantom["seg"].astype(np.int64))
    scores = quality_scores(prob, entropy, mutual_info, samples, regions, brain)
    return {
        "image": image,
        "prob": prob,
        "entropy": entropy,
        "mutual_info": mutual_info,
        "samples": samples,
        "seg": seg,
        "label": label,
        "brain": brain,
        "scores": scores,
        "true_dice": region_dice(seg, label, regions),
        "meta": {"seed": int(seed), "index": int(index), "variant": variant, **params},
    }


def _case_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(index), 7])


def _draw_variant(rng: np.random.Generator, seed: int, index: int, healthy_fraction: float) -> str:
    """The tumour variant of case ``(seed, index)``: one draw of the case's ``rng``; healthy from a separate stream."""
    variant = "typical" if rng.random() < 0.5 else str(rng.choice(list(_TUMOUR_DRAWS)))
    if np.random.default_rng([int(seed), int(index), 11]).random() < float(healthy_fraction):
        variant = "healthy"
    return variant


def weights_fingerprint(network: torch.nn.Module) -> str:
    """A short SHA-256 of a network's state dict (names, shapes and values, in name order): which stage-1 weights made
    a quality case. Cases made with other weights than the current ones are stale (the quality model must be
    retrained when the stage-1 model changes)."""
    digest = hashlib.sha256()
    for name, value in sorted(network.state_dict().items()):
        tensor = value.detach().cpu().contiguous()
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.numpy().tobytes() if tensor.dtype != torch.bfloat16 else tensor.float().numpy().tobytes())
    return digest.hexdigest()[:16]


def generate_quality_dataset(
    network: torch.nn.Module,
    inferer: Callable[[torch.Tensor, torch.nn.Module], dict],
    out_dir: str | os.PathLike,
    num_cases: int,
    seed: int,
    start: int = 0,
    input_size: Sequence[int] = (32, 32, 32),
    progress: bool = True,
    **case_kwargs: Any,
) -> str:
    """Simulate cases ``start .. start + num_cases - 1`` (:func:`simulate_quality_case`) and store each as
    ``<out_dir>/case_<seed>_<index>.npz`` (``inputs`` of :func:`quality_net_inputs` at ``input_size`` in float16,
    ``scores`` as :func:`score_vector`, ``true_dice`` in region order) plus ``<out_dir>/case_<seed>_<index>.json``
    (scores, true Dice and meta, with the stage-1 :func:`weights_fingerprint`). Cases already on disk are skipped, so
    an interrupted run resumes; a case made with other stage-1 weights raises a ``ValueError`` (use a fresh folder);
    a case whose tumour variant changed (e.g. another ``healthy_fraction``) is simulated again and replaced.

    Returns:
        ``out_dir``.
    """
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    regions = case_kwargs.get("regions", BRATS_REGIONS)
    indices = range(int(start), int(start) + int(num_cases))
    fingerprint = weights_fingerprint(network)
    for index in tqdm(indices, desc="quality cases", disable=not progress):
        name = f"case_{seed}_{index:05d}"
        if os.path.exists(os.path.join(out_dir, name + ".json")):
            with open(os.path.join(out_dir, name + ".json")) as f:
                recorded = json.load(f)["meta"]
            made_with = recorded.get("stage1_fingerprint")
            if made_with != fingerprint:
                raise ValueError(
                    f"{name} in {out_dir!r} was made with other stage-1 weights (fingerprint {made_with}, now "
                    f"{fingerprint}): use a fresh folder, and retrain the quality model on it."
                )
            expected = case_kwargs.get("variant") or _draw_variant(
                _case_rng(seed, index), seed, index, case_kwargs.get("healthy_fraction", 0.0)
            )
            if recorded.get("variant") == expected:
                continue
            logger.info("%s: simulated again as %s (it was %s)", name, expected, recorded.get("variant"))
        case = simulate_quality_case(network, inferer, seed, index, **case_kwargs)
        x = quality_net_inputs(
            case["image"][None], case["prob"][None], case["entropy"][None], case["mutual_info"][None], input_size
        )[0]
        arrays = {
            "inputs": x.numpy().astype(np.float16),
            "scores": score_vector(case["scores"], regions),
            "true_dice": np.asarray([case["true_dice"][r] for r in regions], dtype=np.float32),
        }
        atomic_write(os.path.join(out_dir, name + ".npz"), lambda p, a=arrays: _save_npz(p, a))
        meta = {**case["meta"], "stage1_fingerprint": fingerprint}
        record = {"case_id": name, "scores": case["scores"], "true_dice": case["true_dice"], "meta": meta}
        write_json_atomic(record, os.path.join(out_dir, name + ".json"))
        logger.info("%s %s dice %s", name, case["meta"], case["true_dice"])
    return out_dir


def _save_npz(path: str, arrays: Mapping[str, np.ndarray]) -> None:
    with open(path, "wb") as f:
        np.savez_compressed(f, **arrays)


def load_quality_dataset(folder: str | os.PathLike, with_inputs: bool = True) -> dict[str, Any]:
    """Load every case of :func:`generate_quality_dataset` in ``folder`` (sorted by name).

    Returns:
        dict with ``inputs`` ``(n, channels, *size)`` float32 (if ``with_inputs``), ``scores`` ``(n, num_scores)``,
        ``true_dice`` ``(n, num_regions)`` and ``records`` (the JSON records).
    """
    folder = os.fspath(folder)
    names = sorted(f[:-5] for f in os.listdir(folder) if f.startswith("case_") and f.endswith(".json"))
    if not names:
        raise FileNotFoundError(f"no quality cases (case_*.json) in {folder!r}; run generate_quality_dataset first.")
    inputs, scores, dice, records = [], [], [], []
    for name in names:
        with np.load(os.path.join(folder, name + ".npz")) as data:
            if with_inputs:
                inputs.append(data["inputs"].astype(np.float32))
            scores.append(data["scores"])
            dice.append(data["true_dice"])
        with open(os.path.join(folder, name + ".json")) as f:
            records.append(json.load(f))
    out: dict[str, Any] = {"scores": np.stack(scores), "true_dice": np.stack(dice), "records": records}
    if with_inputs:
        out["inputs"] = np.stack(inputs)
    return out


def quality_datalist(
    folder: str | os.PathLike, section: str = "training", val_fraction: float = 0.2
) -> list[dict[str, np.ndarray]]:
    """Items ``{"image": inputs, "scores": score vector, "label": true Dice}`` of the cases in ``folder``, for MONAI
    datasets and ``PrepareBatchExtraInput("scores")``.

    The cases are split by name: the last ``val_fraction`` of them are ``"validation"``, the others ``"training"``
    (``"all"``: every case).

    Example::

        train = monai.data.Dataset(quality_datalist("outputs/brats_ssn_quality/data", "training"))
    """
    if section not in ("training", "validation", "all"):
        raise ValueError(f"section must be 'training', 'validation' or 'all', got {section!r}.")
    data = load_quality_dataset(folder)
    n = len(data["records"])
    training, validation = quality_split(n, val_fraction)
    index = {"training": training, "validation": validation, "all": range(n)}[section]
    return [
        {
            "image": data["inputs"][i],
            "scores": data["scores"][i],
            "label": data["true_dice"][i],
            "case_id": data["records"][i]["case_id"],
        }
        for i in index
    ]


def quality_split(num_cases: int, val_fraction: float = 0.2) -> tuple[range, range]:
    """The ``(training, validation)`` index ranges of :func:`quality_datalist`: the last ``val_fraction`` of the
    ``num_cases`` cases (sorted by name) validate, the others train."""
    if not 0.0 <= float(val_fraction) < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}.")
    n_val = int(round(num_cases * float(val_fraction)))
    return range(num_cases - n_val), range(num_cases - n_val, num_cases)


def score_statistics(items: Sequence[Mapping[str, Any]]) -> tuple[list[float], list[float]]:
    """Mean and standard deviation of the ``"scores"`` of datalist items (for
    :py:meth:`~monai_probseg.networks.nets.SegmentationQualityNet.set_score_statistics`)."""
    if not items:
        raise ValueError("score_statistics needs at least one item.")
    scores = np.stack([np.asarray(item["scores"], dtype=np.float64) for item in items])
    return scores.mean(0).tolist(), np.maximum(scores.std(0), 1e-6).tolist()
