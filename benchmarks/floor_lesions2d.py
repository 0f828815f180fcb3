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

``--fit`` adds an estimator that knows the generator's family: for every held-out case it fits the parameters
that draw the masks and their probabilities (lesion centre, axes, halo width, angle, lobe amplitude and phase,
satellite centre and radius, contrast, halo and satellite brightness, blur: :func:`lesion_regions` and
:func:`lesion_signal` of the generator) to the image by least squares (the maximum-likelihood fit under the white
noise), and draws the modes of the fitted parameters. It is told what a learnt model must work out: the texture
under the lesion (the image is fitted after subtracting it), the number of lobes and whether there is a
satellite; and it starts at the true parameters (beside ``--fit-starts - 1`` perturbed starts; the fit of
lowest residual wins). It is therefore an optimistic estimator: its masks show how well the images determine
the modes, and its GED ratio what an image-conditioned model can hope for. Two rows: the fitted masks drawn at
the true frequencies (the oracle's draws), and drawn at the frequencies of the fitted contrast, halo and
satellite brightness (a complete plug-in model).

``--unet-budget S`` asks the same of a learnt model without the ambiguity: the leaderboard's U-Net (its
channels, learning rate, batch and cosine schedule) trained for ``S`` seconds on the leaderboard's training cases
with ONE unambiguous target per image, the tight mask (``lesion_regions``), and scored by its IoU with the tight
mask of every held-out case, by lesion contrast. Its IoU is what a network of this size learns of one mode's
boundary in the budget, where the fit's is what the image allows.

Run (the canonical result, ``results/lesions2d_floor.md``; about 12 minutes on one thread, the fit 3 of them)::

    python benchmarks/floor_lesions2d.py --fit --name lesions2d_floor

Writes ``<name>.json`` and ``<name>.md`` to ``$MONAI_PROBSEG_RESULTS_DIR`` (``benchmarks/results`` when unset);
``results/experiments.md`` (sections 12 and 13) discusses the tables.
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
from bench_lesions2d import LEARNING_RATES, _unet, evaluate, mode_ious, normalise, train  # noqa: E402
from diagnose_lesions2d import contrast_levels, mean_by_contrast  # noqa: E402
from scipy.optimize import minimize  # noqa: E402

from monai_probseg.data.synthetic import (  # noqa: E402
    ambiguous_lesions_2d,
    lesion_mode_mask,
    lesion_modes,
    lesion_regions,
    lesion_signal,
    sample_oracle,
)

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


# the fitted parameters: (key, index in a pair or None, initial Powell step, scale of a perturbed start)
FIT_PARAMETERS = (
    ("center", 0, 0.3, 1.0),
    ("center", 1, 0.3, 1.0),
    ("axes", 0, 0.3, 0.7),
    ("axes", 1, 0.3, 0.7),
    ("halo_width", None, 0.3, 0.7),
    ("angle", None, 0.05, 0.15),
    ("lobe_amplitude", None, 0.02, 0.03),
    ("lobe_phase", None, 0.2, 0.5),
    ("contrast", None, 0.02, 0.05),
    ("halo", None, 0.02, 0.05),
    ("blur", None, 0.05, 0.1),
)
SATELLITE_PARAMETERS = (
    ("satellite_center", 0, 0.3, 1.0),
    ("satellite_center", 1, 0.3, 1.0),
    ("satellite_radius", None, 0.2, 0.4),
    ("satellite", None, 0.02, 0.05),
)
LOWER_BOUNDS = {"axes": 0.5, "halo_width": 0.0, "satellite_radius": 0.1, "blur": 0.05}


def _fit_spec(params):
    return FIT_PARAMETERS + (SATELLITE_PARAMETERS if params["has_satellite"] else ())


def _to_vector(params) -> np.ndarray:
    return np.array([params[k] if i is None else params[k][i] for k, i, _, _ in _fit_spec(params)], np.float64)


def _to_params(vector, template) -> dict:
    params = dict(template)
    for (key, i, _, _), value in zip(_fit_spec(template), vector):
        value = max(float(value), LOWER_BOUNDS.get(key, -np.inf))
        if i is None:
            params[key] = value
        else:
            pair = list(params[key])
            pair[i] = value
            params[key] = tuple(pair)
    return params


def _residual(vector, template, lesion, size) -> float:
    params = _to_params(vector, template)
    return float(((lesion - lesion_signal(params, lesion_regions(params, size))) ** 2).sum())


def fit_lesion(case, clean_case, starts=4, rng=None) -> tuple[dict, dict]:
    """Least-squares fit of a case's lesion parameters to its image (see the module docstring).

    ``clean_case`` is the same case drawn without noise (``noise=0``, same seed): its image minus the true
    lesion signal is the texture, which is subtracted. Returns the fitted parameters and
    ``{"residual", "true_residual", "winning_start"}`` (start 0 is the true parameters).
    """
    rng = np.random.default_rng(0) if rng is None else rng
    size = case["image"].shape[1:]
    true = case["params"]
    true_signal = lesion_signal(true, lesion_regions(true, size))
    lesion = case["image"][0] - clean_case["image"][0] + true_signal  # the image without its texture
    spec = _fit_spec(true)
    steps = np.diag([step for _, _, step, _ in spec])
    scales = np.array([scale for _, _, _, scale in spec])
    v_true = _to_vector(true)
    best = None
    for start in range(starts):
        v0 = v_true if start == 0 else v_true + scales * rng.standard_normal(len(v_true))
        res = minimize(
            _residual,
            v0,
            args=(true, lesion, size),
            method="Powell",
            options={"xtol": 1e-3, "ftol": 1e-7, "maxfev": 6000, "direc": steps},
        )
        if best is None or res.fun < best[0].fun:
            best = (res, start)
    fitted = _to_params(best[0].x, true)
    return fitted, {
        "residual": float(best[0].fun),
        "true_residual": _residual(v_true, true, lesion, size),
        "winning_start": best[1],
    }


def _iou(a, b) -> float:
    """Foreground IoU of two ``(H, W)`` masks, the leaderboard's ``mode_ious`` (1 when both are empty)."""
    return float(mode_ious(torch.from_numpy(np.asarray(a)[None]).long(), torch.from_numpy(np.asarray(b)[None]).long()))


def fit_rows(cases, clean_cases, annotations, num_samples, starts=4, seed=0, oracle=None):
    """The rows of the fitted estimator (module docstring) and its per-case mask IoUs by lesion contrast."""
    rng = np.random.default_rng(seed)
    size = cases[0]["image"].shape[1:]
    true_freq, fit_freq, sample_ious, per_case = [], [], [], []
    for i, (case, clean) in enumerate(zip(cases, clean_cases)):
        fitted, info = fit_lesion(case, clean, starts, rng)
        true_regions = lesion_regions(case["params"], size)
        fit_regions = lesion_regions(fitted, size)
        modes, _ = lesion_modes(fitted, fit_regions)
        # the true modes' masks replaced by the fitted ones, drawn by the oracle's draws
        _, index = sample_oracle(case, num_samples, seed=i, return_indices=True)
        true_modes = [m for m, _ in case["modes"]]
        replaced = [lesion_mode_mask(name.split("=")[0], fit_regions) for name in case["mode_names"]]
        drawn = np.stack([replaced[j] for j in index])
        iou = mode_ious(torch.from_numpy(drawn).long(), torch.from_numpy(np.stack(true_modes)).long())
        sample_ious.append(float(iou[torch.arange(num_samples), torch.from_numpy(index)].mean()))
        true_freq.append(drawn)
        fit_freq.append(sample_oracle({"modes": modes}, num_samples, seed=i))
        per_case.append(
            {
                "contrast": case["params"]["contrast"],
                "tight_iou": _iou(true_regions["tight"], fit_regions["tight"]),
                "generous_iou": _iou(true_regions["generous"], fit_regions["generous"]),
                "contrast_fit": fitted["contrast"],
                "halo_error": fitted["halo"] - case["params"]["halo"],
                **info,
            }
        )
    rows = []
    for kind, samples in (("fit_true_frequencies", true_freq), ("fit_fitted_frequencies", fit_freq)):
        scores = evaluate(torch.from_numpy(np.stack(samples)).long(), annotations)
        row = {"kind": kind, "amplitude": float("nan"), **scores}
        row["mode_iou"] = float(np.mean(sample_ious)) if kind == "fit_true_frequencies" else float("nan")
        if oracle is not None:
            row["ged_over_oracle"] = row["ged"] / oracle["ged"]
            row["hm_iou_over_oracle"] = row["hm_iou"] / oracle["hm_iou"]
        rows.append(row)
    level = contrast_levels(cases)
    tight = mean_by_contrast([c["tight_iou"] for c in per_case], level)
    generous = mean_by_contrast([c["generous_iou"] for c in per_case], level)
    by_contrast = [
        {"contrast": k, "cases": int((level == b).sum()), "tight_iou": tight[k], "generous_iou": generous[k]}
        for b, k in enumerate(tight)
    ]
    return rows, by_contrast, per_case


def unet_on_one_mode(test_cases, budget, train_cases=2000, seed=0, size=64, channels=(16, 32, 64, 128)) -> dict:
    """The leaderboard's U-Net trained on the tight mask alone (module docstring): its IoU by lesion contrast."""
    train_set = ambiguous_lesions_2d(train_cases, (size, size), num_annotators=1, seed=seed)

    def tight(cases):
        return np.stack([lesion_regions(c["params"], (size, size))["tight"] for c in cases]).astype(np.int64)

    torch.manual_seed(seed)
    net = _unet(tuple(channels))
    x = normalise(np.stack([c["image"] for c in train_set]))
    y = torch.from_numpy(tight(train_set))[:, None]
    lr = LEARNING_RATES["unet"]
    seconds, losses, _ = train("unet", net, None, lr, x, y, 10**6, 16, seed, budget=budget, schedule="cosine")
    net.eval()
    with torch.no_grad():
        pred = net(normalise(np.stack([c["image"] for c in test_cases]))).argmax(1).numpy()
    iou = np.array([_iou(p, t) for p, t in zip(pred, tight(test_cases))])
    level = contrast_levels(test_cases)
    return {
        "budget": budget,
        "train_cases": train_cases,
        "iterations": len(losses),
        "train_seconds": seconds,
        "learning_rate": lr,
        "iou": float(iou.mean()),
        "iou_by_contrast": mean_by_contrast(iou, level),
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--test-cases", type=int, default=128)
    parser.add_argument("--test-seed", type=int, default=1000, help="the leaderboard's held-out cases")
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--amplitudes", type=float, nargs="+", default=list(AMPLITUDES))
    parser.add_argument("--fit", action="store_true", help="add the rows of the estimator that fits the generator")
    parser.add_argument("--fit-starts", type=int, default=4, help="--fit: starts per case (the first at the truth)")
    parser.add_argument(
        "--unet-budget", type=float, default=0.0, help="train the U-Net on the tight mask alone for this many seconds"
    )
    parser.add_argument("--unet-train-cases", type=int, default=2000, help="--unet-budget: training cases")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--name", default="lesions2d_floor", help="results file stem")
    args = parser.parse_args(argv)
    if not (np.isfinite(args.unet_budget) and args.unet_budget >= 0) or args.unet_train_cases < 1:
        parser.error(
            f"--unet-budget must be >= 0 and --unet-train-cases >= 1, got {args.unet_budget}, {args.unet_train_cases}."
        )
    torch.set_num_threads(args.threads)
    if args.fit_starts < 1:
        parser.error(f"--fit-starts must be >= 1, got {args.fit_starts}.")
    if args.samples % 4:
        parser.error(f"--samples must be a multiple of the 4 annotators (HM-IoU), got {args.samples}.")
    if 0.0 not in args.amplitudes or any(not (np.isfinite(a) and a >= 0) for a in args.amplitudes):
        parser.error(f"--amplitudes must be finite numbers >= 0 and include 0 (the oracle), got {args.amplitudes}.")
    amplitudes = sorted(set(args.amplitudes))
    cases = ambiguous_lesions_2d(args.test_cases, (args.size, args.size), num_annotators=4, seed=args.test_seed)
    annotations = torch.from_numpy(np.stack([c["label"] for c in cases])).long()
    rows = floor_rows(cases, annotations, args.samples, amplitudes)
    cols = ["kind", "amplitude", "mode_iou", "ged", "ged_over_oracle", "hm_iou", "hm_iou_over_oracle"]
    fit_md, by_contrast, per_case = "", [], []
    if args.fit:
        clean = ambiguous_lesions_2d(
            args.test_cases, (args.size, args.size), num_annotators=4, seed=args.test_seed, noise=0.0
        )
        fitted, by_contrast, per_case = fit_rows(cases, clean, annotations, args.samples, args.fit_starts, 0, rows[0])
        rows += fitted
        won = np.bincount([c["winning_start"] for c in per_case], minlength=args.fit_starts)
        below = sum(c["residual"] < c["true_residual"] for c in per_case)
        fit_md = (
            "\n\n## The estimator that fits the generator's parameters to each image\n\n"
            "`fit_true_frequencies`: the fitted masks drawn at the true frequencies; `fit_fitted_frequencies`: at "
            "the frequencies of the fitted contrast, halo and satellite brightness (module docstring). Mask IoU of "
            "the fitted tight and generous regions with the true ones, by lesion contrast:\n\n"
            + md_table(by_contrast, ["contrast", "cases", "tight_iou", "generous_iou"])
            + f"\n\nFitted residual below the true parameters' on {below}"
            f" of {len(per_case)} cases; winning start (0 = the truth): {won.tolist()}."
        )
    unet = None
    if args.unet_budget > 0:
        unet = unet_on_one_mode(cases, args.unet_budget, args.unet_train_cases, size=args.size)
        fit_md += (
            f"\n\n## The leaderboard's U-Net trained on one unambiguous mode\n\nThe tight mask of "
            f"{args.unet_train_cases} training cases as the only target, {unet['iterations']} iterations in "
            f"{args.unet_budget:g} s: IoU with the held-out tight masks {unet['iou']:.3f}; by lesion contrast:\n\n"
            + md_table([{"contrast": k, "iou": v} for k, v in unet["iou_by_contrast"].items()], ["contrast", "iou"])
        )
    md = (
        f"# The true mode frequencies with imperfect masks: {args.test_cases} held-out cases (seed "
        f"{args.test_seed}), {args.samples} samples, 4 annotators\n\n"
        "Each sample is a mode drawn at its true probability (the oracle's draws), its mask perturbed to the "
        "`mode_iou` shown; `systematic`: one perturbed mask per mode and case, `per_sample`: a new one per sample. "
        "Amplitude 0 is the oracle.\n\n" + md_table(rows, cols) + fit_md + "\n\n"
        f"Command: `python benchmarks/floor_lesions2d.py {' '.join(argv if argv is not None else sys.argv[1:])}`\n"
    )
    results = {"machine": machine_info(), "args": vars(args), "rows": rows}
    if args.fit:
        results.update(fit_by_contrast=by_contrast, fit_cases=per_case)
    if unet is not None:
        results["unet_on_one_mode"] = unet
    write_results(args.name, results, md)
    print(md)
    return results


if __name__ == "__main__":
    main()
