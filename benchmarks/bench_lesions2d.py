# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""The 2D leaderboard: every method of the package on the ambiguous-lesion set, against the oracle.

Methods (``--models``), all on the same training cases, with the same wall-clock training budget (``--budget``
seconds, or ``--iterations``, whichever ends first) and evaluated with ``--samples`` samples on the same held-out
cases (generated with seed ``--seed + 1000``, never used in training or in choosing settings):

- ``unet``: deterministic MONAI ``UNet`` (cross-entropy); its "samples" are its argmax, repeated;
- ``mc_dropout``: the same ``UNet`` with dropout ``--dropout`` in every layer, sampled by
  :py:class:`~monai_probseg.inferers.MCDropout` (Gal & Ghahramani 2016);
- ``ensemble``: :py:class:`~monai_probseg.inferers.DeepEnsemble` of ``--members`` U-Nets (Lakshminarayanan et al.
  2017) that share the budget (each trains ``budget / members`` seconds); sample ``n`` is member ``n mod members``;
- ``flip_tta``: :py:class:`~monai_probseg.inferers.FlipTTA` of the trained ``unet`` (4 flips in 2D, no training of
  its own); sample ``n`` is flip ``n mod 4``;
- ``prob_unet``: :py:class:`~monai_probseg.networks.nets.ProbabilisticUNet` + ``ELBOLoss`` (Kohl et al. 2018);
- ``ssn``: :py:class:`~monai_probseg.networks.nets.StochasticSegmentationNetwork` with the paper's loss (Monteiro
  et al. 2020: rank 10, 20 Monte Carlo samples); ``ssn_meance``: the same plus ``--meance-weight`` times the mean
  logits' cross-entropy (the best recipe of ``results/experiments.md``);
- ``diffusion``: :py:class:`~monai_probseg.networks.nets.DiffusionSegmentation` (Wolleb et al. 2022), v-prediction,
  EMA 0.999, sampled with DDIM (``--ddim-steps``, eta ``--ddim-eta``);
- ``mose``: :py:class:`~monai_probseg.networks.nets.MixtureOfStochasticExperts` + ``MoSELoss`` (Gao et al. 2023).

Spread calibration: the methods with a ``sample_scale`` (``prob_unet``: the prior's standard deviation; ``ssn``,
``ssn_meance``, ``mose``: the logit noise) get, after training, the scale of ``--scales`` whose samples have the
lowest GED on ``--val-cases`` VALIDATION cases (the cases after the training ones in the training seed's stream,
never trained on; the shipped 2D bundles choose theirs on the same cases with ``calibrate_lesions2d_scale.py``), the
post-hoc calibration a user does on held-out data; the row reports the chosen ``sample_scale`` and the
validation GED at every scale (``val_ged_scale_<s>``). ``--scales 1`` turns it off.

Every method but ``mose`` sees one random annotator per case and iteration (as Kohl et al. 2018 train on LIDC);
the MoSE loss matches the model's weighted samples to all ``K`` annotations of a case, as the paper does. Images
are z-score normalised per image (MONAI's ``NormalizeIntensity``, as the 2D bundles do).

Columns: GED and HM-IoU (Kohl et al. 2019: samples and annotations replicated to a common multiple and matched
by the Hungarian algorithm) of ``--samples`` samples against the K annotations; ``ged_over_oracle`` and
``hm_iou_over_oracle`` (the oracle draws the same number of samples from each case's true mask distribution);
``diversity_over_oracle``, the samples' mean pairwise ``1 - IoU`` over the oracle's; ``no_lesion_error``, over the
held-out cases where some annotators may see no lesion, the fraction of samples whose nearest true mode
(foreground IoU) is the empty mask minus the true probability of that mode (signed, in points: negative = the
model draws "no lesion" too rarely); ``ece``, the expected calibration error (20 bins, lesion class) of the
samples' mean probabilities against the annotators' majority vote; ``train_step_over_unet``, seconds per training
iteration over the U-Net's (the median of 20 U-Net steps timed at the start of the row's own run, so that a row
appended on another machine keeps a same-machine ratio); ``samples_over_forward``, the time of ``--samples``
samples over one forward pass (eval, batch of 8 cases; for the ensemble and TTA the passes of their members, which
the samples repeat).

Run (the canonical leaderboard, one method after another, about 1 h on one CPU thread)::

    python benchmarks/bench_lesions2d.py --models unet flip_tta --budget 240 --threads 1
    python benchmarks/bench_lesions2d.py --models mose --budget 240 --threads 1 --append
    ...  # each further method with --append, as results/lesions2d.md lists
    python benchmarks/bench_lesions2d.py --models unet prob_unet --iterations 50 --budget 20 --test-cases 8 \\
        --samples 16 --name lesions2d_smoke   # smoke run

    # a sweep run (results/experiments.md) writes to a scratch folder
    MONAI_PROBSEG_RESULTS_DIR=/tmp/probseg_sweeps python benchmarks/bench_lesions2d.py --models prob_unet \\
        --budget 840 --train-cases 4000 --threads 1 --name lesions2d_15min_prob_unet

The GED is also reported separately for the held-out cases where some annotators may see no lesion
(``ged_may_be_empty``) and for the others (``ged_always_lesion``); ``--save-dir`` keeps the trained weights (for
``diagnose_lesions2d.py`` and the bundles).

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
from monai.transforms import NormalizeIntensity
from tqdm.auto import tqdm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import machine_info, md_table, results_dir, write_results  # noqa: E402

from monai_probseg.data.synthetic import ambiguous_lesions_2d, sample_oracle  # noqa: E402
from monai_probseg.engines import DiffusionPrepareBatch  # noqa: E402
from monai_probseg.handlers import ExponentialMovingAverage  # noqa: E402
from monai_probseg.inferers import DeepEnsemble, FlipTTA, MCDropout  # noqa: E402
from monai_probseg.losses import ELBOLoss, LowRankMVNNLLLoss, MoSELoss  # noqa: E402
from monai_probseg.metrics import (  # noqa: E402
    expected_calibration_error,
    generalized_energy_distance,
    hungarian_matched_iou,
    pairwise_iou,
)
from monai_probseg.networks.nets import (  # noqa: E402
    DiffusionSegmentation,
    MixtureOfStochasticExperts,
    ProbabilisticUNet,
    StochasticSegmentationNetwork,
)
from monai_probseg.utils import majority_vote  # noqa: E402

logger = logging.getLogger("bench_lesions2d")

MODELS = ("unet", "mc_dropout", "ensemble", "flip_tta", "prob_unet", "ssn", "ssn_meance", "diffusion", "mose")
# options added after results were first written, with the value those older results were made with
ADDED_ARGS = {
    "mc_samples": 20,
    "mean_ce_weight": 0.0,
    "latent_dim": 6,
    "test_seed": 1000,
    "mose_gate_pooling": "mean",
    "val_cases": 0,
    "scales": [1.0],
}
REPEATED = ("mc_dropout", "ensemble", "flip_tta")  # samples are full passes of networks
SCALED = ("prob_unet", "ssn", "ssn_meance", "mose")  # a ``sample_scale`` (spread of the noise / latent) to calibrate
SCALES = (1.0, 0.8, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1)
# Adam. MoSE's 2e-3 won on validation GED over 1e-3, 3e-3 and 5e-3 (10 % and 5 % below 1e-3 with two training
# seeds); 2e-3 for the PU-Net was 9 % worse than 1e-3, for SSN + mean CE a tie (2 %, one seed), so both keep 1e-3
# (results/experiments.md, section 12)
LEARNING_RATES = {"unet": 1e-3, "prob_unet": 1e-3, "ssn": 1e-3, "diffusion": 3e-4, "mose": 2e-3}


def _unet(channels, dropout=0.0):
    strides = (2,) * (len(channels) - 1)
    return UNet(2, 1, 2, channels=channels, strides=strides, num_res_units=2, dropout=dropout)


def build(
    name: str,
    channels: tuple[int, ...],
    beta: float = 1.0,
    mc_samples: int = 20,
    mean_ce_weight: float = 0.0,
    latent_dim: int = 6,
    **options,
) -> tuple[torch.nn.Module, torch.nn.Module | None, float]:
    """Model, loss and learning rate of one method (the loss is None for U-Net-based methods: cross-entropy).

    ``options``: ``dropout``, ``members``, ``meance_weight``, ``diffusion_channels``, ``ddim_steps``, ``ddim_eta``,
    ``experts``, ``mose_rank``, ``mose_samples``, ``mose_gamma`` (the command-line options of the same names).
    """
    strides = (2,) * (len(channels) - 1)
    if name == "unet":
        return _unet(channels), None, LEARNING_RATES["unet"]
    if name == "mc_dropout":
        return MCDropout(_unet(channels, options.get("dropout", 0.1))), None, LEARNING_RATES["unet"]
    if name == "ensemble":
        members = [_unet(channels) for _ in range(options.get("members", 5))]
        return DeepEnsemble(members), None, LEARNING_RATES["unet"]
    if name == "flip_tta":
        return FlipTTA(_unet(channels), spatial_axes=(0, 1)), None, LEARNING_RATES["unet"]
    if name == "prob_unet":
        # Kohl et al. 2018: latent_dim 6, beta 1, 3 fcomb layers, CE summed over pixels
        net = ProbabilisticUNet(2, 1, 2, latent_dim=latent_dim, channels=channels)
        return net, ELBOLoss(beta=beta), LEARNING_RATES["prob_unet"]
    if name in ("ssn", "ssn_meance"):
        # Monteiro et al. 2020: rank 10, 20 MC samples (antithetic)
        net = StochasticSegmentationNetwork(2, 1, 2, rank=10, channels=channels, strides=strides)
        weight = options.get("meance_weight", 4.0) if name == "ssn_meance" else mean_ce_weight
        return net, LowRankMVNNLLLoss(num_mc_samples=mc_samples, mean_ce_weight=weight), LEARNING_RATES["ssn"]
    if name == "diffusion":
        # Wolleb et al. 2022 with v-prediction (the better target in results/experiments.md), linear betas, T=1000
        net = DiffusionSegmentation(
            2,
            image_channels=1,
            num_classes=2,
            channels=tuple(options.get("diffusion_channels", (16, 32, 64))),
            attention_levels=(False,) * len(options.get("diffusion_channels", (16, 32, 64))),
            norm_num_groups=8,
            prediction_type="v_prediction",
            num_inference_steps=options.get("ddim_steps", 5),
            eta=options.get("ddim_eta", 1.0),
        )
        return net, torch.nn.MSELoss(), LEARNING_RATES["diffusion"]
    if name == "mose":
        # Gao et al. 2023: OT matching of K * S weighted samples to the annotations, IoU cost, gamma 1/2, beta 1
        net = MixtureOfStochasticExperts(
            2,
            1,
            2,
            num_experts=options.get("experts", 5),
            rank=options.get("mose_rank", 1),
            samples_per_expert=options.get("mose_samples", 4),
            channels=channels,
            strides=strides,
            gate_pooling=options.get("mose_gate_pooling", "mean_max"),
            backbone_channels=options.get("mose_features", 32),
        )
        loss = MoSELoss(
            cost=options.get("mose_cost", "iou"),
            gamma=options.get("mose_gamma", 0.5),
            solver=options.get("mose_solver", "sinkhorn"),
            ce_weight=options.get("mose_ce_weight", 0.0),
        )
        return net, loss, LEARNING_RATES["mose"]
    raise ValueError(f"unknown model '{name}', expected one of {MODELS}.")


def _networks(name, net):
    """The networks that train (the ensemble's members, the U-Net inside MC dropout / TTA, or the model)."""
    if name == "ensemble":
        return list(net.members)
    if name in ("mc_dropout", "flip_tta"):
        return [net.network]
    return [net]


def train(name, net, loss_fn, lr, images, labels, iterations, batch_size, seed, budget=None, schedule="constant"):
    """Plain training loop: random batch, one random annotator per case (all annotators for MoSE).

    Stops after ``iterations`` or ``budget`` seconds, whichever comes first; an ensemble's members share both
    (each gets ``1 / members`` of them). ``schedule="cosine"`` decays the learning rate to 0 along the progress
    ``max(iteration / iterations, elapsed / budget)``. Returns the seconds, the losses and, for diffusion, the EMA.
    """
    networks = _networks(name, net)
    share = len(networks)
    total_seconds, losses, ema = 0.0, [], None
    for m, member in enumerate(networks):
        gen = torch.Generator().manual_seed(seed + m)
        opt = (torch.optim.AdamW if name == "diffusion" else torch.optim.Adam)(member.parameters(), lr=lr)
        prepare = DiffusionPrepareBatch(member, generator=seed + m) if name == "diffusion" else None
        ema = ExponentialMovingAverage(member, decay=0.999, warmup=True) if name == "diffusion" else None
        member.train()
        its = max(1, iterations // share)
        member_budget = None if budget is None else budget / share
        start = time.perf_counter()
        bar = tqdm(total=its, desc=f"train {name}" + (f" {m}" if share > 1 else ""), leave=False)
        for it in range(its):
            progress = it / its
            if member_budget is not None:
                progress = max(progress, (time.perf_counter() - start) / member_budget)
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
                loss = torch.nn.functional.cross_entropy(member(x), y[:, 0])
            elif name == "prob_unet":
                loss = loss_fn(member(x, y), y)["loss"]
            elif name == "diffusion":
                inputs, target, _, kwargs = prepare({"image": x, "label": labels[idx].long()})
                loss = loss_fn(member(inputs, **kwargs), target)
            elif name == "mose":
                loss = loss_fn(member(x), labels[idx].long())
            else:
                loss = loss_fn(member(x, y), y)
            loss.backward()
            opt.step()
            if ema is not None:
                ema.update()
            losses.append(loss.item())
        bar.close()
        total_seconds += time.perf_counter() - start
    return total_seconds, losses, ema


def unet_step_seconds(images, labels, batch_size, channels, steps=20, seed=0):
    """Median seconds of one training iteration of the leaderboard's U-Net (batch, cross-entropy, Adam step).

    The reference of ``train_step_over_unet``, measured in the run of the rows it divides (3 warm-up steps).
    """
    net = _unet(channels)
    opt = torch.optim.Adam(net.parameters(), lr=LEARNING_RATES["unet"])
    gen = torch.Generator().manual_seed(seed)
    times = []
    for it in range(steps + 3):
        start = time.perf_counter()
        idx = torch.randint(0, images.shape[0], (batch_size,), generator=gen)
        ann = torch.randint(0, labels.shape[1], (batch_size,), generator=gen)
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(net(images[idx]), labels[idx, ann]).backward()
        opt.step()
        if it >= 3:
            times.append(time.perf_counter() - start)
    return float(np.median(times))


def _tile(samples: torch.Tensor, num_samples: int) -> torch.Tensor:
    """``(B, M, ...)`` samples of ``M`` fixed passes repeated to ``num_samples``: sample ``n`` is pass ``n mod M``."""
    return samples[:, torch.arange(num_samples) % samples.shape[1]]


def _sample_logits(name, net, x, num_samples, gen, options=None):
    """``(B, N, C, H, W)`` logits of ``num_samples`` samples (one distribution() pass, the sampler in chunks)."""
    options = options or {}
    maps = net.distribution(x)
    if name in ("ensemble", "flip_tta"):
        return _tile(net.sample(maps, min(num_samples, net.num_members), gen), num_samples)
    chunk = 25
    out = []
    for start in range(0, num_samples, chunk):
        n = min(chunk, num_samples - start)
        if name == "mc_dropout":
            out.append(net.sample(maps, n, gen, start=start))
        elif name == "diffusion":
            kwargs = {"sampler": "ddim", "num_inference_steps": options.get("ddim_steps", 5)}
            out.append(net.sample(maps, n, gen, eta=options.get("ddim_eta", 1.0), **kwargs))
        else:
            out.append(net.sample(maps, n, gen))
    return torch.cat(out, 1)


@torch.no_grad()
def draw_with_probs(name, net, x, num_samples, seed, options=None, cases_per_call=8):
    """``(B, N, H, W)`` label maps and ``(B, C, H, W)`` mean probabilities of ``num_samples`` samples per case.

    The deterministic U-Net's samples are its argmax repeated, its mean probabilities its softmax.
    """
    net.eval()
    if name == "unet":
        logits = net(x)
        return logits.argmax(1, keepdim=True).expand(-1, num_samples, -1, -1), torch.softmax(logits, 1)
    gen = torch.Generator().manual_seed(seed)
    labels, probs, seconds = [], [], []
    for i in range(0, x.shape[0], cases_per_call):
        start = time.perf_counter()
        logits = _sample_logits(name, net, x[i : i + cases_per_call], num_samples, gen, options)
        seconds.append(time.perf_counter() - start)
        labels.append(logits.argmax(2))
        probs.append(torch.softmax(logits.float(), 2).mean(1))
    net.last_draw_seconds = seconds  # wall time of each call (distribution + sampler), for the sampling cost
    return torch.cat(labels), torch.cat(probs)


def draw(name, net, x, num_samples, seed, options=None):
    """(B, N, H, W) label maps: N samples, or the argmax repeated for the deterministic U-Net."""
    return draw_with_probs(name, net, x, num_samples, seed, options)[0]


def choose_sample_scale(name, net, x_val, y_val, num_samples, seed, scales=SCALES, options=None):
    """Set ``net.sample_scale`` to the scale of lowest GED on VALIDATION cases; returns ``(best_row, rows)``.

    Each scale draws ``num_samples`` samples of every case (``x_val`` normalised images, ``y_val`` ``(B, K, H, W)``
    annotations) with the same seed; a row holds the scale, the GED, HM-IoU and ``whole_image``, the fraction of
    samples that cover more than half of the image (a tail draw of the noise that flips the whole background).
    Post-hoc spread calibration of the trained distribution (no training); never call it with test cases.
    """
    rows = []
    for scale in scales:
        net.sample_scale = float(scale)
        samples = draw(name, net, x_val, num_samples, seed, options)
        scores = evaluate(samples, y_val)
        whole = (samples > 0).flatten(2).float().mean(2) > 0.5
        rows.append(
            {
                "sample_scale": float(scale),
                "ged": scores["ged"],
                "hm_iou": scores["hm_iou"],
                "whole_image": float(whole.float().mean()),
            }
        )
        logger.info("%s validation, sample_scale %g: %s", name, scale, rows[-1])
    best = min(rows, key=lambda r: r["ged"])
    net.sample_scale = best["sample_scale"]
    return best, rows


@torch.no_grad()
def sampling_cost(name, net, x, num_samples, repeats=3, options=None):
    """Median wall time of one network pass (eval) and of ``num_samples`` samples (distribution + sampler).

    The sampling time is the median over the evaluation's calls of :py:func:`draw_with_probs` (8 cases each) when
    the network has just been evaluated, else measured here on ``x``.

    One pass: the network, the ensemble's first member, the U-Net under TTA, one denoiser pass of diffusion.
    """
    net.eval()

    def median_time(fn, n):
        times = []
        for _ in range(n):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return float(np.median(times))

    if name == "diffusion":  # one pass of the denoiser
        t = torch.full((x.shape[0],), net.num_train_timesteps - 1, dtype=torch.long)
        noise = torch.randn(x.shape[0], 1, *x.shape[2:])
        t_forward = median_time(lambda: net.denoise(x, noise, t), repeats)
    else:  # one pass of one network (the ensemble's first member, the U-Net under TTA)
        single = {"ensemble": lambda: net.members[0], "flip_tta": lambda: net.network}.get(name, lambda: net)()
        t_forward = median_time(lambda: single(x), repeats)
    if name == "unet":
        return t_forward, None
    if getattr(net, "last_draw_seconds", None):  # the evaluation's own calls (8 cases each): no extra sampling
        return t_forward, float(np.median(net.last_draw_seconds))
    gen = torch.Generator().manual_seed(0)
    t_samples = median_time(lambda: _sample_logits(name, net, x, num_samples, gen, options), repeats)
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


def mode_ious(samples: torch.Tensor, modes: torch.Tensor) -> torch.Tensor:
    """IoU of each of ``(N, H, W)`` label maps with each of ``(M, H, W)`` modes: ``(N, M)``, 1 when both are empty."""
    return pairwise_iou(samples[None], modes[None], num_classes=2)[0, ..., 0]


def no_lesion_rates(samples: torch.Tensor, cases) -> tuple[float, float]:
    """Over the cases that may be empty: the mean fraction of samples whose nearest true mode is the empty mask
    (``diagnose_lesions2d.py``'s ``empty_rate_model``) and the mean true probability of that mode."""
    may_be_empty = case_groups(cases)["may_be_empty"]  # then the empty mode comes first
    model, true = [], []
    for i, case in enumerate(cases):
        if may_be_empty[i]:
            modes = torch.from_numpy(np.stack([m for m, _ in case["modes"]])).long()
            model.append(float((mode_ious(samples[i], modes).argmax(1) == 0).float().mean()))
            true.append(float(case["modes"][0][1]))
    return (float(np.mean(model)), float(np.mean(true))) if model else (float("nan"), float("nan"))


def mean_ece(probs: torch.Tensor, annotations: torch.Tensor) -> float:
    """Mean lesion-class ECE (20 bins) of mean probabilities ``(B, C, H, W)`` against the annotators' majority vote
    (a tie goes to the lesion, as the bundles' evaluation), over the cases where it is defined."""
    consensus = torch.stack([torch.as_tensor(majority_vote(a, num_labels=2)) for a in annotations])
    ece = expected_calibration_error(probs.float(), consensus[:, None].long(), num_bins=20)
    ece = ece[torch.isfinite(ece)]
    return float(ece.mean()) if ece.numel() else float("nan")


def normalise(images: np.ndarray) -> torch.Tensor:
    """Per-image z-score (MONAI's ``NormalizeIntensity``, as the bundles' preprocessing) of ``(B, 1, H, W)``."""
    norm = NormalizeIntensity()
    return torch.stack([torch.as_tensor(norm(torch.from_numpy(np.asarray(im)).float())) for im in images]).float()


def _options(args) -> dict:
    return {
        "dropout": args.dropout,
        "members": args.members,
        "meance_weight": args.meance_weight,
        "diffusion_channels": tuple(args.diffusion_channels),
        "ddim_steps": args.ddim_steps,
        "ddim_eta": args.ddim_eta,
        "experts": args.experts,
        "mose_rank": args.mose_rank,
        "mose_samples": args.mose_samples,
        "mose_gamma": args.mose_gamma,
        "mose_solver": args.mose_solver,
        "mose_gate_pooling": args.mose_gate_pooling,
        "mose_cost": args.mose_cost,
        "mose_features": args.mose_features,
        "mose_ce_weight": args.mose_ce_weight,
    }


def _row(name, net, x_test, y_test, test_cases, groups, args, options):
    samples, probs = draw_with_probs(name, net, x_test, args.samples, args.seed, options)
    rate, true = no_lesion_rates(samples, test_cases)
    row = {"model": name, **evaluate(samples, y_test, groups)}
    row.update(no_lesion_rate=rate, no_lesion_true=true, no_lesion_error=100.0 * (rate - true))
    row["ece"] = mean_ece(probs, y_test)
    return row


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--iterations", type=int, default=100000, help="most training iterations per method")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--size", type=int, default=64, help="image side (the set is generated at this size)")
    parser.add_argument("--train-cases", type=int, default=2000)
    parser.add_argument("--test-cases", type=int, default=128)
    parser.add_argument(
        "--val-cases",
        type=int,
        default=64,
        help="validation cases (the ones after the training cases, same seed) that choose each sample_scale",
    )
    parser.add_argument(
        "--scales",
        type=float,
        nargs="+",
        default=list(SCALES),
        help=f"sample_scale candidates of {', '.join(SCALED)} (lowest validation GED wins; 1 alone: no calibration)",
    )
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--channels", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--budget", type=float, default=240.0, help="training seconds per method (stops early)")
    parser.add_argument("--schedule", choices=("constant", "cosine"), default="cosine", help="learning-rate decay")
    parser.add_argument("--lr-scale", type=float, default=1.0, help="multiplies each method's learning rate")
    parser.add_argument("--beta", type=float, default=1.0, help="KL weight of the Probabilistic U-Net's ELBO")
    parser.add_argument("--latent-dim", type=int, default=6, help="PU-Net: latent dimension (the paper's 6)")
    parser.add_argument("--mc-samples", type=int, default=20, help="SSN: Monte Carlo samples of the likelihood")
    parser.add_argument("--mean-ce-weight", type=float, default=0.0, help="ssn: weight of the mean's cross-entropy")
    parser.add_argument("--meance-weight", type=float, default=4.0, help="ssn_meance: weight of the mean's CE")
    parser.add_argument("--dropout", type=float, default=0.1, help="mc_dropout: dropout of every U-Net layer")
    parser.add_argument("--members", type=int, default=5, help="ensemble: members (sharing the budget)")
    parser.add_argument("--diffusion-channels", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--ddim-steps", type=int, default=5, help="diffusion: DDIM steps per sample")
    parser.add_argument("--ddim-eta", type=float, default=1.0, help="diffusion: DDIM eta (1 matches DDPM best)")
    parser.add_argument("--experts", type=int, default=5, help="mose: experts K")
    parser.add_argument("--mose-rank", type=int, default=1, help="mose: rank of each expert's covariance factor")
    parser.add_argument("--mose-samples", type=int, default=4, help="mose: training samples per expert")
    parser.add_argument("--mose-gamma", type=float, default=0.5, help="mose: capacity of a sample in the OT plan")
    parser.add_argument(
        "--mose-gate-pooling", choices=("mean", "mean_max"), default="mean_max", help="mose: the gate's pooling"
    )
    parser.add_argument("--mose-features", type=int, default=32, help="mose: feature maps of the UNet backbone")
    parser.add_argument("--mose-cost", choices=("iou", "ce"), default="iou", help="mose: matching cost (MoSELoss)")
    parser.add_argument(
        "--mose-ce-weight", type=float, default=0.0, help="mose: weight of the matched pairs' cross-entropy"
    )
    parser.add_argument("--mose-solver", choices=("exact", "sinkhorn"), default="sinkhorn", help="mose: OT solver")
    parser.add_argument("--save-dir", default=None, help="save each trained model's state_dict here")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--test-seed", type=int, default=None, help="seed of the held-out cases (--seed + 1000; another for selection)"
    )
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
    if args.val_cases < 0:
        parser.error(f"--val-cases must be >= 0, got {args.val_cases}.")
    if not all(np.isfinite(s) and s > 0 for s in args.scales):
        parser.error(f"--scales must be finite numbers > 0, got {args.scales}.")
    if args.samples % 4:
        parser.error(f"--samples must be a multiple of the 4 annotators (HM-IoU), got {args.samples}.")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    options = _options(args)

    size = (args.size, args.size)
    train_cases = ambiguous_lesions_2d(args.train_cases + args.val_cases, size, num_annotators=4, seed=args.seed)
    val_cases, train_cases = train_cases[args.train_cases :], train_cases[: args.train_cases]
    if args.test_seed is None:
        args.test_seed = args.seed + 1000
    test_cases = ambiguous_lesions_2d(args.test_cases, size, num_annotators=4, seed=args.test_seed)
    images = normalise(np.stack([c["image"] for c in train_cases]))
    labels = torch.from_numpy(np.stack([c["label"] for c in train_cases])).long()
    if val_cases:
        x_val = normalise(np.stack([c["image"] for c in val_cases]))
        y_val = torch.from_numpy(np.stack([c["label"] for c in val_cases])).long()
    x_test = normalise(np.stack([c["image"] for c in test_cases]))
    y_test = torch.from_numpy(np.stack([c["label"] for c in test_cases])).long()

    oracle = torch.from_numpy(np.stack([sample_oracle(c, args.samples, seed=i) for i, c in enumerate(test_cases)]))
    groups = case_groups(test_cases)
    rate, true = no_lesion_rates(oracle.long(), test_cases)
    oracle_probs = torch.nn.functional.one_hot(oracle.long(), 2).movedim(-1, 1).float().mean(2)
    rows = [{"model": "oracle", **evaluate(oracle.long(), y_test, groups)}]
    rows[0].update(no_lesion_rate=rate, no_lesion_true=true, no_lesion_error=100.0 * (rate - true))
    rows[0]["ece"] = mean_ece(oracle_probs, y_test)
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
        "test_seed",
        "budget",
        "schedule",
        "lr_scale",
        "beta",
        "mc_samples",
        "mean_ce_weight",
        "latent_dim",
        "val_cases",
        "scales",
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

    trained = {}
    # the same machine's U-Net step, timed once per run, for the rows' train_step_over_unet: a row appended to a
    # leaderboard made elsewhere (another machine, other jobs beside it) is still compared with its own run's U-Net
    unet_step = unet_step_seconds(images, labels, args.batch_size, tuple(args.channels)) if args.models else None
    for name in args.models:
        torch.manual_seed(args.seed)
        net, loss_fn, lr = build(
            name,
            tuple(args.channels),
            beta=args.beta,
            mc_samples=args.mc_samples,
            mean_ce_weight=args.mean_ce_weight,
            latent_dim=args.latent_dim,
            **options,
        )
        lr = lr * args.lr_scale
        if name == "flip_tta" and "unet" in trained:
            net = FlipTTA(trained["unet"][0], spatial_axes=(0, 1))  # TTA of the trained U-Net: no training
            train_time, losses = trained["unet"][1:]
            ema = None
        else:
            train_time, losses, ema = train(
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
        if ema is not None:
            net.load_state_dict(ema.shadow.state_dict())  # diffusion is evaluated with its EMA weights
        trained[name] = (net, train_time, losses)
        calibration = {}
        if name in SCALED and val_cases and list(args.scales) != [1.0]:
            best, tried = choose_sample_scale(name, net, x_val, y_val, args.samples, args.seed, args.scales, options)
            calibration = {"sample_scale": best["sample_scale"], "val_ged": best["ged"]}
            calibration.update({f"val_ged_scale_{r['sample_scale']:g}": r["ged"] for r in tried})
        elif name in SCALED:
            calibration = {"sample_scale": 1.0}
        if args.save_dir:
            os.makedirs(args.save_dir, exist_ok=True)
            torch.save(net.state_dict(), os.path.join(args.save_dir, f"{args.name}_{name}.pt"))
        row = _row(name, net, x_test, y_test, test_cases, groups, args, options)
        row.update(calibration)
        t_fwd, t_samples = sampling_cost(name, net, x_test[:8], args.samples, options=options)
        row.update(
            unet_step_seconds=unet_step,
            train_seconds=train_time,
            iterations=len(losses),
            seconds_per_iteration=train_time / max(1, len(losses)),
            first_loss=float(np.mean(losses[:20])),
            last_loss=float(np.mean(losses[-20:])),
            forward_seconds_batch8=t_fwd,
            samples_seconds_batch8=t_samples if t_samples is not None else "",
            samples_over_forward=t_samples / t_fwd if t_samples is not None else "",
            parameters=sum(p.numel() for p in net.parameters()),
            learning_rate=lr,
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

    oracle_row = rows[0]
    det = next((r for r in rows if r["model"] == "unet"), None)
    for row in rows[1:]:
        row["ged_over_oracle"] = row["ged"] / oracle_row["ged"]
        row["hm_iou_over_oracle"] = row["hm_iou"] / oracle_row["hm_iou"]
        row["diversity_over_oracle"] = row["diversity_samples"] / oracle_row["diversity_samples"]
        if det is not None:
            row["ged_over_unet"] = row["ged"] / det["ged"]
        if row.get("unet_step_seconds") and row["model"] != "unet":  # a U-Net step timed by the row's own run
            row["train_step_over_unet"] = row["seconds_per_iteration"] / row["unet_step_seconds"]
        elif det is not None and "seconds_per_iteration" in row and "seconds_per_iteration" in det:
            row["train_step_over_unet"] = row["seconds_per_iteration"] / det["seconds_per_iteration"]

    results = {"machine": machine_info(), "args": vars(args), "rows": rows}
    cols = [
        "model",
        "ged",
        "ged_over_oracle",
        "hm_iou",
        "hm_iou_over_oracle",
        "diversity_samples",
        "diversity_over_oracle",
        "no_lesion_rate",
        "no_lesion_error",
        "ece",
        "sample_scale",
        "ged_may_be_empty",
        "ged_always_lesion",
        "iterations",
        "train_step_over_unet",
        "samples_over_forward",
    ]
    best = min(rows[1:], key=lambda r: r["ged"]) if len(rows) > 1 else None
    md = (
        f"# 2D ambiguous lesions leaderboard: {args.test_cases} held-out cases, {args.samples} samples, "
        f"K=4 annotators\n\n"
        f"Training: {args.train_cases} cases of {args.size}x{args.size} (seed {args.seed}), batch {args.batch_size}, "
        f"one random annotator per case (MoSE: all four), at most {args.iterations} iterations or {args.budget:.0f} s "
        f"per method (the ensemble's {args.members} members share it; flip TTA reuses the U-Net), {args.schedule} "
        f"learning rate (x{args.lr_scale}), UNet channels {args.channels}, {args.threads} CPU thread(s). Held-out "
        f"cases: seed {args.test_seed}. `sample_scale` of {', '.join(SCALED)}: the lowest GED of {args.scales} on "
        f"{args.val_cases} validation cases (cases {args.train_cases}-{args.train_cases + args.val_cases - 1} of "
        f"seed {args.seed}). Methods: see the docstring of `benchmarks/bench_lesions2d.py`; MoSE "
        f"{args.experts} experts of rank {args.mose_rank}, {args.mose_samples} training samples each, gamma "
        f"{args.mose_gamma}, {args.mose_solver} plan; diffusion channels {args.diffusion_channels}, DDIM-"
        f"{args.ddim_steps} eta {args.ddim_eta:g}; MC dropout {args.dropout:g}; SSN + mean CE weight "
        f"{args.meance_weight:g}.\n\n"
        + md_table(rows, cols)
        + "\n\n"
        + (f"Best GED: **{best['model']}** ({best['ged_over_oracle']:.2f}x the oracle).\n\n" if best else "")
        + "`no_lesion_rate`: over the held-out cases where some annotators may see no lesion, the fraction of samples "
        + "whose nearest true mode is the empty mask; `no_lesion_error`: that minus the true probability "
        + f"({rows[0]['no_lesion_true']:.3f}), in points. `ece`: lesion-class ECE of the mean probabilities vs the "
        + "majority vote. `train_step_over_unet`: seconds per training iteration over the U-Net's (a U-Net step "
        + "timed in the row's own run, where the row has `unet_step_seconds`; else the `unet` row's). "
        + f"`samples_over_forward`: time of {args.samples} samples / one forward pass, batch of 8 (ensemble and "
        + "TTA: their member passes). `ged_may_be_empty` / `ged_always_lesion`: GED over the held-out cases where "
        + "some annotators may see no lesion (contrast < 0.45) / the others.\n\n"
        + "Commands: "
        + ", ".join(f"`python benchmarks/bench_lesions2d.py {c}`" for c in getattr(args, "commands", [cmd]))
        + "\n"
    )
    paths = write_results(args.name, results, md)
    logger.info("wrote %s", ", ".join(paths))
    return results


if __name__ == "__main__":
    main()
