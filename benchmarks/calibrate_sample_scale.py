# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""Choose a bundle's ``sample_scale`` (post-hoc spread calibration), or another inference setting, on its VALIDATION
phantoms.

The bundle's training phantoms (``train.json``: 24 phantoms of 64^3, seed 0, the last quarter for validation) are
written again, the bundle's inference + evaluation runs on the validation cases once per scale, and the scale whose
sample diversity (mean 1 - IoU between samples) is closest to the raters' diversity is chosen: the spread of the samples
matches the spread of the annotators. The GED and the plausibility figures of
:py:func:`monai_probseg.bundle.score_run` are reported beside it (the GED alone rewards extra spread on the cases
the model gets wrong). Test phantoms (other seeds) are never used. ``--param`` calibrates another inference
setting instead (e.g. the diffusion bundle's DDIM ``num_inference_steps`` or ``eta``), over ``--scales`` values.

Run::

    python benchmarks/calibrate_sample_scale.py --bundle brats_ssn --scales 0.3 0.4 0.5 0.7 1.0
    python benchmarks/calibrate_sample_scale.py --bundle brats_diffusion --param num_inference_steps --scales 10 25

Writes ``benchmarks/results/calibration_<bundle>.json`` and ``.md`` (``calibration_<bundle>_<param>`` with
``--param``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import machine_info, md_table, write_results  # noqa: E402

from monai_probseg.bundle import score_run  # noqa: E402
from monai_probseg.data.synthetic import write_brats_phantoms  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARAM = {
    "brats_ssn": "network_def#sample_scale",
    "brats_prob_unet": "network_def#sample_scale",
    "brats_diffusion": "num_inference_steps",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", default="brats_ssn", choices=sorted(PARAM))
    parser.add_argument("--scales", type=float, nargs="+", default=[0.3, 0.4, 0.5, 0.7, 1.0])
    parser.add_argument("--num-samples", type=int, default=8)
    parser.add_argument("--checkpoint", default="")
    parser.add_argument("--param", default=None, help="the config id to calibrate (default: the bundle's PARAM)")
    parser.add_argument("--threads", type=int, default=None, help="OMP threads of the bundle runs")
    args = parser.parse_args(argv)
    param = args.param or PARAM[args.bundle]
    name = param.split("#")[-1]
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {}))
    work = tempfile.mkdtemp(prefix="calibrate_")
    with open(os.path.join(REPO, "bundles", args.bundle, "configs", "train.json")) as f:
        train = json.load(f)
    datalist = write_brats_phantoms(
        os.path.join(work, "phantoms"),
        train["num_phantoms"],
        tuple(train["phantom_size"]),
        3,
        seed=train["phantom_seed"],
        split=tuple(train["phantom_split"]),
    )
    configs = [os.path.join(REPO, "bundles", args.bundle, "configs", n) for n in ("inference.json", "evaluate.json")]
    rows = []
    for scale in args.scales:
        value = int(scale) if float(scale).is_integer() and "steps" in name else scale
        out = os.path.join(work, f"{name}_{value}")
        cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(configs), "--dataset_dir", datalist]
        cmd += ["--data_list_key", "validation", "--output_dir", out, "--num_samples", str(args.num_samples)]
        cmd += [f"--{param}", str(value), "--progress", "False"]
        if args.checkpoint:
            cmd += ["--checkpoint", os.path.abspath(args.checkpoint)]
        subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL, env=env)
        with open(os.path.join(out, "metrics.json")) as f:
            mean = json.load(f)["mean"]
        plaus = score_run(out)
        rows.append(
            {
                name: value,
                "ged": mean["ged"],
                "hm_iou": mean.get("hm_iou", float("nan")),
                "sample_diversity": mean.get("diversity_samples", float("nan")),
                "rater_diversity": mean.get("diversity_raters", float("nan")),
                "dice_WT": mean.get("dice_WT", float("nan")),
                "far_entropy_median": float(np.max([r["far_entropy_median"] for r in plaus])),
                "sample_volume_ratio_min": float(np.min([r["sample_volume_ratio_min"] for r in plaus])),
                "sample_volume_ratio_max": float(np.max([r["sample_volume_ratio_max"] for r in plaus])),
            }
        )
        print(rows[-1], flush=True)
    best = min(rows, key=lambda r: abs(r["sample_diversity"] - r["rater_diversity"]))
    lowest_ged = min(rows, key=lambda r: r["ged"])
    results = {
        "machine": machine_info(),
        "args": vars(args),
        "rows": rows,
        "param": param,
        f"best_{name}": best[name],
        f"lowest_ged_{name}": lowest_ged[name],
    }
    cmdline = " ".join(argv if argv is not None else sys.argv[1:])
    md = "\n".join(
        [
            f"# {name} of {args.bundle} on its validation phantoms (seed {train['phantom_seed']})",
            "",
            f"`python benchmarks/calibrate_sample_scale.py {cmdline}`",
            "",
            "GED, HM-IoU and diversities are means over the validation cases (`evaluate.json`); the plausibility "
            "columns are the worst case.",
            "",
            md_table(rows, list(rows[0]), fmt="{:.3f}"),
            "",
            f"Sample diversity closest to the raters': {name} {best[name]}; lowest GED: {name} {lowest_ged[name]}.",
        ]
    )
    write_results(f"calibration_{args.bundle}" + ("" if args.param is None else f"_{name}"), results, md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
