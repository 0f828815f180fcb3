# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""Where a model's GED on the 2D ambiguous lesions comes from: mode frequencies vs mask shapes.

Loads weights saved by ``bench_lesions2d.py --save-dir`` and, on the same held-out cases, compares each of the
``--samples`` samples with the case's true modes (:py:func:`monai_probseg.data.synthetic.ambiguous_lesions_2d`):

- ``nearest_mode_iou``: mean IoU of a sample with its nearest true mode (1 for a perfect mode; an empty sample
  and an empty mode have IoU 1), and ``frac_iou_above_0.9``;
- ``mode_frequency_error``: mean over cases of the total-variation distance between the frequencies of the
  nearest modes and the true mode probabilities (0 when the model picks modes at the right rates);
- for the Probabilistic U-Net, ``posterior_recon_iou``: IoU of the reconstruction of each annotation from the
  posterior mean (how precise masks are when the latent is right), beside the prior samples' ``nearest_mode_iou``.

Run::

    python benchmarks/bench_lesions2d.py --models prob_unet ... --save-dir /tmp/lesions2d --name NAME
    python benchmarks/diagnose_lesions2d.py --model prob_unet --weights /tmp/lesions2d/NAME_prob_unet.pt \\
        --channels 16 32 64 128 --name NAME_diagnosis

Writes ``benchmarks/results/<name>.json`` and ``<name>.md``.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import machine_info, md_table, write_results  # noqa: E402
from bench_lesions2d import build  # noqa: E402

from monai_probseg.data.synthetic import ambiguous_lesions_2d  # noqa: E402


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boolean masks broadcast over leading axes (last two spatial); 1 when both are empty."""
    inter = (a & b).sum((-1, -2))
    union = (a | b).sum((-1, -2))
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


@torch.no_grad()
def diagnose(name, net, cases, num_samples, seed):
    net.eval()
    x = torch.from_numpy(np.stack([c["image"] for c in cases])).float()
    gen = torch.Generator().manual_seed(seed)
    samples = net.sample(net.distribution(x), num_samples, gen).argmax(2).numpy().astype(bool)
    best, above, tv = [], [], []
    for i, case in enumerate(cases):
        modes = np.stack([m for m, _ in case["modes"]]).astype(bool)
        probs = np.array([p for _, p in case["modes"]])
        scores = iou(samples[i][:, None], modes[None])  # (N, M)
        nearest = scores.argmax(1)
        best.append(scores.max(1).mean())
        above.append((scores.max(1) > 0.9).mean())
        tv.append(0.5 * np.abs(np.bincount(nearest, minlength=len(probs)) / num_samples - probs).sum())
    out = {
        "model": name,
        "nearest_mode_iou": float(np.mean(best)),
        "frac_iou_above_0.9": float(np.mean(above)),
        "mode_frequency_error": float(np.mean(tv)),
    }
    if name == "prob_unet":
        recon = []
        for k in range(cases[0]["label"].shape[0]):
            y = torch.from_numpy(np.stack([c["label"][k] for c in cases])).long()[:, None]
            pred = net(x, y)["logits"].argmax(1).numpy().astype(bool)  # posterior mean in eval mode
            recon.append(iou(pred, y[:, 0].numpy().astype(bool)))
        out["posterior_recon_iou"] = float(np.mean(recon))
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, choices=["prob_unet", "ssn"])
    parser.add_argument("--weights", required=True, help="state_dict saved by bench_lesions2d.py --save-dir")
    parser.add_argument("--channels", type=int, nargs="+", default=[32, 64, 128, 192])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--test-cases", type=int, default=64)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", required=True, help="results file stem")
    args = parser.parse_args(argv)
    if not os.path.isfile(args.weights):
        parser.error(f"--weights {args.weights}: no such file (save one with bench_lesions2d.py --save-dir).")
    torch.set_num_threads(args.threads)
    command = f"python benchmarks/diagnose_lesions2d.py {' '.join(argv if argv is not None else sys.argv[1:])}"
    net, _, _ = build(args.model, tuple(args.channels))
    try:
        net.load_state_dict(torch.load(args.weights, map_location="cpu", weights_only=True))
    except RuntimeError as e:
        parser.error(f"--weights {args.weights} does not fit a {args.model} with channels {args.channels}: {e}")
    cases = ambiguous_lesions_2d(args.test_cases, (args.size,) * 2, num_annotators=4, seed=args.seed + 1000)
    row = diagnose(args.model, net, cases, args.samples, args.seed)
    cols = ["model", "nearest_mode_iou", "frac_iou_above_0.9", "mode_frequency_error", "posterior_recon_iou"]
    md = (
        f"# Where the GED comes from: {args.model}, {args.test_cases} held-out cases, {args.samples} samples\n\n"
        + md_table([row], cols)
        + f"\n\nCommand: `{command}`\n"
    )
    results = {"machine": machine_info(), "args": vars(args), "command": command, "rows": [row]}
    write_results(args.name, results, md)
    print(md)
    return results


if __name__ == "__main__":
    main()
