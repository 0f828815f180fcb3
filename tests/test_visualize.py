# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from monai_probseg.visualize import (  # noqa: E402
    figure_to_array,
    pick_slice,
    plot_mode_frequencies,
    plot_reliability_diagram,
    plot_risk_coverage,
    plot_sample_grid,
    reliability_bins,
    risk_coverage_curve,
)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _case(spatial, channels=1, raters=3, samples=5, seed=0, channel_maps=False):
    rng = np.random.default_rng(seed)
    seg = np.zeros(spatial, np.uint8)
    seg[(slice(2, 6),) * len(spatial)] = 1
    maps = {
        "seg": seg,
        "entropy": rng.random(spatial).astype(np.float32),
        "mutual_info": rng.random(spatial).astype(np.float32),
    }
    if channel_maps:  # as the inferer returns them: (1, *spatial)
        maps = {k: torch.as_tensor(v)[None] for k, v in maps.items()}
    return {
        "image": rng.standard_normal((channels, *spatial)).astype(np.float32),
        "raters": np.stack([seg] * raters),
        "samples": torch.as_tensor(np.stack([seg] * samples)),
        "case_id": f"case{seed}",
        **maps,
    }


@pytest.mark.parametrize("channel_maps", [False, True])
def test_grid_2d_panels(channel_maps):
    fig = plot_sample_grid([_case((12, 12), channel_maps=channel_maps), _case((12, 12), seed=1)], num_samples=4)
    visible = [ax for ax in fig.axes if ax.images]
    # image + 3 raters + mean + 4 samples + entropy + MI per row, two rows
    assert len(visible) == 2 * 11
    assert [ax.get_title() for ax in fig.axes[:11]] == ["image", "rater 1", "rater 2", "rater 3", "mean"] + [
        f"sample {k}" for k in range(1, 5)
    ] + ["entropy", "mutual info"]


def test_grid_3d_chosen_slices_and_default_slice():
    case = _case((10, 10, 8), channels=4)
    fig = plot_sample_grid(case, slice_index=[1, 3, 5], image_channel=3)
    assert len(fig.axes) == 3 * 11
    shown = fig.axes[0].images[0].get_array()
    np.testing.assert_allclose(np.asarray(shown), case["image"][3][:, :, 1].T)
    # the default slice is the largest cross-section of the raters
    raters = np.zeros((2, 10, 10, 8), np.uint8)
    raters[:, 4:6, 4:6, 6] = 1
    assert pick_slice(raters.max(0), axis=2) == 6
    fig = plot_sample_grid({"image": case["image"], "raters": raters})
    assert "slice 6" in fig.axes[0].texts[0].get_text()
    assert len(fig.axes) == 3  # image and two raters only: absent panels are left out


def test_grid_rejects_bad_inputs():
    with pytest.raises(ValueError, match="empty"):
        plot_sample_grid([])
    with pytest.raises(ValueError, match="image_channel"):
        plot_sample_grid(_case((8, 8)), image_channel=2)
    with pytest.raises(ValueError, match="expected"):
        plot_sample_grid({**_case((8, 8)), "samples": np.zeros((2, 3, 8, 9))})


def test_reliability_bins_values():
    probs = torch.tensor([0.05, 0.15, 0.85, 0.95]).reshape(1, 1, 4)
    probs = torch.cat([1 - probs, probs], 1)  # (1, 2, 4)
    target = torch.tensor([[0, 0, 1, 0]])
    bins = reliability_bins(probs, target, num_bins=2)
    np.testing.assert_allclose(bins["count"], [2, 2])
    np.testing.assert_allclose(bins["confidence"], [0.1, 0.9])
    np.testing.assert_allclose(bins["frequency"], [0.0, 0.5])
    np.testing.assert_allclose(bins["ece"], 0.5 * 0.1 + 0.5 * 0.4)
    # a calibrated predictor: frequency follows confidence
    rng = np.random.default_rng(0)
    p = rng.random(20000)
    y = (rng.random(20000) < p).astype(np.int64)
    bins = reliability_bins(np.stack([1 - p, p])[None], y[None], num_bins=5)
    np.testing.assert_allclose(bins["frequency"], bins["confidence"], atol=0.03)
    assert float(bins["ece"]) < 0.02


def test_reliability_diagram_curves():
    rng = np.random.default_rng(1)
    p = rng.random((1, 1, 16, 16))
    probs = np.concatenate([1 - p, p], 1)
    target = (p > 0.5).astype(np.int64)
    fig = plot_reliability_diagram({"a": probs, "b": probs**2 / (probs**2).sum(1, keepdims=True)}, target)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels[0] == "calibrated" and labels[1].startswith("a (ECE") and labels[2].startswith("b (ECE")


def test_mode_frequencies_bars():
    fig = plot_mode_frequencies({"model": np.array([0, 0, 1, -1])}, [0.5, 0.5], ["tight", "generous"])
    ax = fig.axes[0]
    heights = [p.get_height() for p in ax.patches]
    np.testing.assert_allclose(heights, [0.5, 0.5, 0.5, 0.25, 0.25])  # true (2 bars), model (tight, generous, other)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["tight", "generous", "other"]
    with pytest.raises(ValueError, match="outside"):
        plot_mode_frequencies(np.array([0, 3]), [0.5, 0.5])


def test_risk_coverage_values():
    true = np.array([0.9, 0.1, 0.5, 0.7])
    perfect = risk_coverage_curve(true, true)
    np.testing.assert_allclose(perfect["coverage"], [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(perfect["risk"], [0.1, 0.2, 0.3, 0.45])
    np.testing.assert_allclose(perfect["risk"], perfect["oracle_risk"])
    worst = risk_coverage_curve(-true, true)
    np.testing.assert_allclose(worst["risk"], [0.9, 0.7, 0.5667, 0.45], atol=1e-4)
    assert float(worst["aurc"]) > float(perfect["aurc"]) == pytest.approx(float(perfect["oracle_aurc"]))
    errors = risk_coverage_curve(1 - true, 1 - true, higher_is_better=False)
    np.testing.assert_allclose(errors["risk"], perfect["risk"])
    with pytest.raises(ValueError, match="same length"):
        risk_coverage_curve([1.0], [1.0, 2.0])
    fig = plot_risk_coverage({"predictor": true, "-noise": true[::-1]}, true)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert len(labels) == 4 and labels[2].startswith("oracle") and labels[3] == "random"


def test_figure_to_array():
    fig, ax = plt.subplots(figsize=(2, 1), dpi=50)
    rgb = figure_to_array(fig)
    assert rgb.shape == (50, 100, 3) and rgb.dtype == np.uint8
    assert not plt.fignum_exists(fig.number)
