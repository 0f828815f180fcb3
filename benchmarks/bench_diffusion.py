# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""Diffusion segmentation (Wolleb et al., MIDL 2022): implicit ensembles, fast DDIM sampling, seamless 3D volumes.

Part 1, 2D ambiguous lesions (the set of ``bench_lesions2d.py``: same sizes, seeds and held-out cases). A
:py:class:`~monai_probseg.networks.nets.DiffusionSegmentation` is trained with ``ProbSegTrainer`` +
``DiffusionPrepareBatch`` (one random annotator per case and iteration) for a fixed wall-clock budget, with an EMA
of the weights (evaluated with the EMA weights). On the held-out cases, with DDIM (Song et al., ICLR 2021):

- Dice of 1 sample and of the mean of 5 samples (the implicit ensemble) against the majority vote of the K
  annotators and against each annotator (averaged); Dice is 1 when both masks are empty;
- GED and HM-IoU of ``--ged-samples`` samples against the K annotations, and the same for the oracle (samples of
  the true mask distribution), beside the PU-Net/SSN rows of ``results/lesions2d.json`` when present;
- DDPM with all ``T`` steps (Ho et al., NeurIPS 2020) vs DDIM with ``--ddim-steps`` on ``--ddpm-cases`` cases:
  Dice and wall time of the same batch, measured in the same run (speed-up ratio).

Part 2, 3D whole volume: a 96^3 BraTS-like phantom (4 modalities, 4 labels) sampled with 48^3 windows through
``sample(..., window_fn=...)`` (noise drawn once for the volume, windows blended at every step), by a model trained
briefly on random 48^3 patches of other phantoms. Seam measure (the inferer's):
:py:func:`monai_probseg.metrics.seam_ratio` of
each sample's deviation from the sample mean, at the planes where windows meet (``window_transitions`` for Gaussian,
``window_borders`` for constant blending) vs interior planes, averaged over the three axes (about 1 = no seam); and
the difference to the same-seed sample of the whole volume as one window. Baseline: the naive way, each window
sampled on its own (own noise) and the windows blended by MONAI's ``sliding_window_inference``.

Run (CPU: 10 min 2D training, 2 min 3D training, then sampling; DDPM's 1000 steps dominate the evaluation)::

    python benchmarks/bench_diffusion.py --budget 600
    # results/diffusion.md: v-prediction on 4000 cases, DDIM eta 0 and 1 vs DDPM on 12 cases, 2D only
    python benchmarks/bench_diffusion.py --budget 600 --train-cases 4000 --test-cases 16 --ddpm-cases 12 --skip-3d \\
        --threads 2 --prediction-type v_prediction --compare-etas 0 1
    python benchmarks/bench_diffusion.py --budget 60 --train-cases 32 --test-cases 4 --ged-samples 8 \\
        --ddpm-cases 1 --train-timesteps 200 --volume-size 48 --roi 32 --budget-3d 20 --volume-steps 3 \\
        --name diffusion_smoke   # smoke run, about 5 min

Writes ``benchmarks/results/<name>.json`` and ``<name>.md`` (``--name diffusion`` by default, the canonical result;
other runs take another ``--name`` or a scratch ``MONAI_PROBSEG_RESULTS_DIR``: ``results/experiments.md``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

import numpy as np
import torch
from ignite.engine import Events
from monai.inferers import sliding_window_inference
from torch.utils.data import DataLoader

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import RESULTS_DIR, machine_info, md_table, write_results  # noqa: E402

from monai_probseg.data.synthetic import ambiguous_lesions_2d, brats_phantom, majority_vote, sample_oracle  # noqa: E402
from monai_probseg.engines import DiffusionPrepareBatch, ProbSegTrainer  # noqa: E402
from monai_probseg.handlers import EMAHandler  # noqa: E402
from monai_probseg.metrics import (  # noqa: E402
    generalized_energy_distance,
    hungarian_matched_iou,
    seam_ratio,
    window_borders,
    window_transitions,
)
from monai_probseg.networks.nets import DiffusionSegmentation  # noqa: E402

logger = logging.getLogger("bench_diffusion")


def dice(pred: torch.Tensor, target: torch.Tensor, spatial_ndim: int = 2) -> torch.Tensor:
    """Foreground Dice of binary masks ``(..., *spatial)`` per leading index; 1 when both are empty."""
    pred, target = pred.bool().flatten(-spatial_ndim), target.bool().flatten(-spatial_ndim)
    inter = (pred & target).sum(-1).float()
    total = pred.sum(-1).float() + target.sum(-1).float()
    return torch.where(total > 0, 2 * inter / total.clamp_min(1), torch.ones_like(total))


def train(net, loader, budget, lr, ema_decay, seed, device):
    """Train for ``budget`` seconds of wall clock with ProbSegTrainer; return the EMA handler and loss stats."""
    ema = EMAHandler(net, decay=ema_decay, warmup=True)
    trainer = ProbSegTrainer(
        device=device,
        max_epochs=10**6,
        train_data_loader=loader,
        network=net,
        optimizer=torch.optim.AdamW(net.parameters(), lr=lr),
        loss_function=torch.nn.MSELoss(),
        prepare_batch=DiffusionPrepareBatch(net, generator=seed),
        label_to_network=False,
        train_handlers=[ema],
    )
    losses = []
    start = time.perf_counter()

    @trainer.on(Events.ITERATION_COMPLETED)
    def _track(engine):
        losses.append(float(engine.state.output[0]["loss"]))
        if engine.state.iteration % 50 == 0:
            logger.info("iteration %d  loss %.4f", engine.state.iteration, np.mean(losses[-50:]))
        if time.perf_counter() - start > budget:
            engine.terminate()

    trainer.run()
    seconds = time.perf_counter() - start
    return ema, {
        "train_seconds": seconds,
        "iterations": len(losses),
        "first_loss": float(np.mean(losses[:20])) if losses else float("nan"),
        "last_loss": float(np.mean(losses[-20:])) if losses else float("nan"),
    }


def probabilities(net, images, num_samples, generator=None, **kwargs):
    """``(B, N, C, *spatial)`` probabilities of ``num_samples`` samples: softmax of the logits ``net.sample`` gives."""
    return torch.softmax(net.sample(net.distribution(images), num_samples, generator, **kwargs), 2)


@torch.no_grad()
def draw(net, images, num_samples, seed, chunk, **kwargs):
    """``(B, N, C, H, W)`` probabilities, ``chunk`` cases per call, one generator for the whole set."""
    gen = torch.Generator(device=images.device).manual_seed(seed)
    out = [
        probabilities(net, images[i : i + chunk], num_samples, generator=gen, **kwargs)
        for i in range(0, len(images), chunk)
    ]
    return torch.cat(out).cpu()


def ensemble_dice(probs, y_test, consensus, ensemble):
    """Dice of 1 sample and of the mean of ``ensemble`` samples, vs the majority vote and vs each annotator.

    The 1-sample Dice is each of the first ``ensemble`` samples scored on its own, averaged (the expected Dice of
    one sample, with less variance than scoring only the first sample).
    """
    one = probs[:, :ensemble].argmax(2)  # (B, E, H, W)
    mean = probs[:, :ensemble].mean(1).argmax(1)
    return {
        "dice1_vs_majority": float(dice(one, consensus[:, None]).mean()),
        f"dice{ensemble}_vs_majority": float(dice(mean, consensus).mean()),
        "dice1_vs_annotators": float(dice(one[:, :, None], y_test[:, None]).mean()),
        f"dice{ensemble}_vs_annotators": float(dice(mean[:, None], y_test).mean()),
    }


def distribution_metrics(samples, y_test):
    ged = generalized_energy_distance(samples, y_test, num_classes=2, return_terms=True)
    hm = hungarian_matched_iou(samples, y_test, num_classes=2)
    return {
        "ged": float(ged["ged"].mean()),
        "diversity_samples": float(ged["diversity_samples"].mean()),
        "hm_iou": float(hm.mean()),
    }


def timed(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - t


def part_2d(args, device):
    size = (args.size, args.size)
    train_cases = ambiguous_lesions_2d(args.train_cases, size, num_annotators=4, seed=args.seed)
    test_cases = ambiguous_lesions_2d(args.test_cases, size, num_annotators=4, seed=args.seed + 1000)
    data = [
        {"image": torch.from_numpy(c["image"]).float(), "label": torch.from_numpy(c["label"]).long()}
        for c in train_cases
    ]
    loader = DataLoader(
        data, batch_size=args.batch_size, shuffle=True, generator=torch.Generator().manual_seed(args.seed)
    )
    x_test = torch.from_numpy(np.stack([c["image"] for c in test_cases])).float().to(device)
    y_test = torch.from_numpy(np.stack([c["label"] for c in test_cases])).long()
    consensus = torch.from_numpy(np.stack([majority_vote(c["label"], num_labels=2) for c in test_cases])).long()

    torch.manual_seed(args.seed)
    net = DiffusionSegmentation(
        2,
        image_channels=1,
        num_classes=2,
        channels=tuple(args.channels),
        attention_levels=tuple(bool(a) for a in args.attention),
        norm_num_groups=args.norm_groups,
        num_train_timesteps=args.train_timesteps,
        schedule=args.schedule,
        prediction_type=args.prediction_type,
        num_inference_steps=args.ddim_steps,
        eta=args.eta,
    ).to(device)
    ema, train_stats = train(net, loader, args.budget, args.lr, args.ema_decay, args.seed, device)
    logger.info("2D training: %s", train_stats)

    n_samples = max(args.ged_samples, args.ensemble)
    with ema.swapped():
        net.eval()
        probs, t_ddim_all = timed(
            lambda: draw(
                net, x_test, n_samples, args.seed, args.chunk, sampler="ddim", num_inference_steps=args.ddim_steps
            )
        )
        ddim_row = {"sampler": f"ddim-{args.ddim_steps}", **ensemble_dice(probs, y_test, consensus, args.ensemble)}
        ddim_row.update(distribution_metrics(probs[:, : args.ged_samples].argmax(2), y_test))
        ddim_row["seconds_per_case"] = t_ddim_all / len(x_test)

        # DDPM (all T steps) vs DDIM on the same cases, same batch, same number of samples
        sub_x, sub_y, sub_c = x_test[: args.ddpm_cases], y_test[: args.ddpm_cases], consensus[: args.ddpm_cases]
        compare = []
        runs = [("ddim", args.ddim_steps, eta) for eta in (args.compare_etas or [args.eta])] + [("ddpm", None, None)]
        for sampler, steps, eta in runs:
            p, seconds = timed(
                lambda sampler=sampler, steps=steps, eta=eta: draw(
                    net,
                    sub_x,
                    args.ensemble,
                    args.seed,
                    len(sub_x),
                    sampler=sampler,
                    num_inference_steps=steps,
                    **({} if eta is None else {"eta": eta}),
                )
            )
            row = {
                "sampler": f"{sampler}-{steps or args.train_timesteps}" + ("" if eta is None else f" eta={eta:g}"),
                "cases": len(sub_x),
                "samples": args.ensemble,
                "seconds": seconds,
            }
            row.update(ensemble_dice(p, sub_y, sub_c, args.ensemble))
            compare.append(row)
            logger.info("%s", row)
        ddpm = compare[-1]
        key = f"dice{args.ensemble}_vs_majority"
        for row in compare[:-1]:
            row["speedup_over_ddpm"] = ddpm["seconds"] / row["seconds"]
            row["dice_minus_ddpm"] = row[key] - ddpm[key]

    oracle = torch.from_numpy(
        np.stack([sample_oracle(c, args.ged_samples, seed=i) for i, c in enumerate(test_cases)])
    ).long()
    oracle_row = {"sampler": "oracle", **distribution_metrics(oracle, y_test)}
    # the oracle's "1 sample" and "mean of 5" for reference
    oracle_probs = torch.nn.functional.one_hot(oracle, 2).movedim(-1, 2).float()
    oracle_row.update(ensemble_dice(oracle_probs, y_test, consensus, min(args.ensemble, args.ged_samples)))
    logger.info("DDIM: %s", ddim_row)
    logger.info("oracle: %s", oracle_row)
    return {
        "train": train_stats,
        "rows": [ddim_row, oracle_row],
        "ddpm_vs_ddim": compare,
        "parameters": sum(p.numel() for p in net.parameters()),
    }


def _phantom_tensors(size, seed):
    p = brats_phantom((size,) * 3, num_raters=3, seed=seed)
    image = torch.from_numpy(p["image"]).float()
    image = (image - image.mean(dim=(1, 2, 3), keepdim=True)) / image.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)
    return image, torch.from_numpy(p["raters"]).long(), torch.from_numpy(p["seg"]).long()


def part_3d(args, device):
    roi = (args.roi,) * 3
    torch.manual_seed(args.seed)
    net = DiffusionSegmentation(
        3,
        image_channels=4,
        num_classes=4,
        channels=tuple(args.channels_3d),
        attention_levels=(False,) * len(args.channels_3d),
        norm_num_groups=args.norm_groups,
        num_train_timesteps=args.train_timesteps,
        num_inference_steps=args.volume_steps,
    ).to(device)
    # brief patch training on other phantoms
    gen = torch.Generator().manual_seed(args.seed)
    vols = [_phantom_tensors(args.volume_size, args.seed + 1 + i) for i in range(args.train_volumes)]
    patches = []
    for _ in range(64):
        img, raters, _ = vols[int(torch.randint(0, len(vols), (1,), generator=gen))]
        start = [int(torch.randint(0, args.volume_size - args.roi + 1, (1,), generator=gen)) for _ in range(3)]
        sl = tuple(slice(s, s + args.roi) for s in start)
        patches.append({"image": img[(slice(None), *sl)], "label": raters[(slice(None), *sl)]})
    loader = DataLoader(patches, batch_size=2, shuffle=True, generator=torch.Generator().manual_seed(args.seed))
    ema, train_stats = train(net, loader, args.budget_3d, args.lr, args.ema_decay, args.seed, device)
    logger.info("3D training: %s", train_stats)

    image, _, seg = _phantom_tensors(args.volume_size, args.seed)
    image = image[None].to(device)
    planes = {
        "constant": window_borders((args.volume_size,) * 3, roi, args.overlap),
        "gaussian": window_transitions((args.volume_size,) * 3, roi, args.overlap),
    }

    def seams(probs, blend):
        # each sample's deviation from the mean of the samples: the image content cancels out (as for the inferer)
        dev = probs - probs.mean(1, keepdim=True)
        ratios = [float(seam_ratio(dev, planes[blend][a], axis=3 + a, margin=1)) for a in range(3) if planes[blend][a]]
        return float(np.mean(ratios)), ratios

    def row(method, blend, probs, seconds, reference):
        probs = torch.as_tensor(probs.as_tensor() if hasattr(probs, "as_tensor") else probs).float().cpu()
        ratio, per_axis = seams(probs, blend)
        out = {
            "method": method,
            "seam_ratio": ratio,
            "seam_ratio_per_axis": per_axis,
            "seconds": seconds,
            "whole_tumour_dice": float(dice(probs.mean(1).argmax(1)[0] > 0, seg > 0, spatial_ndim=3)),
        }
        if reference is not None:
            diff = (probs - reference).abs()
            out.update(mean_abs_diff_to_whole=float(diff.mean()), max_abs_diff_to_whole=float(diff.max()))
        logger.info("3D %s: %s", method, out)
        return out, probs

    rows = []
    with ema.swapped(), torch.no_grad():
        net.eval()
        # reference: the whole volume as ONE window (same seed), when it fits; no window border inside it
        reference = None
        if args.whole_reference:
            gen = torch.Generator(device=device).manual_seed(args.seed)
            probs, seconds = timed(lambda gen=gen: probabilities(net, image, args.volume_samples, generator=gen))
            whole_row, reference = row("whole-volume", "gaussian", probs, seconds, None)
            rows.append(whole_row)
        for mode in args.volume_modes:
            method, blend = mode.split("-")

            def window_fn(tensor, patch_fn, blend=blend):
                return sliding_window_inference(
                    tensor, roi, args.sw_batch_size, patch_fn, overlap=args.overlap, mode=blend
                )

            gen = torch.Generator(device=device).manual_seed(args.seed)
            if method == "windowed":
                probs, seconds = timed(
                    lambda gen=gen, fn=window_fn: probabilities(net, image, args.volume_samples, gen, window_fn=fn)
                )
            else:  # naive: every window runs its own reverse process with its own noise

                def predictor(window, gen=gen):
                    p = probabilities(net, window, args.volume_samples, generator=gen)
                    return p.reshape(window.shape[0], -1, *window.shape[2:])

                probs, seconds = timed(
                    lambda fn=window_fn, predictor=predictor: fn(image, predictor).reshape(
                        1, args.volume_samples, 4, *image.shape[2:]
                    )
                )
            rows.append(row(mode, blend, probs, seconds, reference)[0])
    return {"train": train_stats, "rows": rows, "planes": planes}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, default=600.0, help="2D training wall-clock budget in seconds")
    parser.add_argument("--size", type=int, default=64, help="2D image side (the set is generated at this size)")
    parser.add_argument("--train-cases", type=int, default=400)
    parser.add_argument("--test-cases", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--ema-decay", type=float, default=0.999)
    parser.add_argument("--channels", type=int, nargs="+", default=[32, 64, 64])
    parser.add_argument("--attention", type=int, nargs="+", default=[0, 0, 1])
    parser.add_argument("--norm-groups", type=int, default=8)
    parser.add_argument("--train-timesteps", type=int, default=1000, help="T (DDPM samples with all T steps)")
    parser.add_argument("--schedule", default="linear_beta")
    parser.add_argument(
        "--prediction-type",
        default="epsilon",
        choices=["epsilon", "v_prediction"],
        help="what the network predicts (v: Salimans & Ho, ICLR 2022, better suited to few-step sampling)",
    )
    parser.add_argument("--eta", type=float, default=0.0, help="DDIM eta (0: deterministic given the noise)")
    parser.add_argument(
        "--compare-etas",
        type=float,
        nargs="+",
        default=None,
        help="DDIM etas compared with DDPM on the --ddpm-cases (default: --eta only)",
    )
    parser.add_argument("--ddim-steps", type=int, default=20)
    parser.add_argument("--ensemble", type=int, default=5, help="samples averaged for the ensemble Dice")
    parser.add_argument("--ged-samples", type=int, default=16, help="samples per case for GED/HM-IoU (multiple of 4)")
    parser.add_argument("--ddpm-cases", type=int, default=4, help="cases for the DDPM vs DDIM comparison")
    parser.add_argument("--chunk", type=int, default=4, help="cases per sampling call")
    parser.add_argument("--skip-2d", action="store_true")
    parser.add_argument("--skip-3d", action="store_true")
    parser.add_argument("--volume-size", type=int, default=96)
    parser.add_argument("--roi", type=int, default=48)
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--sw-batch-size", type=int, default=4)
    parser.add_argument("--channels-3d", type=int, nargs="+", default=[16, 32, 32])
    parser.add_argument("--budget-3d", type=float, default=120.0, help="3D patch training budget in seconds")
    parser.add_argument("--train-volumes", type=int, default=2)
    parser.add_argument("--volume-steps", type=int, default=5, help="DDIM steps for the 3D volume")
    parser.add_argument("--volume-samples", type=int, default=2)
    parser.add_argument(
        "--no-whole-reference",
        dest="whole_reference",
        action="store_false",
        help="skip the reference sample of the whole volume as one window (memory)",
    )
    parser.add_argument(
        "--volume-modes",
        nargs="+",
        default=["windowed-gaussian", "naive-gaussian"],
        choices=["windowed-gaussian", "windowed-constant", "naive-gaussian", "naive-constant"],
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="diffusion", help="results file stem")
    args = parser.parse_args(argv)
    if args.ged_samples % 4:
        parser.error(f"--ged-samples must be a multiple of the 4 annotators (HM-IoU), got {args.ged_samples}.")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    command = f"python benchmarks/bench_diffusion.py {' '.join(argv if argv is not None else sys.argv[1:])}"

    results = {"machine": machine_info(), "args": vars(args), "command": command}
    md = ["# Diffusion segmentation (Wolleb et al., MIDL 2022): implicit ensembles, DDIM, whole volumes\n"]
    if not args.skip_2d:
        r2 = part_2d(args, device)
        results["2d"] = r2
        tr = r2["train"]
        md.append(
            f"## 2D ambiguous lesions ({args.size}x{args.size}, K=4 annotators, {args.test_cases} held-out cases)\n\n"
            f"Training: {args.train_cases} cases, {tr['iterations']} iterations of batch {args.batch_size} in "
            f"{tr['train_seconds']:.0f} s (budget {args.budget:.0f} s), loss {tr['first_loss']:.3f} -> "
            f"{tr['last_loss']:.3f}; EMA {args.ema_decay}; UNet channels {args.channels}, "
            f"{r2['parameters']} parameters; T = {args.train_timesteps} ({args.schedule}), "
            f"prediction {args.prediction_type}, DDIM eta {args.eta}.\n"
        )
        e = args.ensemble
        cols = [
            "sampler",
            "dice1_vs_majority",
            f"dice{e}_vs_majority",
            "dice1_vs_annotators",
            f"dice{e}_vs_annotators",
            "ged",
            "hm_iou",
            "diversity_samples",
            "seconds_per_case",
        ]
        md.append(
            f"GED / HM-IoU with {args.ged_samples} samples per case; Dice `{e}` = argmax of the mean of {e} "
            "samples.\n\n" + md_table(r2["rows"], cols) + "\n"
        )
        ref_path = os.path.join(RESULTS_DIR, "lesions2d.json")
        if os.path.exists(ref_path):
            with open(ref_path) as f:
                ref = json.load(f)
            ref_rows = [
                {"model": r["model"], "ged": r.get("ged"), "hm_iou": r.get("hm_iou")} for r in ref.get("rows", [])
            ]
            md.append(
                f"Beside `results/lesions2d.json` (PU-Net/SSN, {ref['args'].get('samples')} samples, "
                f"{ref['args'].get('test_cases')} held-out cases of the same set):\n\n"
                + md_table(ref_rows, ["model", "ged", "hm_iou"])
                + "\n"
            )
        md.append(
            f"DDPM ({args.train_timesteps} steps) vs DDIM ({args.ddim_steps} steps), same {args.ddpm_cases} cases x "
            f"{e} samples, timed in this run:\n\n"
            + md_table(
                r2["ddpm_vs_ddim"],
                [
                    "sampler",
                    "seconds",
                    "speedup_over_ddpm",
                    "dice1_vs_majority",
                    f"dice{e}_vs_majority",
                    "dice_minus_ddpm",
                ],
            )
            + "\n"
        )
    if not args.skip_3d:
        r3 = part_3d(args, device)
        results["3d"] = r3
        tr = r3["train"]
        md.append(
            f"## 3D whole volume ({args.volume_size}^3 phantom, 4 modalities, 4 labels, windows {args.roi}^3, "
            f"overlap {args.overlap})\n\n"
            f"Brief patch training: {tr['iterations']} iterations in {tr['train_seconds']:.0f} s; "
            f"{args.volume_samples} samples, DDIM {args.volume_steps} steps. `seam_ratio` = mean |difference| of "
            "each sample's deviation from the sample mean across the planes where windows meet / across interior "
            f"planes (1 = no seam): window edges {r3['planes']['constant'][0]} for constant blending, overlap "
            f"middles {r3['planes']['gaussian'][0]} for Gaussian blending (and for the whole-volume row).\n\n"
            + md_table(
                r3["rows"],
                [
                    "method",
                    "seam_ratio",
                    "mean_abs_diff_to_whole",
                    "max_abs_diff_to_whole",
                    "seconds",
                    "whole_tumour_dice",
                ],
            )
            + "\n\n`*_diff_to_whole`: |probabilities - those of the whole volume sampled as one window with the same "
            "seed|. A seam moves `seam_ratio` away from 1 in either direction: with a briefly trained model the "
            "samples are dominated by per-voxel noise, and the naive overlaps average two independent samples, which "
            "lowers "
            "the plane-to-plane differences there (ratio below 1); a trained model's coherent samples jump instead "
            "(ratio above 1). The difference to the whole-volume sample is the sharper test." + "\n"
        )
    md.append(f"\nCommand: `{command}`\n")
    paths = write_results(args.name, results, "\n".join(md))
    logger.info("wrote %s", ", ".join(paths))
    return results


if __name__ == "__main__":
    main()
