# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""Are the shipped 3D models' samples and uncertainty maps plausible on unseen phantoms?

For each 3D bundle (``brats_ssn``, ``brats_prob_unet``, ``brats_diffusion``) the script writes ``--cases``
skull-stripped phantoms of ``--size``^3 voxels with a seed no bundle trained on (``--seed``, default 2; training
uses seed 0, the bundles' embedded default seed 1), runs the bundle exactly as a user does::

    python -m monai.bundle run --config_file bundles/<b>/configs/inference.json --dataset_dir D --num_samples 8

and scores its NIfTI outputs against each phantom's consensus with
:py:func:`monai_probseg.bundle.score_run` (median entropy more than 8 mm from the consensus whole tumour, mean
entropy in a +-2 mm band around its boundary over the mean entropy far away, each sample's whole-tumour volume over
the consensus volume, whole-tumour Dice of the mean segmentation) and the limits of
:py:data:`monai_probseg.bundle.ACCEPTANCE`. It also saves a picture per bundle (FLAIR, raters, mean, samples,
entropy, mutual information through the largest tumour cross-section of each case).

Run::

    python benchmarks/bench_plausibility3d.py                       # the three bundles, shipped weights
    python benchmarks/bench_plausibility3d.py --bundles brats_ssn --checkpoint brats_ssn=/tmp/old.pt --name before

Writes ``benchmarks/results/<name>.json``, ``<name>.md`` and ``<name>_<bundle>.png`` (``--name plausibility3d``).
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import time

import nibabel as nib
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import machine_info, md_table, results_dir, write_results  # noqa: E402

from monai_probseg.bundle import ACCEPTANCE, acceptance_failures, score_run  # noqa: E402
from monai_probseg.data.synthetic import write_brats_phantoms  # noqa: E402

logger = logging.getLogger("bench_plausibility3d")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUNDLES = ("brats_ssn", "brats_prob_unet", "brats_diffusion")
COLUMNS = [
    "bundle",
    "case_id",
    "far_entropy_median",
    "boundary_entropy_mean",
    "boundary_far_ratio",
    "high_entropy_fraction",
    "sample_volume_ratio_min",
    "sample_volume_ratio_max",
    "wt_dice",
    "seconds",
    "pass",
]


def _picture(output_dir: str, path: str) -> None:
    import json

    import matplotlib

    matplotlib.use("Agg")
    from monai_probseg.visualize import plot_sample_grid

    with open(os.path.join(output_dir, "inference_summary.json")) as f:
        summary = json.load(f)

    def load(p: str) -> np.ndarray:
        return np.asanyarray(nib.load(p).dataobj)

    cases = []
    for case in summary["cases"]:
        out = case["outputs"]
        cases.append(
            {
                "case_id": case["case_id"],
                "image": np.stack([load(p) for p in case["inputs"]["image"]]),
                "raters": np.stack([load(p) for p in case["inputs"]["raters"]]),
                "seg": load(out["seg"]),
                "samples": np.moveaxis(load(out["samples"]), -1, 0),
                "entropy": load(out["entropy"]),
                "mutual_info": load(out["mutual_info"]),
            }
        )
    fig = plot_sample_grid(cases, num_samples=4, image_channel=3, num_classes=4)
    fig.savefig(path, dpi=80)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundles", nargs="+", default=list(BUNDLES), choices=BUNDLES)
    parser.add_argument("--cases", type=int, default=3)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=2)
    parser.add_argument("--num-samples", type=int, default=8)
    parser.add_argument("--checkpoint", nargs="*", default=[], metavar="BUNDLE=PATH", help="other weights")
    parser.add_argument("--name", default="plausibility3d")
    parser.add_argument("--keep", default="", help="keep the phantoms and outputs in this folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    checkpoints = dict(c.split("=", 1) for c in args.checkpoint)
    work = args.keep or tempfile.mkdtemp(prefix="plausibility3d_")
    data = os.path.join(work, "phantoms")
    if not os.path.exists(os.path.join(data, "datalist.json")):
        write_brats_phantoms(data, args.cases, (args.size,) * 3, 3, seed=args.seed, split=(0.0, 0.0, 1.0))
    rows, runs = [], {}
    for bundle in args.bundles:
        out = os.path.join(work, bundle)
        cmd = [
            sys.executable,
            "-m",
            "monai.bundle",
            "run",
            "--config_file",
            os.path.join(REPO, "bundles", bundle, "configs", "inference.json"),
            "--dataset_dir",
            os.path.join(data, "datalist.json"),
            "--data_list_key",
            "all",
            "--output_dir",
            out,
            "--num_samples",
            str(args.num_samples),
            "--progress",
            "False",
        ]
        if bundle in checkpoints:
            cmd += ["--checkpoint", os.path.abspath(checkpoints[bundle])]
        logger.info("%s: %s", bundle, " ".join(cmd))
        start = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
        seconds = time.perf_counter() - start
        case_rows = score_run(out)
        for row in case_rows:
            failures = acceptance_failures(row)
            rows.append({"bundle": bundle, **row, "seconds": seconds / len(case_rows), "pass": not failures})
        runs[bundle] = {"command": " ".join(cmd[1:]), "seconds": seconds, "checkpoint": checkpoints.get(bundle)}
        os.makedirs(results_dir(), exist_ok=True)
        _picture(out, os.path.join(results_dir(), f"{args.name}_{bundle}.png"))
    results = {
        "machine": machine_info(),
        "args": vars(args),
        "acceptance": [list(a) for a in ACCEPTANCE],
        "runs": runs,
        "rows": rows,
        "all_pass": all(r["pass"] for r in rows),
    }
    lines = [
        f"# Plausibility of the 3D bundles on {args.cases} unseen phantoms ({args.size}^3, seed {args.seed})",
        "",
        f"`python benchmarks/bench_plausibility3d.py {' '.join(argv if argv is not None else sys.argv[1:])}`",
        "",
        f"{args.num_samples} samples per case. Acceptance: "
        + ", ".join(f"{k} {'<=' if d == 'max' else '>='} {v}" for k, d, v in ACCEPTANCE)
        + ". Distances in mm (1 mm voxels) from the consensus whole tumour; `boundary_far_ratio` is the mean entropy in"
        " a +-2 mm band around its boundary over the mean entropy more than 8 mm away, inside the brain.",
        "",
        md_table(rows, COLUMNS, fmt="{:.3f}"),
        "",
        f"All pass: {results['all_pass']}. Pictures: "
        + ", ".join(f"`{args.name}_{b}.png`" for b in args.bundles)
        + f". Machine: {results['machine']['processor']}, {results['machine']['torch_threads']} threads.",
    ]
    json_path, md_path = write_results(args.name, results, "\n".join(lines))
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
