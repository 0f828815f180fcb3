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
  posterior mean (how precise masks are when the latent is right), beside the prior samples' ``nearest_mode_iou``;
- for the Probabilistic U-Net, ``kl_per_latent_dim`` (mean KL(posterior || prior) of the held-out annotations,
  in nats, per latent dimension), ``kl_top_dim_share`` (the share of the KL in the dimension that carries most)
  and ``posterior_over_prior_sigma_top_dim`` (median posterior / prior standard deviation in that dimension): how
  the latent space encodes the annotators' choices;
- for the Mixture of Stochastic Experts, ``ged_expert_means``: ``--samples`` experts drawn from the gate
  (``choose_experts``), each sample its expert's noise-free mask (``argmax mu_k``): the GED without the experts'
  low-rank noise, and
  ``expert_mean_mode_iou``: the gate-weighted IoU of each expert's noise-free mask with its nearest true mode,
  and, per kind of mode, the gate mass of the experts that stand for it and the IoU of the best one
  (:py:func:`expert_roles`);
- ``ged_by_contrast``: the model's and the oracle's GED per lesion-contrast bin and each bin's share of the gap;
- ``empty_rate_model`` and ``empty_rate_true``: over the cases where some annotators may see no lesion, the mean
  fraction of samples whose nearest mode is the empty mask, and the mean true probability of that mode.

It splits the GED gap to the oracle (``ged_oracle``, the same metric for the true distribution) in two:

- ``ged_snapped``: the GED after replacing each sample by its nearest true mode, so masks are exact and only the
  frequencies at which the modes are drawn are the model's;
- ``ged_posterior_recon`` (Probabilistic U-Net): oracle draws of the modes, each replaced by the PU-Net's
  reconstruction of that mode from the posterior mean, so the frequencies are exact and only the mask shapes
  are the model's;
- ``ged_best_sample``: oracle draws of the modes, each replaced by the one of the model's samples closest to that
  mode (highest IoU): exact frequencies and the best masks the sampler drew, an optimistic bound on what any
  re-weighting of the model's samples could reach.

Run::

    python benchmarks/bench_lesions2d.py --models prob_unet ... --save-dir /tmp/lesions2d --name NAME
    python benchmarks/diagnose_lesions2d.py --model prob_unet --weights /tmp/lesions2d/NAME_prob_unet.pt \\
        --channels 16 32 64 128 --name NAME_diagnosis

Writes ``<name>.json`` and ``<name>.md`` to ``$MONAI_PROBSEG_RESULTS_DIR`` (a sweep's scratch folder, beside the
runs it diagnoses; ``benchmarks/results`` when unset). ``results/experiments.md`` summarises the diagnoses made.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import machine_info, md_table, write_results  # noqa: E402
from bench_lesions2d import build, case_groups, draw, evaluate, mode_ious, normalise  # noqa: E402

from monai_probseg.data.synthetic import ambiguous_lesions_2d, sample_oracle  # noqa: E402
from monai_probseg.losses import gaussian_kl_divergence  # noqa: E402
from monai_probseg.networks.nets import gate_weights  # noqa: E402

# the diagnosis columns that summarize_lesions2d.py adds to each run's row
DIAGNOSIS_COLUMNS = (
    "ged_snapped",
    "ged_posterior_recon",
    "ged_best_sample",
    "nearest_mode_iou",
    "mode_frequency_error",
    "empty_rate_model",
    "empty_rate_true",
    "posterior_recon_iou",
    "kl_top_dim_share",
    "posterior_over_prior_sigma_top_dim",
    "ged_expert_means",
    "expert_mean_mode_iou",
    "gate_mode_tv",
)
CONTRAST_BINS = (0.1, 0.3, 0.45, 0.7, 1.0 + 1e-9)  # lesion contrast is drawn from [0.1, 1]; 0.45: p_empty > 0 below


@torch.no_grad()
def diagnose(name, net, cases, num_samples, seed):
    x = normalise(np.stack([c["image"] for c in cases]))  # as bench_lesions2d.py
    annotations = torch.from_numpy(np.stack([c["label"] for c in cases])).long()
    samples = draw(name, net, x, num_samples, seed)  # the same samples as bench_lesions2d.py evaluates
    bins = contrast_groups(cases)
    sample_scores = evaluate(samples, annotations, bins)
    may_be_empty = case_groups(cases)["may_be_empty"]  # then the empty mode comes first
    modes = [torch.from_numpy(np.stack([m for m, _ in c["modes"]])).long() for c in cases]
    best, above, tv, empty_model, empty_true, best_per_mode = [], [], [], [], [], []
    snapped = torch.zeros_like(samples)
    for i, case in enumerate(cases):
        probs = np.array([p for _, p in case["modes"]])
        scores = mode_ious(samples[i], modes[i])  # (N, M)
        nearest = scores.argmax(1)
        snapped[i] = modes[i][nearest]
        best_per_mode.append(samples[i][scores.argmax(0)])  # (M, H, W): each mode's closest sample
        best.append(float(scores.max(1).values.mean()))
        above.append(float((scores.max(1).values > 0.9).float().mean()))
        tv.append(0.5 * np.abs(np.bincount(nearest.numpy(), minlength=len(probs)) / num_samples - probs).sum())
        if may_be_empty[i]:
            empty_model.append(float((nearest == 0).float().mean()))
            empty_true.append(float(probs[0]))
    out = {
        "model": name,
        "ged": sample_scores["ged"],
        "ged_snapped": evaluate(snapped, annotations)["ged"],
        "nearest_mode_iou": float(np.mean(best)),
        "frac_iou_above_0.9": float(np.mean(above)),
        "mode_frequency_error": float(np.mean(tv)),
        "empty_rate_model": float(np.mean(empty_model)) if empty_model else float("nan"),
        "empty_rate_true": float(np.mean(empty_true)) if empty_true else float("nan"),
    }
    oracle_draws, oracle_modes = zip(
        *(sample_oracle(c, num_samples, seed=i, return_indices=True) for i, c in enumerate(cases))
    )
    oracle_modes = [torch.from_numpy(m) for m in oracle_modes]
    oracle_scores = evaluate(torch.from_numpy(np.stack(oracle_draws)).long(), annotations, bins)
    out["ged_oracle"] = oracle_scores["ged"]
    out["ged_by_contrast"] = ged_by_contrast(bins, sample_scores, oracle_scores)
    chosen = torch.stack([best_per_mode[i][oracle_modes[i]] for i in range(len(cases))])
    out["ged_best_sample"] = evaluate(chosen, annotations)["ged"]
    if name == "prob_unet":
        # one posterior pass per true mode; an annotation is one of the modes (``annotator_modes``)
        recon_iou, kl, sigma_ratio, recon_draws = [], [], [], []
        for i, case in enumerate(cases):
            res = net(x[i : i + 1].expand(len(modes[i]), -1, -1, -1), modes[i][:, None])  # posterior mean (eval)
            per_mode = res["logits"].argmax(1)
            ann = torch.from_numpy(case["annotator_modes"])
            recon_iou.append(mode_ious(per_mode, modes[i]).diagonal()[ann])
            kl.append(
                gaussian_kl_divergence(
                    res["posterior_mean"], res["posterior_log_sigma"], res["prior_mean"], res["prior_log_sigma"]
                )[ann]
            )
            sigma_ratio.append(torch.exp(res["posterior_log_sigma"] - res["prior_log_sigma"])[ann])
            recon_draws.append(per_mode[oracle_modes[i]])
        out["posterior_recon_iou"] = float(torch.cat(recon_iou).mean())
        kl_per_dim = torch.cat(kl).mean(0)  # (D,) nats per latent dimension
        main_dim = int(kl_per_dim.argmax())
        out["kl_per_latent_dim"] = [round(float(v), 4) for v in kl_per_dim]
        out["kl_top_dim_share"] = float(kl_per_dim[main_dim] / kl_per_dim.sum())
        out["posterior_over_prior_sigma_top_dim"] = float(torch.cat(sigma_ratio)[:, main_dim].median())
        out["ged_posterior_recon"] = evaluate(torch.stack(recon_draws), annotations)["ged"]
    if name == "mose":
        maps = net.distribution(x)
        mean, _, _ = net._split(maps)
        expert_masks = mean.argmax(2)  # (B, K, H, W)
        experts = net.choose_experts(maps, num_samples, torch.Generator().manual_seed(seed))
        out["ged_expert_means"] = evaluate(
            expert_masks.gather(1, experts[..., None, None].expand(-1, -1, *expert_masks.shape[2:])), annotations
        )["ged"]
        weights = gate_weights(maps)
        out["expert_mean_mode_iou"] = float(
            np.mean(
                [
                    float((mode_ious(expert_masks[i], modes[i]).max(1).values * weights[i]).sum())
                    for i in range(len(cases))
                ]
            )
        )
        out.update(expert_roles(cases, modes, expert_masks, weights))
    return out


def contrast_levels(cases, contrast_bins=CONTRAST_BINS) -> np.ndarray:
    """The lesion-contrast bin of every case, ``(B,)`` int (-1 outside the bins)."""
    contrast = np.array([c["params"]["contrast"] for c in cases])
    level = np.searchsorted(contrast_bins, contrast, side="right") - 1
    return np.where(level < len(contrast_bins) - 1, level, -1)


def mean_by_contrast(values, levels, contrast_bins=CONTRAST_BINS) -> dict[str, float]:
    """The mean of per-item ``values`` in each lesion-contrast bin (``levels``: :py:func:`contrast_levels` of
    the items), ``"<lo>-<hi>"`` -> mean, NaN for an empty bin."""
    values, levels = np.asarray(values, dtype=np.float64), np.asarray(levels)
    return {
        f"{lo:g}-{hi:g}": float(values[levels == b].mean()) if (levels == b).any() else float("nan")
        for b, (lo, hi) in enumerate(zip(contrast_bins[:-1], contrast_bins[1:]))
    }


def contrast_groups(cases, contrast_bins=CONTRAST_BINS) -> dict[str, torch.Tensor]:
    """The held-out cases split by lesion contrast, ``"<lo>-<hi>"`` -> boolean case mask (``evaluate``'s groups)."""
    level = contrast_levels(cases, contrast_bins)
    names = [f"{lo:g}-{hi:g}" for lo, hi in zip(contrast_bins[:-1], contrast_bins[1:])]
    return {name: torch.from_numpy(level == i) for i, name in enumerate(names)}


def ged_by_contrast(groups, scores, oracle_scores):
    """The GED of the model and of the oracle per lesion-contrast bin, and each bin's share of the GED gap.

    ``groups``: :py:func:`contrast_groups`; ``scores`` / ``oracle_scores``: ``evaluate(..., groups)`` of the model's
    samples and of the oracle's draws. Returns ``{"<lo>-<hi>": {"cases", "model", "oracle", "share_of_gap"}}``:
    where the model loses to the oracle, the faint lesions (whose boundary the noise hides, and that annotators may
    leave empty) or the clear ones.
    """
    total = sum(int(mask.sum()) for mask in groups.values())
    gap = (scores["ged"] - oracle_scores["ged"]) * total
    out = {}
    for name, mask in groups.items():
        n = int(mask.sum())
        if n:
            model, oracle = scores[f"ged_{name}"], oracle_scores[f"ged_{name}"]
            out[name] = {
                "cases": n,
                "model": model,
                "oracle": oracle,
                "share_of_gap": (model - oracle) * n / gap if gap else float("nan"),
            }
    return out


def expert_roles(cases, modes, expert_masks, weights, contrast_bins=CONTRAST_BINS):
    """Which true mode each MoSE expert's noise-free mask stands for, and the gate mass it gets.

    Per kind of mode (``empty``, ``tight``, ``generous``, ``tight+satellite``, ``generous+satellite``; a merged mode
    counts as its first name), over the held-out cases that have it: ``p_true``, its mean true probability;
    ``gate_mass``, the mean gate weight of the experts whose mask is nearest to it (what the gate gives that mode
    when the experts are read as modes); ``best_expert_iou``, the mean IoU of the expert mask closest to it. Also
    ``gate_mode_tv``, the mean total-variation distance between those gate masses and the true probabilities, and
    ``best_expert_iou_by_contrast``: the ``tight`` / ``generous`` modes' ``best_expert_iou`` per lesion-contrast bin.
    """
    kinds, tv, by_contrast = {}, [], {k: ([], []) for k in ("tight", "generous")}  # (IoUs, their levels)
    levels = contrast_levels(cases, contrast_bins)
    for i, case in enumerate(cases):
        probs = np.array([p for _, p in case["modes"]])
        iou = mode_ious(expert_masks[i], modes[i]).numpy()  # (K, M)
        mass = np.bincount(iou.argmax(1), weights=weights[i].double().numpy(), minlength=len(probs))
        tv.append(0.5 * float(np.abs(mass - probs).sum()))
        for m, name in enumerate(case["mode_names"]):
            kind = name.split("=")[0]
            kinds.setdefault(kind, []).append((probs[m], mass[m], iou[:, m].max()))
            if kind in by_contrast:
                by_contrast[kind][0].append(iou[:, m].max())
                by_contrast[kind][1].append(levels[i])
    return {
        "gate_mode_tv": float(np.mean(tv)),
        "mode_kinds": {
            kind: {
                "cases": len(v),
                "p_true": float(np.mean([r[0] for r in v])),
                "gate_mass": float(np.mean([r[1] for r in v])),
                "best_expert_iou": float(np.mean([r[2] for r in v])),
            }
            for kind, v in kinds.items()
        },
        "best_expert_iou_by_contrast": {
            kind: mean_by_contrast(values, kind_levels, contrast_bins)
            for kind, (values, kind_levels) in by_contrast.items()
        },
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, choices=["prob_unet", "ssn", "mose"])
    parser.add_argument("--weights", required=True, help="state_dict saved by bench_lesions2d.py --save-dir")
    parser.add_argument("--channels", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--latent-dim", type=int, default=6, help="PU-Net latent dimension the weights were made with")
    parser.add_argument(
        "--mose-gate-pooling", choices=("mean", "mean_max"), default="mean_max", help="mose: the gate's pooling"
    )
    parser.add_argument("--mose-rank", type=int, default=1, help="mose: the rank the weights were made with")
    parser.add_argument(
        "--sample-scale", type=float, default=1.0, help="the sample_scale to sample with (a leaderboard row's)"
    )
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--test-cases", type=int, default=128)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", required=True, help="results file stem")
    args = parser.parse_args(argv)
    if not os.path.isfile(args.weights):
        parser.error(f"--weights {args.weights}: no such file (save one with bench_lesions2d.py --save-dir).")
    torch.set_num_threads(args.threads)
    command = f"python benchmarks/diagnose_lesions2d.py {' '.join(argv if argv is not None else sys.argv[1:])}"
    net, _, _ = build(
        args.model,
        tuple(args.channels),
        latent_dim=args.latent_dim,
        mose_gate_pooling=args.mose_gate_pooling,
        mose_rank=args.mose_rank,
    )
    try:
        net.load_state_dict(torch.load(args.weights, map_location="cpu", weights_only=True))
    except RuntimeError as e:
        parser.error(f"--weights {args.weights} does not fit a {args.model} with channels {args.channels}: {e}")
    if not args.sample_scale > 0:
        parser.error(f"--sample-scale must be > 0, got {args.sample_scale}.")
    net.sample_scale = args.sample_scale
    cases = ambiguous_lesions_2d(args.test_cases, (args.size,) * 2, num_annotators=4, seed=args.seed + 1000)
    row = diagnose(args.model, net, cases, args.samples, args.seed)
    cols = ["model", "ged", "ged_oracle", "frac_iou_above_0.9", *DIAGNOSIS_COLUMNS]
    md = (
        f"# Where the GED comes from: {args.model}, {args.test_cases} held-out cases, {args.samples} samples\n\n"
        + md_table([row], cols)
    )
    by_bin = [{"contrast": k, **v} for k, v in row["ged_by_contrast"].items()]
    md += "\n\nGED by lesion contrast (`ged_by_contrast`):\n\n" + md_table(
        by_bin, ["contrast", "cases", "model", "oracle", "share_of_gap"]
    )
    if "mode_kinds" in row:
        kinds = [{"mode": k, **v} for k, v in row["mode_kinds"].items()]
        md += "\n\nThe experts' noise-free masks read as modes (`expert_roles`):\n\n" + md_table(
            kinds, ["mode", "cases", "p_true", "gate_mass", "best_expert_iou"]
        )
        by = [{"mode": k, **v} for k, v in row["best_expert_iou_by_contrast"].items()]
        md += "\n\n`best_expert_iou` by lesion contrast:\n\n" + md_table(by, list(by[0]))
    md += f"\n\nCommand: `{command}`\n"
    results = {"machine": machine_info(), "args": vars(args), "command": command, "rows": [row]}
    write_results(args.name, results, md)
    print(md)
    return results


if __name__ == "__main__":
    main()
