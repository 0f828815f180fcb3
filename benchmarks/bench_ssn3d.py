# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""SSN vs the same backbone trained deterministically, on 3D multimodal brain-tumour phantoms.

Monteiro et al. (NeurIPS 2020) report that the Stochastic Segmentation Network keeps the segmentation quality of
its backbone (its mean prediction) while modelling the raters' disagreement. This benchmark checks that claim on
the BraTS-like phantoms of :py:func:`monai_probseg.data.synthetic.brats_phantom` (4 modalities, BraTS 2023
labels, R raters who shift the boundaries):

- both models share one backbone, a MONAI ``UNet`` with the same channels, strides and residual units, followed by
  a 1x1 convolution head: the deterministic model is ``UNet -> 1x1 conv`` trained with cross-entropy, the SSN is
  :py:class:`~monai_probseg.networks.nets.StochasticSegmentationNetwork` on the same ``UNet`` trained with
  :py:class:`~monai_probseg.losses.LowRankMVNNLLLoss`;
- same training data and schedule: random patches (``--patch``) of ``--train-volumes`` phantoms, two thirds
  centred on tumour, one random rater per patch and iteration, Adam, same number of iterations or the same
  wall-clock budget, whichever comes first;
- evaluation on ``--test-volumes`` held-out phantoms, whole volumes by sliding windows (``--roi``): BraTS region
  Dice (WT, TC, ET) of the deterministic prediction and of the SSN's mean prediction against the consensus
  segmentation, and GED (labels 1-3, ``d = 1 - IoU``) of ``--samples`` SSN samples against the R raters, beside
  the deterministic model's GED (its one prediction as every sample).

Run (about 2 x 10 minutes of training on 2 CPU cores with the defaults)::

    python benchmarks/bench_ssn3d.py --budget 600
    # results/ssn3d.md: 500 iterations each, with the mean's cross-entropy (as bundles/brats_ssn trains)
    python benchmarks/bench_ssn3d.py --iterations 500 --budget 100000 --threads 1 --mean-ce-weight 1
    python benchmarks/bench_ssn3d.py --budget 20 --size 48 --patch 32 --roi 48 --train-volumes 2 --test-volumes 1 \\
        --samples 4 --name ssn3d_smoke   # smoke run

Writes ``benchmarks/results/<name>.json`` and ``<name>.md`` (``--name ssn3d`` by default, the canonical result;
other runs take another ``--name`` or a scratch ``MONAI_PROBSEG_RESULTS_DIR``: ``results/experiments.md``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from monai.networks.nets import UNet
from tqdm.auto import tqdm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import machine_info, md_table, write_results  # noqa: E402

from monai_probseg.data.synthetic import brats_phantom  # noqa: E402
from monai_probseg.inferers import StochasticSlidingWindowInferer  # noqa: E402
from monai_probseg.losses import LowRankMVNNLLLoss  # noqa: E402
from monai_probseg.metrics import (  # noqa: E402
    BRATS_REGION_NAMES,
    compute_brats_region_metrics,
    generalized_energy_distance,
)
from monai_probseg.networks.nets import StochasticSegmentationNetwork  # noqa: E402

logger = logging.getLogger("bench_ssn3d")

REGIONS = tuple(name.lower() for name in BRATS_REGION_NAMES)  # the order of compute_brats_region_metrics


def load_phantoms(count: int, size: int, raters: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """Phantoms as tensors, each modality z-scored over the brain (non-zero) voxels, as NormalizeIntensityd(nonzero)."""
    cases = []
    for i in range(count):
        p = brats_phantom((size,) * 3, num_raters=raters, seed=seed + i)
        image = torch.from_numpy(p["image"]).float()
        for c in range(image.shape[0]):
            inside = image[c] > 0
            vals = image[c][inside]
            image[c][inside] = (vals - vals.mean()) / vals.std().clamp_min(1e-6)
        cases.append(
            {
                "image": image,
                "seg": torch.from_numpy(p["seg"]).long(),
                "raters": torch.from_numpy(p["raters"]).long(),
            }
        )
    return cases


def random_patch(case, patch: int, gen: torch.Generator, pos_fraction: float = 2 / 3):
    """(image (4, p, p, p), all raters (R, p, p, p)) around a tumour voxel (``pos_fraction``) or anywhere."""
    size = case["image"].shape[1:]
    if torch.rand((), generator=gen) < pos_fraction:
        fg = torch.nonzero(case["seg"] > 0)
        centre = fg[torch.randint(0, len(fg), (), generator=gen)]
    else:
        centre = torch.stack([torch.randint(0, s, (), generator=gen) for s in size])
    start = [int(min(max(int(c) - patch // 2, 0), s - patch)) for c, s in zip(centre, size)]
    window = tuple(slice(a, a + patch) for a in start)
    return case["image"][(slice(None),) + window], case["raters"][(slice(None),) + window]


def backbone(args) -> UNet:
    strides = (2,) * (len(args.channels) - 1)
    return UNet(3, 4, args.features, channels=tuple(args.channels), strides=strides, num_res_units=args.res_units)


def build(name: str, args) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The model and its loss: same backbone and 1x1 head width for both."""
    if name == "deterministic":
        net = torch.nn.Sequential(backbone(args), torch.nn.ReLU(), torch.nn.Conv3d(args.features, 4, 1))
        return net, torch.nn.CrossEntropyLoss()
    net = StochasticSegmentationNetwork(
        3, 4, 4, rank=args.rank, backbone=backbone(args), backbone_channels=args.features, roi_from_image=True
    )
    return net, LowRankMVNNLLLoss(num_mc_samples=args.mc_samples, mean_ce_weight=args.mean_ce_weight)


def train(name, net, loss_fn, cases, args):
    gen = torch.Generator().manual_seed(args.seed)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    net.train()
    losses, nonfinite = [], 0
    start = time.perf_counter()
    bar = tqdm(total=args.iterations, desc=f"train {name}", leave=False)
    for it in range(args.iterations):
        progress = max(it / args.iterations, (time.perf_counter() - start) / args.budget)
        if progress >= 1.0:
            break
        for group in opt.param_groups:  # cosine decay over the budget
            group["lr"] = args.lr * 0.5 * (1.0 + np.cos(np.pi * progress))
        xs, ys = [], []
        for _ in range(args.batch_size):
            case = cases[int(torch.randint(0, len(cases), (), generator=gen))]
            x, raters = random_patch(case, args.patch, gen)
            xs.append(x)
            ys.append(raters[int(torch.randint(0, raters.shape[0], (), generator=gen))][None])
        x, y = torch.stack(xs), torch.stack(ys)
        opt.zero_grad(set_to_none=True)
        if name == "deterministic":
            loss = loss_fn(net(x), y[:, 0])
        else:
            loss = loss_fn(net(x, y), y)
        if not torch.isfinite(loss):
            nonfinite += 1
            continue
        loss.backward()
        opt.step()
        losses.append(loss.item())
        bar.update(1)
    bar.close()
    return {
        "train_seconds": time.perf_counter() - start,
        "iterations": len(losses),
        "nonfinite_losses": nonfinite,
        "first_loss": float(np.mean(losses[:20])),
        "last_loss": float(np.mean(losses[-20:])),
    }


@torch.no_grad()
def evaluate(name, net, cases, args):
    """Region Dice of the best single prediction vs the consensus, GED of samples vs the raters, timing."""
    net.eval()
    dice, geds, seconds, diversity = [], [], [], []
    roi = (args.roi,) * 3
    for i, case in enumerate(cases):
        x = case["image"][None]
        t = time.perf_counter()
        if name == "deterministic":
            pred = sliding_window_inference(x, roi, 1, net, overlap=args.overlap, mode="gaussian").argmax(1)
            samples = pred[:, None].expand(-1, args.samples, *pred.shape[1:])
        else:
            inferer = StochasticSlidingWindowInferer(
                roi, overlap=args.overlap, num_samples=args.samples, keep_samples=True, seed=args.seed + i
            )
            out = inferer(x, net)
            samples = out["samples"].long()
            # the mean prediction: the SSN's mean logits stitched by the same sliding windows
            pred = sliding_window_inference(x, roi, 1, net, overlap=args.overlap, mode="gaussian").argmax(1)
        seconds.append(time.perf_counter() - t)
        scores = compute_brats_region_metrics(pred[:, None], case["seg"][None, None], include_hd=False)
        dice.append(scores["dice"][0])
        ged = generalized_energy_distance(samples, case["raters"][None], num_classes=4, return_terms=True)
        geds.append(float(ged["ged"][0]))
        diversity.append(float(ged["diversity_samples"][0]))
    dice = torch.stack(dice).float().mean(0)
    row = {"model": name, **{f"dice_{r}": float(d) for r, d in zip(REGIONS, dice)}}
    row["dice_mean"] = float(dice.mean())
    row["ged"] = float(np.mean(geds))
    row["diversity_samples"] = float(np.mean(diversity))
    row["seconds_per_volume"] = float(np.mean(seconds))
    return row


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["deterministic", "ssn"], choices=["deterministic", "ssn"])
    parser.add_argument("--size", type=int, default=96, help="phantom side (voxels)")
    parser.add_argument("--raters", type=int, default=3)
    parser.add_argument("--train-volumes", type=int, default=12)
    parser.add_argument("--test-volumes", type=int, default=4)
    parser.add_argument("--patch", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=100000)
    parser.add_argument("--budget", type=float, default=600.0, help="training seconds per model")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--channels", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--res-units", type=int, default=1)
    parser.add_argument("--features", type=int, default=16, help="backbone output channels (1x1 heads' input)")
    parser.add_argument("--rank", type=int, default=10)
    parser.add_argument("--mc-samples", type=int, default=20)
    parser.add_argument(
        "--mean-ce-weight",
        type=float,
        default=0.0,
        help="SSN: weight of the auxiliary cross-entropy of the mean logits (0: the paper's loss)",
    )
    parser.add_argument("--roi", type=int, default=64)
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="ssn3d", help="results file stem")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    command = f"python benchmarks/bench_ssn3d.py {' '.join(argv if argv is not None else sys.argv[1:])}"

    train_cases = load_phantoms(args.train_volumes, args.size, args.raters, args.seed)
    test_cases = load_phantoms(args.test_volumes, args.size, args.raters, args.seed + 10000)
    # how much the raters disagree: E[d(Y, Y')] among the raters of each held-out phantom
    rater_div = []
    for c in test_cases:
        r = c["raters"][None]
        rater_div.append(float(generalized_energy_distance(r, r, num_classes=4, return_terms=True)["cross"][0]))

    rows = []
    for name in args.models:
        torch.manual_seed(args.seed)
        net, loss_fn = build(name, args)
        stats = train(name, net, loss_fn, train_cases, args)
        logger.info("%s training: %s", name, stats)
        row = evaluate(name, net, test_cases, args)
        row.update(stats, parameters=sum(p.numel() for p in net.parameters()))
        rows.append(row)
        logger.info("%s: %s", name, row)
    det = next((r for r in rows if r["model"] == "deterministic"), None)
    if det is not None:
        for row in rows:
            row["dice_mean_minus_deterministic"] = row["dice_mean"] - det["dice_mean"]
            row["ged_over_deterministic"] = row["ged"] / det["ged"]

    results = {"machine": machine_info(), "args": vars(args), "command": command, "rows": rows}
    results["rater_diversity"] = float(np.mean(rater_div))
    cols = [
        "model",
        "dice_wt",
        "dice_tc",
        "dice_et",
        "dice_mean",
        "dice_mean_minus_deterministic",
        "ged",
        "ged_over_deterministic",
        "diversity_samples",
        "iterations",
        "train_seconds",
        "seconds_per_volume",
    ]
    md = (
        f"# SSN vs deterministic backbone, 3D phantoms ({args.size}^3, 4 modalities, {args.raters} raters)\n\n"
        f"Training: {args.train_volumes} phantoms, {args.patch}^3 patches, batch {args.batch_size}, budget "
        f"{args.budget:.0f} s or {args.iterations} iterations per model, Adam lr {args.lr} (cosine), one random rater "
        f"per patch. Backbone MONAI UNet channels {args.channels}, {args.res_units} residual unit(s), "
        f"{args.features} output features. SSN rank {args.rank}, {args.mc_samples} MC samples, "
        f"mean cross-entropy weight {args.mean_ce_weight}.\n\n"
        f"Evaluation: {args.test_volumes} held-out phantoms, whole volume by {args.roi}^3 windows (overlap "
        f"{args.overlap}). Dice of the deterministic prediction / the SSN mean vs the consensus; GED of "
        f"{args.samples} samples vs the raters (labels 1-3). Disagreement among the raters, E[d(Y, Y')]: "
        f"{results['rater_diversity']:.4f}.\n\n" + md_table(rows, cols) + f"\n\nCommand: `{command}`\n"
    )
    paths = write_results(args.name, results, md)
    logger.info("wrote %s", ", ".join(paths))
    return results


if __name__ == "__main__":
    main()
