# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""Skull-stripped multimodal brain-tumour phantoms in the BraTS 2023 layout, with several raters per case.

A phantom is a brain (CSF, grey and white matter, ventricles) with a glioma-like tumour: a necrotic core
(label 1) inside an enhancing ring (label 3), surrounded by peritumoural edema (label 2), the BraTS 2023 labels
(Baid et al., "The RSNA-ASNR-MICCAI BraTS 2021 Benchmark", arXiv:2107.02314, 2021); some tumours do not
enhance (core label 1 only, no label 3), as in BraTS. Each of the four sequences shows the tissues as real MRI
does: on native T1 (``t1n``) white matter is brighter than grey matter, CSF and necrosis are dark; on
contrast-enhanced T1 (``t1c``) the enhancing ring is the brightest structure; on T2 (``t2w``) CSF, necrosis and
edema are bright; on FLAIR (``t2f``) CSF is suppressed and edema is bright. A smooth multiplicative bias field
and Rician noise are added, with per-case levels, per-modality intensity scales and per-tissue contrast jitter,
and the images are skull-stripped like BraTS: every voxel outside the brain mask is exactly 0.

The edema border fades gradually and the enhancing ring thins gradually into the necrosis, so the
boundaries are genuinely ambiguous: each rater draws the edema border at their own iso-level of the
edema (plus a smooth local wobble) and the ring at their own thickness, as BraTS raters disagree mostly
on these boundaries; small faint satellite lesions near the tumour are drawn by each rater with a known
probability (higher for brighter ones). The consensus ``seg`` is the per-voxel majority vote of the raters.
The generative truth (every parameter of the case and of each rater) is returned with the phantom.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.special import expit

from monai_probseg.data.synthetic._common import (
    check_size,
    draw_level,
    prepare_out_dir,
    save_json,
    save_nifti,
    smooth_field,
    split_cases,
)
from monai_probseg.utils import check_positive_int, majority_vote

__all__ = ["MODALITIES", "BRATS_LABELS", "brats_phantom", "majority_vote", "write_brats_phantoms"]

logger = logging.getLogger(__name__)

MODALITIES = ("t1n", "t1c", "t2w", "t2f")
BRATS_LABELS = {"0": "background", "1": "necrotic tumour core", "2": "peritumoural edema", "3": "enhancing tumour"}

# relative intensities (white matter on T1 = 1) of each tissue on (t1n, t1c, t2w, t2f)
_TISSUE = {
    "scalp": (1.15, 1.15, 0.55, 0.65),
    "skull": (0.12, 0.12, 0.08, 0.08),
    "csf": (0.30, 0.32, 1.45, 0.12),
    "gm": (0.72, 0.74, 0.62, 0.72),
    "wm": (1.00, 1.00, 0.45, 0.55),
    "edema": (0.62, 0.66, 1.15, 1.35),
    "enhancing": (0.70, 1.75, 0.85, 1.05),
    "necrosis": (0.32, 0.35, 1.40, 0.55),
    "nonenhancing": (0.55, 0.58, 1.25, 1.15),
}


def _ellipsoid_distance(grids: Sequence[np.ndarray], center: Sequence[float], axes: Sequence[float]) -> np.ndarray:
    """Normalised ellipsoid distance ``sqrt(sum(((x_i - c_i) / a_i) ** 2))`` from broadcastable open grids."""
    d2 = sum(((g - np.float32(c)) / np.float32(a)) ** 2 for g, c, a in zip(grids, center, axes))
    return np.sqrt(d2, dtype=np.float32)


_LAYERS = ("scalp", "skull", "csf", "gm", "wm", "csf", "csf")  # outer to inner; the last two: fissure, ventricles


def _head_weights(
    size: tuple[int, ...], grids: list[np.ndarray], center: np.ndarray, head_axes: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Soft inside-weights ``(len(_LAYERS), *size)`` of the nested head tissues and the brain parenchyma weight."""
    weights = np.empty((len(_LAYERS), *size), dtype=np.float32)
    tau = 0.6 / float(head_axes.min())  # about one voxel of transition
    d = _ellipsoid_distance(grids, center, head_axes)
    d *= 1.0 + 0.02 * smooth_field(size, 3, rng)
    for k, level in enumerate((1.0, 0.93, 0.87)):  # scalp, skull, CSF shell outer borders
        expit((level - d) / tau, out=weights[k])
    expit((0.84 + 0.012 * smooth_field(size, 6, rng) - d) / tau, out=weights[3])  # brain surface
    expit((0.70 + 0.06 * smooth_field(size, 12, rng, decay=0.3) - d) / tau, out=weights[4])  # folded GM/WM border
    # the interhemispheric fissure: a thin CSF sheet at the midline of the outer brain
    midline = np.abs(grids[0] - np.float32(center[0]))
    np.multiply(expit((0.9 - midline) / 0.4), expit((d - 0.45) / 0.05), out=weights[5])
    weights[5] *= weights[3]
    del d
    brain_axes = 0.84 * head_axes
    vent_axes = np.array([0.07, 0.24, 0.11]) * brain_axes
    offsets = [np.array([side * 0.09, 0.0, 0.08]) * brain_axes for side in (-1.0, 1.0)]
    vent_d = np.minimum(*[_ellipsoid_distance(grids, center + o, vent_axes) for o in offsets])
    expit((1.0 - vent_d) * float(vent_axes.min()) / 0.6, out=weights[6])
    parenchyma = weights[3] * (1.0 - weights[5]) * (1.0 - weights[6])  # brain tissue, not CSF
    return weights, parenchyma


def _fractions(weights: np.ndarray) -> np.ndarray:
    """Turn nested inside-weights (outer to inner, inner covers outer) into tissue fractions, in place."""
    remaining = np.ones(weights.shape[1:], dtype=weights.dtype)
    for k in range(len(weights) - 1, -1, -1):
        weights[k] *= remaining
        remaining -= weights[k]
    return weights


def brats_phantom(
    spatial_size: Sequence[int] = (96, 96, 96),
    num_raters: int = 3,
    seed: int | Sequence[int] | np.random.Generator = 0,
    noise: float | Sequence[float] = (0.015, 0.06),
    bias: float | Sequence[float] = (0.05, 0.3),
    tumour_size: Sequence[float] = (0.12, 0.34),
    no_enhancing_prob: float = 0.2,
    max_satellites: int = 2,
    healthy: bool = False,
) -> dict[str, Any]:
    """Generate one skull-stripped multimodal brain-tumour phantom in memory (see the module docstring).

    The volumes are in RAS voxel order (axis 0 left -> right, 1 posterior -> anterior, 2 inferior -> superior)
    at 1 mm isotropic spacing. A 240x240x155 phantom takes a few seconds on one CPU core.

    Like BraTS data, the phantom is skull-stripped: every voxel outside the brain mask (brain tissue and the
    CSF around it) is exactly 0 in all four modalities. Each case draws its own acquisition (noise level,
    bias-field strength, per-modality intensity scale and a per-tissue contrast jitter) and its own tumour
    (size from small to large; with probability ``no_enhancing_prob`` a non-enhancing tumour, whose core is
    label 1 with no label 3; up to ``max_satellites`` small satellite lesions near the tumour, each of which a
    rater includes with a known probability that grows with its contrast).

    Args:
        spatial_size: ``(X, Y, Z)``, each >= 16 (32^3 for tests, 240x240x155 for BraTS-sized benchmarks).
        num_raters: R, the number of rater segmentations.
        seed: integer seed (or a sequence of integers, or a ``numpy.random.Generator``); same seed, same phantom.
        noise: Rician noise level relative to white matter on T1, or a ``(low, high)`` range it is drawn from
            (log-uniformly) per case.
        bias: strength of the smooth multiplicative bias field (log-amplitude standard deviation), or a range.
        tumour_size: ``(low, high)`` radius of the tumour core as a fraction of the smallest brain semi-axis,
            drawn log-uniformly.
        no_enhancing_prob: probability of a tumour with no enhancing part (BraTS has such cases).
        max_satellites: at most this many satellite lesions (0 for none).
        healthy: a brain without tumour: the same random draws (anatomy, acquisition, and the tumour's parameters,
            reported in ``"params"``), but no lesion is rendered and every segmentation is 0. A stage-1 model
            should segment nothing, and a quality predictor should rate a confident empty result as good.

    Returns:
        a dict with

        - ``"image"``: float32 ``(4, X, Y, Z)``, the modalities in the order of :data:`MODALITIES`
          (``t1n, t1c, t2w, t2f``), exactly 0 outside ``"brain"``;
        - ``"seg"``: uint8 ``(X, Y, Z)``, consensus (majority vote of the raters; a tie goes to ``"nominal"``);
        - ``"raters"``: uint8 ``(R, X, Y, Z)``, the rater segmentations;
        - ``"nominal"``: uint8 ``(X, Y, Z)``, the generative segmentation the raters deviate from (it holds the
          satellites that raters include with probability >= 0.5);
        - ``"brain"``: uint8 ``(X, Y, Z)``, the brain mask of the skull stripping (tissue and CSF, tumour
          included);
        - ``"affine"``: float64 ``(4, 4)``, 1 mm RAS with the volume centre at the origin;
        - ``"params"``: the case's acquisition and tumour parameters, each satellite's inclusion probability and
          which raters drew it, and each rater's boundary shifts (the exact generative truth).

        Labels follow BraTS 2023: 0 background, 1 necrotic (or non-enhancing) core, 2 edema, 3 enhancing tumour.

    Example::

        p = brats_phantom((64, 64, 48), num_raters=3, seed=0)
        p["image"].shape, p["seg"].shape, p["raters"].shape  # (4, 64, 64, 48) (64, 64, 48) (3, 64, 64, 48)
    """
    size = check_size(spatial_size, 3)
    num_raters = check_positive_int(num_raters, "num_raters")
    max_satellites = check_positive_int(max_satellites, "max_satellites", minimum=0)
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        check_positive_int(seed, "seed", minimum=0)
    if not 0.0 <= float(no_enhancing_prob) <= 1.0:
        raise ValueError(f"no_enhancing_prob must be in [0, 1], got {no_enhancing_prob!r}.")
    try:
        size_lo, size_hi = (float(v) for v in tumour_size)
    except (TypeError, ValueError):
        raise ValueError(f"tumour_size must be a (low, high) pair of fractions, got {tumour_size!r}.") from None
    if not 0.02 <= size_lo <= size_hi <= 0.6:
        raise ValueError(f"tumour_size must satisfy 0.02 <= low <= high <= 0.6, got {tumour_size!r}.")
    rng = np.random.default_rng(seed)
    noise_level = draw_level(noise, "noise", rng)
    bias_level = draw_level(bias, "bias", rng)
    shape = np.array(size, dtype=np.float64)
    center = (shape - 1) / 2
    grids = [g.astype(np.float32) for g in np.ogrid[: size[0], : size[1], : size[2]]]

    # ---- head anatomy as nested soft shells of one perturbed ellipsoid distance; the skull stripping keeps
    # what is inside the CSF shell's outer border
    head_axes = np.array([0.40, 0.46, 0.44]) * shape * rng.uniform(0.92, 1.0)
    brain_axes = 0.84 * head_axes
    weights, parenchyma = _head_weights(size, grids, center, head_axes, rng)
    brain = weights[2] > 0.5

    # ---- tumour geometry, evaluated in the bounding box of the edema and the satellites only
    side = rng.choice([-1.0, 1.0])
    pos = np.array([side * rng.uniform(0.25, 0.42), rng.uniform(-0.35, 0.35), rng.uniform(-0.1, 0.3)])
    t_center = center + pos * brain_axes
    size_fraction = float(np.exp(rng.uniform(np.log(size_lo), np.log(size_hi))))
    r_core = max(3.0, size_fraction * float(brain_axes.min()))
    core_axes = r_core * rng.uniform(0.85, 1.15, size=3)
    edema_axes = core_axes * rng.uniform(1.3, 1.7) + 1.5
    enhancing = bool(rng.random() >= no_enhancing_prob)
    rho = float(np.clip(rng.uniform(0.5, 0.75), 1.5 / r_core, 1 - 1.5 / r_core))
    satellites = []
    for _ in range(int(rng.integers(0, max_satellites + 1))):
        direction = rng.standard_normal(3)
        direction /= np.linalg.norm(direction)
        contrast = float(rng.uniform(0.35, 1.0))
        satellites.append(
            {
                "center": (t_center + direction * edema_axes * rng.uniform(1.05, 1.3)).tolist(),
                "radius": float(rng.uniform(1.3, 2.6)),
                "contrast": contrast,
                "include_prob": float(np.clip(0.15 + 0.8 * (contrast - 0.35) / 0.65, 0.15, 0.95)),
            }
        )
    extent = [t_center - 1.35 * edema_axes - 2, t_center + 1.35 * edema_axes + 3]
    for sat in satellites:
        extent[0] = np.minimum(extent[0], np.array(sat["center"]) - 2 * sat["radius"] - 2)
        extent[1] = np.maximum(extent[1], np.array(sat["center"]) + 2 * sat["radius"] + 3)
    lo = np.clip(np.floor(extent[0]), 0, shape).astype(int)
    hi = np.clip(np.ceil(extent[1]), 0, shape).astype(int)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    box_shape = tuple(int(b - a) for a, b in zip(lo, hi))
    bgrids = [g[tuple(box[i] if j == i else slice(None) for j in range(3))] for i, g in enumerate(grids)]
    d_core = _ellipsoid_distance(bgrids, t_center, core_axes) * (1.0 + 0.12 * smooth_field(box_shape, 4, rng))
    d_edema = _ellipsoid_distance(bgrids, t_center, edema_axes) * (1.0 + 0.2 * smooth_field(box_shape, 5, rng))
    d_sats = [_ellipsoid_distance(bgrids, s["center"], [s["radius"]] * 3) for s in satellites]
    par_box = parenchyma[box]
    edema_w = expit((1.0 - d_edema) / 0.08) * par_box  # diffuse border
    sat_w = [expit((1.0 - d) / 0.2) * par_box * np.float32(s["contrast"]) for d, s in zip(d_sats, satellites)]
    core_w = expit((1.0 - d_core) * r_core / 0.6)  # sharp outer border of the core (the enhancing ring)
    necrosis_w = expit((rho - d_core) / 0.06)  # the ring fades gradually into the necrosis

    # ---- images: tissue fractions times each modality's (jittered) tissue values (one matrix product), then the
    # tumour, the bias field and Rician noise, and the skull stripping
    jitter = np.clip(1.0 + 0.06 * rng.standard_normal((len(_TISSUE), 4)), 0.85, 1.15).astype(np.float32)
    tissue = {name: np.array(v, dtype=np.float32) * jitter[k] for k, (name, v) in enumerate(_TISSUE.items())}
    values = np.stack([tissue[name] for name in _LAYERS], axis=1)  # (4, num_layers)
    image = (values @ _fractions(weights).reshape(len(_LAYERS), -1)).reshape(4, *size)
    del weights
    enhancement = float(rng.uniform(0.85, 1.15))
    scales = 1000.0 * np.exp(rng.uniform(np.log(0.5), np.log(2.0), size=4))
    for m in range(4):
        img = image[m]
        sub = img[box]
        for w in sat_w if not healthy else ():  # the lesion layers draw nothing at random: skipping keeps the stream
            sub += w * (tissue["edema"][m] - sub)
        if enhancing:
            ring = tissue["enhancing"][m] * (enhancement if m == 1 else 1.0)
            layers = ((tissue["edema"][m], edema_w), (ring, core_w), (tissue["necrosis"][m], necrosis_w))
        else:
            layers = ((tissue["edema"][m], edema_w), (tissue["nonenhancing"][m], core_w))
        for value, w in layers if not healthy else ():
            sub += w * (np.float32(value) - sub)
        img *= np.exp(bias_level * smooth_field(size, 3, rng))
        sigma = np.float32(noise_level)
        n1 = rng.standard_normal(size, dtype=np.float32)
        n1 *= sigma
        img += n1
        np.square(img, out=img)
        n1 = rng.standard_normal(size, dtype=np.float32)
        n1 *= sigma
        img += np.square(n1, out=n1)
        np.sqrt(img, out=img)
        img *= np.float32(scales[m])
        img[~brain] = 0.0
        img[brain] = np.maximum(img[brain], np.float32(1e-3 * scales[m]))  # a stripped brain has no exact zeros
    del parenchyma

    # ---- segmentations: the nominal one and R raters with shifted boundaries and their own satellites
    def labels(edema_level: np.ndarray | float, core_level: float, necrosis_level: float, sats: list) -> np.ndarray:
        lab = np.zeros(box_shape, dtype=np.uint8)
        tissue_mask = par_box > 0.5
        lab[(d_edema <= edema_level) & tissue_mask] = 2
        for d in sats:
            lab[(d <= 1.0) & tissue_mask & (lab == 0)] = 2
        if enhancing:
            lab[d_core <= core_level] = 3
            lab[d_core <= necrosis_level] = 1
        else:
            lab[d_core <= core_level] = 1
        return lab

    nominal_box = labels(1.0, 1.0, rho, [d for d, s in zip(d_sats, satellites) if s["include_prob"] >= 0.5])
    rater_params, rater_boxes = [], []
    for _ in range(num_raters):
        shift = {
            "edema": float(rng.uniform(-0.12, 0.12)),
            "core": float(rng.uniform(-0.04, 0.04)),
            "necrosis": float(rng.uniform(-0.1, 0.1)),
            "satellites": [bool(rng.random() < s["include_prob"]) for s in satellites],
        }
        wobble = 0.05 * smooth_field(box_shape, 4, rng)
        nec_level = float(np.clip(rho + shift["necrosis"], 1.2 / r_core, 1.0 - 1.2 / r_core))
        sats = [d for d, keep in zip(d_sats, shift["satellites"]) if keep]
        rater_boxes.append(labels(1.0 + shift["edema"] - wobble, 1.0 + shift["core"], nec_level, sats))
        rater_params.append(shift)
    raters = np.zeros((num_raters, *size), dtype=np.uint8)
    raters[(slice(None), *box)] = np.stack(rater_boxes)
    seg = np.zeros(size, dtype=np.uint8)
    seg[box] = majority_vote(raters[(slice(None), *box)], tie_break=nominal_box, num_labels=4)
    nominal = np.zeros(size, dtype=np.uint8)
    nominal[box] = nominal_box
    if healthy:
        seg[:], raters[:], nominal[:] = 0, 0, 0

    affine = np.eye(4)
    affine[:3, 3] = -center
    return {
        "image": image,
        "seg": seg,
        "raters": raters,
        "nominal": nominal,
        "brain": brain.astype(np.uint8),
        "affine": affine,
        "params": {
            "noise": noise_level,
            "bias": bias_level,
            "intensity_scales": scales.tolist(),
            "tumour_center": t_center.tolist(),
            "tumour_size_fraction": size_fraction,
            "core_axes": core_axes.tolist(),
            "edema_axes": edema_axes.tolist(),
            "healthy": bool(healthy),
            "enhancing": enhancing,
            "necrosis_fraction": rho,
            "enhancement": enhancement,
            "satellites": satellites,
            "rater_shifts": rater_params,
        },
    }


def write_brats_phantoms(
    out_dir: str | os.PathLike,
    num_cases: int,
    spatial_size: Sequence[int] = (96, 96, 96),
    num_raters: int = 3,
    seed: int = 0,
    split: Sequence[float] = (0.6, 0.2, 0.2),
    noise: float | Sequence[float] = (0.015, 0.06),
    bias: float | Sequence[float] = (0.05, 0.3),
    **phantom_kwargs: Any,
) -> str:
    """Write ``num_cases`` phantoms in the BraTS 2023 layout plus a MONAI decathlon-style ``datalist.json``.

    Files per case ``BraTS-PHANTOM-<iiiii>-000`` (in its own folder): ``<case>-t1n.nii.gz``, ``-t1c``,
    ``-t2w``, ``-t2f`` (float32, skull-stripped: exactly 0 outside the brain), ``<case>-brainmask.nii.gz``
    (uint8, the brain mask of the skull stripping), ``<case>-seg.nii.gz`` (uint8 consensus) and
    ``<case>-seg-rater<k>.nii.gz`` for k = 1..R (uint8), all with the same 1 mm RAS affine. Files are written
    under a temporary name and renamed, so an interrupted run never leaves a truncated file. Case ``i`` depends
    only on ``(seed, i)``.

    The datalist has ``"training"``, ``"validation"`` and ``"test"`` lists of
    ``{"image": [t1n, t1c, t2w, t2f], "label": seg, "raters": [...], "brainmask": mask, "case_id": ...}`` with
    paths relative to the datalist's folder, as
    ``monai.data.load_decathlon_datalist(path, data_list_key="training")`` expects.

    Args:
        out_dir: output folder, created if missing.
        num_cases: number of cases (>= 1).
        spatial_size: ``(X, Y, Z)``, each >= 16.
        num_raters: R, rater segmentations per case (>= 1).
        seed: integer seed (>= 0).
        split: fractions of (training, validation, test) cases; at least one case goes to training.
        noise: Rician noise level or per-case range, see :func:`brats_phantom`.
        bias: bias-field strength or per-case range, see :func:`brats_phantom`.
        phantom_kwargs: further arguments of :func:`brats_phantom` (``tumour_size``, ``no_enhancing_prob``,
            ``max_satellites``).

    Returns:
        the path of ``datalist.json``.

    Raises:
        ValueError: for a size below 16, a count below 1, or an output folder that cannot be written.

    Example::

        datalist = write_brats_phantoms("/tmp/phantoms", 2, (64, 64, 48))
        train = monai.data.load_decathlon_datalist(datalist, data_list_key="training")
    """
    num_cases = check_positive_int(num_cases, "num_cases")
    size = check_size(spatial_size, 3)
    num_raters = check_positive_int(num_raters, "num_raters")
    seed = check_positive_int(seed, "seed", minimum=0)
    n_train, n_val, _ = split_cases(num_cases, split)
    root = prepare_out_dir(out_dir)
    entries = []
    for i in range(num_cases):
        case = f"BraTS-PHANTOM-{i:05d}-000"
        logger.info("writing phantom %d/%d %s %s", i + 1, num_cases, case, size)
        phantom = brats_phantom(size, num_raters, seed=[seed, i], noise=noise, bias=bias, **phantom_kwargs)
        os.makedirs(os.path.join(root, case), exist_ok=True)
        rel = {name: f"{case}/{case}-{name}.nii.gz" for name in (*MODALITIES, "seg", "brainmask")}
        for m, name in enumerate(MODALITIES):
            save_nifti(phantom["image"][m], phantom["affine"], os.path.join(root, rel[name]))
        save_nifti(phantom["seg"], phantom["affine"], os.path.join(root, rel["seg"]))
        save_nifti(phantom["brain"], phantom["affine"], os.path.join(root, rel["brainmask"]))
        raters = []
        for k in range(num_raters):
            raters.append(f"{case}/{case}-seg-rater{k + 1}.nii.gz")
            save_nifti(phantom["raters"][k], phantom["affine"], os.path.join(root, raters[-1]))
        entries.append(
            {
                "image": [rel[m] for m in MODALITIES],
                "label": rel["seg"],
                "raters": raters,
                "brainmask": rel["brainmask"],
                "case_id": case,
            }
        )
    datalist = {
        "name": "BraTS-PHANTOM",
        "description": f"synthetic skull-stripped BraTS 2023-style phantoms, {num_raters} raters, seed {seed}",
        "reference": "monai_probseg.data.synthetic.write_brats_phantoms",
        "tensorImageSize": "4D",
        "spatial_size": list(size),
        "modality": {str(m): name for m, name in enumerate(MODALITIES)},
        "labels": dict(BRATS_LABELS),
        "numTraining": n_train,
        "numValidation": n_val,
        "numTest": num_cases - n_train - n_val,
        "training": entries[:n_train],
        "validation": entries[n_train : n_train + n_val],
        "test": entries[n_train + n_val :],
    }
    return save_json(datalist, os.path.join(root, "datalist.json"))
