# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""Multimodal brain-tumour phantoms in the BraTS 2023 layout, with several raters per case.

A phantom is a head (scalp, skull, CSF, grey and white matter, ventricles) with a glioma-like tumour:
a necrotic core (label 1) inside an enhancing ring (label 3), surrounded by peritumoural edema (label 2),
the BraTS 2023 labels (Baid et al., "The RSNA-ASNR-MICCAI BraTS 2021 Benchmark", arXiv:2107.02314, 2021).
Each of the four sequences shows the tissues as real MRI does: on native T1 (``t1n``) white matter is
brighter than grey matter, CSF and necrosis are dark; on contrast-enhanced T1 (``t1c``) the enhancing
ring is the brightest structure; on T2 (``t2w``) CSF, necrosis and edema are bright; on FLAIR (``t2f``)
CSF is suppressed and edema is bright. A smooth multiplicative bias field and Rician noise are added.

The edema border fades gradually and the enhancing ring thins gradually into the necrosis, so the
boundaries are genuinely ambiguous: each rater draws the edema border at their own iso-level of the
edema (plus a smooth local wobble) and the ring at their own thickness, as BraTS raters disagree mostly
on these two boundaries. The consensus ``seg`` is the per-voxel majority vote of the raters.
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
    prepare_out_dir,
    save_json,
    save_nifti,
    smooth_field,
    split_cases,
)
from monai_probseg.utils import check_positive_int

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
}


def majority_vote(raters: np.ndarray, tie_break: np.ndarray | None = None, num_labels: int | None = None) -> np.ndarray:
    """Per-voxel majority vote of ``R`` label maps.

    Args:
        raters: ``(R, *spatial)`` integer label maps.
        tie_break: optional ``(*spatial)`` label map whose label wins a tie when it is among the tied labels;
            otherwise (and without it) a tie goes to the smallest tied label.
        num_labels: number of labels (default ``raters.max() + 1``).

    Returns:
        ``(*spatial)`` label map with the dtype of ``raters``.

    Example::

        majority_vote(np.array([[0, 1, 2], [0, 1, 1], [2, 2, 1]]))  # array([0, 1, 1])
    """
    raters = np.asarray(raters)
    if raters.ndim < 2:
        raise ValueError(f"raters must be (R, *spatial), got shape {raters.shape}.")
    n = int(raters.max()) + 1 if num_labels is None else int(num_labels)
    counts = np.stack([(raters == lab).sum(0, dtype=np.int16) for lab in range(n)])
    seg = counts.argmax(0)
    if tie_break is not None:
        winners = counts == counts.max(0, keepdims=True)
        tb = np.asarray(tie_break).astype(np.int64)
        tb_wins = np.take_along_axis(winners, np.clip(tb, 0, n - 1)[None], 0)[0] & (tb < n)
        seg = np.where(tb_wins & (winners.sum(0) > 1), tb, seg)
    return seg.astype(raters.dtype)


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
    noise: float = 0.03,
    bias: float = 0.15,
) -> dict[str, Any]:
    """Generate one multimodal brain-tumour phantom in memory (see the module docstring).

    The volumes are in RAS voxel order (axis 0 left -> right, 1 posterior -> anterior, 2 inferior -> superior)
    at 1 mm isotropic spacing. A 240x240x155 phantom takes a few seconds on one CPU core.

    Args:
        spatial_size: ``(X, Y, Z)``, each >= 16 (32^3 for tests, 240x240x155 for BraTS-sized benchmarks).
        num_raters: R, the number of rater segmentations.
        seed: integer seed (or a sequence of integers, or a ``numpy.random.Generator``); same seed, same phantom.
        noise: Rician noise level relative to white matter on T1.
        bias: strength of the smooth multiplicative bias field (log-amplitude standard deviation).

    Returns:
        a dict with

        - ``"image"``: float32 ``(4, X, Y, Z)``, the modalities in the order of :data:`MODALITIES`
          (``t1n, t1c, t2w, t2f``);
        - ``"seg"``: uint8 ``(X, Y, Z)``, consensus (majority vote of the raters; a tie goes to ``"nominal"``);
        - ``"raters"``: uint8 ``(R, X, Y, Z)``, the rater segmentations;
        - ``"nominal"``: uint8 ``(X, Y, Z)``, the generative segmentation the raters deviate from;
        - ``"brain"``: uint8 ``(X, Y, Z)``, the brain parenchyma mask (grey and white matter, no CSF), tumour included;
        - ``"affine"``: float64 ``(4, 4)``, 1 mm RAS with the volume centre at the origin;
        - ``"params"``: tumour centre and radii, and each rater's boundary shifts.

        Labels follow BraTS 2023: 0 background, 1 necrotic core, 2 edema, 3 enhancing tumour.

    Example::

        p = brats_phantom((64, 64, 48), num_raters=3, seed=0)
        p["image"].shape, p["seg"].shape, p["raters"].shape  # (4, 64, 64, 48) (64, 64, 48) (3, 64, 64, 48)
    """
    size = check_size(spatial_size, 3)
    num_raters = check_positive_int(num_raters, "num_raters")
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        check_positive_int(seed, "seed", minimum=0)
    if not (np.isfinite(noise) and noise >= 0):
        raise ValueError(f"noise must be a finite number >= 0, got {noise!r}.")
    if not (np.isfinite(bias) and bias >= 0):
        raise ValueError(f"bias must be a finite number >= 0, got {bias!r}.")
    rng = np.random.default_rng(seed)
    shape = np.array(size, dtype=np.float64)
    center = (shape - 1) / 2
    grids = [g.astype(np.float32) for g in np.ogrid[: size[0], : size[1], : size[2]]]

    # ---- head anatomy as nested soft shells of one perturbed ellipsoid distance
    head_axes = np.array([0.40, 0.46, 0.44]) * shape * rng.uniform(0.92, 1.0)
    brain_axes = 0.84 * head_axes
    weights, parenchyma = _head_weights(size, grids, center, head_axes, rng)

    # ---- tumour geometry, evaluated in the bounding box of the edema only
    side = rng.choice([-1.0, 1.0])
    pos = np.array([side * rng.uniform(0.25, 0.42), rng.uniform(-0.35, 0.35), rng.uniform(-0.1, 0.3)])
    t_center = center + pos * brain_axes
    r_core = max(3.5, float(rng.uniform(0.22, 0.32)) * float(brain_axes.min()))
    core_axes = r_core * rng.uniform(0.85, 1.15, size=3)
    edema_axes = core_axes * rng.uniform(1.3, 1.7) + 1.5
    rho = float(np.clip(rng.uniform(0.5, 0.75), 1.5 / r_core, 1 - 1.5 / r_core))
    lo = np.clip(np.floor(t_center - 1.35 * edema_axes - 2), 0, shape).astype(int)
    hi = np.clip(np.ceil(t_center + 1.35 * edema_axes + 3), 0, shape).astype(int)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    box_shape = tuple(int(b - a) for a, b in zip(lo, hi))
    bgrids = [g[tuple(box[i] if j == i else slice(None) for j in range(3))] for i, g in enumerate(grids)]
    d_core = _ellipsoid_distance(bgrids, t_center, core_axes) * (1.0 + 0.12 * smooth_field(box_shape, 4, rng))
    d_edema = _ellipsoid_distance(bgrids, t_center, edema_axes) * (1.0 + 0.2 * smooth_field(box_shape, 5, rng))
    par_box = parenchyma[box]
    edema_w = expit((1.0 - d_edema) / 0.08) * par_box  # diffuse border
    core_w = expit((1.0 - d_core) * r_core / 0.6)  # sharp outer border of the enhancing ring
    necrosis_w = expit((rho - d_core) / 0.06)  # the ring fades gradually into the necrosis

    # ---- images: tissue fractions times each modality's tissue values (one matrix product), then the tumour,
    # the bias field and Rician noise
    values = np.array([_TISSUE[tissue] for tissue in _LAYERS], dtype=np.float32).T  # (4, num_layers)
    image = (values @ _fractions(weights).reshape(len(_LAYERS), -1)).reshape(4, *size)
    del weights
    enhancement = float(rng.uniform(0.85, 1.15))
    for m in range(4):
        img = image[m]
        sub = img[box]
        enh = _TISSUE["enhancing"][m] * (enhancement if m == 1 else 1.0)
        for value, w in ((_TISSUE["edema"][m], edema_w), (enh, core_w), (_TISSUE["necrosis"][m], necrosis_w)):
            sub += w * (np.float32(value) - sub)
        img *= np.exp(bias * smooth_field(size, 3, rng))
        sigma = np.float32(noise)
        n1 = rng.standard_normal(size, dtype=np.float32)
        n1 *= sigma
        img += n1
        np.square(img, out=img)
        n1 = rng.standard_normal(size, dtype=np.float32)
        n1 *= sigma
        img += np.square(n1, out=n1)
        np.sqrt(img, out=img)
        img *= np.float32(1000.0 * rng.uniform(0.8, 1.2))
    brain = (parenchyma > 0.5).astype(np.uint8)
    del parenchyma

    # ---- segmentations: the nominal one and R raters with shifted boundaries
    def labels(edema_level: np.ndarray | float, core_level: float, necrosis_level: float) -> np.ndarray:
        lab = np.zeros(box_shape, dtype=np.uint8)
        lab[(d_edema <= edema_level) & (par_box > 0.5)] = 2
        lab[d_core <= core_level] = 3
        lab[d_core <= necrosis_level] = 1
        return lab

    nominal_box = labels(1.0, 1.0, rho)
    rater_params, rater_boxes = [], []
    for _ in range(num_raters):
        shift = {
            "edema": float(rng.uniform(-0.12, 0.12)),
            "core": float(rng.uniform(-0.04, 0.04)),
            "necrosis": float(rng.uniform(-0.1, 0.1)),
        }
        wobble = 0.05 * smooth_field(box_shape, 4, rng)
        nec_level = float(np.clip(rho + shift["necrosis"], 1.2 / r_core, 1.0 - 1.2 / r_core))
        rater_boxes.append(labels(1.0 + shift["edema"] - wobble, 1.0 + shift["core"], nec_level))
        rater_params.append(shift)
    raters = np.zeros((num_raters, *size), dtype=np.uint8)
    raters[(slice(None), *box)] = np.stack(rater_boxes)
    seg = np.zeros(size, dtype=np.uint8)
    seg[box] = majority_vote(raters[(slice(None), *box)], tie_break=nominal_box, num_labels=4)
    nominal = np.zeros(size, dtype=np.uint8)
    nominal[box] = nominal_box

    affine = np.eye(4)
    affine[:3, 3] = -center
    return {
        "image": image,
        "seg": seg,
        "raters": raters,
        "nominal": nominal,
        "brain": brain,
        "affine": affine,
        "params": {
            "tumour_center": t_center.tolist(),
            "core_axes": core_axes.tolist(),
            "edema_axes": edema_axes.tolist(),
            "necrosis_fraction": rho,
            "enhancement": enhancement,
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
    noise: float = 0.03,
    bias: float = 0.15,
) -> str:
    """Write ``num_cases`` phantoms in the BraTS 2023 layout plus a MONAI decathlon-style ``datalist.json``.

    Files per case ``BraTS-PHANTOM-<iiiii>-000`` (in its own folder): ``<case>-t1n.nii.gz``, ``-t1c``,
    ``-t2w``, ``-t2f`` (float32), ``<case>-seg.nii.gz`` (uint8 consensus) and ``<case>-seg-rater<k>.nii.gz``
    for k = 1..R (uint8), all with the same 1 mm RAS affine. Files are written under a temporary name and
    renamed, so an interrupted run never leaves a truncated file. Case ``i`` depends only on ``(seed, i)``.

    The datalist has ``"training"``, ``"validation"`` and ``"test"`` lists of
    ``{"image": [t1n, t1c, t2w, t2f], "label": seg, "raters": [...], "case_id": ...}`` with paths relative to
    the datalist's folder, as ``monai.data.load_decathlon_datalist(path, data_list_key="training")`` expects.

    Args:
        out_dir: output folder, created if missing.
        num_cases: number of cases (>= 1).
        spatial_size: ``(X, Y, Z)``, each >= 16.
        num_raters: R, rater segmentations per case (>= 1).
        seed: integer seed (>= 0).
        split: fractions of (training, validation, test) cases; at least one case goes to training.
        noise: Rician noise level, see :func:`brats_phantom`.
        bias: bias-field strength, see :func:`brats_phantom`.

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
        phantom = brats_phantom(size, num_raters, seed=[seed, i], noise=noise, bias=bias)
        os.makedirs(os.path.join(root, case), exist_ok=True)
        rel = {name: f"{case}/{case}-{name}.nii.gz" for name in (*MODALITIES, "seg")}
        for m, name in enumerate(MODALITIES):
            save_nifti(phantom["image"][m], phantom["affine"], os.path.join(root, rel[name]))
        save_nifti(phantom["seg"], phantom["affine"], os.path.join(root, rel["seg"]))
        raters = []
        for k in range(num_raters):
            raters.append(f"{case}/{case}-seg-rater{k + 1}.nii.gz")
            save_nifti(phantom["raters"][k], phantom["affine"], os.path.join(root, raters[-1]))
        entries.append({"image": [rel[m] for m in MODALITIES], "label": rel["seg"], "raters": raters, "case_id": case})
    datalist = {
        "name": "BraTS-PHANTOM",
        "description": f"synthetic BraTS 2023-style brain-tumour phantoms, {num_raters} raters, seed {seed}",
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
