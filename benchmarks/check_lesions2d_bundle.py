# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""A shipped 2D bundle on fresh cases of the generator, scored like its row of the leaderboard.

Writes ``--cases`` ambiguous-lesion cases with a seed never used in training or selection (``--seed``, 2026 by
default; the leaderboard trains on seed 0 and tests on seed 1000), runs the bundle's ``inference.json`` +
``evaluate.json`` on them with ``--samples`` samples (``python -m monai.bundle run``, the user's command), reads
back the ``<case>_samples`` and ``<case>_prob`` NIfTI files the bundle wrote and scores them with the
leaderboard's own functions (``bench_lesions2d.py``: GED, HM-IoU, diversity, "no lesion" rate, ECE) beside the
oracle on the same cases. The table compares each figure with the row ``--row`` of ``results/lesions2d.json``
(``fresh / row``; the target is within 10 %)::

    python benchmarks/check_lesions2d_bundle.py --bundle lesions2d_mose --row mose
    python benchmarks/check_lesions2d_bundle.py --bundle lesions2d_prob_unet --row prob_unet

Prints the markdown table and writes it with the JSON to ``--out`` (a scratch folder, not ``results/``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

import nibabel as nib
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import RESULTS_DIR, md_table  # noqa: E402
from bench_lesions2d import case_groups, evaluate, mean_ece, no_lesion_rates  # noqa: E402

from monai_probseg.data.synthetic import ambiguous_lesions_2d, sample_oracle, write_ambiguous_lesions_2d  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMPARED = ("ged", "ged_over_oracle", "hm_iou", "hm_iou_over_oracle", "diversity_over_oracle", "no_lesion_rate", "ece")


def score(samples: torch.Tensor, probs: torch.Tensor, cases) -> dict:
    """The leaderboard's figures of ``(B, N, H, W)`` samples and ``(B, C, H, W)`` mean probabilities."""
    annotations = torch.from_numpy(np.stack([c["label"] for c in cases])).long()
    row = evaluate(samples, annotations, case_groups(cases))
    rate, true = no_lesion_rates(samples, cases)
    row.update(no_lesion_rate=rate, no_lesion_true=true, no_lesion_error=100.0 * (rate - true))
    row["ece"] = mean_ece(probs, annotations)
    return row


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", required=True, help="folder name under bundles/")
    parser.add_argument("--row", required=True, help="the method's row in results/lesions2d.json")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--cases", type=int, default=32)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="scratch folder (default /tmp/check_<bundle>)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    out = args.out or f"/tmp/check_{args.bundle}"
    configs = os.path.join(ROOT, "bundles", args.bundle, "configs")
    if not os.path.isdir(configs):
        parser.error(f"--bundle {args.bundle}: no folder {configs}.")
    with open(os.path.join(RESULTS_DIR, "lesions2d.json")) as f:
        board = json.load(f)
    row = next((r for r in board["rows"] if r["model"] == args.row), None)
    if row is None:
        parser.error(f"--row {args.row}: not in results/lesions2d.json ({[r['model'] for r in board['rows']]}).")

    from monai.bundle import run

    size = (args.size, args.size)
    datalist = write_ambiguous_lesions_2d(os.path.join(out, "data"), args.cases, size, 4, args.seed, split=(1, 0, 0))
    cases = ambiguous_lesions_2d(args.cases, size, num_annotators=4, seed=args.seed)  # the same cases, in memory
    eval_dir = os.path.join(out, "eval")
    run(
        config_file=[os.path.join(configs, "inference.json"), os.path.join(configs, "evaluate.json")],
        logging_file=False,
        dataset_dir=datalist,
        data_list_key="all",
        output_dir=eval_dir,
        num_samples=args.samples,
        progress=False,
    )
    samples = torch.stack(
        [torch.from_numpy(np.asarray(nib.load(f"{eval_dir}/{c['case_id']}_samples.nii.gz").dataobj)) for c in cases]
    )
    probs = torch.stack(
        [torch.from_numpy(np.asarray(nib.load(f"{eval_dir}/{c['case_id']}_prob.nii.gz").dataobj)) for c in cases]
    )
    fresh = score(samples.movedim(-1, 1).long(), probs.movedim(-1, 1).float(), cases)
    draws = torch.from_numpy(np.stack([sample_oracle(c, args.samples, seed=i) for i, c in enumerate(cases)])).long()
    oracle = score(draws, torch.nn.functional.one_hot(draws, 2).movedim(-1, 1).float().mean(2), cases)
    fresh["ged_over_oracle"] = fresh["ged"] / oracle["ged"]
    fresh["hm_iou_over_oracle"] = fresh["hm_iou"] / oracle["hm_iou"]
    fresh["diversity_over_oracle"] = fresh["diversity_samples"] / oracle["diversity_samples"]
    table = [
        {"figure": k, "leaderboard": row[k], "fresh": fresh[k], "fresh_over_row": fresh[k] / row[k]} for k in COMPARED
    ]
    md = (
        f"# {args.bundle} on {args.cases} fresh cases (seed {args.seed}), {args.samples} samples, vs its leaderboard "
        f"row `{args.row}`\n\n"
        + md_table(table, ["figure", "leaderboard", "fresh", "fresh_over_row"])
        + f"\n\nOracle on the fresh cases: GED {oracle['ged']:.4f}, HM-IoU {oracle['hm_iou']:.4f}, true no-lesion "
        f"probability {oracle['no_lesion_true']:.3f}.\n\nCommand: `python benchmarks/check_lesions2d_bundle.py "
        f"{' '.join(argv if argv is not None else sys.argv[1:])}`\n"
    )
    results = {"args": vars(args), "fresh": fresh, "oracle": oracle, "row": row, "table": table}
    with open(os.path.join(out, "check.json"), "w") as f:
        json.dump(results, f, indent=2, default=float)
    with open(os.path.join(out, "check.md"), "w") as f:
        f.write(md)
    print(md)
    return results


if __name__ == "__main__":
    main()
