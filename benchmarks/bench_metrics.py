# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""Speed of the sample-set metrics and the oracle GED / HM-IoU of the 2D synthetic set.

Timings (median of several runs, torch threads fixed):

- 2D: GED + HM-IoU for 100 samples x 4 annotations of 128 x 128, 2 classes (target < 50 ms on CPU);
- 3D: GED + HM-IoU for 16 samples x 3 raters of 96^3, 4 classes (BraTS labels; target < 2 s).

Each is timed as the two separate calls (``generalized_energy_distance`` then ``hungarian_matched_iou``) and as
the shared single pass ``sample_set_metrics``. The masks are random label maps: the cost does not depend on the
content (one-hot masks and one matrix product per class).

Oracle: for each of the 100 cases of ``ambiguous_lesions_2d`` (128 x 128, K = 4 annotators, seed 0),
100 masks drawn by ``sample_oracle(case, 100, seed=case_index)`` are scored against the case's annotations; the
mean over cases is the best a model can expect (the number models are compared with). The exact expectation
over the true mode distribution (no sampling noise) and a mode-collapsed baseline (100 copies of the most likely
mode) are reported beside it. Both conventions for classes absent from both masks (``"zero"``, ``"nan"``).

Usage::

    python benchmarks/bench_metrics.py --repeats 31   # benchmarks/results/metrics.{json,md}
    python benchmarks/bench_metrics.py --repeats 5 --output-dir /tmp/metrics_smoke

``--output-dir`` defaults to ``$MONAI_PROBSEG_RESULTS_DIR`` when set, else ``benchmarks/results``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from monai_probseg.metrics import (
    generalized_energy_distance,
    hungarian_matched_iou,
    pairwise_distance,
    sample_set_metrics,
)
from monai_probseg.utils import write_text_atomic

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def _time(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 2) -> dict[str, dict[str, float]]:
    """Wall-clock seconds of each function: median, min, max and interquartile range over ``repeats`` runs.

    The functions are run round-robin, so a burst of load from other processes hits them all alike.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    runs: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            runs[name].append(time.perf_counter() - start)
    out = {}
    for name, values in runs.items():
        q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
        out[name] = {
            "median_s": statistics.median(values),
            "min_s": min(values),
            "max_s": max(values),
            "iqr_s": q[2] - q[0],
        }
    return out


def bench_speed(name: str, shape_s: tuple, shape_y: tuple, num_classes: int, repeats: int, seed: int = 0) -> dict:
    """Time GED and HM-IoU on random label maps of the given shapes."""
    g = torch.Generator().manual_seed(seed)
    samples = torch.randint(0, num_classes, shape_s, generator=g)
    annotations = torch.randint(0, num_classes, shape_y, generator=g).to(torch.uint8)

    def separate():
        generalized_energy_distance(samples, annotations, num_classes)
        hungarian_matched_iou(samples, annotations, num_classes)

    timings = _time(
        {
            "ged": lambda: generalized_energy_distance(samples, annotations, num_classes),
            "hm_iou": lambda: hungarian_matched_iou(samples, annotations, num_classes),
            "ged_plus_hm_iou_separate": separate,
            "sample_set_metrics_shared": lambda: sample_set_metrics(samples, annotations, num_classes),
        },
        repeats,
    )
    return {
        "case": name,
        "samples_shape": list(shape_s),
        "annotations_shape": list(shape_y),
        "num_classes": num_classes,
        "repeats": repeats,
        **timings,
    }


def _exact_oracle(modes: torch.Tensor, probs: torch.Tensor, annotations: torch.Tensor, mode: str) -> float:
    """GED between the true mode distribution and the annotations, expectations weighted by mode probabilities."""
    d_mm = pairwise_distance(modes[None], None, 2, empty_both=mode)[0]  # (M, M)
    d_my = pairwise_distance(modes[None], annotations[None], 2, empty_both=mode)[0]  # (M, K)
    d_yy = pairwise_distance(annotations[None], None, 2, empty_both=mode)[0]  # (K, K)

    def weighted(d: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        valid = ~torch.isnan(d)
        return (torch.where(valid, d, 0.0) * w).sum() / (w * valid).sum()

    k = annotations.shape[0]
    cross = weighted(d_my, probs[:, None].expand(-1, k) / k)
    div_s = weighted(d_mm, probs[:, None] * probs[None, :])
    div_y = torch.nanmean(d_yy.flatten(), dim=0)
    return float(2 * cross - div_s - div_y)


def bench_oracle(num_cases: int, num_samples: int, batch: int = 10) -> dict:
    """Oracle and mode-collapse GED / HM-IoU of the 2D synthetic set."""
    from monai_probseg.data.synthetic import ambiguous_lesions_2d, sample_oracle

    cases = ambiguous_lesions_2d(num_cases, spatial_size=(128, 128), num_annotators=4, seed=0)
    out: dict = {
        "num_cases": num_cases,
        "num_samples": num_samples,
        "num_annotators": 4,
        "spatial_size": [128, 128],
        "data": "ambiguous_lesions_2d(num_cases, (128, 128), num_annotators=4, seed=0); "
        "oracle samples sample_oracle(case, num_samples, seed=case_index)",
    }
    start = time.perf_counter()
    for mode in ("zero", "nan"):
        per_case: dict[str, list[float]] = {k: [] for k in ("ged", "hm_iou", "collapsed_ged", "collapsed_hm_iou")}
        exact = []
        for lo in range(0, num_cases, batch):
            chunk = cases[lo : lo + batch]
            annotations = torch.stack([torch.as_tensor(c["label"]) for c in chunk])
            oracle = torch.stack(
                [torch.as_tensor(sample_oracle(c, num_samples, seed=lo + i)) for i, c in enumerate(chunk)]
            )
            best_modes = [max(c["modes"], key=lambda m: m[1])[0] for c in chunk]
            collapsed = torch.stack([torch.as_tensor(m)[None].expand(num_samples, -1, -1) for m in best_modes])
            scores = sample_set_metrics(oracle, annotations, num_classes=2, empty_both=mode)
            per_case["ged"] += scores["ged"].tolist()
            per_case["hm_iou"] += scores["hm_iou"].tolist()
            scores = sample_set_metrics(collapsed, annotations, num_classes=2, empty_both=mode)
            per_case["collapsed_ged"] += scores["ged"].tolist()
            per_case["collapsed_hm_iou"] += scores["hm_iou"].tolist()
            for c, ann in zip(chunk, annotations):
                modes = torch.stack([torch.as_tensor(m) for m, _ in c["modes"]])
                probs = torch.tensor([p for _, p in c["modes"]], dtype=torch.float32)
                exact.append(_exact_oracle(modes, probs, ann, mode))
        summary = {}
        for key, values in {**per_case, "ged_exact": exact}.items():
            arr = np.asarray(values, dtype=np.float64)
            summary[key] = {
                "mean": float(np.nanmean(arr)),
                "std": float(np.nanstd(arr)),
                "num_nan": int(np.isnan(arr).sum()),
            }
        out[f"empty_both={mode}"] = summary
    out["seconds"] = time.perf_counter() - start
    return out


def _markdown(result: dict) -> str:
    lines = [
        "# Sample-set metrics benchmark",
        "",
        f"Command: `{result['command']}`  ",
        f"Machine: {result['machine']}, torch {result['torch']}, {result['threads']} torch threads, "
        f"load average before/after: {result['loadavg_before']} / {result['loadavg_after']}",
        "",
        "## Speed (wall clock, ms)",
        "",
        "Random label maps; the functions are timed round-robin. On a machine shared with other jobs the median "
        "includes their load; the min is the closest to an idle machine. Targets apply to GED + HM-IoU.",
        "",
        "| case | metric | median | min | IQR | target |",
        "|---|---|---|---|---|---|",
    ]
    targets = {"2d": "< 50 ms", "3d": "< 2000 ms"}
    for bench in result["speed"]:
        for key in ("ged", "hm_iou", "ged_plus_hm_iou_separate", "sample_set_metrics_shared"):
            t = bench[key]
            target = (
                targets[bench["case"][:2]] if key in ("ged_plus_hm_iou_separate", "sample_set_metrics_shared") else ""
            )
            lines.append(
                f"| {bench['case']} | {key} | {1000 * t['median_s']:.1f} | {1000 * t['min_s']:.1f} | "
                f"{1000 * t['iqr_s']:.1f} | {target} |"
            )
    oracle = result.get("oracle")
    if oracle:
        lines += [
            "",
            f"## Oracle of the 2D synthetic set ({oracle['num_cases']} cases, {oracle['num_samples']} oracle samples, "
            f"K = {oracle['num_annotators']})",
            "",
            f"Data: `{oracle['data']}`",
            "",
            "| empty_both | GED oracle (samples) | GED oracle (exact) | HM-IoU oracle | GED collapsed "
            "| HM-IoU collapsed |",
            "|---|---|---|---|---|---|",
        ]
        for mode in ("zero", "nan"):
            s = oracle[f"empty_both={mode}"]
            lines.append(
                f"| {mode} | {s['ged']['mean']:.4f} +- {s['ged']['std']:.4f} | {s['ged_exact']['mean']:.4f} | "
                f"{s['hm_iou']['mean']:.4f} | {s['collapsed_ged']['mean']:.4f} | {s['collapsed_hm_iou']['mean']:.4f} |"
            )
        lines += [
            "",
            "GED: mean over cases (+- std over cases) of D^2_GED with d = 1 - IoU of the lesion class, all pairs "
            "including i = j. Exact: expectation over the true mode distribution instead of 100 draws. Collapsed: "
            "100 copies of the most likely mode.",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=15, help="timed runs of the 2D case (3D: a third, >= 5)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--num-cases", type=int, default=100, help="synthetic cases for the oracle")
    parser.add_argument("--skip-oracle", action="store_true", help="only time the metrics")
    default_dir = Path(os.environ.get("MONAI_PROBSEG_RESULTS_DIR") or RESULTS_DIR)
    parser.add_argument("--output-dir", type=Path, default=default_dir)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    result = {
        "command": "python " + " ".join(sys.argv),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "loadavg_before": [round(x, 2) for x in os.getloadavg()],
    }
    result["speed"] = [
        bench_speed("2d 100x4 128^2", (1, 100, 128, 128), (1, 4, 128, 128), 2, args.repeats),
        bench_speed("3d 16x3 96^3", (1, 16, 96, 96, 96), (1, 3, 96, 96, 96), 4, max(5, args.repeats // 3)),
    ]
    if not args.skip_oracle:
        result["oracle"] = bench_oracle(args.num_cases, 100)
    result["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]

    write_text_atomic(json.dumps(result, indent=2) + "\n", args.output_dir / "metrics.json")
    write_text_atomic(_markdown(result), args.output_dir / "metrics.md")
    print(_markdown(result))


if __name__ == "__main__":
    main()
