# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""Smoke test of the anatomical-prior benchmark (2D, a few iterations): rows, ablations and targets."""

from __future__ import annotations

import json
import os
import sys

import pytest

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "benchmarks")


@pytest.fixture
def bench(tmp_path, monkeypatch):
    monkeypatch.setenv("MONAI_PROBSEG_RESULTS_DIR", str(tmp_path))
    monkeypatch.syspath_prepend(BENCHMARKS)
    import bench_anatomical_prior

    yield bench_anatomical_prior
    for name in ("bench_anatomical_prior", "_common"):
        sys.modules.pop(name, None)


@pytest.mark.parametrize("fit", [0, 2])
def test_2d_rows_ablations_and_targets(bench, tmp_path, fit):
    small = ["--dims", "2", "--size2d", "32", "--prior2d", "4", "--unsup2d", "4", "--test2d", "2"]
    small += ["--prior-iters", "2", "--unsup-iters", "2", "--unet-iters", "2", "--intensity-fit", str(fit)]
    bench.main([*small, "--name", "ap_smoke"])
    with open(tmp_path / "ap_smoke.json") as f:
        out = json.load(f)["dims"]["2"]
    rows = {r["method"].strip(): r for r in out["rows"]}
    main, learnt = (
        rows["unsupervised anatomical prior p(s|z,x)"],
        rows["ablation: the learnt tissue Gaussians for every image"],
    )
    for row in out["rows"]:
        assert all(0.0 <= row[t] <= 1.0 for t in ("CSF", "GM", "WM")), row
    if fit == 0:  # without the per-image fit the ablation is the model itself
        assert all(main[t] == learnt[t] for t in ("CSF", "GM", "WM"))
    sup, mix = rows["supervised UNet (paired labels)"], rows["intensity mixture (EM, per image)"]
    for t, check in out["targets"].items():
        assert check["gap_to_supervised"] == pytest.approx(sup[t] - main[t])
        assert check["within_0.08_of_supervised"] == (sup[t] - main[t] <= 0.08)
        assert check["gain_over_mixture"] == pytest.approx(main[t] - mix[t])
    assert (tmp_path / "ap_smoke.md").is_file() and (tmp_path / "ap_smoke.png").is_file()
