# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""Report of the main job: where the NIfTI outputs of a bundle's inference are, and what they hold.

``make demo`` runs the ``brats_ssn`` bundle on synthetic phantoms::

    python -m monai.bundle run --config_file bundles/brats_ssn/configs/inference.json --output_dir demo_output

then ``python -m monai_probseg.demo --output_dir demo_output``, which reads ``inference_summary.json``, checks
that every output loads in nibabel and SimpleITK with its input's affine, scores the mean segmentation against
the phantom's consensus label (BraTS region Dice) and prints where everything is.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from typing import Any

import nibabel as nib
import numpy as np
import torch

from monai_probseg.data.synthetic.cli import OneLineErrorParser
from monai_probseg.metrics import BRATS_REGION_NAMES, compute_brats_region_metrics

__all__ = ["summarise_outputs", "format_report", "main"]

logger = logging.getLogger(__name__)


def _same_space_sitk(output: str, reference: str) -> bool:
    import SimpleITK as sitk

    out, ref = sitk.ReadImage(output), sitk.ReadImage(reference)
    dim = ref.GetDimension()
    direction = np.reshape(out.GetDirection(), (out.GetDimension(),) * 2)[:dim, :dim]
    return bool(
        np.allclose(out.GetOrigin()[:dim], ref.GetOrigin(), atol=1e-4)
        and np.allclose(out.GetSpacing()[:dim], ref.GetSpacing(), atol=1e-4)
        and np.allclose(direction, np.reshape(ref.GetDirection(), (dim, dim)), atol=1e-4)
    )


def summarise_outputs(output_dir: str | os.PathLike) -> dict[str, Any]:
    """Read a bundle run's ``inference_summary.json`` and check and score its outputs.

    Args:
        output_dir: the ``--output_dir`` of the inference run.

    Returns:
        ``{"output_dir", "cases": [{"case_id", "shape", "seconds", "mean_entropy", "volumes", "files": {key: (path,
        shape)}, "affine_ok", "sitk_ok", "dice": {region: value} or None}], "failed"}``.

    Raises:
        FileNotFoundError: when ``output_dir`` has no ``inference_summary.json``.

    Example::

        report = summarise_outputs("demo_output")
        print(format_report(report))
    """
    root = os.path.abspath(os.fspath(output_dir))
    path = os.path.join(root, "inference_summary.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"'{path}' does not exist: run the bundle first, e.g. python -m monai.bundle run --config_file "
            f"bundles/brats_ssn/configs/inference.json --output_dir {output_dir}"
        )
    with open(path) as f:
        summary = json.load(f)
    cases = []
    for case in summary["cases"]:
        reference = case["inputs"]["image"][0]
        ref = nib.load(reference)
        files, affine_ok, sitk_ok = {}, True, True
        for key, out_path in case["outputs"].items():
            if not out_path.endswith((".nii", ".nii.gz")):  # the <case>_quality.json
                continue
            img = nib.load(out_path)
            files[key] = (out_path, tuple(int(s) for s in img.shape))
            affine_ok &= bool(np.allclose(img.affine, ref.affine, atol=1e-4))
            sitk_ok &= _same_space_sitk(out_path, reference)
        dice = None
        label = case["inputs"].get("label")
        if label and "seg" in case["outputs"] and len(case["shape"]) == 3:
            seg = torch.as_tensor(np.asarray(nib.load(case["outputs"]["seg"]).dataobj).astype(np.int64))
            ref_label = torch.as_tensor(np.rint(np.asarray(nib.load(label).dataobj)).astype(np.int64))
            scores = compute_brats_region_metrics(seg[None, None], ref_label[None, None], include_hd=False)
            dice = {name: float(scores["dice"][0, i]) for i, name in enumerate(BRATS_REGION_NAMES)}
        cases.append({**case, "files": files, "affine_ok": affine_ok, "sitk_ok": sitk_ok, "dice": dice})
    return {"output_dir": root, "cases": cases, "failed": summary.get("failed", {})}


def format_report(report: dict[str, Any]) -> str:
    """A short human-readable report of :func:`summarise_outputs`."""
    lines = [f"NIfTI outputs of {len(report['cases'])} case(s) in {report['output_dir']}:"]
    for case in report["cases"]:
        vols = ", ".join(f"{k} {v:.1f} {case.get('volume_unit', '')}" for k, v in case["volumes"].items())
        lines.append(
            f"  {case['case_id']} ({'x'.join(map(str, case['shape']))}, {case['seconds']:.1f} s): "
            f"mean entropy {case['mean_entropy']:.4f}; {vols}"
        )
        if case["dice"] is not None:
            lines.append(
                "    Dice vs the phantom's consensus: " + ", ".join(f"{k} {v:.3f}" for k, v in case["dice"].items())
            )
        plaus = case.get("plausibility") or {}
        if plaus:
            text = (
                f"    plausibility: median entropy > 8 mm from the tumour {plaus['far_entropy_median']:.3f} nats, "
                f"boundary/far entropy {plaus['boundary_far_ratio']:.1f}x, "
                f"brain with entropy > 0.5: {100 * plaus['high_entropy_fraction']:.1f}%"
            )
            if "sample_volume_ratio_min" in plaus:
                low, high = plaus["sample_volume_ratio_min"], plaus["sample_volume_ratio_max"]
                text += f", sample/mean tumour volume {low:.2f}-{high:.2f}"
            lines.append(text)
        quality = case.get("quality")
        if quality:
            dice = ", ".join(f"{k} {v:.3f}" for k, v in quality["predicted_dice"].items())
            flag = (
                f"FLAGGED for review (below {quality['failure_threshold']:.2f})"
                if quality["failure"]
                else "not flagged"
            )
            lines.append(
                f"    predicted Dice ({quality['quality_model']}): {dice}, mean {quality['predicted_dice_mean']:.3f}: "
                f"{flag}"
            )
        for warning in case.get("warnings") or []:
            lines.append(f"    WARNING: {warning}")
        for key, (path, shape) in case["files"].items():
            lines.append(f"    {key:<12} {'x'.join(map(str, shape)):<16} {path}")
        ok = case["affine_ok"] and case["sitk_ok"]
        lines.append(f"    same space as the input (nibabel affine, SimpleITK origin/spacing/direction): {ok}")
    for case_id, message in report["failed"].items():
        lines.append(f"  FAILED {case_id}: {message}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m monai_probseg.demo --output_dir DIR``; exit status 1 if an output is wrong.

    Args:
        argv: the arguments (default ``sys.argv[1:]``).

    Example::

        main(["--output_dir", "demo_output"])
    """
    parser = OneLineErrorParser(
        prog="python -m monai_probseg.demo",
        description="Check and list the NIfTI outputs of a bundle inference run (inference_summary.json).",
    )
    parser.add_argument("--output_dir", default="demo_output", help="the run's output folder (default: demo_output)")
    args = parser.parse_args(argv)
    try:
        report = summarise_outputs(args.output_dir)
    except FileNotFoundError as e:
        parser.error(str(e))
    print(format_report(report))
    good = all(c["affine_ok"] and c["sitk_ok"] for c in report["cases"]) and not report["failed"]
    return 0 if good and report["cases"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
