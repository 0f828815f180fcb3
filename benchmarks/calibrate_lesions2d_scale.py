# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""Choose a 2D bundle's ``sample_scale`` on its VALIDATION cases: the lowest GED of 100 samples against the annotators.

The bundle's network (``inference.json``'s ``network_def`` and ``models/model.pt``) samples the validation cases of
its ``train.json`` (``phantom_seed`` 0, the ``phantom_split[1]`` cases after the training ones, never trained on)
once per scale; the images are normalised as ``bench_lesions2d.py`` does and the samples scored by its
``choose_sample_scale`` (GED, HM-IoU, and the fraction of samples that cover more than half of the image, a tail
draw of the noise that flips the whole background), the rule the leaderboard applies to its own rows on the same
validation cases. The leaderboard's test cases (seed 1000) and the fresh cases of ``check_lesions2d_bundle.py``
(seed 2026) are never used.

Run::

    python benchmarks/calibrate_lesions2d_scale.py --bundle lesions2d_mose --scales 1 0.8 0.7 0.6 0.5 0.4 0.3 0.2 0.1

Writes ``bundles/<bundle>/docs/calibration.json`` and ``.md`` (the bundle's own recipe, beside its README); set the
chosen value as ``sample_scale`` in the bundle's ``inference.json``. ``$MONAI_PROBSEG_RESULTS_DIR``, when set, is
written to instead (a trial run).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch
from monai.bundle import ConfigParser

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import machine_info, md_table, write_results  # noqa: E402
from bench_lesions2d import SCALES, choose_sample_scale, normalise  # noqa: E402

from monai_probseg.data.synthetic import ambiguous_lesions_2d  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUNDLES = {"lesions2d_mose": "mose", "lesions2d_prob_unet": "prob_unet"}  # bundle -> its leaderboard method


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", default="lesions2d_mose", choices=sorted(BUNDLES))
    parser.add_argument("--scales", type=float, nargs="+", default=list(SCALES))
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    configs = os.path.join(ROOT, "bundles", args.bundle, "configs")
    train = ConfigParser()
    train.read_config(os.path.join(configs, "train.json"))
    n_train, n_val = (int(v) for v in train["phantom_split"][:2])
    size = tuple(train["phantom_size"])
    cases = ambiguous_lesions_2d(n_train + n_val, size, int(train["num_raters"]), seed=int(train["phantom_seed"]))
    cases = cases[n_train:]
    infer = ConfigParser()
    infer.read_config(os.path.join(configs, "inference.json"))
    infer["device"] = "$torch.device('cpu')"
    net = infer.get_parsed_content("network_def")
    net.load_state_dict(
        torch.load(os.path.join(ROOT, "bundles", args.bundle, "models", "model.pt"), map_location="cpu")
    )
    net.eval()
    x = normalise(np.stack([c["image"] for c in cases]))
    annotations = torch.from_numpy(np.stack([c["label"] for c in cases])).long()
    with torch.no_grad():
        best, rows = choose_sample_scale(BUNDLES[args.bundle], net, x, annotations, args.samples, 0, args.scales)
    command = "python benchmarks/calibrate_lesions2d_scale.py " + " ".join(argv if argv is not None else sys.argv[1:])
    md = (
        f"# `sample_scale` of {args.bundle} on its {len(cases)} validation cases (train.json seed "
        f"{train['phantom_seed']}, cases {n_train}-{n_train + n_val - 1}), {args.samples} samples\n\n"
        + md_table(rows, ["sample_scale", "ged", "hm_iou", "whole_image"])
        + f"\n\nLowest GED: **{best['sample_scale']:g}**. `whole_image`: fraction of the samples covering more than "
        "half of the image.\n\n" + f"Command: `{command}`\n"
    )
    results = {"machine": machine_info(), "args": vars(args), "command": command, "rows": rows, "chosen": best}
    out_dir = os.environ.get("MONAI_PROBSEG_RESULTS_DIR") or os.path.join(ROOT, "bundles", args.bundle, "docs")
    write_results("calibration", results, md, out_dir=out_dir)
    print(md)
    return results


if __name__ == "__main__":
    main()
