# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""Does the predicted Dice match the true Dice on held-out, corrupted phantoms? (DeVries & Taylor 2018)

The stage-1 model is the shipped ``brats_ssn`` bundle (network and inferer settings of its ``inference.json``, 8
samples); the stage-2 model the shipped ``bundles/brats_ssn/models/quality_model.pt``, trained by
``configs/train_quality.json`` on phantom seed 100 with the corruptions of
:data:`monai_probseg.quality.SEEN_CORRUPTIONS`. The test cases are ``--cases`` fresh phantoms (seed ``--seed``, 200:
unseen by stage 1, which trained on seed 0, and by stage 2) of ``--size``^3 voxels: a third clean, a third with a
seen corruption (noise, bias field, blur, zeroed modality), a third with a corruption type no model trained on
(intensity shift, motion-like ghosting, Gibbs ringing), each with a drawn severity and tumour variant (typical,
small, large, non-enhancing).

Compared on the mean over TC, WT, ET of the true Dice against the consensus (both empty: 1):

- ``SegmentationQualityNet`` (shipped weights);
- ridge regression on all scalar scores of :py:func:`monai_probseg.quality.score_names`, linear and quadratic;
- every single score (mean entropy, mean mutual information, mean pairwise sample Dice, GED of the samples to the
  mean, uncertainty-to-volume ratio), each calibrated to a Dice by a linear fit on the training cases (a monotone
  map, so its Pearson, Spearman, AUROC and AURC are those of the raw score; the MAE needs the calibration).

The regressions are fitted on the training cases of ``train_quality.json`` (``--train-data``, generated if missing).
Simulated cases are cached under ``outputs/brats_ssn_quality/`` and tagged with the stage-1 weights' fingerprint: after
the stage-1 weights change, the script stops (delete the cache, retrain the quality model with ``train_quality.json``).
Metrics: Pearson, Spearman, MAE, failure AUROC (true mean Dice < 0.7), area under the risk-coverage curve (AURC).

Run::

    python benchmarks/bench_quality.py            # ~90 x 7 s of stage-1 inference on 2 busy CPU cores

Writes ``benchmarks/results/quality.json`` and ``quality.md`` (``--name quality``) and the figure
``bundles/brats_ssn/docs/quality.png`` (``--figure``; ``benchmarks/results`` is capped at 20 files).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import machine_info, md_table, write_results  # noqa: E402

from monai_probseg.bundle import load_weights  # noqa: E402
from monai_probseg.inferers import StochasticSlidingWindowInferer  # noqa: E402
from monai_probseg.metrics import BRATS_REGIONS  # noqa: E402
from monai_probseg.metrics.quality import quality_prediction_metrics, risk_coverage_curve  # noqa: E402
from monai_probseg.quality import (  # noqa: E402
    HELD_OUT_CORRUPTIONS,
    SEEN_CORRUPTIONS,
    ScoreRegressor,
    generate_quality_dataset,
    load_quality_dataset,
    predict_with_flips,
    quality_split,
    score_names,
)

logger = logging.getLogger("bench_quality")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUNDLE = os.path.join(REPO, "bundles", "brats_ssn")  # --bundle changes it
SINGLE_SCORES = (
    "mean_entropy",
    "mean_mutual_info",
    "sample_dice_agreement",
    "ged_to_mean",
    "uncertainty_volume_ratio",
)
HEALTHY_START = 10000  # index of the first healthy test case
#: "all" is every test case with a tumour (the targets are judged on it); the healthy brains are reported apart
SUBSETS = ("all", "clean", "seen", "held-out", "healthy", "all + healthy")
COLUMNS = ["method", "subset", "pearson", "spearman", "mae", "auroc", "aurc", "num_cases", "num_failures"]


def _config(name: str):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(os.path.join(BUNDLE, "configs", name))
    return parser


def _stage1(num_samples: int):
    network = _config("inference.json").get_parsed_content("network_def", instantiate=True)
    load_weights(network, os.path.join(BUNDLE, "models", "model.pt"))
    inferer = StochasticSlidingWindowInferer(
        roi_size=(32, 32, 32),
        overlap=0.25,
        mode="gaussian",
        num_samples=num_samples,
        sample_batch_size=4,
        outputs=("prob", "entropy", "mutual_info"),
        keep_samples=True,
        seed=0,
    )
    return network.eval(), inferer


def _group(meta: dict) -> str:
    if meta.get("variant") == "healthy":
        return "healthy"
    if meta["corruption"] == "none":
        return "clean"
    return "seen" if meta["corruption"] in SEEN_CORRUPTIONS else "held-out"


def _healthy_summary(predicted: np.ndarray, true: np.ndarray, groups: np.ndarray, threshold: float) -> dict:
    """On the brains without tumour: how often a right (empty) result is flagged, and a false tumour is caught."""
    healthy = groups == "healthy"
    empty, found = healthy & (true >= 1.0), healthy & (true < threshold)
    return {
        "num_cases": int(healthy.sum()),
        "empty_segmentation": int(empty.sum()),
        "empty_flagged": int((empty & (predicted < threshold)).sum()),
        "false_tumour": int(found.sum()),
        "false_tumour_flagged": int((found & (predicted < threshold)).sum()),
    }


def _healthy_lines(rows: list[dict], summary: dict, best: str) -> list[str]:
    if not summary["num_cases"]:
        return []
    return [
        "## Brains without tumour",
        "",
        f"{summary['num_cases']} healthy phantoms (the same mix of clean, seen and held-out corruptions). The true "
        "Dice is 1 when stage 1 segments nothing (both masks empty) and 0 in a region where it finds a tumour. Stage 1 "
        f"segmented nothing in {summary['empty_segmentation']} of them; SegmentationQualityNet flagged "
        f"{summary['empty_flagged']} of these (false alarms). It found a false tumour (true mean Dice < threshold) in "
        f"{summary['false_tumour']}; {summary['false_tumour_flagged']} of these were flagged.",
        "",
        md_table(
            [r for r in rows if r["subset"] in SUBSETS[4:] and r["method"] in ("SegmentationQualityNet", best)],
            COLUMNS,
            fmt="{:.3f}",
        ),
        "",
    ]


def _plan(index: int) -> str:
    """Clean, seen and held-out corruptions in turn."""
    group = index % 3
    if group == 0:
        return "none"
    pool = SEEN_CORRUPTIONS if group == 1 else HELD_OUT_CORRUPTIONS
    return pool[(index // 3) % len(pool)]


def generate(args: argparse.Namespace) -> None:
    network, inferer = _stage1(args.num_samples)
    size = (args.size,) * 3
    train = _config("train_quality.json")
    train_cases, train_seed = int(train["num_cases"]), int(train["phantom_seed"])
    generate_quality_dataset(
        network, inferer, args.train_data, train_cases, train_seed, spatial_size=tuple(train["phantom_size"]),
        corruptions=SEEN_CORRUPTIONS, clean_fraction=float(train["clean_fraction"]),
        healthy_fraction=float(train["healthy_fraction"]), progress=False,
    )  # fmt: skip
    for index in range(args.cases):
        generate_quality_dataset(
            network, inferer, args.test_data, 1, args.seed, start=index, spatial_size=size, corruption=_plan(index),
            progress=False,
        )  # fmt: skip
    for k in range(args.healthy_cases):  # brains without tumour, the same mix of corruptions, after the others
        generate_quality_dataset(
            network, inferer, args.test_data, 1, args.seed, start=HEALTHY_START + k, spatial_size=size,
            corruption=_plan(k), variant="healthy", progress=False,
        )  # fmt: skip


def _quality_net(path: str):
    network = _config("train_quality.json").get_parsed_content("network_def", instantiate=True)
    network.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return network.eval()


def blend_sweep(args: argparse.Namespace, train: dict, test: dict, network: torch.nn.Module) -> list[dict]:
    """Stacking the network with the quadratic ridge: ``w * net + (1 - w) * ridge``, the ridge fitted on the training
    part of ``train_quality.json``'s split and ``w`` judged on its validation part (the cases the network's checkpoint
    was selected on, never trained on); the test figures are printed beside it, not used to choose."""
    fit, val = (slice(r.start, r.stop) for r in quality_split(len(train["records"]), args.val_fraction))

    def net(data: dict, cases: slice) -> np.ndarray:
        x, s = torch.from_numpy(data["inputs"][cases]), torch.from_numpy(data["scores"][cases])
        with torch.no_grad():
            return predict_with_flips(network, x, s, args.flips).numpy()

    net_val, net_test = net(train, val), net(test, slice(None))
    true_val, true_test = train["true_dice"][val].mean(1), test["true_dice"].mean(1)
    rows = []
    for alpha in (1.0, 10.0, 30.0):
        reg = ScoreRegressor(degree=2, alpha=alpha).fit(train["scores"][fit], train["true_dice"][fit])
        ridge_val, ridge_test = reg.predict(train["scores"][val]), reg.predict(test["scores"])
        for w in (0.0, 0.25, 0.5, 0.75, 1.0):
            pred_val = (w * net_val + (1 - w) * ridge_val).mean(1)
            m = quality_prediction_metrics((w * net_test + (1 - w) * ridge_test).mean(1), true_test, args.threshold)
            rows.append({"ridge_alpha": alpha, "net_weight": w, "val_mae": float(np.abs(pred_val - true_val).mean()),
                         "test_mae": m["mae"], "test_pearson": m["pearson"], "test_auroc": m["auroc"]})  # fmt: skip
    return rows


def _figure(path: str, true: np.ndarray, predictions: dict[str, np.ndarray], groups: np.ndarray, best: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    ax = axes[0]
    for name, style in (("SegmentationQualityNet", "-"), (best, "--")):
        coverage, _, mean_dice = risk_coverage_curve(predictions[name], true)
        ax.plot(coverage, mean_dice, style, label=name)
    coverage, _, mean_dice = risk_coverage_curve(true, true)
    ax.plot(coverage, mean_dice, ":", color="k", label="oracle (true Dice)")
    ax.axhline(true.mean(), color="grey", lw=0.8, label="keep all / random")
    ax.set_xlabel("coverage (fraction of cases kept)")
    ax.set_ylabel("mean true Dice of the kept cases")
    ax.set_title("risk-coverage: flagged cases removed first")
    ax.legend(fontsize=8)
    colours = {"clean": "tab:green", "seen": "tab:blue", "held-out": "tab:red", "healthy": "tab:purple"}
    for ax, name in zip(axes[1:], ("SegmentationQualityNet", best)):
        for group, colour in colours.items():
            keep = groups == group
            ax.scatter(true[keep], predictions[name][keep], s=14, c=colour, label=group)
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
        ax.axvline(0.7, color="grey", lw=0.6)
        ax.axhline(0.7, color="grey", lw=0.6)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("true mean Dice (TC, WT, ET)")
        ax.set_ylabel("predicted mean Dice")
        ax.set_title(name)
        ax.legend(fontsize=8, title="corruption")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=90)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=200)
    parser.add_argument(
        "--healthy-cases", type=int, default=30, help="test brains without tumour, reported as their own group"
    )
    parser.add_argument("--num-samples", type=int, default=8)
    parser.add_argument("--threshold", type=float, default=0.7)
    parser.add_argument("--bundle", default="brats_ssn", help="the stage-1 bundle (it ships a quality model)")
    parser.add_argument("--train-data", default="", help="default outputs/<bundle>_quality/data")
    parser.add_argument("--test-data", default="", help="default outputs/<bundle>_quality/test")
    parser.add_argument("--quality-model", default="", help="default bundles/<bundle>/models/quality_model.pt")
    parser.add_argument("--generate-only", action="store_true", help="only simulate the cases (resumable)")
    parser.add_argument(
        "--blend-sweep", action="store_true", help="print the net + ridge stacking sweep (writes no result file)"
    )
    parser.add_argument("--name", default="quality")
    parser.add_argument(
        "--figure",
        default="",
        help="the figure (default bundles/<bundle>/docs/quality.png; benchmarks/results is capped at 20 files)",
    )
    args = parser.parse_args(argv)
    global BUNDLE
    BUNDLE = os.path.join(REPO, "bundles", args.bundle)
    outputs = os.path.join(REPO, "outputs", f"{args.bundle}_quality")
    args.train_data = args.train_data or os.path.join(outputs, "data")
    args.test_data = args.test_data or os.path.join(outputs, "test")
    args.quality_model = args.quality_model or os.path.join(BUNDLE, "models", "quality_model.pt")
    args.figure = args.figure or os.path.join(BUNDLE, "docs", "quality.png")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    start = time.perf_counter()
    generate(args)
    simulate_seconds = time.perf_counter() - start
    if args.generate_only:
        return 0
    train = load_quality_dataset(args.train_data, with_inputs=args.blend_sweep)
    test = load_quality_dataset(args.test_data)
    names = score_names(BRATS_REGIONS)
    true = test["true_dice"].mean(1)
    groups = np.array([_group(r["meta"]) for r in test["records"]])
    tumour = groups != "healthy"
    predictions: dict[str, np.ndarray] = {}
    per_region: dict[str, np.ndarray] = {}
    network = _quality_net(args.quality_model)
    args.flips = _config("inference.json")["quality"].get("flips", [[]])  # as the bundle's predictor runs it
    if args.blend_sweep:
        args.val_fraction = float(_config("train_quality.json")["val_fraction"])
        rows = blend_sweep(args, train, test, network)
        print(md_table(rows, list(rows[0]), fmt="{:.4f}"))
        return 0
    with torch.no_grad():
        x = torch.from_numpy(test["inputs"])
        s = torch.from_numpy(test["scores"])
        per_region["SegmentationQualityNet"] = predict_with_flips(network, x, s, args.flips).numpy()
        z = (s - network.score_mean) / network.score_std
        out_of_distribution = int((z.abs() > 8.0).any(1).sum())
    for label, reg in (
        ("ridge (all scores)", ScoreRegressor(degree=1, alpha=1.0)),
        ("ridge quadratic (all scores)", ScoreRegressor(degree=2, alpha=10.0)),
        *((name, ScoreRegressor(columns=[names.index(name)])) for name in SINGLE_SCORES),
    ):
        reg.fit(train["scores"], train["true_dice"].mean(1) if reg.columns else train["true_dice"])
        pred = reg.predict(test["scores"])
        per_region[label] = pred if pred.shape[1] > 1 else np.repeat(pred, 3, axis=1)
    rows = []
    for method, pred in per_region.items():
        predictions[method] = pred.mean(1)
        for subset in SUBSETS if (~tumour).any() else SUBSETS[:4]:
            keep = {"all": tumour, "all + healthy": np.ones_like(tumour)}.get(subset, groups == subset)
            m = quality_prediction_metrics(predictions[method][keep], true[keep], args.threshold)
            rows.append({"method": method, "subset": subset, **m})
    region_rows = []
    for method in ("SegmentationQualityNet", "ridge (all scores)"):
        for r, region in enumerate(BRATS_REGIONS):
            m = quality_prediction_metrics(per_region[method][tumour, r], test["true_dice"][tumour, r], args.threshold)
            region_rows.append({"method": method, "subset": f"region {region}", **m})
    baselines = [r for r in rows if r["subset"] == "all" and r["method"] != "SegmentationQualityNet"]
    best = max(baselines, key=lambda r: r["pearson"])["method"]
    figure = os.path.abspath(args.figure)
    os.makedirs(os.path.dirname(figure), exist_ok=True)
    _figure(figure, true, predictions, groups, best)
    net_all = next(r for r in rows if r["method"] == "SegmentationQualityNet" and r["subset"] == "all")
    targets = {"pearson": (">=", 0.85), "mae": ("<=", 0.05), "auroc": (">=", 0.9)}
    met = {k: (net_all[k] >= v if op == ">=" else net_all[k] <= v) for k, (op, v) in targets.items()}
    results = {
        "machine": machine_info(),
        "args": vars(args),
        "simulate_seconds": simulate_seconds,
        "seconds": time.perf_counter() - start,
        "num_train_cases": len(train["records"]),
        "stage1_fingerprint": test["records"][0]["meta"].get("stage1_fingerprint"),
        "test_groups": {g: int((groups == g).sum()) for g in ("clean", "seen", "held-out", "healthy")},
        "healthy": _healthy_summary(predictions["SegmentationQualityNet"], true, groups, args.threshold),
        "test_corruptions": {c: int(sum(r["meta"]["corruption"] == c for r in test["records"])) for c in set(
            r["meta"]["corruption"] for r in test["records"])},
        "out_of_distribution_cases": out_of_distribution,
        "best_baseline": best,
        "targets": {k: list(v) for k, v in targets.items()},
        "targets_met": met,
        "rows": rows,
        "region_rows": region_rows,
        "cases": [
            {
                "case_id": r["case_id"],
                "group": g,
                "meta": r["meta"],
                "true_dice": r["true_dice"],
                **{f"predicted_{k}": float(predictions[k][i]) for k in ("SegmentationQualityNet", best)},
            }
            for i, (r, g) in enumerate(zip(test["records"], groups))
        ],
    }  # fmt: skip
    cmd = " ".join(argv if argv is not None else sys.argv[1:])
    all_rows = [r for r in rows if r["subset"] == "all"]
    lines = [
        f"# Segmentation-quality prediction on {int(tumour.sum())} held-out phantoms ({args.size}^3, seed {args.seed})"
        + (f" and {int((~tumour).sum())} brains without tumour" if (~tumour).any() else ""),
        "",
        f"`python benchmarks/bench_quality.py {cmd}`".replace(" `", "`"),
        "",
        f"Stage 1: shipped `{args.bundle}` ({args.num_samples} samples). Stage 2: shipped `quality_model.pt` "
        f"(`configs/train_quality.json`, {len(train['records'])} training phantoms of seed 100 with seen corruptions; "
        "the regressions are fitted on the same cases). Test: "
        + ", ".join(f"{n} {g}" for g, n in results["test_groups"].items())
        + f" (corruptions {results['test_corruptions']}). Target: the mean over TC, WT, ET of the true Dice against "
        f"the consensus; failure = true mean Dice < {args.threshold}. Single scores are calibrated by a linear fit on "
        "the training cases. Lower is better for MAE and AURC (the oracle's AURC is "
        f"{net_all['aurc_optimal']:.3f}).",
        "",
        "## All test cases with a tumour (the targets are judged here)",
        "",
        md_table(all_rows, COLUMNS, fmt="{:.3f}"),
        "",
        "Targets for SegmentationQualityNet: "
        + ", ".join(f"{k} {op} {v}: {'met' if met[k] else 'NOT met'}" for k, (op, v) in targets.items())
        + f". Best baseline by Pearson: {best}. Cases with a score beyond 8 standard deviations of the training "
        f"cases (flagged out of distribution by the predictor): {out_of_distribution}.",
        "",
        "## By corruption group",
        "",
        md_table(
            [r for r in rows if r["subset"] in SUBSETS[1:4] and r["method"] in ("SegmentationQualityNet", best)],
            COLUMNS,
            fmt="{:.3f}",
        ),
        "",
        "## Per region",
        "",
        md_table(region_rows, COLUMNS, fmt="{:.3f}"),
        "",
        *_healthy_lines(rows, results["healthy"], best),
        f"Figure: `{os.path.relpath(figure, REPO)}` (risk-coverage; predicted vs true mean Dice). Wall time "
        f"{results['seconds']:.0f} s, of which {simulate_seconds:.0f} s simulating cases not already on disk (cases on "
        "disk are reused; simulating one costs about 2.5 s of stage-1 inference on an idle core, more on a busy one). "
        "Machine: "
        f"{results['machine']['processor']}, {results['machine']['torch_threads']} threads.",
    ]
    json_path, md_path = write_results(args.name, results, "\n".join(lines))
    print(f"wrote {json_path}, {md_path} and {figure}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
