# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""One markdown table from several ``bench_lesions2d.py`` runs (and their ``diagnose_lesions2d.py`` files).

Each run is ``results/<name>.json`` (one model row beside the oracle); ``results/<name>_diagnosis.json``, when
present, adds its sample-vs-mode columns. Run::

    python benchmarks/summarize_lesions2d.py lesions2d_15min_prob_unet lesions2d_15min_prob_unet_beta10 \\
        lesions2d_15min_prob_unet_beta10_quiet lesions2d_15min_ssn --name lesions2d_15min

Writes ``benchmarks/results/<name>.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import RESULTS_DIR, _atomic_write, md_table  # noqa: E402

DIAGNOSIS = ("nearest_mode_iou", "mode_frequency_error", "posterior_recon_iou")
COLUMNS = [
    "run",
    "model",
    "beta",
    "channels",
    "ged",
    "ged_over_oracle",
    "hm_iou",
    "diversity_samples",
    "ged_may_be_empty",
    "ged_always_lesion",
    "iterations",
    "train_seconds",
    "samples_over_forward",
    *DIAGNOSIS,
]


def _load(name: str) -> dict | None:
    path = os.path.join(RESULTS_DIR, f"{name}.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="results file stems written by bench_lesions2d.py")
    parser.add_argument("--name", required=True, help="stem of the markdown file to write")
    args = parser.parse_args(argv)
    rows, commands, oracle = [], [], None
    for name in args.runs:
        run = _load(name)
        if run is None:
            parser.error(f"no results/{name}.json (run bench_lesions2d.py --name {name} first).")
        if oracle is not None and abs(run["rows"][0]["ged"] - oracle["ged"]) > 1e-6:
            parser.error(f"{name}: its oracle differs from the first run's (other held-out cases or samples).")
        oracle = run["rows"][0]
        for row in run["rows"][1:]:
            row = dict(row, run=name, channels=" ".join(map(str, run["args"]["channels"])))
            row["beta"] = run["args"].get("beta", 1.0) if row["model"] == "prob_unet" else ""
            diagnosis = _load(f"{name}_diagnosis")
            if diagnosis is not None:
                row.update({k: diagnosis["rows"][0].get(k, "") for k in DIAGNOSIS})
            rows.append(row)
        commands += [f"python benchmarks/bench_lesions2d.py {c}" for c in run["args"]["commands"]]
        if diagnosis is not None:
            commands.append(diagnosis["command"])
    md = (
        "# 2D ambiguous lesions, 14-minute CPU budget per model: 64 held-out cases, 100 samples, K=4 annotators\n\n"
        "Training: 4000 cases of 64x64, batch 16, one random annotator per case, 840 s of wall clock per model, "
        "cosine learning-rate decay, 1 CPU thread per model, with another benchmark on the second core (the "
        "`beta10` run shared the machine with two others and got half the iterations; `beta10_quiet` repeats it). "
        "Each run's JSON is beside this file.\n\n"
        + md_table([dict(oracle, run="oracle")] + rows, COLUMNS)
        + "\n\n`ged_may_be_empty`: GED over the held-out cases where some annotators may see no lesion "
        "(contrast < 0.45), `ged_always_lesion` over the others. `samples_over_forward`: 100 samples (one "
        "distribution() pass + sampler) / one forward pass, batch of 8. From `diagnose_lesions2d.py` "
        "(`*_diagnosis.json`): `nearest_mode_iou`, mean IoU of a sample with its nearest true mode; "
        "`mode_frequency_error`, mean total-variation distance between the nearest-mode frequencies and the true "
        "mode probabilities; `posterior_recon_iou`, IoU of the PU-Net's reconstruction of each annotation from its "
        "posterior mean.\n\nCommands: " + ", ".join(f"`{c}`" for c in commands) + "\n\n"
        f"Table: `python benchmarks/summarize_lesions2d.py {' '.join(args.runs)} --name {args.name}`\n"
    )
    _atomic_write(os.path.join(RESULTS_DIR, f"{args.name}.md"), md)
    return md


if __name__ == "__main__":
    main()
