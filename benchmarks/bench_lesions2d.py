# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""Quality benchmark on the 2D ambiguous-lesion set: deterministic U-Net vs Probabilistic U-Net vs SSN vs the oracle.

Every model is trained the same way (same cases, same number of iterations, same batch size, one random
annotator per case and iteration, as Kohl et al. 2018 train on LIDC), then evaluated on held-out cases with
``--samples`` samples each against the K annotations:

- GED (generalized energy distance, PHiSeg/SSN convention) and HM-IoU (Kohl et al. 2019);
- the oracle: the same metrics for samples drawn from each held-out case's true mask distribution;
- the sampling cost: time for ``--samples`` samples vs one forward pass (eval), on the held-out batch.

Run (the canonical run trains three models for 1000 iterations each, about 2 h on 2 CPU cores)::

    python benchmarks/bench_lesions2d.py --iterations 1000   # results/lesions2d.md
    python benchmarks/bench_lesions2d.py --iterations 50 --test-cases 8 --samples 16 --name lesions2d_smoke

    # a sweep run (results/experiments.md): a wall-clock budget per model (14 min), cosine learning-rate decay,
    # 4000 training cases, 1 thread each, written to a scratch folder
    MONAI_PROBSEG_RESULTS_DIR=/tmp/probseg_sweeps python benchmarks/bench_lesions2d.py --models prob_unet \\
        --iterations 100000 --budget 840 --schedule cosine --lr-scale 2 --train-cases 4000 --channels 16 32 64 128 \\
        --threads 1 --name lesions2d_15min_prob_unet

The GED is also reported separately for the held-out cases where some annotators may see no lesion
(``ged_may_be_empty``) and for the others (``ged_always_lesion``); ``--save-dir`` keeps the trained weights for
further analysis.

Writes ``benchmarks/results/<name>.json`` and ``<name>.md`` (``--name lesions2d`` by default, the canonical result).
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
from monai.networks.nets import UNet
from tqdm.auto import tqdm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import machine_info, md_table, results_dir, write_results  # noqa: E402

from monai_probseg.data.synthetic import ambiguous_lesions_2d, sample_oracle  # noqa: E402
from monai_probseg.losses import ELBOLoss, LowRankMVNNLLLoss  # noqa: E402
from monai_probseg.metrics import generalized_energy_distance, hungarian_matched_iou  # noqa: E402
from monai_probseg.networks.nets import ProbabilisticUNet, StochasticSegmentationNetwork  # noqa: E402

logger = logging.getLogger("bench_lesions2d")

MODELS = ("unet", "prob_unet", "ssn")
# options added after results were first written, with the value those older results were made with
ADDED_ARGS = {"mc_samples": 20, "mean_ce_weight": 0.0, "latent_dim": 6}


def build(
    name: str,
    channels: tuple[int, ...],
    beta: float = 1.0,
    mc_samples: int = 20,
    mean_ce_weight: float = 0.0,
    latent_dim: int = 6,
) -> tuple[torch.nn.Module, torch.nn.Module | None, float]:
    """Model, loss and learning rate for one family (the loss is None for the deterministic U-Net: CE)."""
    if name == "unet":
        strides = (2,) * (len(channels) - 1)
        return UNet(2, 1, 2, channels=channels, strides=strides, num_res_units=2), None, 1e-3
    if name == "prob_unet":
        # Kohl et al. 2018: latent_dim 6, beta 1, 3 fcomb layers, CE summed over pixels
        return ProbabilisticUNet(2, 1, 2, latent_dim=latent_dim, channels=channels), ELBOLoss(beta=beta), 5e-4
    if name == "ssn":
        # Monteiro et al. 2020: rank 10, 20 MC samples (antithetic)
        strides = (2,) * (len(channels) - 1)
        net = StochasticSegmentationNetwork(2, 1, 2, rank=10, channels=channels, strides=strides)
        return net, LowRankMVNNLLLoss(num_mc_samples=mc_samples, mean_ce_weight=mean_ce_weight), 1e-3
    raise ValueError(f"unknown model '{name}', expected one of {MODELS}.")


def train(name, net, loss_fn, lr, images, labels, iterations, batch_size, seed, budget=None, schedule="constant"):
    """Plain training loop: random batch, one random annotator per case.

    Stops after ``iterations`` or ``budget`` seconds, whichever comes first. ``schedule="cosine"`` decays the
    learning rate to 0 along the progress ``max(iteration / iterations, elapsed / budget)``.
    """
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    net.train()
    losses = []
    start = time.perf_counter()
    bar = tqdm(total=iterations, desc=f"train {name}", leave=False)
    for it in range(iterations):
        progress = it / iterations
        if budget is not None:
            progress = max(progress, (time.perf_counter() - start) / budget)
        if progress >= 1.0:
            break
        if schedule == "cosine":
            for group in opt.param_groups:
                group["lr"] = lr * 0.5 * (1.0 + np.cos(np.pi * progress))
        bar.update(1)
        idx = torch.randint(0, images.shape[0], (batch_size,), generator=gen)
        ann = torch.randint(0, labels.shape[1], (batch_size,), generator=gen)
        x = images[idx]
        y = labels[idx, ann].unsqueeze(1).long()
        opt.zero_grad(set_to_none=True)
        if loss_fn is None:
            loss = torch.nn.functional.cross_entropy(net(x), y[:, 0])
        elif name == "prob_unet":
            loss = loss_fn(net(x, y), y)["loss"]
        else:
            loss = loss_fn(net(x, y), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    bar.close()
    return time.perf_counter() - start, losses


@torch.no_grad()
def draw(name, net, x, num_samples, seed):
    """(B, N, H, W) label maps: N samples, or the argmax repeated for the deterministic U-Net."""
    net.eval()
    if name == "unet":
        return net(x).argmax(1, keepdim=True).expand(-1, num_samples, -1, -1)
    gen = torch.Generator().manual_seed(seed)
    maps = net.distribution(x)  # the networks run once; only the sampler runs per chunk of 25
    out = [net.sample(maps, min(25, num_samples - start), gen).argmax(2) for start in range(0, num_samples, 25)]
    return torch.cat(out, 1)


@torch.no_grad()
def sampling_cost(name, net, x, num_samples, repeats=3):
    """Median wall time of one forward pass and of ``num_samples`` samples (distribution + sampler)."""
    net.eval()

    def median_time(fn):
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return float(np.median(times))

    t_forward = median_time(lambda: net(x))
    if name == "unet":
        return t_forward, None
    gen = torch.Generator().manual_seed(0)
    t_samples = median_time(lambda: net.sample(net.distribution(x), num_samples, gen))
    return t_forward, t_samples


def evaluate(samples, annotations, groups=None):
    """Mean GED (and its terms) and HM-IoU; with ``groups`` (name -> boolean case mask) also the GED per group."""
    ged = generalized_energy_distance(samples, annotations, num_classes=2, return_terms=True)
    hm = hungarian_matched_iou(samples, annotations, num_classes=2)
    out = {
        "ged": float(ged["ged"].mean()),
        "diversity_samples": float(ged["diversity_samples"].mean()),
        "cross": float(ged["cross"].mean()),
        "hm_iou": float(hm.mean()),
    }
    for group, mask in (groups or {}).items():
        out[f"ged_{group}"] = float(ged["ged"][mask].mean()) if mask.any() else float("nan")
    return out


def case_groups(cases):
    """Held-out cases split by whether some annotators may see no lesion (``p_empty > 0``)."""
    may_be_empty = torch.tensor([c["modes"][0][0].max() == 0 for c in cases])
    return {"may_be_empty": may_be_empty, "always_lesion": ~may_be_empty}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--iterations", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--size", type=int, default=64, help="image side (the set is generated at this size)")
    parser.add_argument("--train-cases", type=int, default=400)
    parser.add_argument("--test-cases", type=int, default=64)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--channels", type=int, nargs="+", default=[32, 64, 128, 192])
    parser.add_argument("--budget", type=float, default=None, help="training seconds per model (stops early)")
    parser.add_argument("--schedule", choices=("constant", "cosine"), default="constant", help="learning-rate decay")
    parser.add_argument("--lr-scale", type=float, default=1.0, help="multiplies each model's learning rate")
    parser.add_argument("--beta", type=float, default=1.0, help="KL weight of the Probabilistic U-Net's ELBO")
    parser.add_argument("--latent-dim", type=int, default=6, help="PU-Net: latent dimension (the paper's 6)")
    parser.add_argument("--mc-samples", type=int, default=20, help="SSN: Monte Carlo samples of the likelihood")
    parser.add_argument("--mean-ce-weight", type=float, default=0.0, help="SSN: weight of the mean's cross-entropy")
    parser.add_argument("--save-dir", default=None, help="save each trained model's state_dict here")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="lesions2d", help="results file stem")
    parser.add_argument(
        "--merge-from",
        default=None,
        help="instead of training, take the model rows of results/<NAME>.json (a run with the same settings)",
    )
    parser.add_argument(
        "--append",
        action="store_true",
        help="keep the rows of other models already in the results file (same settings required)",
    )
    args = parser.parse_args(argv)
    cmd = " ".join(argv if argv is not None else sys.argv[1:])
    args.commands = [cmd]
    if args.samples % 4:
        parser.error(f"--samples must be a multiple of the 4 annotators (HM-IoU), got {args.samples}.")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    size = (args.size, args.size)
    train_cases = ambiguous_lesions_2d(args.train_cases, size, num_annotators=4, seed=args.seed)
    test_cases = ambiguous_lesions_2d(args.test_cases, size, num_annotators=4, seed=args.seed + 1000)
    images = torch.from_numpy(np.stack([c["image"] for c in train_cases])).float()
    labels = torch.from_numpy(np.stack([c["label"] for c in train_cases])).long()
    x_test = torch.from_numpy(np.stack([c["image"] for c in test_cases])).float()
    y_test = torch.from_numpy(np.stack([c["label"] for c in test_cases])).long()

    oracle = torch.from_numpy(np.stack([sample_oracle(c, args.samples, seed=i) for i, c in enumerate(test_cases)]))
    groups = case_groups(test_cases)
    rows = [{"model": "oracle", **evaluate(oracle.long(), y_test, groups)}]
    logger.info("oracle: %s", rows[0])

    same = (
        "iterations",
        "batch_size",
        "size",
        "train_cases",
        "test_cases",
        "samples",
        "channels",
        "seed",
        "budget",
        "schedule",
        "lr_scale",
        "beta",
        "mc_samples",
        "mean_ce_weight",
        "latent_dim",
    )
    if args.merge_from:
        with open(os.path.join(results_dir(), f"{args.merge_from}.json")) as f:
            other = json.load(f)
        if any(other["args"].get(k, ADDED_ARGS.get(k)) != vars(args)[k] for k in same):
            parser.error(f"--merge-from {args.merge_from}: made with other settings: {other['args']}")
        if abs(other["rows"][0]["ged"] - rows[0]["ged"]) > 1e-6:
            parser.error(f"--merge-from {args.merge_from}: its oracle differs ({other['rows'][0]} vs {rows[0]})")
        rows += [r for r in other["rows"] if r["model"] != "oracle"]
        args.models = []
        args.commands = other["args"].get("commands", []) + args.commands

    for name in args.models:
        torch.manual_seed(args.seed)
        net, loss_fn, lr = build(
            name,
            tuple(args.channels),
            beta=args.beta,
            mc_samples=args.mc_samples,
            mean_ce_weight=args.mean_ce_weight,
            latent_dim=args.latent_dim,
        )
        lr = lr * args.lr_scale
        train_time, losses = train(
            name,
            net,
            loss_fn,
            lr,
            images,
            labels,
            args.iterations,
            args.batch_size,
            args.seed,
            budget=args.budget,
            schedule=args.schedule,
        )
        if args.save_dir:
            os.makedirs(args.save_dir, exist_ok=True)
            torch.save(net.state_dict(), os.path.join(args.save_dir, f"{args.name}_{name}.pt"))
        samples = draw(name, net, x_test, args.samples, args.seed)
        row = {"model": name, **evaluate(samples, y_test, groups)}
        t_fwd, t_samples = sampling_cost(name, net, x_test[:8], args.samples)
        row.update(
            train_seconds=train_time,
            iterations=len(losses),
            first_loss=float(np.mean(losses[:20])),
            last_loss=float(np.mean(losses[-20:])),
            forward_seconds_batch8=t_fwd,
            samples_seconds_batch8=t_samples if t_samples is not None else "",
            samples_over_forward=t_samples / t_fwd if t_samples is not None else "",
            parameters=sum(p.numel() for p in net.parameters()),
        )
        rows.append(row)
        logger.info("%s: %s", name, row)

    if args.append:
        previous = os.path.join(results_dir(), f"{args.name}.json")
        if os.path.exists(previous):
            with open(previous) as f:
                old = json.load(f)
            if any(old["args"].get(k, ADDED_ARGS.get(k)) != vars(args)[k] for k in same):
                parser.error(f"--append: {previous} was made with other settings: {old['args']}")
            kept = [r for r in old["rows"] if r["model"] not in {r2["model"] for r2 in rows}]
            rows = rows[:1] + kept + rows[1:]
            rows = rows[:1] + sorted(rows[1:], key=lambda r: MODELS.index(r["model"]))
            args.commands = old["args"].get("commands", []) + args.commands

    oracle_ged = rows[0]["ged"]
    for row in rows[1:]:
        row["ged_over_oracle"] = row["ged"] / oracle_ged
    det = next((r for r in rows if r["model"] == "unet"), None)
    if det is not None:
        for row in rows[1:]:
            row["ged_over_unet"] = row["ged"] / det["ged"]

    results = {"machine": machine_info(), "args": vars(args), "rows": rows}
    cols = [
        "model",
        "ged",
        "ged_over_oracle",
        "ged_over_unet",
        "hm_iou",
        "diversity_samples",
        "ged_may_be_empty",
        "ged_always_lesion",
        "iterations",
        "train_seconds",
        "samples_over_forward",
    ]
    md = (
        f"# 2D ambiguous lesions: {args.test_cases} held-out cases, {args.samples} samples, K=4 annotators\n\n"
        f"Training: {args.train_cases} cases of {args.size}x{args.size}, batch {args.batch_size}, one random "
        f"annotator per case, at most {args.iterations} iterations"
        + (f" or {args.budget:.0f} s" if args.budget else "")
        + f" per model, {args.schedule} learning rate (x{args.lr_scale}), UNet channels {args.channels}, "
        f"PU-Net beta {args.beta}. {args.threads} CPU thread(s) per model.\n\n"
        + md_table(rows, cols)
        + "\n\n`samples_over_forward`: time of "
        + f"{args.samples} samples (one distribution() pass + sampler) / one forward pass, batch of 8. "
        + "`ged_may_be_empty`: GED over the held-out cases where some annotators may see no lesion "
        + "(contrast < 0.45), `ged_always_lesion` over the others.\n\n"
        + "Commands: "
        + ", ".join(f"`python benchmarks/bench_lesions2d.py {c}`" for c in getattr(args, "commands", [cmd]))
        + "\n"
    )
    paths = write_results(args.name, results, md)
    logger.info("wrote %s", ", ".join(paths))
    return results


if __name__ == "__main__":
    main()
