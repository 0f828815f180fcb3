# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""Smoke test of the 2D benchmark pipeline: train (a few iterations), diagnose the saved weights, summarise."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "benchmarks")


@pytest.fixture
def scripts(tmp_path, monkeypatch):
    monkeypatch.setenv("MONAI_PROBSEG_RESULTS_DIR", str(tmp_path / "results"))
    monkeypatch.syspath_prepend(BENCHMARKS)
    import bench_lesions2d
    import diagnose_lesions2d
    import summarize_lesions2d

    yield bench_lesions2d, diagnose_lesions2d, summarize_lesions2d
    for name in ("bench_lesions2d", "diagnose_lesions2d", "summarize_lesions2d", "_common"):
        sys.modules.pop(name, None)


def test_train_diagnose_summarize(scripts, tmp_path):
    bench, diagnose, summarize = scripts
    common = ["--iterations", "2", "--batch-size", "2", "--size", "32", "--train-cases", "4", "--test-cases", "4"]
    common += ["--samples", "4", "--channels", "4", "8", "--threads", "1", "--save-dir", str(tmp_path / "w")]
    pu = bench.main(["--models", "prob_unet", "--latent-dim", "2", "--name", "pu", *common])
    ssn = bench.main(["--models", "ssn", "--mean-ce-weight", "1", "--mc-samples", "4", "--name", "ssn", *common])
    assert [r["model"] for r in pu["rows"]] == ["oracle", "prob_unet"]
    assert pu["rows"][1]["iterations"] == 2 and ssn["rows"][1]["iterations"] == 2
    assert pu["rows"][0]["ged"] == ssn["rows"][0]["ged"]  # same held-out cases, same oracle draws

    small = ["--channels", "4", "8", "--size", "32", "--test-cases", "4", "--samples", "4"]
    d_pu = diagnose.main(
        ["--model", "prob_unet", "--latent-dim", "2", "--weights", str(tmp_path / "w" / "pu_prob_unet.pt")]
        + small
        + ["--sample-scale", str(pu["rows"][1]["sample_scale"]), "--name", "pu_diagnosis"]
    )["rows"][0]
    d_ssn = diagnose.main(
        ["--model", "ssn", "--weights", str(tmp_path / "w" / "ssn_ssn.pt")]
        + small
        + ["--sample-scale", str(ssn["rows"][1]["sample_scale"]), "--name", "ssn_diagnosis"]
    )["rows"][0]
    # the diagnosis redraws the same samples and oracle draws as the benchmark's evaluation
    assert d_pu["ged"] == pytest.approx(pu["rows"][1]["ged"], abs=1e-6)
    assert d_pu["ged_oracle"] == pytest.approx(pu["rows"][0]["ged"], abs=1e-6)
    assert d_ssn["ged"] == pytest.approx(ssn["rows"][1]["ged"], abs=1e-6)
    for d in (d_pu, d_ssn):
        assert 0.0 <= d["nearest_mode_iou"] <= 1.0 and 0.0 <= d["mode_frequency_error"] <= 1.0
        assert d["ged_snapped"] >= 0.0
    assert "ged_posterior_recon" in d_pu and "ged_posterior_recon" not in d_ssn
    assert len(d_pu["kl_per_latent_dim"]) == 2 and 0.0 < d_pu["kl_top_dim_share"] <= 1.0

    md = summarize.main(["pu", "ssn", "--name", "table", "--remark", "smoke run."])
    assert "smoke run." in md and "| pu | prob_unet |" in md and "| ssn | ssn |" in md
    with open(tmp_path / "results" / "table.md") as f:
        assert f.read().strip() == md.strip()
    with open(tmp_path / "results" / "pu.json") as f:
        assert json.load(f)["args"]["latent_dim"] == 2


def test_diagnose_rejects_missing_weights(scripts, tmp_path):
    _, diagnose, _ = scripts
    with pytest.raises(SystemExit):
        diagnose.main(["--model", "ssn", "--weights", str(tmp_path / "nope.pt"), "--name", "x"])


class _ModeCycler:
    """A stand-in sampler whose samples are exactly the cases' true modes, each mode in turn."""

    def __init__(self, cases):
        self.cases = cases
        self.drawn = 0

    def eval(self):
        return self

    def distribution(self, x):
        return x

    def sample(self, maps, num_samples, generator=None):
        import numpy as np
        import torch

        out = []
        for case in self.cases:
            modes = np.stack([m for m, _ in case["modes"]])
            idx = [(self.drawn + j) % len(modes) for j in range(num_samples)]
            out.append(torch.nn.functional.one_hot(torch.from_numpy(modes[idx]).long(), 2).permute(0, 3, 1, 2))
        self.drawn += num_samples
        return torch.stack(out).float()


def test_diagnosis_of_exact_modes(scripts):
    """Samples that are exact modes: snapping changes nothing, and each mode's closest sample is the mode."""
    _, diagnose, _ = scripts
    from monai_probseg.data.synthetic import ambiguous_lesions_2d

    cases = ambiguous_lesions_2d(6, (24, 24), num_annotators=4, seed=3)
    out = diagnose.diagnose("ssn", _ModeCycler(cases), cases, num_samples=20, seed=0)
    assert out["nearest_mode_iou"] == 1.0 and out["frac_iou_above_0.9"] == 1.0
    assert out["ged_snapped"] == pytest.approx(out["ged"], abs=1e-7)
    assert out["ged_best_sample"] == pytest.approx(out["ged_oracle"], abs=1e-7)
    # uniform over the modes vs the true probabilities: total variation as computed by hand
    tv = []
    for case in cases:
        probs = [p for _, p in case["modes"]]
        counts = [len([j for j in range(20) if j % len(probs) == k]) / 20 for k in range(len(probs))]
        tv.append(0.5 * sum(abs(c - p) for c, p in zip(counts, probs)))
    assert out["mode_frequency_error"] == pytest.approx(sum(tv) / len(tv))


def test_leaderboard_every_method(scripts):
    """Every method of the leaderboard trains, samples and gets every column; TTA reuses the trained U-Net."""
    bench, _, _ = scripts
    common = ["--iterations", "5", "--batch-size", "2", "--size", "32", "--train-cases", "4", "--test-cases", "4"]
    common += ["--samples", "8", "--channels", "4", "8", "--diffusion-channels", "8", "8", "--threads", "1"]
    common += ["--val-cases", "4", "--scales", "1", "0.5", "0.2"]
    out = bench.main(["--name", "board", *common])
    rows = {r["model"]: r for r in out["rows"]}
    assert list(rows) == ["oracle", *bench.MODELS]
    for name in bench.MODELS:
        row = rows[name]
        for key in ("ged_over_oracle", "hm_iou_over_oracle", "diversity_over_oracle", "ece", "train_step_over_unet"):
            assert row[key] == row[key] and row[key] >= 0.0, (name, key)  # not NaN
        assert row["ged_over_oracle"] == pytest.approx(row["ged"] / rows["oracle"]["ged"])
    assert rows["unet"]["diversity_samples"] == 0.0 and rows["unet"]["train_step_over_unet"] == 1.0
    assert rows["flip_tta"]["iterations"] == rows["unet"]["iterations"]  # no training of its own
    assert rows["ensemble"]["iterations"] == 5  # 5 members share the 5 iterations
    assert all(rows[name]["samples_over_forward"] > 0 for name in bench.MODELS if name != "unet")
    # the spread of every method with a sample_scale is the lowest validation GED of the scales tried
    for name in bench.MODELS:
        if name in bench.SCALED:
            tried = {s: rows[name][f"val_ged_scale_{s}"] for s in ("1", "0.5", "0.2")}
            assert rows[name]["val_ged"] == min(tried.values())
            assert f"{rows[name]['sample_scale']:g}" == min(tried, key=tried.get)
        else:
            assert "sample_scale" not in rows[name]


def test_repeated_passes_are_tiled(scripts):
    import torch

    passes = torch.arange(3).reshape(1, 3, 1)  # the ensemble's / TTA's fixed passes: sample n is pass n mod 3
    assert scripts[0]._tile(passes, 7)[0, :, 0].tolist() == [0, 1, 2, 0, 1, 2, 0]


def test_calibrate_lesions2d_scale_picks_the_lowest_validation_ged(tmp_path, monkeypatch):
    """The shipped MoSE's noise scale on its validation cases (a trial run into a scratch folder, few samples)."""
    monkeypatch.setenv("MONAI_PROBSEG_RESULTS_DIR", str(tmp_path))
    monkeypatch.syspath_prepend(BENCHMARKS)
    import calibrate_lesions2d_scale

    try:
        out = calibrate_lesions2d_scale.main(["--scales", "1", "0.2", "--samples", "8"])
    finally:
        for name in ("calibrate_lesions2d_scale", "bench_lesions2d", "_common"):
            sys.modules.pop(name, None)
    assert [r["sample_scale"] for r in out["rows"]] == [1.0, 0.2]
    assert out["chosen"] == min(out["rows"], key=lambda r: r["ged"])
    assert all(0.0 <= r["ged"] <= 2.0 and 0.0 <= r["whole_image"] <= 1.0 for r in out["rows"])
    # less noise, fewer samples that flip the whole background
    assert out["rows"][1]["whole_image"] <= out["rows"][0]["whole_image"]
    assert (tmp_path / "calibration.md").is_file() and (tmp_path / "calibration.json").is_file()


@pytest.mark.parametrize("bad", [["--scales", "0"], ["--scales", "1", "nan"], ["--val-cases", "-1"]])
def test_leaderboard_rejects_bad_calibration_options(scripts, bad):
    with pytest.raises(SystemExit):
        scripts[0].main(["--models", "unet", "--iterations", "1", "--train-cases", "2", "--test-cases", "2", *bad])


def test_floor_of_exact_frequencies_with_imperfect_masks(tmp_path, monkeypatch):
    monkeypatch.setenv("MONAI_PROBSEG_RESULTS_DIR", str(tmp_path / "results"))
    monkeypatch.syspath_prepend(BENCHMARKS)
    import bench_lesions2d
    import floor_lesions2d

    try:
        small = ["--size", "32", "--test-cases", "6", "--samples", "8"]
        out = floor_lesions2d.main([*small, "--amplitudes", "0", "0.3", "--name", "floor"])
        bench = bench_lesions2d.main(
            ["--models", "unet", "--iterations", "1", "--batch-size", "2", "--train-cases", "2", "--val-cases", "0"]
            + [*small, "--channels", "4", "8", "--name", "lb"]
        )
    finally:
        for name in ("floor_lesions2d", "bench_lesions2d", "_common"):
            sys.modules.pop(name, None)
    rows = {(r["kind"], r["amplitude"]): r for r in out["rows"]}
    # amplitude 0 draws exactly the leaderboard's oracle row
    for kind in ("systematic", "per_sample"):
        assert rows[kind, 0.0]["mode_iou"] == 1.0
        assert rows[kind, 0.0]["ged"] == pytest.approx(bench["rows"][0]["ged"], abs=1e-6)
        assert rows[kind, 0.0]["hm_iou"] == pytest.approx(bench["rows"][0]["hm_iou"], abs=1e-6)
    # perturbed masks lose IoU with their mode, and a shared wrong mask costs GED
    assert rows["systematic", 0.3]["mode_iou"] < 0.95 and rows["per_sample", 0.3]["mode_iou"] < 0.95
    assert rows["systematic", 0.3]["ged_over_oracle"] > 1.0
    assert (tmp_path / "results" / "floor.md").exists()


def test_expert_roles_hand_computed(scripts):
    import numpy as np
    import torch

    _, diagnose, _ = scripts
    empty = np.zeros((8, 8), np.uint8)
    tight = empty.copy()
    tight[2:5, 2:5] = 1
    generous = empty.copy()
    generous[1:6, 1:6] = 1
    case = {
        "modes": [(empty, 0.2), (tight, 0.5), (generous, 0.3)],
        "mode_names": ["empty", "tight", "generous"],
        "params": {"contrast": 0.2},
    }
    modes = [torch.from_numpy(np.stack([m for m, _ in case["modes"]])).long()]
    # three experts: generous, tight, and a shrunken tight (nearest to tight, IoU 4/9)
    small = empty.copy()
    small[2:4, 2:4] = 1
    experts = torch.from_numpy(np.stack([generous, tight, small]))[None].long()
    weights = torch.tensor([[0.6, 0.3, 0.1]])
    out = diagnose.expert_roles([case], modes, experts, weights)
    kinds = out["mode_kinds"]
    assert kinds["empty"]["gate_mass"] == 0.0 and kinds["empty"]["best_expert_iou"] == 0.0
    assert kinds["tight"]["gate_mass"] == pytest.approx(0.4) and kinds["tight"]["best_expert_iou"] == 1.0
    assert kinds["generous"]["gate_mass"] == pytest.approx(0.6) and kinds["generous"]["p_true"] == 0.3
    assert out["gate_mode_tv"] == pytest.approx(0.5 * (0.2 + 0.1 + 0.3))
    assert out["best_expert_iou_by_contrast"]["tight"]["0.1-0.3"] == 1.0
    assert np.isnan(out["best_expert_iou_by_contrast"]["generous"]["0.45-0.7"])


def test_mose_diagnosis(scripts, tmp_path):
    bench, diagnose, _ = scripts
    common = ["--iterations", "2", "--batch-size", "2", "--size", "32", "--train-cases", "4", "--test-cases", "4"]
    common += ["--samples", "4", "--channels", "4", "8", "--threads", "1", "--val-cases", "0"]
    bench.main(["--models", "mose", "--name", "mo", "--save-dir", str(tmp_path / "w"), *common])
    row = diagnose.main(
        ["--model", "mose", "--weights", str(tmp_path / "w" / "mo_mose.pt"), "--channels", "4", "8"]
        + ["--size", "32", "--test-cases", "4", "--samples", "4", "--name", "mo_diagnosis"]
    )["rows"][0]
    assert 0.0 <= row["gate_mode_tv"] <= 1.0 and 0.0 <= row["expert_mean_mode_iou"] <= 1.0
    for kind in row["mode_kinds"].values():
        assert 0.0 <= kind["p_true"] <= 1.0 and 0.0 <= kind["gate_mass"] <= 1.0 + 1e-6
    assert "best_expert_iou" in (tmp_path / "results" / "mo_diagnosis.md").read_text()


def test_fit_of_the_generators_parameters(tmp_path, monkeypatch):
    monkeypatch.setenv("MONAI_PROBSEG_RESULTS_DIR", str(tmp_path / "results"))
    monkeypatch.syspath_prepend(BENCHMARKS)
    import floor_lesions2d

    from monai_probseg.data.synthetic import ambiguous_lesions_2d, lesion_regions

    try:
        # without noise the truth is an exact fit: a perturbed start must find it again (or one as good)
        case = ambiguous_lesions_2d(1, (32, 32), seed=2, noise=0.0)[0]
        fitted, info = floor_lesions2d.fit_lesion(case, case, starts=1)
        assert info["true_residual"] == pytest.approx(0.0, abs=1e-10) and info["residual"] <= 1e-10
        fitted, info = floor_lesions2d.fit_lesion(case, case, starts=3, rng=np.random.default_rng(1))
        assert info["residual"] <= info["true_residual"] + 1e-9
        tight = lesion_regions(fitted, (32, 32))["tight"]
        np.testing.assert_array_equal(tight, lesion_regions(case["params"], (32, 32))["tight"])
        out = floor_lesions2d.main(
            ["--size", "32", "--test-cases", "4", "--samples", "8", "--amplitudes", "0"]
            + ["--fit", "--fit-starts", "2", "--unet-budget", "1", "--unet-train-cases", "4", "--name", "fit"]
        )
    finally:
        for name in ("floor_lesions2d", "bench_lesions2d", "diagnose_lesions2d", "_common"):
            sys.modules.pop(name, None)
    rows = {r["kind"]: r for r in out["rows"]}
    fit = rows["fit_true_frequencies"]
    assert 0.5 < fit["mode_iou"] <= 1.0 and fit["ged_over_oracle"] > 0
    assert rows["fit_fitted_frequencies"]["hm_iou"] > 0
    assert len(out["fit_cases"]) == 4 and all(c["residual"] <= c["true_residual"] + 1e-9 for c in out["fit_cases"])
    assert sum(b["cases"] for b in out["fit_by_contrast"]) == 4
    unet = out["unet_on_one_mode"]
    assert unet["iterations"] >= 1 and unet["train_cases"] == 4 and 0.0 <= unet["iou"] <= 1.0
    assert list(unet["iou_by_contrast"]) == ["0.1-0.3", "0.3-0.45", "0.45-0.7", "0.7-1"]
    assert "one unambiguous mode" in (tmp_path / "results" / "fit.md").read_text()
