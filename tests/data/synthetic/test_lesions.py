# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

from __future__ import annotations

import json
import os

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import load_decathlon_datalist
from scipy.stats import chisquare, spearmanr

from monai_probseg.data import ambiguous_lesions_2d, match_modes, read_lesion_modes, sample_oracle
from monai_probseg.data.synthetic import lesion_mode_probabilities, write_ambiguous_lesions_2d


@pytest.fixture(scope="module")
def cases():
    return ambiguous_lesions_2d(40, (32, 32), num_annotators=4, seed=0)


@pytest.mark.parametrize("num_classes", [2, 3])
def test_case_contents(num_classes):
    cases = ambiguous_lesions_2d(12, (40, 32), num_annotators=3, seed=1, num_classes=num_classes)
    assert len(cases) == 12
    for i, case in enumerate(cases):
        assert case["case_id"] == f"lesion-{i:05d}"
        assert case["image"].shape == (1, 40, 32) and case["image"].dtype == np.float32
        assert np.isfinite(case["image"]).all()
        assert case["label"].shape == (3, 40, 32) and case["label"].dtype == np.uint8
        probs = np.array([p for _, p in case["modes"]])
        assert 2 <= len(probs) <= 5 and (probs > 0).all()
        np.testing.assert_allclose(probs.sum(), 1.0, atol=1e-12)
        masks = np.stack([m for m, _ in case["modes"]])
        assert masks.dtype == np.uint8 and masks.shape[1:] == (40, 32)
        assert set(np.unique(masks).tolist()) <= set(range(num_classes))
        # modes are distinct masks, and every annotator mask is exactly one of them
        flat = masks.reshape(len(masks), -1)
        assert len({m.tobytes() for m in flat}) == len(masks)
        idx = match_modes(case["label"], case)
        assert (idx >= 0).all()
        np.testing.assert_array_equal(idx, case["annotator_modes"])
        # mode probabilities are the products of the three independent choices
        p = case["params"]
        by_name = dict(zip(case["mode_names"], probs))
        np.testing.assert_allclose(by_name.get("empty", 0.0), p["p_empty"], atol=1e-12)
        generous = sum(v for k, v in by_name.items() if k.startswith("generous"))
        np.testing.assert_allclose(generous, (1 - p["p_empty"]) * p["p_generous"], atol=1e-12)
        if p["has_satellite"]:
            sat = sum(v for k, v in by_name.items() if k.endswith("+satellite"))
            np.testing.assert_allclose(sat, (1 - p["p_empty"]) * p["p_satellite"], atol=1e-12)


def test_multiclass_core_and_rim():
    case = ambiguous_lesions_2d(1, (64, 64), seed=3, num_classes=3, noise=0.0)[0]
    tight = dict(zip(case["mode_names"], [m for m, _ in case["modes"]]))["tight"]
    core, rim = tight == 1, tight == 2
    assert core.sum() > 0 and rim.sum() > core.sum() / 4
    image = case["image"][0]
    # the image shows a darker core inside a bright rim
    assert image[rim].mean() > image[core].mean() + 0.2 * case["params"]["contrast"]


def test_mode_probabilities_formula():
    np.testing.assert_allclose(lesion_mode_probabilities(0.1, 0.3, None)["empty"], 0.9)
    np.testing.assert_allclose(lesion_mode_probabilities(0.275, 0.3, None)["empty"], 0.45)
    assert lesion_mode_probabilities(0.45, 0.3, None)["empty"] == 0.0
    assert lesion_mode_probabilities(0.9, 0.3, 0.6) == {"empty": 0.0, "generous": 0.3, "satellite": 0.6}
    assert lesion_mode_probabilities(0.9, 0.3, None)["satellite"] == 0.0


def test_probabilities_follow_visible_contrast():
    cases = ambiguous_lesions_2d(120, (48, 48), num_annotators=1, seed=2)
    measured, p_empty = [], []
    for case in cases:
        names = case["mode_names"]
        tight = case["modes"][names.index("tight")][0] > 0
        generous = case["modes"][names.index("generous")][0] > 0
        image = case["image"][0]
        measured.append(image[tight].mean() - image[~generous].mean())  # contrast a model can see
        p_empty.append(case["params"]["p_empty"])
    measured, p_empty = np.array(measured), np.array(p_empty)
    # low-contrast lesions have an "empty" mode, high-contrast ones do not
    assert 0.2 < (p_empty > 0).mean() < 0.6
    assert measured[p_empty > 0.5].max() < measured[p_empty == 0].mean()
    rho = spearmanr(measured[p_empty > 0], p_empty[p_empty > 0]).statistic
    assert rho < -0.8, rho


def test_oracle_frequencies_chi_square(cases):
    tested = 0
    for case in cases:
        if len(case["modes"]) < 4:
            continue
        probs = np.array([p for _, p in case["modes"]])
        n = 20000
        draws = sample_oracle(case, n, seed=tested)
        assert draws.shape == (n, 32, 32) and draws.dtype == np.uint8
        idx = match_modes(draws, case)
        assert (idx >= 0).all()
        counts = np.bincount(idx, minlength=len(probs))
        assert chisquare(counts, probs * n).pvalue > 0.001
        tested += 1
        if tested == 3:
            break
    assert tested == 3


def test_annotator_draws_chi_square():
    # the annotator masks in "label" are draws from "modes": one case, many annotators
    case = ambiguous_lesions_2d(1, (32, 32), num_annotators=5000, seed=5)[0]
    probs = np.array([p for _, p in case["modes"]])
    counts = np.bincount(match_modes(case["label"], case), minlength=len(probs))
    assert len(probs) >= 3
    assert chisquare(counts, probs * 5000).pvalue > 0.001


def test_oracle_seeding(cases):
    case = cases[0]
    a, ia = sample_oracle(case, 50, seed=7, return_indices=True)
    b = sample_oracle(case, 50, seed=torch.Generator().manual_seed(7))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(match_modes(a, case), ia)
    assert not np.array_equal(ia, sample_oracle(case, 50, seed=8, return_indices=True)[1])


def test_determinism():
    a = ambiguous_lesions_2d(3, (32, 32), seed=4)
    b = ambiguous_lesions_2d(3, (32, 32), seed=4)
    c = ambiguous_lesions_2d(3, (32, 32), seed=5)
    prefix = ambiguous_lesions_2d(2, (32, 32), seed=4)
    for x, y, z in zip(a, b, prefix):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["label"], y["label"])
        np.testing.assert_array_equal(x["image"], z["image"])
        assert [p for _, p in x["modes"]] == [p for _, p in y["modes"]]
    assert not np.array_equal(a[0]["image"], c[0]["image"])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"spatial_size": (8, 32)}, "spatial_size"),
        ({"spatial_size": (32, 32, 32)}, "spatial_size"),
        ({"num_cases": 0}, "num_cases"),
        ({"num_cases": -1}, "num_cases"),
        ({"num_annotators": 0}, "num_annotators"),
        ({"num_classes": 4}, "num_classes"),
        ({"seed": -1}, "seed"),
        ({"noise": -0.1}, "noise"),
    ],
)
def test_bad_arguments(kwargs, message):
    args = {"num_cases": 1, "spatial_size": (32, 32), **kwargs}
    with pytest.raises(ValueError, match=message):
        ambiguous_lesions_2d(**args)


def test_oracle_bad_input(cases):
    with pytest.raises(ValueError, match="modes"):
        sample_oracle({"image": 0}, 3)
    with pytest.raises(ValueError, match="n must be"):
        sample_oracle(cases[0], 0)
    with pytest.raises(ValueError, match="masks must be"):
        match_modes(np.zeros((2, 16, 16), np.uint8), cases[0])


def test_write_and_read_back(tmp_path):
    path = write_ambiguous_lesions_2d(tmp_path / "out", 5, (32, 24), num_annotators=3, seed=0, num_classes=3)
    cases = ambiguous_lesions_2d(5, (32, 24), num_annotators=3, seed=0, num_classes=3)
    with open(path) as f:
        datalist = json.load(f)
    assert [len(datalist[k]) for k in ("training", "validation", "test")] == [3, 1, 1]
    assert datalist["labels"] == {"0": "background", "1": "core", "2": "rim"}
    base = os.path.dirname(path)
    train = load_decathlon_datalist(path, data_list_key="training", base_dir=base)
    assert len(train) == 3 and all(len(e["label"]) == 3 for e in train)
    entries = [e for k in ("training", "validation", "test") for e in datalist[k]]
    for entry, case in zip(entries, cases):
        assert entry["case_id"] == case["case_id"]
        image = nib.load(os.path.join(base, entry["image"]))
        np.testing.assert_array_equal(image.affine, np.eye(4))
        np.testing.assert_array_equal(image.get_fdata(dtype=np.float32), case["image"][0])
        for k, rel in enumerate(entry["label"]):
            annot = np.asarray(nib.load(os.path.join(base, rel)).dataobj)
            np.testing.assert_array_equal(annot, case["label"][k])
        modes = read_lesion_modes(os.path.join(base, entry["modes"]))
        assert modes["mode_names"] == case["mode_names"]
        assert modes["params"]["contrast"] == case["params"]["contrast"]
        for (m1, p1), (m2, p2) in zip(modes["modes"], case["modes"]):
            np.testing.assert_array_equal(m1, m2)
            assert p1 == p2
    assert not [f for f in os.listdir(base) if f.startswith(".")]
    with pytest.raises(ValueError, match="does not exist"):
        read_lesion_modes(tmp_path / "missing.npz")


@pytest.mark.parametrize("num_classes", [2, 3])
def test_regions_signal_and_modes_redraw_the_case(num_classes):
    """A case's params are the whole geometry: its modes and noise-free image are drawn again from them."""
    from monai_probseg.data.synthetic import lesion_mode_mask, lesion_modes, lesion_regions, lesion_signal

    noisy = ambiguous_lesions_2d(8, (48, 40), seed=4, num_classes=num_classes)
    clean = ambiguous_lesions_2d(8, (48, 40), seed=4, num_classes=num_classes, noise=0.0)
    for case, case0 in zip(noisy, clean):
        params = dict(case["params"])
        regions = lesion_regions(params, (48, 40))
        assert set(regions) == {"tight", "generous", "core", "satellite"}
        assert (regions["tight"] <= regions["generous"]).all() and not (
            regions["satellite"] & regions["generous"]
        ).any()
        assert regions["satellite"].any() or not params["has_satellite"]
        modes, names = lesion_modes(params, regions, num_classes)
        assert names == case["mode_names"]
        with pytest.raises(ValueError, match="empty\\+satellite"):
            lesion_mode_mask("empty+satellite", regions)
        for (mask, p), (true_mask, true_p) in zip(modes, case["modes"]):
            np.testing.assert_array_equal(mask, true_mask)
            assert p == pytest.approx(true_p, abs=1e-12)
        # the image is the lesion signal plus a texture and noise that the signal does not change
        signal = lesion_signal(params, regions, num_classes)
        texture = case0["image"][0] - signal
        assert np.abs(texture).max() < 0.3  # 0.05 x a unit-sd smooth field
        np.testing.assert_allclose(case["image"][0] - case0["image"][0], case["image"][0] - signal - texture, atol=1e-6)
        if params["contrast"] > 0.5:
            assert signal[regions["tight"]].mean() > signal[~regions["generous"]].mean() + 0.25
