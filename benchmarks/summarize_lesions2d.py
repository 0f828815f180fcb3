# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""One markdown table from several ``bench_lesions2d.py`` runs (and their ``diagnose_lesions2d.py`` files).

Each run is ``<name>.json`` (one model row beside the oracle); ``<name>_diagnosis.json``, when present, adds its
sample-vs-mode columns. Both are read from, and the table written to, ``$MONAI_PROBSEG_RESULTS_DIR`` (sweeps run in
a scratch folder; ``benchmarks/results`` when unset). Run::

    export MONAI_PROBSEG_RESULTS_DIR=/tmp/probseg_sweeps
    python benchmarks/summarize_lesions2d.py lesions2d_15min_prob_unet lesions2d_15min_prob_unet_beta10 \\
        lesions2d_15min_prob_unet_beta10_quiet lesions2d_15min_ssn --name lesions2d_15min

Writes ``<name>.md``; section 1 of ``benchmarks/results/experiments.md`` is this table for the 14-minute sweep.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import md_table, results_dir  # noqa: E402
from diagnose_lesions2d import DIAGNOSIS_COLUMNS  # noqa: E402

from monai_probseg.utils import write_text_atomic  # noqa: E402

DIAGNOSIS = DIAGNOSIS_COLUMNS
COLUMNS = [
    "run",
    "model",
    "beta",
    "latent_dim",
    "mc_samples",
    "mean_ce_weight",
    "channels",
    "ged",
    "ged_over_oracle",
    "hm_iou",
    "diversity_samples",
    "ged_may_be_empty",
    "ged_always_lesion",
    "threads",
    "iterations",
    "train_seconds",
    "samples_over_forward",
    *DIAGNOSIS,
]


def _load(name: str) -> dict | None:
    path = os.path.join(results_dir(), f"{name}.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="results file stems written by bench_lesions2d.py")
    parser.add_argument("--name", required=True, help="stem of the markdown file to write")
    parser.add_argument("--remark", default="", help="a sentence on how the runs were made, put under the title")
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
            row = dict(
                row, run=name, channels=" ".join(map(str, run["args"]["channels"])), threads=run["args"]["threads"]
            )
            row["beta"] = run["args"].get("beta", 1.0) if row["model"] == "prob_unet" else ""
            row["latent_dim"] = run["args"].get("latent_dim", 6) if row["model"] == "prob_unet" else ""
            for key, default in (("mc_samples", 20), ("mean_ce_weight", 0.0)):
                row[key] = run["args"].get(key, default) if row["model"] == "ssn" else ""
            diagnosis = _load(f"{name}_diagnosis")
            if diagnosis is not None:
                row.update({k: diagnosis["rows"][0].get(k, "") for k in DIAGNOSIS})
            rows.append(row)
        commands += [f"python benchmarks/bench_lesions2d.py {c}" for c in run["args"]["commands"]]
        if diagnosis is not None:
            commands.append(diagnosis["command"])
    first = _load(args.runs[0])["args"]
    budget = f"{first['budget'] / 60:.0f}-minute" if first.get("budget") else f"{first['iterations']}-iteration"
    md = (
        f"# 2D ambiguous lesions, {budget} CPU budget per model: {first['test_cases']} held-out cases, "
        f"{first['samples']} samples, K=4 annotators\n\n"
        f"Training (first run): {first['train_cases']} cases of {first['size']}x{first['size']}, batch "
        f"{first['batch_size']}, one random annotator per case, {first['schedule']} learning rate, "
        f"{first['threads']} CPU thread(s) per model. {args.remark} Each run's JSON is beside this file.\n\n"
        + md_table([dict(oracle, run="oracle")] + rows, COLUMNS)
        + "\n\n`ged_may_be_empty`: GED over the held-out cases where some annotators may see no lesion "
        "(contrast < 0.45), `ged_always_lesion` over the others. `samples_over_forward`: 100 samples (one "
        "distribution() pass + sampler) / one forward pass, batch of 8. From `diagnose_lesions2d.py` "
        "(`*_diagnosis.json`): `nearest_mode_iou`, mean IoU of a sample with its nearest true mode; "
        "`mode_frequency_error`, mean total-variation distance between the nearest-mode frequencies and the true "
        "mode probabilities; `posterior_recon_iou`, IoU of the PU-Net's reconstruction of each annotation from its "
        "posterior mean; `ged_snapped`, the GED once each sample is replaced by its nearest true mode (exact masks, "
        "the model's mode frequencies); `ged_posterior_recon`, the GED of oracle mode draws each replaced by the "
        "PU-Net's posterior reconstruction of that mode (exact frequencies, the model's masks); `ged_best_sample`, "
        "the same with each mode replaced by the model's sample closest to it (an optimistic bound on any "
        "re-weighting of the samples); `empty_rate_model` "
        "and `empty_rate_true`, over the cases that may be empty, the fraction of samples nearest the empty mode and "
        "its true probability; `kl_top_dim_share`, the share of the PU-Net's KL(posterior || prior) carried by its "
        "busiest latent dimension, and `posterior_over_prior_sigma_top_dim`, the median ratio of posterior to prior "
        "standard deviation there.\n\nCommands: " + ", ".join(f"`{c}`" for c in commands) + "\n\n"
        f"Table: `python benchmarks/summarize_lesions2d.py {' '.join(args.runs)} --name {args.name}"
        + (f" --remark {args.remark!r}" if args.remark else "")
        + "`\n"
    )
    write_text_atomic(md, os.path.join(results_dir(), f"{args.name}.md"))
    return md


if __name__ == "__main__":
    main()
