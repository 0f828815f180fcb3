# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""Are a bundle's outputs plausible on cases with a known answer? The acceptance check of the shipped 3D models.

:func:`score_run` reads an inference run's ``inference_summary.json`` and, for every case with a consensus label,
scores the written NIfTI maps against it: the plausibility figures of
:func:`~monai_probseg.metrics.plausibility_scores` measured from the consensus whole tumour (entropy far from it
and at its boundary, each sample's whole-tumour volume over the consensus volume) and the whole-tumour Dice of the
mean segmentation. :data:`ACCEPTANCE` holds the limits every shipped 3D bundle must meet on unseen phantoms;
``tests/bundles/test_plausibility.py`` checks them on small phantoms and ``benchmarks/bench_plausibility3d.py`` on
64^3 ones.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import nibabel as nib
import numpy as np

from monai_probseg.metrics import BRATS_REGIONS
from monai_probseg.metrics.plausibility import plausibility_scores

__all__ = ["ACCEPTANCE", "acceptance_failures", "score_run"]

#: limits on unseen phantoms: (figure, "max" or "min", value)
ACCEPTANCE = (
    ("far_entropy_median", "max", 0.05),
    ("boundary_far_ratio", "min", 5.0),
    ("sample_volume_ratio_min", "min", 0.5),
    ("sample_volume_ratio_max", "max", 2.0),
    ("wt_dice", "min", 0.85),
)


def _load(path: str) -> np.ndarray:
    return np.asanyarray(nib.load(path).dataobj)


def score_run(output_dir: str | os.PathLike, wt_labels: Sequence[int] = BRATS_REGIONS["WT"]) -> list[dict[str, Any]]:
    """Score every case of an inference run that has a consensus label (see the module docstring).

    Args:
        output_dir: the run's ``--output_dir`` (holding ``inference_summary.json``).
        wt_labels: the labels of the whole tumour (``BRATS_REGIONS["WT"]``).

    Returns:
        one dict per scored case: ``case_id``, the figures of
        :func:`~monai_probseg.metrics.plausibility_scores` (measured from the consensus whole tumour, in mm)
        and ``wt_dice``.

    Raises:
        FileNotFoundError: when the run has no ``inference_summary.json``.
    """
    path = os.path.join(os.fspath(output_dir), "inference_summary.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"'{path}' does not exist: run the bundle's inference.json into {output_dir} first.")
    with open(path) as f:
        summary = json.load(f)
    rows = []
    for case in summary["cases"]:
        label_path = case["inputs"].get("label")
        if not label_path:
            continue
        reference = nib.load(case["inputs"]["image"][0])
        spatial = reference.shape[:3]
        consensus = np.isin(_load(label_path).reshape(spatial), wt_labels)
        seg = np.isin(_load(case["outputs"]["seg"]).reshape(spatial), wt_labels)
        samples = np.moveaxis(_load(case["outputs"]["samples"]).reshape(*spatial, -1), -1, 0)
        entropy = _load(case["outputs"]["entropy"]).reshape(spatial).astype(np.float32)
        brain = np.zeros(spatial, dtype=bool)
        for image in case["inputs"]["image"]:
            brain |= _load(image).reshape(spatial) != 0
        spacing = tuple(float(z) for z in reference.header.get_zooms()[:3])
        scores = plausibility_scores(
            entropy, consensus, samples=np.isin(samples, wt_labels), brain=brain, spacing=spacing
        )
        denominator = seg.sum() + consensus.sum()
        scores["wt_dice"] = float(2 * (seg & consensus).sum() / denominator) if denominator else 1.0
        rows.append({"case_id": case["case_id"], **scores})
    return rows


def acceptance_failures(row: Mapping[str, float], limits: Sequence[tuple[str, str, float]] = ACCEPTANCE) -> list[str]:
    """The acceptance limits a scored case (a row of :func:`score_run`) misses, as messages (empty: it passes)."""
    out = []
    for key, kind, value in limits:
        got = row.get(key, float("nan"))
        ok = got <= value if kind == "max" else got >= value
        if not ok:  # NaN fails as well
            out.append(
                f"{row.get('case_id', '?')}: {key} {got:.3f}, expected {'<=' if kind == 'max' else '>='} {value}"
            )
    return out
