# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""2D ambiguous lesions whose true distribution of segmentations is known in closed form.

Each image shows one lesion with a soft halo, sometimes a faint satellite lesion, on a textured noisy
background. Like the LIDC-IDRI lung-nodule crops (Armato et al., Med. Phys. 2011) used to benchmark
probabilistic segmentation (Kohl et al., NeurIPS 2018), annotators disagree in structured ways:

- *boundary*: a tight mask (the bright part) or a generous one (bright part plus halo);
- *satellite*: whether the faint satellite lesion is a lesion;
- *presence*: for low-contrast lesions, some annotators see no lesion at all (empty mask).

These choices are independent and their probabilities are fixed functions of what the image shows, so a
model can learn them and metrics (GED, HM-IoU) have an exact oracle:

- ``p_empty = 0.9 * clip((0.45 - contrast) / 0.35, 0, 1)``: zero for contrast >= 0.45, up to 0.9 at contrast 0.1;
- ``p_generous = halo``: the halo's brightness relative to the lesion (0.2 .. 0.8);
- ``p_satellite = satellite``: the satellite's brightness relative to the lesion (0.15 .. 0.85).

The true distribution ("modes") has at most 5 masks: empty (if ``p_empty > 0``), and tight/generous x
with/without satellite (the satellite factor only when the image has one).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from monai_probseg.data.synthetic._common import (
    check_size,
    prepare_out_dir,
    save_json,
    save_nifti,
    save_npz,
    smooth_field,
    split_cases,
)
from monai_probseg.utils import check_positive_int, make_generator

__all__ = [
    "LesionModes",
    "LesionModeNames",
    "ambiguous_lesions_2d",
    "lesion_mode_mask",
    "lesion_mode_probabilities",
    "lesion_modes",
    "lesion_regions",
    "lesion_signal",
    "sample_oracle",
    "match_modes",
    "write_ambiguous_lesions_2d",
    "read_lesion_modes",
]

logger = logging.getLogger(__name__)

CONTRAST_RANGE = (0.1, 1.0)


class LesionModes(list):
    """The ``"modes"`` of a case, a list of ``(mask, probability)``; a batch keeps one such list per case.

    PyTorch's (and MONAI's) default collate would stack the masks of different cases, whose numbers of modes
    differ, and fail. The two case entries whose length varies from case to case, ``"modes"`` and
    ``"mode_names"``, are these list subclasses, registered with PyTorch's default collate so that a batch holds
    a plain list with one value per case: the cases of :func:`ambiguous_lesions_2d` go straight into MONAI's
    ``Dataset``/``CacheDataset`` and ``DataLoader`` (``batch["modes"][b]`` is the modes of item ``b``).
    """


class LesionModeNames(list):
    """The ``"mode_names"`` of a case (a list of str); collated as one list per case (see :class:`LesionModes`)."""


def _collate_per_case(batch: Sequence[Any], *, collate_fn_map: dict | None = None) -> list[Any]:
    return list(batch)


def _register_collate() -> None:
    """Make PyTorch's default collate (used by MONAI's ``list_data_collate``) keep the modes per case."""
    from torch.utils.data._utils.collate import default_collate_fn_map

    for kind in (LesionModes, LesionModeNames):
        default_collate_fn_map.setdefault(kind, _collate_per_case)


_register_collate()
HALO_RANGE = (0.2, 0.8)
LESION_MODE_NAMES = ("empty", "tight", "generous", "tight+satellite", "generous+satellite")
SATELLITE_RANGE = (0.15, 0.85)


def lesion_mode_probabilities(contrast: float, halo: float, satellite: float | None) -> dict[str, float]:
    """The probabilities of the three independent annotator choices, as functions of what the image shows.

    Args:
        contrast: lesion intensity above the background (the noise has standard deviation ``noise``).
        halo: halo brightness relative to the lesion, in [0, 1].
        satellite: satellite brightness relative to the lesion, in [0, 1], or ``None`` when there is none.

    Returns:
        ``{"empty": p_empty, "generous": p_generous, "satellite": p_satellite}`` (``p_satellite`` is 0 without
        a satellite); ``p_generous`` and ``p_satellite`` are conditional on a lesion being drawn.

    Example::

        lesion_mode_probabilities(0.2, 0.5, None)  # {'empty': 0.643, 'generous': 0.5, 'satellite': 0.0}
    """
    p_empty = 0.9 * float(np.clip((0.45 - contrast) / 0.35, 0.0, 1.0))
    p_generous = float(np.clip(halo, 0.0, 1.0))
    p_satellite = 0.0 if satellite is None else float(np.clip(satellite, 0.0, 1.0))
    return {"empty": p_empty, "generous": p_generous, "satellite": p_satellite}


def lesion_regions(params: dict[str, Any], size: Sequence[int]) -> dict[str, np.ndarray]:
    """The boolean regions of a lesion with the geometry ``params`` (a case's ``"params"``) on a ``size`` grid.

    The tight region is a lobulated ellipse, ``q(y, x) <= 1`` with ``q = hypot(u / a, v / b) / lobe``, ``(u, v)``
    the coordinates rotated by ``angle`` about ``center``, ``(a, b)`` the ``axes`` and ``lobe = 1 +
    lobe_amplitude * cos(lobes * atan2(v / b, u / a) + lobe_phase)``; the generous region is the same with both
    axes grown by ``halo_width``; the core is ``q <= core_fraction``; the satellite is the disc of
    ``satellite_radius`` about ``satellite_center`` outside the generous region. Pixel centres decide
    membership. :func:`ambiguous_lesions_2d` draws its masks and its image from these regions, so a fit of the
    parameters to an image gives masks exactly as the generator would draw them.

    Returns:
        ``{"tight", "generous", "core", "satellite"}``: ``(H, W)`` boolean arrays.
    """
    h, w = (int(n) for n in size)
    yy, xx = np.ogrid[:h, :w]
    yy = yy.astype(np.float32)
    xx = xx.astype(np.float32)
    cy, cx = params["center"]
    a, b = params["axes"]
    width, theta = params["halo_width"], params["angle"]
    u = np.cos(theta) * (yy - cy) + np.sin(theta) * (xx - cx)
    v = -np.sin(theta) * (yy - cy) + np.cos(theta) * (xx - cx)
    lobe = 1.0 + params["lobe_amplitude"] * np.cos(params["lobes"] * np.arctan2(v / b, u / a) + params["lobe_phase"])
    q_tight = np.sqrt((u / a) ** 2 + (v / b) ** 2) / lobe
    q_generous = np.sqrt((u / (a + width)) ** 2 + (v / (b + width)) ** 2) / lobe
    generous = q_generous <= 1.0
    sy, sx = params["satellite_center"]
    r_sat = params["satellite_radius"]
    return {
        "tight": q_tight <= 1.0,
        "generous": generous,
        "core": q_tight <= params["core_fraction"],
        "satellite": ((yy - sy) ** 2 + (xx - sx) ** 2 <= r_sat**2) & ~generous,
    }


def lesion_signal(params: dict[str, Any], regions: dict[str, np.ndarray], num_classes: int = 2) -> np.ndarray:
    """The lesion's part of the image: ``contrast * gaussian_filter(profile, blur)``, float32 ``(H, W)``.

    ``profile`` is ``halo`` on the generous region, 1 on the tight one (0.45 on the core when ``num_classes``
    is 3), ``satellite`` on the satellite when ``has_satellite``, 0 elsewhere; ``regions`` is
    :func:`lesion_regions`'s. The generator's image adds a smooth texture and white noise to it.
    """
    profile = np.zeros(regions["tight"].shape, np.float32)
    profile[regions["generous"]] = params["halo"]
    profile[regions["tight"]] = 1.0
    if num_classes == 3:  # a darker centre (core, label 1) inside a bright rim (label 2)
        profile[regions["core"]] = 0.45
    if params["has_satellite"]:
        profile[regions["satellite"]] = params["satellite"]
    return params["contrast"] * gaussian_filter(profile, params["blur"], mode="nearest")


def lesion_modes(
    params: dict[str, Any], regions: dict[str, np.ndarray], num_classes: int = 2
) -> tuple[list[tuple[np.ndarray, float]], list[str]]:
    """The true distribution of a lesion: its distinct masks, their probabilities and names.

    Up to five masks: empty, and tight / generous (``regions`` of :func:`lesion_regions`) with or without the
    satellite when ``params["has_satellite"]``; their probabilities are the products of the independent
    choices of :func:`lesion_mode_probabilities` (``contrast``, ``halo``, ``satellite`` of ``params``).
    Zero-probability masks are dropped and equal ones merged (names joined by ``=``).

    Returns:
        ``(modes, names)``: ``modes`` a list of ``(uint8 (H, W) mask, probability)`` summing to 1.
    """
    satellite = params["satellite"] if params["has_satellite"] else None
    probs = lesion_mode_probabilities(params["contrast"], params["halo"], satellite)
    masks, mode_probs, names = [lesion_mode_mask("empty", regions, num_classes)], [probs["empty"]], ["empty"]
    for boundary_name, p_b in (("tight", 1 - probs["generous"]), ("generous", probs["generous"])):
        for sat_name, p_s in (("", 1 - probs["satellite"]), ("+satellite", probs["satellite"])):
            if sat_name and satellite is None:
                continue
            masks.append(lesion_mode_mask(boundary_name + sat_name, regions, num_classes))
            mode_probs.append((1 - probs["empty"]) * p_b * p_s)
            names.append(boundary_name + sat_name)
    return _merge_modes(masks, mode_probs, names)


def lesion_mode_mask(name: str, regions: dict[str, np.ndarray], num_classes: int = 2) -> np.ndarray:
    """The uint8 ``(H, W)`` mask of one mode named ``"empty"``, ``"tight"``, ``"generous"``, ``"tight+satellite"``
    or ``"generous+satellite"``, drawn from :func:`lesion_regions`'s ``regions`` (lesion label 1; with
    ``num_classes`` 3 the core is 1 and the rest of the lesion 2)."""
    if name not in LESION_MODE_NAMES:
        raise ValueError(f"unknown lesion mode {name!r}, expected one of {LESION_MODE_NAMES}.")
    boundary, _, extra = name.partition("+")
    mask = np.zeros(regions["tight"].shape, np.uint8)
    if boundary == "empty":
        return mask
    fg = 2 if num_classes == 3 else 1
    mask[regions[boundary]] = fg
    if num_classes == 3:
        mask[regions["core"]] = 1
    if extra:
        mask[regions["satellite"]] = fg
    return mask


def _merge_modes(
    masks: list[np.ndarray], probs: list[float], names: list[str]
) -> tuple[list[tuple[np.ndarray, float]], list[str]]:
    """Drop zero-probability masks, merge identical masks (adding probabilities, joining names), renormalise."""
    merged: list[list[Any]] = []
    for mask, p, name in zip(masks, probs, names):
        if p <= 0:
            continue
        for entry in merged:
            if np.array_equal(entry[0], mask):
                entry[1] += p
                entry[2] += "=" + name
                break
        else:
            merged.append([mask, p, name])
    total = sum(e[1] for e in merged)
    return [(e[0], float(e[1] / total)) for e in merged], [e[2] for e in merged]


def _one_case(
    index: int,
    size: tuple[int, int],
    num_annotators: int,
    num_classes: int,
    noise: float,
    satellite_prob: float,
    rng: np.random.Generator,
) -> dict[str, Any]:
    h, w = size
    s = float(min(h, w))

    # visible parameters
    contrast = float(rng.uniform(*CONTRAST_RANGE))
    halo = float(rng.uniform(*HALO_RANGE))
    blur = max(0.5, float(rng.uniform(0.6, 1.6)) * s / 128)
    has_satellite = bool(rng.uniform() < satellite_prob)
    satellite = float(rng.uniform(*SATELLITE_RANGE))  # drawn always, so the stream does not depend on has_satellite

    # geometry: a lobulated ellipse (tight), the same shape grown by the halo width (generous)
    cy, cx = rng.uniform(0.3, 0.7) * (h - 1), rng.uniform(0.3, 0.7) * (w - 1)
    a, b = (max(2.5, float(r) * s) for r in rng.uniform(0.07, 0.13, size=2))
    width = max(1.5, float(rng.uniform(0.035, 0.06)) * s)
    theta = float(rng.uniform(0, np.pi))
    lobes, lobe_amp, lobe_phase = int(rng.integers(2, 6)), float(rng.uniform(0, 0.15)), float(rng.uniform(0, 2 * np.pi))
    core_frac = float(rng.uniform(0.4, 0.6))

    # the satellite: a small disc beside the lesion, roughly towards the image centre
    r_sat = max(1.5, float(rng.uniform(0.03, 0.045)) * s)
    dist = (max(a, b) + width) * (1 + lobe_amp) + r_sat + max(1.0, 0.03 * s)
    angle = np.arctan2((h - 1) / 2 - cy, (w - 1) / 2 - cx) + rng.uniform(-np.pi / 2, np.pi / 2)
    sy = float(np.clip(cy + dist * np.sin(angle), r_sat, h - 1 - r_sat))
    sx = float(np.clip(cx + dist * np.cos(angle), r_sat, w - 1 - r_sat))
    params = {
        "contrast": contrast,
        "halo": halo,
        "satellite": satellite,
        "has_satellite": has_satellite,
        "blur": blur,
        "center": (float(cy), float(cx)),
        "axes": (float(a), float(b)),
        "halo_width": float(width),
        "angle": theta,
        "lobes": lobes,
        "lobe_amplitude": lobe_amp,
        "lobe_phase": lobe_phase,
        "core_fraction": core_frac,
        "satellite_center": (sy, sx),
        "satellite_radius": float(r_sat),
    }
    regions = lesion_regions(params, size)
    has_satellite = has_satellite and bool(regions["satellite"].any())
    params["has_satellite"] = has_satellite

    # the image: lesion + halo + satellite, blurred, on a smooth texture with white noise
    image = lesion_signal(params, regions, num_classes)
    image += 0.05 * smooth_field((h, w), 6, rng)
    image += noise * rng.standard_normal((h, w), dtype=np.float32)

    # the true distribution
    probs = lesion_mode_probabilities(contrast, halo, satellite if has_satellite else None)
    modes, names = lesion_modes(params, regions, num_classes)
    mode_p = np.array([p for _, p in modes])
    draws = rng.choice(len(modes), size=num_annotators, p=mode_p / mode_p.sum())
    label = np.stack([modes[i][0] for i in draws]).astype(np.uint8)
    return {
        "image": image[None].astype(np.float32),
        "label": label,
        "modes": LesionModes(modes),
        "mode_names": LesionModeNames(names),
        "annotator_modes": draws.astype(np.int64),
        "case_id": f"lesion-{index:05d}",
        "params": {
            **params,
            "satellite": satellite if has_satellite else float("nan"),
            "noise": float(noise),
            **{f"p_{k}": v for k, v in probs.items()},
        },
    }


def ambiguous_lesions_2d(
    num_cases: int,
    spatial_size: Sequence[int] = (128, 128),
    num_annotators: int = 4,
    seed: int = 0,
    num_classes: int = 2,
    noise: float = 0.1,
    satellite_prob: float = 0.5,
) -> list[dict[str, Any]]:
    """Generate 2D images with ambiguous lesions, K annotator masks each, and the exact mask distribution.

    See the module docstring for how the image determines the mode probabilities. Case ``i`` depends only on
    ``(seed, i)`` and the other arguments, so a longer list starts with the cases of a shorter one.

    Args:
        num_cases: number of cases.
        spatial_size: ``(H, W)``, each >= 16.
        num_annotators: K, the number of annotator masks drawn per case from the true distribution.
        seed: integer seed; the same seed gives identical cases.
        num_classes: 2 (background, lesion) or 3 (background, lesion core = 1, rim = 2; the image then shows a
            darker core inside a bright rim, the halo and the satellite are rim).
        noise: standard deviation of the white noise (the lesion contrast is drawn from [0.1, 1.0]).
        satellite_prob: probability that an image contains a faint satellite lesion.

    Returns:
        a list of ``num_cases`` dicts with

        - ``"image"``: float32 ``(1, H, W)``;
        - ``"label"``: uint8 ``(K, H, W)``, annotator masks (label maps with values in ``{0, .., num_classes-1}``);
        - ``"modes"``: list of ``(mask uint8 (H, W), probability)``, probabilities summing to 1;
        - ``"mode_names"``: e.g. ``["empty", "tight", "generous", ...]``;
        - ``"annotator_modes"``: int64 ``(K,)`` index into ``"modes"`` of each annotator mask;
        - ``"case_id"``: ``"lesion-00000"``, ...;
        - ``"params"``: the visible parameters (contrast, halo, satellite brightness -- NaN when the image has no
          satellite, see ``has_satellite`` --, blur, ...) and the choice probabilities ``p_empty``,
          ``p_generous``, ``p_satellite``; numbers, bools and pairs only, so that they collate.

        The cases go straight into MONAI's ``Dataset``/``DataLoader``: ``"image"``, ``"label"`` and
        ``"annotator_modes"`` are stacked into batch tensors, ``"case_id"`` becomes a list of str, and
        ``"modes"`` and ``"mode_names"`` (list subclasses, see :class:`LesionModes`) become lists with one entry
        per case; ``"params"`` becomes a dict of ``(B,)`` tensors.

    Example::

        cases = ambiguous_lesions_2d(8, (64, 64), num_annotators=4, seed=0)
        cases[0]["image"].shape, cases[0]["label"].shape  # (1, 64, 64), (4, 64, 64)
        draws = sample_oracle(cases[0], 100, seed=1)  # (100, 64, 64)

        batch = next(iter(monai.data.DataLoader(monai.data.Dataset(cases), batch_size=4)))
        batch["image"].shape, len(batch["modes"])  # (4, 1, 64, 64), 4
    """
    num_cases = check_positive_int(num_cases, "num_cases")
    size = check_size(spatial_size, 2)
    num_annotators = check_positive_int(num_annotators, "num_annotators")
    seed = check_positive_int(seed, "seed", minimum=0)
    if num_classes not in (2, 3):
        raise ValueError(f"num_classes must be 2 (lesion) or 3 (core, rim), got {num_classes!r}.")
    if not (np.isfinite(noise) and noise >= 0):
        raise ValueError(f"noise must be a finite number >= 0, got {noise!r}.")
    if not 0.0 <= satellite_prob <= 1.0:
        raise ValueError(f"satellite_prob must be in [0, 1], got {satellite_prob!r}.")
    return [
        _one_case(
            i, size, num_annotators, num_classes, float(noise), float(satellite_prob), np.random.default_rng([seed, i])
        )
        for i in range(num_cases)
    ]


def _mode_stack(case: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    modes = case.get("modes") if isinstance(case, dict) else None
    if not modes:
        raise ValueError(
            "case must be a dict with a non-empty 'modes' list of (mask, probability), as made by ambiguous_lesions_2d."
        )
    masks = np.stack([np.asarray(m) for m, _ in modes])
    probs = np.asarray([float(p) for _, p in modes], dtype=np.float64)
    if np.any(probs < 0) or not np.isclose(probs.sum(), 1.0, atol=1e-6):
        raise ValueError(f"case 'modes' probabilities must be >= 0 and sum to 1, got {probs.tolist()}.")
    return masks, probs


def sample_oracle(
    case: dict[str, Any], n: int, seed: int | torch.Generator | None = None, return_indices: bool = False
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Draw ``n`` masks from a case's true distribution (the oracle sampler).

    Args:
        case: a case of :func:`ambiguous_lesions_2d` (anything with ``"modes"``).
        n: number of masks to draw.
        seed: integer seed, ``torch.Generator`` or ``None`` (torch's global random state).
        return_indices: also return the int64 ``(n,)`` mode index of each draw.

    Returns:
        uint8 ``(n, H, W)`` masks (and the mode indices if ``return_indices``).

    Example::

        case = ambiguous_lesions_2d(1, (32, 32))[0]
        masks = sample_oracle(case, 1000, seed=0)
    """
    n = check_positive_int(n, "n")
    masks, probs = _mode_stack(case)
    idx = torch.multinomial(torch.as_tensor(probs), n, replacement=True, generator=make_generator(seed)).numpy()
    out = masks[idx].astype(np.uint8)
    return (out, idx.astype(np.int64)) if return_indices else out


def match_modes(masks: np.ndarray | torch.Tensor, case: dict[str, Any], min_iou: float | None = None) -> np.ndarray:
    """Index of the mode equal to (or, with ``min_iou``, nearest to) each mask; ``-1`` where there is none.

    A model's samples are rarely voxel-for-voxel equal to a mode; with ``min_iou`` each mask is assigned to the
    mode of highest foreground IoU (``label > 0``; two empty masks have IoU 1) when that IoU is at least
    ``min_iou``, which gives the sample frequency of each mode (see
    :func:`~monai_probseg.visualize.plot_mode_frequencies`).

    Args:
        masks: ``(n, H, W)`` (or ``(H, W)``) label maps.
        case: a case of :func:`ambiguous_lesions_2d`.
        min_iou: ``None`` (default): exact equality; a number in ``(0, 1]``: nearest mode by foreground IoU.

    Returns:
        int64 ``(n,)`` indices into ``case["modes"]``.

    Example::

        match_modes(case["label"], case)  # equals case["annotator_modes"]
        match_modes(samples, case, min_iou=0.8)  # the mode each sample resembles, -1 for none
    """
    modes, _ = _mode_stack(case)
    m = masks.detach().cpu().numpy() if isinstance(masks, torch.Tensor) else np.asarray(masks)
    if m.ndim == modes.ndim - 1:
        m = m[None]
    if m.shape[1:] != modes.shape[1:]:
        raise ValueError(f"masks must be (n, {', '.join(map(str, modes.shape[1:]))}), got {tuple(m.shape)}.")
    flat = m.reshape(len(m), -1)
    out = np.full(len(m), -1, dtype=np.int64)
    if min_iou is None:
        for i, mode in enumerate(modes.reshape(len(modes), -1)):
            out[(out < 0) & (flat == mode[None]).all(axis=1)] = i
        return out
    if not 0.0 < float(min_iou) <= 1.0:
        raise ValueError(f"min_iou must be in (0, 1] or None, got {min_iou!r}.")
    fg = (flat > 0).astype(np.float64)
    mode_fg = (modes.reshape(len(modes), -1) > 0).astype(np.float64)
    inter = fg @ mode_fg.T
    union = fg.sum(1, keepdims=True) + mode_fg.sum(1)[None] - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1.0), 1.0)  # (n, M)
    best = iou.argmax(1)
    keep = iou[np.arange(len(m)), best] >= float(min_iou)
    out[keep] = best[keep]
    return out


def write_ambiguous_lesions_2d(
    out_dir: str | os.PathLike,
    num_cases: int,
    spatial_size: Sequence[int] = (128, 128),
    num_annotators: int = 4,
    seed: int = 0,
    num_classes: int = 2,
    split: Sequence[float] = (0.6, 0.2, 0.2),
    **kwargs: Any,
) -> str:
    """Write :func:`ambiguous_lesions_2d` cases as 2D NIfTI files plus the true distributions and a datalist.

    Files per case ``lesion-<iiiii>`` (in its own folder): ``<case>-image.nii.gz`` (float32 ``(H, W)``),
    ``<case>-annot<k>.nii.gz`` for k = 1..K (uint8 ``(H, W)``), and ``<case>-modes.npz`` with ``masks``
    (uint8 ``(M, H, W)``), ``probabilities`` (float64 ``(M,)``), ``names`` and ``params`` (a JSON string);
    :func:`read_lesion_modes` reads it back. ``datalist.json`` (MONAI decathlon style, paths relative to its
    folder) has ``"training"``, ``"validation"``, ``"test"`` entries
    ``{"image": ..., "label": [K annotator files], "modes": ..., "case_id": ...}``.

    Args:
        out_dir: output folder, created if missing.
        num_cases: number of cases (>= 1).
        spatial_size: ``(H, W)``, each >= 16.
        num_annotators: K annotator masks per case.
        seed: integer seed (>= 0).
        num_classes: 2 or 3, see :func:`ambiguous_lesions_2d`.
        split: fractions of (training, validation, test) cases; at least one case goes to training.
        kwargs: more arguments of :func:`ambiguous_lesions_2d` (``noise``, ``satellite_prob``).

    Returns:
        the path of ``datalist.json``.

    Example::

        datalist = write_ambiguous_lesions_2d("/tmp/lesions", 8, (64, 64))
    """
    cases = ambiguous_lesions_2d(num_cases, spatial_size, num_annotators, seed, num_classes, **kwargs)
    n_train, n_val, _ = split_cases(len(cases), split)
    root = prepare_out_dir(out_dir)
    affine = np.eye(4)
    entries = []
    for i, case in enumerate(cases):
        cid = case["case_id"]
        logger.info("writing 2D lesion case %d/%d %s", i + 1, len(cases), cid)
        os.makedirs(os.path.join(root, cid), exist_ok=True)
        image = f"{cid}/{cid}-image.nii.gz"
        save_nifti(case["image"][0], affine, os.path.join(root, image))
        annots = []
        for k, mask in enumerate(case["label"]):
            annots.append(f"{cid}/{cid}-annot{k + 1}.nii.gz")
            save_nifti(mask, affine, os.path.join(root, annots[-1]))
        modes = f"{cid}/{cid}-modes.npz"
        save_npz(
            os.path.join(root, modes),
            masks=np.stack([m for m, _ in case["modes"]]),
            probabilities=np.array([p for _, p in case["modes"]], dtype=np.float64),
            names=np.array(case["mode_names"]),
            params=np.array(json.dumps(case["params"])),
        )
        entries.append({"image": image, "label": annots, "modes": modes, "case_id": cid})
    labels = {"0": "background", "1": "lesion"} if num_classes == 2 else {"0": "background", "1": "core", "2": "rim"}
    datalist = {
        "name": "AmbiguousLesions2D",
        "description": f"synthetic 2D ambiguous lesions with known mask distribution, {num_annotators} annotators, "
        f"seed {seed}",
        "reference": "monai_probseg.data.synthetic.write_ambiguous_lesions_2d",
        "tensorImageSize": "2D",
        "spatial_size": list(cases[0]["image"].shape[1:]),
        "modality": {"0": "synthetic"},
        "labels": labels,
        "numTraining": n_train,
        "numValidation": n_val,
        "numTest": len(cases) - n_train - n_val,
        "training": entries[:n_train],
        "validation": entries[n_train : n_train + n_val],
        "test": entries[n_train + n_val :],
    }
    return save_json(datalist, os.path.join(root, "datalist.json"))


def read_lesion_modes(path: str | os.PathLike) -> dict[str, Any]:
    """Read a ``<case>-modes.npz`` written by :func:`write_ambiguous_lesions_2d`.

    Args:
        path: the ``.npz`` file.

    Returns:
        ``{"modes": [(mask, probability), ...], "mode_names": [...], "params": {...}}``, usable as the ``case``
        of :func:`sample_oracle` and :func:`match_modes`.

    Example::

        case = read_lesion_modes("/tmp/lesions/lesion-00000/lesion-00000-modes.npz")
        masks = sample_oracle(case, 100, seed=0)
    """
    if not os.path.isfile(path):
        raise ValueError(f"modes file {os.fspath(path)!r} does not exist.")
    with np.load(path, allow_pickle=False) as f:
        missing = {"masks", "probabilities"} - set(f.files)
        if missing:
            raise ValueError(f"modes file {os.fspath(path)!r} lacks {sorted(missing)}; expected masks, probabilities.")
        masks, probs = f["masks"], f["probabilities"]
        names = [str(n) for n in f["names"]] if "names" in f.files else [f"mode{i}" for i in range(len(masks))]
        params = json.loads(str(f["params"])) if "params" in f.files else {}
    return {"modes": [(m, float(p)) for m, p in zip(masks, probs)], "mode_names": names, "params": params}
