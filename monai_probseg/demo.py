# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""The main job until the bundles exist: write the synthetic data sets and print what was written.

``python -m monai_probseg.demo --output_dir DIR`` writes BraTS 2023-style multimodal phantoms with several
raters (``DIR/brats``) and the 2D ambiguous-lesion set with its exact mask distributions (``DIR/lesions2d``),
reads them back and prints a short summary.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from monai_probseg.data.synthetic import (
    MODALITIES,
    match_modes,
    read_lesion_modes,
    write_ambiguous_lesions_2d,
    write_brats_phantoms,
)
from monai_probseg.data.synthetic._common import MIN_SIZE
from monai_probseg.data.synthetic.cli import OneLineErrorParser, int_at_least

__all__ = ["run_demo", "format_summary", "main"]

logger = logging.getLogger(__name__)


def _entries(datalist: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for key in ("training", "validation", "test") for e in datalist.get(key, [])]


def run_demo(
    output_dir: str | os.PathLike,
    num_cases: int = 2,
    spatial_size: Sequence[int] = (64, 64, 64),
    num_raters: int = 3,
    num_lesion_cases: int = 8,
    lesion_size: Sequence[int] = (128, 128),
    num_annotators: int = 4,
    seed: int = 0,
) -> dict[str, Any]:
    """Write both synthetic data sets under ``output_dir``, read them back and return a summary.

    Args:
        output_dir: output folder; ``brats/`` and ``lesions2d/`` are written inside.
        num_cases: number of BraTS-like phantoms.
        spatial_size: phantom size ``(X, Y, Z)``.
        num_raters: raters per phantom.
        num_lesion_cases: number of 2D lesion cases.
        lesion_size: 2D image size ``(H, W)``.
        num_annotators: annotators per 2D case.
        seed: random seed of both sets.

    Returns:
        a dict with ``"brats"`` (datalist path, split sizes, per-case shapes and label voxel counts of the consensus
        and of each rater) and ``"lesions2d"`` (datalist path, modes per case, mode probabilities, whether every
        annotator mask on disk is one of the modes), and ``"seconds"``.

    Example::

        summary = run_demo("/tmp/demo", num_cases=1, spatial_size=(32, 32, 32), num_lesion_cases=2)
        print(format_summary(summary))
    """
    import nibabel as nib

    start = time.perf_counter()
    root = os.path.abspath(os.fspath(output_dir))
    brats_list = write_brats_phantoms(os.path.join(root, "brats"), num_cases, spatial_size, num_raters, seed)
    lesion_list = write_ambiguous_lesions_2d(
        os.path.join(root, "lesions2d"), num_lesion_cases, lesion_size, num_annotators, seed
    )

    with open(brats_list) as f:
        blist = json.load(f)
    base = os.path.dirname(brats_list)
    cases = []
    for e in _entries(blist):
        first = nib.load(os.path.join(base, e["image"][0]))
        seg = np.asarray(nib.load(os.path.join(base, e["label"])).dataobj)
        raters = [np.asarray(nib.load(os.path.join(base, r)).dataobj) for r in e["raters"]]
        cases.append(
            {
                "case_id": e["case_id"],
                "shape": tuple(int(s) for s in first.shape),
                "seg_counts": np.bincount(seg.ravel(), minlength=4)[:4].tolist(),
                "rater_counts": [np.bincount(r.ravel(), minlength=4)[:4].tolist() for r in raters],
            }
        )

    with open(lesion_list) as f:
        llist = json.load(f)
    base = os.path.dirname(lesion_list)
    num_modes, probs, p_empty, all_modes = [], [], [], True
    for e in _entries(llist):
        case = read_lesion_modes(os.path.join(base, e["modes"]))
        num_modes.append(len(case["modes"]))
        probs.extend(p for _, p in case["modes"])
        p_empty.append(float(case["params"].get("p_empty", 0.0)))
        annots = np.stack([np.asarray(nib.load(os.path.join(base, a)).dataobj) for a in e["label"]])
        all_modes &= bool((match_modes(annots, case) >= 0).all())

    return {
        "brats": {
            "datalist": brats_list,
            "split": [len(blist[k]) for k in ("training", "validation", "test")],
            "num_raters": num_raters,
            "cases": cases,
        },
        "lesions2d": {
            "datalist": lesion_list,
            "split": [len(llist[k]) for k in ("training", "validation", "test")],
            "num_cases": len(num_modes),
            "size": tuple(int(s) for s in lesion_size),
            "num_annotators": num_annotators,
            "num_modes": num_modes,
            "mode_probability_range": (float(min(probs)), float(max(probs))),
            "p_empty_range": (float(min(p_empty)), float(max(p_empty))),
            "annotators_are_modes": all_modes,
        },
        "seconds": time.perf_counter() - start,
    }


def format_summary(summary: dict[str, Any]) -> str:
    """A short human-readable report of :func:`run_demo`'s summary."""
    b, lz = summary["brats"], summary["lesions2d"]
    shape = "x".join(map(str, b["cases"][0]["shape"])) if b["cases"] else "-"
    lines = [
        f"BraTS-like phantoms: {len(b['cases'])} case(s), modalities {', '.join(MODALITIES)} of {shape} voxels, "
        f"{b['num_raters']} rater(s) + consensus",
        f"  datalist: {b['datalist']} (training/validation/test: {'/'.join(map(str, b['split']))})",
    ]
    for c in b["cases"]:
        n = c["seg_counts"]
        edema = [r[2] for r in c["rater_counts"]]
        lines.append(
            f"  {c['case_id']}: consensus voxels necrotic core={n[1]} edema={n[2]} enhancing={n[3]}; "
            f"edema per rater {min(edema)}..{max(edema)}"
        )
    lo, hi = lz["mode_probability_range"]
    lines += [
        f"2D ambiguous lesions: {lz['num_cases']} case(s) of {'x'.join(map(str, lz['size']))} pixels, "
        f"{lz['num_annotators']} annotator(s) each",
        f"  datalist: {lz['datalist']} (training/validation/test: {'/'.join(map(str, lz['split']))})",
        f"  modes per case {min(lz['num_modes'])}..{max(lz['num_modes'])}, mode probabilities {lo:.3f}..{hi:.3f}, "
        f"P(empty) {lz['p_empty_range'][0]:.3f}..{lz['p_empty_range'][1]:.3f}",
        f"  every annotator mask is one of its case's modes: {'yes' if lz['annotators_are_modes'] else 'NO'}",
        f"done in {summary['seconds']:.1f} s",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m monai_probseg.demo --output_dir DIR [--cases N --size X Y Z ...]``.

    Args:
        argv: the arguments (default ``sys.argv[1:]``).

    Example::

        main(["--output_dir", "/tmp/demo", "--cases", "1", "--size", "32", "32", "32"])
    """
    parser = OneLineErrorParser(
        prog="python -m monai_probseg.demo",
        description="Write the synthetic BraTS-like phantoms and the 2D ambiguous-lesion set, print a summary.",
    )
    parser.add_argument("--output_dir", default="demo_output", help="output folder (default: demo_output)")
    parser.add_argument("--cases", type=int_at_least(1), default=2, help="BraTS-like phantoms (default: 2)")
    parser.add_argument(
        "--size",
        type=int_at_least(MIN_SIZE),
        nargs=3,
        default=[64, 64, 64],
        metavar=("X", "Y", "Z"),
        help="phantom size (default: 64 64 64)",
    )
    parser.add_argument("--raters", type=int_at_least(1), default=3, help="raters per phantom (default: 3)")
    parser.add_argument("--lesion_cases", type=int_at_least(1), default=8, help="2D lesion cases (default: 8)")
    parser.add_argument(
        "--lesion_size",
        type=int_at_least(MIN_SIZE),
        nargs=2,
        default=[128, 128],
        metavar=("H", "W"),
        help="2D image size (default: 128 128)",
    )
    parser.add_argument("--annotators", type=int_at_least(1), default=4, help="annotators per 2D case (default: 4)")
    parser.add_argument("--seed", type=int_at_least(0), default=0, help="random seed (default: 0)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only print the summary")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(message)s")
    try:
        summary = run_demo(
            args.output_dir,
            args.cases,
            tuple(args.size),
            args.raters,
            args.lesion_cases,
            tuple(args.lesion_size),
            args.annotators,
            args.seed,
        )
    except ValueError as e:
        parser.error(str(e))
    print(format_summary(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
