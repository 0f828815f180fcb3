# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""Skull-stripped brain anatomy phantoms (CSF, grey and white matter) with their exact label and partial-volume truth.

Made for learning anatomical priors (Dalca, Guttag & Sabuncu, "Anatomical Priors in Convolutional Networks for
Unsupervised Biomedical Segmentation", CVPR 2018): label maps of one shape family train the prior, images of
another family in another contrast, without their labels, train the segmenter (the paper's unpaired setting).

A phantom is an intracranial ellipsoid (1 mm voxels, RAS order: axis 0 left -> right, 1 posterior -> anterior,
2 inferior -> superior; slightly egg-shaped and smoothly deformed) holding

- a thin layer of extracerebral CSF under the skull and CSF-filled sulci: the zero set of a random sum of plane
  waves over the directions from the brain centre (the cortical folding pattern), cut to a random sulcal depth,
  and the interhemispheric fissure down to the corpus callosum;
- a cortical grey-matter ribbon 2-4 mm thick along every CSF boundary (gyral crowns, sulcal banks and fundi);
- two curved lateral ventricles near the centre (widened by a per-case enlargement factor), and deep grey
  nuclei beside them: thalamus, caudate head and lentiform nucleus on each side;
- a hindbrain: the cerebellum in the posterior fossa (grey-matter folia with thin CSF fissures around a white
  matter arbor), set apart from the cerebrum by a thin CSF layer (the tentorium), and the brainstem (white matter);
- white matter everywhere else.

Every boundary is an approximate signed distance in mm, so the tissue fractions of each voxel (the
partial-volume truth) are a voxel-wide sigmoid of those distances; the label map is their arg-max and the images
are rendered from the fractions: T1-like (CSF:GM:WM about 0.3:0.65:1), T2-like (1:0.55:0.4) and FLAIR-like
(0.15:0.7:0.55), with deep grey nuclei between grey and white matter, a smooth multiplicative bias field, a
faint tissue texture and Rician (or Gaussian) noise, skull-stripped: exactly 0 wherever the label is 0.
Each case draws target proportions of the intracranial volume (GM 45.5-49 %, CSF 12-15 %, WM at most 39 %) and
sets its sulcal width and cortical thickness (clipped to 2-4 mm) to reach them; measured over seeds and both
families from 80^3 to 160x192x160, GM is 47-50 %, WM 37.5-40 % and CSF 11-14.5 % of the intracranial volume
(at 64^3 the 2 mm minimum thickness gives GM 49-53 %, WM 35-37 %).

A 2D phantom is an axial slice (axes 0 and 1) through the same kind of anatomy at a random height around the
lateral ventricles, calibrated to what such a slice holds (GM 40-45 %, CSF 10-14 %, the rest WM).
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
from monai_probseg.utils import check_positive_int

__all__ = ["ANATOMY_CONTRASTS", "ANATOMY_LABELS", "ANATOMY_TISSUES", "anatomy_phantom", "write_anatomy_phantoms"]

logger = logging.getLogger(__name__)

ANATOMY_LABELS = {"0": "background", "1": "CSF", "2": "grey matter", "3": "white matter"}
ANATOMY_TISSUES = ("background", "csf", "gm", "wm")

# relative intensities of (CSF, cortical GM, WM) per contrast; deep grey nuclei lie between GM and WM
ANATOMY_CONTRASTS = {
    "t1": (0.30, 0.65, 1.00),
    "t2": (1.00, 0.55, 0.40),
    "flair": (0.15, 0.70, 0.55),
}

_ASPECT = np.array([0.82, 1.0, 0.72])  # left-right : anterior-posterior : inferior-superior of the cranial cavity
_TAU = 0.3  # mm, slope of the partial-volume sigmoids (a 1 mm box blur of a sharp edge has slope 1/mm)
_NUM_WAVES = 40
_MAX_THICKNESS = 4.0  # mm; the cortical ribbon is 2-4 mm thick
# intracranial volume fractions a case aims at: CSF and GM ranges and the most WM; axial slices at the ventricles
# (the 2D phantoms) hold more WM than the whole brain
_TARGETS = {3: ((0.12, 0.15), (0.455, 0.49), 0.39), 2: ((0.10, 0.14), (0.40, 0.45), 0.50)}


def _quantile(values: np.ndarray, count: float, bounds: tuple[float, float]) -> float:
    """The threshold below which ``count`` of ``values`` lie, clipped to ``bounds``."""
    if values.size == 0:
        return float(bounds[0])
    k = int(np.clip(round(count), 0, values.size - 1))
    return float(np.clip(np.partition(values, k)[k], *bounds))


def _seed_entropy(seed: int | Sequence[int] | np.random.Generator) -> list[int]:
    """The integers a phantom's random streams are derived from."""
    if isinstance(seed, np.random.Generator):
        return [int(v) for v in seed.integers(0, 2**32, size=2)]
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        return [check_positive_int(int(seed), "seed", minimum=0)]
    try:
        values = [int(v) for v in seed]
    except (TypeError, ValueError):
        raise ValueError(f"seed must be an integer >= 0, a sequence of them or a Generator, got {seed!r}.") from None
    if not values or min(values) < 0:
        raise ValueError(f"seed must be an integer >= 0 or a non-empty sequence of them, got {seed!r}.")
    return values


def _stream(entropy: list[int], *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(entropy, spawn_key=key))


def _radial(x: Sequence[np.ndarray], axes: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Normalised ellipsoid radius ``r`` and the radial distance in mm to the surface ``r = 1`` (> 0 inside)."""
    r = np.sqrt(sum((xi / np.float32(a)) ** 2 for xi, a in zip(x, axes)), dtype=np.float32)
    dist = np.sqrt(sum(xi**2 for xi in x), dtype=np.float32)
    r = np.maximum(r, np.float32(1e-3))
    return r, dist / r - dist


def _draw_shape(rng: np.random.Generator, s: float) -> dict[str, Any]:
    """Every random shape parameter of a case, ``s`` being the anterior-posterior semi-axis of the cranium in mm."""
    directions = rng.standard_normal((_NUM_WAVES, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    wavelength = rng.uniform(18.0, 23.0)  # mm between gyral crowns
    wavenumbers = 2 * np.pi / (wavelength * rng.uniform(0.85, 1.15, size=(_NUM_WAVES, 1)))
    enlargement = float(np.exp(rng.uniform(np.log(1.0), np.log(1.6))))  # ventricles (and sulci) widen with atrophy
    return {
        "egg": float(rng.uniform(0.02, 0.1)),  # occipital wider than frontal
        "deformation": float(rng.uniform(0.01, 0.035)),  # smooth displacement, fraction of the semi-axis
        "csf_shell": float(rng.uniform(0.3, 0.7)),  # mm of CSF between the cranium and the gyral crowns
        "sulcal_depth": float(rng.uniform(0.2, 0.26) * s),  # mm
        "fold_wavelength": float(wavelength),
        "fold_waves": (directions * wavenumbers).tolist(),  # 3D wave vectors, rad/mm
        "fold_phases": rng.uniform(0, 2 * np.pi, size=_NUM_WAVES).tolist(),
        "fold_amplitudes": rng.uniform(0.5, 1.0, size=_NUM_WAVES).tolist(),
        "fold_wiggle": float(rng.uniform(0.08, 0.14)),  # sulci bend with depth
        "depth_waves": (rng.standard_normal((6, 3)) * 2.0 / s).tolist(),  # slow variation of the sulcal depth
        "depth_phases": rng.uniform(0, 2 * np.pi, size=6).tolist(),
        "fissure_halfwidth": float(rng.uniform(0.5, 0.9) * np.sqrt(enlargement)),  # mm
        "ventricle_enlargement": enlargement,
        "ventricle_curvature": float(rng.uniform(0.3, 0.6)),
        "ventricle_divergence": float(rng.uniform(0.1, 0.3)),
        "nuclei_scale": rng.uniform(0.9, 1.1, size=3).tolist(),  # thalamus, caudate, lentiform
        "slice_height": float(rng.uniform(-0.1, 0.12) * s),  # mm above the centre, for 2D phantoms
        "cerebellum_scale": float(rng.uniform(0.9, 1.1)),
        "tentorium_gap": float(rng.uniform(0.6, 1.2)),  # mm of CSF between cerebrum and cerebellum / brainstem
        "brainstem_radius": float(rng.uniform(0.08, 0.1) * s),  # mm
    }


def _fractions(
    size: tuple[int, ...], p: dict[str, Any], s: float, axes: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Tissue fractions ``(4, *size)`` (background, CSF, GM, WM) and the deep grey nuclei fraction ``size``."""
    ndim = len(size)
    center = (np.array(size, dtype=np.float32) - 1) / 2
    x = [np.arange(n, dtype=np.float32) - c for n, c in zip(size, center)]
    x = [g.reshape([-1 if j == i else 1 for j in range(ndim)]) for i, g in enumerate(x)]
    x = [np.broadcast_to(g, size) + np.float32(p["deformation"] * s) * smooth_field(size, 4, rng) for g in x]
    if ndim == 2:
        x.append(np.full(size, p["slice_height"], dtype=np.float32))
    x[0] = x[0] / (1.0 - np.float32(p["egg"]) * x[1] / np.float32(axes[1]))  # wider at the back
    r, depth = _radial(x, axes)

    # ---- cortex: distance (mm) to the CSF of the brain surface, the sulci and the interhemispheric fissure
    pial = (depth - np.float32(p["csf_shell"])).ravel()
    depth_waves = np.asarray(p["depth_waves"], dtype=np.float32)
    xs = np.stack([xi.ravel() for xi in x], axis=1)
    sulcal_depth = p["sulcal_depth"] * (1.0 + 0.4 * np.cos(xs @ depth_waves.T + p["depth_phases"]).mean(1))
    sulcal_depth = sulcal_depth.astype(np.float32)
    shell = (depth.ravel() > -2.0) & (pial < sulcal_depth + _MAX_THICKNESS + 2.0)
    unit = xs[shell] / np.linalg.norm(xs[shell], axis=1, keepdims=True).clip(1e-3)
    unit += np.float32(p["fold_wiggle"]) * np.stack([smooth_field(size, 6, rng).ravel()[shell] for _ in range(3)], 1)
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    waves = np.asarray(p["fold_waves"], dtype=np.float32)
    amps = np.asarray(p["fold_amplitudes"], dtype=np.float32)
    phase = unit * np.float32(axes[1]) @ waves.T + np.asarray(p["fold_phases"], dtype=np.float32)
    fold = np.cos(phase) @ amps
    grad = -(np.sin(phase) * amps) @ waves  # gradient over the sphere of radius axes[1]
    grad -= (grad * unit).sum(1, keepdims=True) * unit  # tangential part
    del phase, unit
    # distance to the zero set of the folding field, on the sphere and shrunk with depth
    to_fold = np.full(r.size, 1e3, dtype=np.float32)
    to_fold[shell] = np.abs(fold) / np.maximum(np.linalg.norm(grad, axis=1), np.float32(0.15)) * r.ravel()[shell]
    # the fissure separates the hemispheres except where the corpus callosum and the diencephalon join them
    vent = _ventricles(x, p, s)
    block_y, block_z = 0.42 * s, vent["top"] + 3.0 + 0.05 * s
    block = np.sqrt((x[1] / block_y) ** 2 + ((x[2] + 0.25 * s) / (block_z + 0.25 * s)) ** 2) - 1.0
    fissure = np.maximum(np.abs(x[0]) - np.float32(p["fissure_halfwidth"]), -block * np.float32(0.3 * s)).ravel()
    nuc_dist = _nuclei(x, p, s, vent)
    # the hindbrain: cerebellum (folia of GM around a WM arbor) in the posterior fossa, brainstem (WM) in front of it
    cb_axes = np.array([0.6 * axes[0], 0.3 * s, 0.3 * axes[2]]) * p["cerebellum_scale"]
    cb_r, cb_d = _radial([x[0], x[1] + np.float32(0.5 * s), x[2] + np.float32(0.62 * axes[2])], cb_axes)
    z_top = vent["center"][1] - vent["axes"][2] - 0.1 * s
    bs_rho = np.sqrt(x[0] ** 2 + ((x[1] + np.float32(0.12 * s)) / np.float32(1.2)) ** 2)
    bs_d = np.minimum(np.float32(p["brainstem_radius"]) - bs_rho, np.float32(z_top) - x[2])
    gap = np.float32(p["tentorium_gap"])
    away = np.minimum(-cb_d, np.where(x[2] < z_top - 2.0, bs_rho - np.float32(p["brainstem_radius"]), 1e3)) - gap
    away = away.ravel()
    arbor = (0.5 * (1.0 + 0.3 * smooth_field(size, 10, rng)) - cb_r) * np.float32(cb_axes.mean())
    folia = expit((0.12 - np.abs(smooth_field(size, 20, rng, decay=0.3))) / 0.04) * expit((cb_r - 0.55) / 0.05)

    # ---- calibration: the sulcal width and then the cortical thickness that give the case's CSF and GM targets
    inside = depth.ravel() > 0
    n_icv = max(int(inside.sum()), 1)
    hind_cb = inside & (cb_d.ravel() > 0) & (pial > 0)
    hind = hind_cb | (inside & (bs_d.ravel() > 0) & (pial > 0))
    cb_wm = hind_cb & (arbor.ravel() > 0)
    cb_csf = hind_cb & ~cb_wm & (folia.ravel() > 0.5)
    n_cb_gm = int(hind_cb.sum() - cb_wm.sum() - cb_csf.sum())
    vent_in = vent["distance"].ravel() < 0
    base = inside & ~hind & ((pial < 0) | (fissure < 0) | (away < 0) | vent_in)
    candidates = inside & ~hind & ~base & (pial < sulcal_depth)
    extra = p["csf_target"] * n_icv - int(base.sum()) - int(cb_csf.sum())
    halfwidth = _quantile(to_fold[candidates], extra, (0.15, 1.0))
    sulcus = np.maximum(to_fold - np.float32(halfwidth), pial - sulcal_depth)
    cortex = np.minimum(np.minimum(np.minimum(pial, sulcus), fissure), away)
    tissue = inside & ~hind & (cortex > 0) & ~vent_in
    in_nucleus = nuc_dist.ravel() < 0
    n_nuclei = int((tissue & in_nucleus).sum())
    gm_count = p["gm_target"] * n_icv - n_nuclei - n_cb_gm
    thickness = _quantile(cortex[tissue & ~in_nucleus], gm_count, (2.0, _MAX_THICKNESS))
    p["sulcal_halfwidth"], p["cortex_thickness"] = halfwidth, thickness
    cortex = cortex.reshape(size)
    thick = np.float32(thickness)

    icv = expit(depth / np.float32(_TAU))
    inside_pia = expit(cortex / np.float32(_TAU))
    deep = expit((cortex - thick) / np.float32(_TAU))
    ventricle = expit(-vent["distance"] / np.float32(_TAU))
    nuclei = expit(-nuc_dist / np.float32(_TAU))
    frac = np.empty((4, *size), dtype=np.float32)
    frac[1] = icv * ((1 - inside_pia) + deep * ventricle)
    deep_gm = icv * deep * (1 - ventricle) * nuclei
    frac[2] = icv * (inside_pia - deep) + deep_gm
    frac[3] = icv * deep * (1 - ventricle) * (1 - nuclei)
    frac[0] = 1 - icv
    pial = pial.reshape(size)
    cb_w = icv * expit(np.minimum(cb_d, pial) / np.float32(_TAU))
    bs_w = icv * expit(np.minimum(bs_d, pial) / np.float32(_TAU)) * (1 - cb_w)
    frac *= 1 - cb_w - bs_w
    deep_gm *= 1 - cb_w - bs_w
    cb_white = expit(arbor / np.float32(_TAU))
    frac[1] += cb_w * (1 - cb_white) * folia
    frac[2] += cb_w * (1 - cb_white) * (1 - folia)
    frac[3] += cb_w * cb_white + bs_w
    return frac, deep_gm


def _ventricles(x: list[np.ndarray], p: dict[str, Any], s: float) -> dict[str, Any]:
    """Signed distance (mm, < 0 inside) to two curved lateral ventricles, and the height of their top."""
    e = p["ventricle_enlargement"]
    ax, ay, az = 0.05 * s * e, 0.3 * s * e**0.3, 0.085 * s * e
    yv, zv = 0.02 * s, 0.06 * s
    dist = None
    for side in (-1.0, 1.0):
        y = x[1] - np.float32(yv)
        xv = side * (0.025 * s + ax + p["ventricle_divergence"] * np.clip(-y, 0, None) * 0.5)
        z = x[2] - np.float32(zv) + np.float32(p["ventricle_curvature"] * az) * (y / np.float32(ay)) ** 2
        _, d = _radial([x[0] - xv, y, z], (ax, ay, az))
        dist = -d if dist is None else np.minimum(dist, -d)
    return {"distance": dist, "top": zv + az, "axes": (ax, ay, az), "center": (yv, zv)}


def _nuclei(x: list[np.ndarray], p: dict[str, Any], s: float, vent: dict[str, Any]) -> np.ndarray:
    """Signed distance (mm, < 0 inside) to the deep grey nuclei beside the ventricles."""
    ax, _, az = vent["axes"]
    yv, zv = vent["center"]
    k_thal, k_caud, k_lent = p["nuclei_scale"]
    specs = (  # (|x| centre, y centre, z centre), semi-axes, in mm
        ((0.035 * s + 0.05 * s * k_thal, -0.1 * s, zv - az - 0.03 * s), np.array([0.065, 0.13, 0.08]) * s * k_thal),
        ((0.035 * s + 2 * ax + 0.02 * s, yv + 0.14 * s, zv - 0.01 * s), np.array([0.045, 0.1, 0.08]) * s * k_caud),
        ((0.035 * s + 2 * ax + 0.14 * s, 0.03 * s, zv - 0.1 * s), np.array([0.05, 0.17, 0.11]) * s * k_lent),
    )
    absx = np.abs(x[0])
    dist = None
    for (cx, cy, cz), semi in specs:
        _, d = _radial([absx - np.float32(cx), x[1] - np.float32(cy), x[2] - np.float32(cz)], semi)
        dist = -d if dist is None else np.minimum(dist, -d)
    return dist


def _render(
    frac: np.ndarray,
    deep_gm: np.ndarray,
    brain: np.ndarray,
    contrast: str,
    rng: np.random.Generator,
    noise: float | Sequence[float],
    bias: float | Sequence[float],
    noise_type: str,
    nuclei_mix: float,
) -> tuple[np.ndarray, dict[str, Any]]:
    """One contrast image from the tissue fractions, and its random parameters."""
    size = frac.shape[1:]
    values = np.array(ANATOMY_CONTRASTS[contrast], dtype=np.float32)
    values *= np.clip(1.0 + 0.04 * rng.standard_normal(3), 0.9, 1.1).astype(np.float32)
    deep_value = values[1] + np.float32(nuclei_mix) * (values[2] - values[1])
    noise_level = draw_level(noise, "noise", rng)
    bias_level = draw_level(bias, "bias", rng)
    texture = float(rng.uniform(0.01, 0.03))
    image = values[0] * frac[1] + values[1] * frac[2] + values[2] * frac[3]
    image += (deep_value - values[1]) * deep_gm
    image *= np.exp(
        np.float32(bias_level) * smooth_field(size, 3, rng)
        + np.float32(texture) * smooth_field(size, 16, rng, decay=0.5)
    )
    sigma = np.float32(noise_level)
    if noise_type == "rician":
        image = np.sqrt(
            (image + sigma * rng.standard_normal(size, dtype=np.float32)) ** 2
            + (sigma * rng.standard_normal(size, dtype=np.float32)) ** 2
        )
    else:
        image += sigma * rng.standard_normal(size, dtype=np.float32)
    image = np.where(brain, np.maximum(image, np.float32(1e-3)), np.float32(0.0)).astype(np.float32)
    params = {
        "tissue_values": values.tolist(),
        "deep_gm_value": float(deep_value),
        "noise": noise_level,
        "noise_type": noise_type,
        "bias": bias_level,
        "texture": texture,
    }
    return image, params


def _check_contrasts(contrast: str | Sequence[str], name: str = "contrast") -> tuple[str, ...]:
    names = (contrast,) if isinstance(contrast, str) else tuple(contrast)
    bad = [c for c in names if c not in ANATOMY_CONTRASTS]
    if bad or len(set(names)) != len(names):
        raise ValueError(f"{name} must be distinct names from {tuple(ANATOMY_CONTRASTS)}, got {contrast!r}.")
    return names


def anatomy_phantom(
    spatial_size: Sequence[int] = (96, 96, 96),
    contrast: str | Sequence[str] = "t1",
    seed: int | Sequence[int] | np.random.Generator = 0,
    family: int = 0,
    noise: float | Sequence[float] = (0.01, 0.04),
    bias: float | Sequence[float] = (0.05, 0.25),
    noise_type: str = "rician",
) -> dict[str, Any]:
    """Generate one skull-stripped brain anatomy phantom with its exact truth (see the module docstring).

    The anatomy depends only on ``(seed, family)``; each contrast's image on ``(seed, family, contrast)``, so
    asking for more contrasts does not change the others. Shape families are disjoint random streams of the same
    shape distribution: train a prior on label maps of ``family=0`` and a segmenter on images of ``family=1``.
    A 96^3 phantom takes about 0.4 s on one CPU core, a 128^2 slice about 10 ms.

    Args:
        spatial_size: ``(X, Y)`` for an axial slice or ``(X, Y, Z)`` for a volume (1 mm voxels), each >= 16.
        contrast: ``"t1"``, ``"t2"``, ``"flair"`` or a sequence of them (the channels of ``"image"``); an empty
            sequence for the label map and fractions only (what a prior trains on).
        seed: integer seed (or a sequence of integers, or a ``numpy.random.Generator``); same seed, same phantom.
        family: shape family (integer >= 0).
        noise: noise standard deviation relative to white matter on T1, or a ``(low, high)`` range drawn per
            case and contrast.
        bias: strength of the smooth multiplicative bias field (log-amplitude standard deviation), or a range.
        noise_type: ``"rician"`` (magnitude images) or ``"gaussian"``.

    Returns:
        a dict with

        - ``"image"``: float32 ``(C, *spatial_size)``, one channel per contrast, exactly 0 where ``"label"`` is 0
          and > 0 elsewhere;
        - ``"label"``: uint8 ``spatial_size``, 0 background, 1 CSF, 2 grey matter, 3 white matter
          (:data:`ANATOMY_LABELS`), the arg-max of the fractions;
        - ``"fractions"``: float32 ``(4, *spatial_size)``, the partial-volume truth of background, CSF, GM and WM
          (:data:`ANATOMY_TISSUES`), summing to 1 in every voxel;
        - ``"affine"``: float64 ``(4, 4)``, 1 mm RAS with the centre at the origin (``(3, 3)`` in 2D);
        - ``"contrasts"``: the names of the channels of ``"image"``;
        - ``"params"``: every random parameter of the anatomy (``"shape"``) and of each contrast, the seed and
          the family (the bias field and texture are drawn from the contrast's stream and reproducible from it).

    Raises:
        ValueError: for a size below 16 or not 2D/3D, an unknown contrast or noise type, or a bad seed or family.

    Example::

        p = anatomy_phantom((96, 96, 96), contrast=("t1", "t2"), seed=[0, 3], family=1)
        p["image"].shape, p["label"].shape, p["fractions"].shape  # (2, 96, 96, 96) (96, 96, 96) (4, 96, 96, 96)
    """
    ndim = len(spatial_size) if isinstance(spatial_size, Sequence) else 3
    if ndim not in (2, 3):
        raise ValueError(f"spatial_size must have 2 (axial slice) or 3 (volume) axes, got {spatial_size!r}.")
    size = check_size(spatial_size, ndim)
    contrasts = _check_contrasts(contrast)
    family = check_positive_int(family, "family", minimum=0)
    if noise_type not in ("rician", "gaussian"):
        raise ValueError(f"noise_type must be 'rician' or 'gaussian', got {noise_type!r}.")
    entropy = _seed_entropy(seed)
    rng = _stream(entropy, family, 0)

    # cranial cavity as large as the field of view allows (the slice's third axis as if the volume were cubic)
    extent = np.array(size + (size[0] / 0.82 * 0.72,) * (3 - ndim), dtype=np.float64)
    head_scale = float(rng.uniform(0.86, 1.0))
    jitter = rng.uniform(0.94, 1.06, size=3)
    s = 0.92 * float(np.min((extent - 2) / (2 * _ASPECT * jitter))) * head_scale
    axes = _ASPECT * jitter * s
    shape = _draw_shape(rng, s)
    (csf_lo, csf_hi), (gm_lo, gm_hi), wm_hi = _TARGETS[ndim]
    shape["csf_target"] = float(rng.uniform(csf_lo, csf_hi))
    shape["gm_target"] = float(rng.uniform(min(max(gm_lo, 1.0 - wm_hi - shape["csf_target"]), gm_hi), gm_hi))
    shape.update({"head_scale": head_scale, "aspect_jitter": jitter.tolist(), "semi_axes_mm": axes.tolist()})
    frac, deep_gm = _fractions(size, shape, s, axes, rng)
    label = np.argmax(frac, axis=0).astype(np.uint8)
    brain = label > 0
    nuclei_mix = float(rng.uniform(0.25, 0.45))
    shape["deep_gm_mix"] = nuclei_mix

    images, contrast_params = [], {}
    for name in contrasts:
        crng = _stream(entropy, family, 1 + list(ANATOMY_CONTRASTS).index(name))
        image, contrast_params[name] = _render(frac, deep_gm, brain, name, crng, noise, bias, noise_type, nuclei_mix)
        images.append(image)
    affine = np.eye(ndim + 1)
    affine[:ndim, ndim] = -(np.array(size) - 1) / 2
    return {
        "image": np.stack(images) if images else np.zeros((0, *size), dtype=np.float32),
        "label": label,
        "fractions": frac,
        "affine": affine,
        "contrasts": contrasts,
        "params": {"seed": entropy, "family": family, "shape": shape, "contrasts": contrast_params},
    }


def write_anatomy_phantoms(
    out_dir: str | os.PathLike,
    num_cases: int,
    spatial_size: Sequence[int] = (96, 96, 96),
    contrasts: Sequence[str] = ("t1",),
    seed: int = 0,
    split: Sequence[float] = (0.6, 0.2, 0.2),
    family: int = 0,
    **phantom_kwargs: Any,
) -> str:
    """Write ``num_cases`` anatomy phantoms as NIfTI plus a MONAI decathlon-style ``datalist.json``.

    Files per case ``ANAT-F<family>-<iiiii>`` (in its own folder): ``<case>-t1.nii.gz`` / ``-t2`` / ``-flair``
    for the requested contrasts (float32, skull-stripped: exactly 0 outside the brain) and ``<case>-seg.nii.gz``
    (uint8, 0 background, 1 CSF, 2 GM, 3 WM), all at 1 mm with the same RAS affine (a 2D phantom is written as a
    one-slice volume). Case ``i`` depends only on ``(seed, i, family)``; files are written atomically.

    The datalist has ``"training"``, ``"validation"`` and ``"test"`` lists of
    ``{"image": [<contrast files>], "label": seg, "case_id": ...}`` with paths relative to its folder, as
    ``monai.data.load_decathlon_datalist(path, data_list_key="training")`` expects.

    Args:
        out_dir: output folder, created if missing.
        num_cases: number of cases (>= 1).
        spatial_size: ``(X, Y)`` or ``(X, Y, Z)``, each >= 16.
        contrasts: the contrasts to write, from ``"t1"``, ``"t2"``, ``"flair"``; empty for label maps only (the
            entries' ``"image"`` lists are then empty).
        seed: integer seed (>= 0).
        split: fractions of (training, validation, test) cases; at least one case goes to training.
        family: shape family (>= 0): label maps of one family for the prior, images of another for the segmenter.
        phantom_kwargs: further arguments of :func:`anatomy_phantom` (``noise``, ``bias``, ``noise_type``).

    Returns:
        the path of ``datalist.json``.

    Raises:
        ValueError: for a bad size, count, contrast or family, or an output folder that cannot be written.

    Example::

        datalist = write_anatomy_phantoms("/tmp/anatomy", 4, (96, 96, 96), contrasts=("t1", "t2"), family=1)
        train = monai.data.load_decathlon_datalist(datalist, data_list_key="training")
    """
    num_cases = check_positive_int(num_cases, "num_cases")
    ndim = len(spatial_size) if isinstance(spatial_size, Sequence) else 3
    size = check_size(spatial_size, ndim if ndim in (2, 3) else 3)
    contrasts = _check_contrasts(contrasts, "contrasts")
    seed = check_positive_int(seed, "seed", minimum=0)
    family = check_positive_int(family, "family", minimum=0)
    n_train, n_val, _ = split_cases(num_cases, split)
    root = prepare_out_dir(out_dir)
    entries = []
    for i in range(num_cases):
        case = f"ANAT-F{family}-{i:05d}"
        logger.info("writing anatomy phantom %d/%d %s %s", i + 1, num_cases, case, size)
        phantom = anatomy_phantom(size, contrasts, seed=[seed, i], family=family, **phantom_kwargs)
        affine = np.eye(4)
        affine[:3, 3] = np.concatenate([phantom["affine"][: len(size), len(size)], np.zeros(3 - len(size))])
        os.makedirs(os.path.join(root, case), exist_ok=True)
        rel = {name: f"{case}/{case}-{name}.nii.gz" for name in (*contrasts, "seg")}
        for c, name in enumerate(contrasts):
            save_nifti(phantom["image"][c], affine, os.path.join(root, rel[name]))
        save_nifti(phantom["label"], affine, os.path.join(root, rel["seg"]))
        entries.append({"image": [rel[c] for c in contrasts], "label": rel["seg"], "case_id": case})
    datalist = {
        "name": "ANATOMY-PHANTOM",
        "description": f"synthetic skull-stripped brain anatomy phantoms, family {family}, seed {seed}",
        "reference": "monai_probseg.data.synthetic.write_anatomy_phantoms",
        "tensorImageSize": f"{len(size)}D",
        "spatial_size": list(size),
        "family": family,
        "modality": {str(c): name for c, name in enumerate(contrasts)},
        "labels": dict(ANATOMY_LABELS),
        "numTraining": n_train,
        "numValidation": n_val,
        "numTest": num_cases - n_train - n_val,
        "training": entries[:n_train],
        "validation": entries[n_train : n_train + n_val],
        "test": entries[n_train + n_val :],
    }
    return save_json(datalist, os.path.join(root, "datalist.json"))
