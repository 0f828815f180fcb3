# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""How exact must the masks be? GED and HM-IoU of the TRUE mode frequencies drawn with imperfect masks.

The 2D leaderboard's targets (GED <= 1.25x the oracle's, HM-IoU >= 0.95x) are ratios to the oracle, which draws
the exact masks. This script separates the two things a model must get right: it draws every held-out case's
modes at their true probabilities (as the oracle does, same seeds) but replaces each mode's mask by a perturbed
one whose IoU with the mode is below 1, and reports the GED / HM-IoU ratios that remain. The frequencies are
exact, so what is left is the price of the masks alone.

A perturbed mask is ``gaussian_filter(mode, 1) + 4 * amplitude * gaussian_filter(white noise, 2) > 0.5``: the
boundary moves in smooth bumps (an empty mode stays empty). Two kinds:

- ``systematic``: one perturbed mask per mode and case, shared by all the samples of that mode (a model whose
  expert or latent draws the same, slightly wrong mask every time);
- ``per_sample``: every sample its own perturbation (masks that scatter around the mode).

Run::

    python benchmarks/floor_lesions2d.py --name lesions2d_floor

Writes ``<name>.json`` and ``<name>.md`` to ``$MONAI_PROBSEG_RESULTS_DIR`` (``benchmarks/results`` when unset);
``results/experiments.md`` (section 12) quotes the table.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import machine_info, md_table, write_results  # noqa: E402
from bench_lesions2d import evaluate, mode_ious  # noqa: E402

from monai_probseg.data.synthetic import ambiguous_lesions_2d, sample_oracle  # noqa: E402

AMPLITUDES = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.45)


def perturb(mask: np.ndarray, amplitude: float, rng: np.random.Generator) -> np.ndarray:
    """A copy of a label map whose foreground boundary moves in smooth random bumps (``amplitude`` 0: unchanged)."""
    if amplitude == 0 or mask.max() == 0:
        return mask.copy()
    field = 4.0 * amplitude * gaussian_filter(rng.standard_normal(mask.shape).astype(np.float32), 2.0)
    return ((gaussian_filter((mask > 0).astype(np.float32), 1.0) + field) > 0.5).astype(mask.dtype) * mask.max()


def floor_rows(cases, annotations, num_samples, amplitudes=AMPLITUDES, seed=0):
    """One row per (kind, amplitude): mode IoU, GED, HM-IoU of the true frequencies with perturbed masks.

    The oracle draws of case ``i`` use seed ``i`` (``bench_lesions2d.py``'s oracle row), so amplitude 0 is the
    oracle row exactly.
    """
    rows = []
    for kind in ("systematic", "per_sample"):
        for amplitude in amplitudes:
            rng = np.random.default_rng(seed)
            samples, ious = [], []
            for i, case in enumerate(cases):
                _, index = sample_oracle(case, num_samples, seed=i, return_indices=True)
                modes = [m for m, _ in case["modes"]]
                if kind == "systematic":
                    fixed = [perturb(m, amplitude, rng) for m in modes]
                    drawn = np.stack([fixed[j] for j in index])
                else:
                    drawn = np.stack([perturb(modes[j], amplitude, rng) for j in index])
                iou = mode_ious(torch.from_numpy(drawn).long(), torch.from_numpy(np.stack(modes)).long())
                ious.append(float(iou[torch.arange(num_samples), torch.from_numpy(index)].mean()))
                samples.append(drawn)
            scores = evaluate(torch.from_numpy(np.stack(samples)).long(), annotations)
            rows.append({"kind": kind, "amplitude": amplitude, "mode_iou": float(np.mean(ious)), **scores})
    oracle = rows[0]
    for row in rows:
        row["ged_over_oracle"] = row["ged"] / oracle["ged"]
        row["hm_iou_over_oracle"] = row["hm_iou"] / oracle["hm_iou"]
    return rows


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--test-cases", type=int, default=128)
    parser.add_argument("--test-seed", type=int, default=1000, help="the leaderboard's held-out cases")
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--amplitudes", type=float, nargs="+", default=list(AMPLITUDES))
    parser.add_argument("--name", default="lesions2d_floor", help="results file stem")
    args = parser.parse_args(argv)
    if args.samples % 4:
        parser.error(f"--samples must be a multiple of the 4 annotators (HM-IoU), got {args.samples}.")
    if 0.0 not in args.amplitudes or any(not (np.isfinite(a) and a >= 0) for a in args.amplitudes):
        parser.error(f"--amplitudes must be finite numbers >= 0 and include 0 (the oracle), got {args.amplitudes}.")
    amplitudes = sorted(set(args.amplitudes))
    cases = ambiguous_lesions_2d(args.test_cases, (args.size, args.size), num_annotators=4, seed=args.test_seed)
    annotations = torch.from_numpy(np.stack([c["label"] for c in cases])).long()
    rows = floor_rows(cases, annotations, args.samples, amplitudes)
    cols = ["kind", "amplitude", "mode_iou", "ged", "ged_over_oracle", "hm_iou", "hm_iou_over_oracle"]
    md = (
        f"# The true mode frequencies with imperfect masks: {args.test_cases} held-out cases (seed "
        f"{args.test_seed}), {args.samples} samples, 4 annotators\n\n"
        "Each sample is a mode drawn at its true probability (the oracle's draws), its mask perturbed to the "
        "`mode_iou` shown; `systematic`: one perturbed mask per mode and case, `per_sample`: a new one per sample. "
        "Amplitude 0 is the oracle.\n\n" + md_table(rows, cols) + "\n\n"
        f"Command: `python benchmarks/floor_lesions2d.py {' '.join(argv if argv is not None else sys.argv[1:])}`\n"
    )
    results = {"machine": machine_info(), "args": vars(args), "rows": rows}
    write_results(args.name, results, md)
    print(md)
    return results


if __name__ == "__main__":
    main()
