# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

from __future__ import annotations

import json
import os

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from monai.data import load_decathlon_datalist

import monai_probseg.utils
from monai_probseg.data import brats_phantom, write_brats_phantoms
from monai_probseg.data.synthetic import MODALITIES, majority_vote
from monai_probseg.data.synthetic._common import smooth_field, split_cases


@pytest.fixture(scope="module", params=[0, 1, 2])
def phantom(request):
    return brats_phantom((32, 36, 32), num_raters=3, seed=request.param)


def test_contents(phantom):
    assert phantom["image"].shape == (4, 32, 36, 32) and phantom["image"].dtype == np.float32
    assert np.isfinite(phantom["image"]).all() and phantom["image"].min() >= 0
    assert phantom["raters"].shape == (3, 32, 36, 32)
    for key in ("seg", "nominal", "brain"):
        assert phantom[key].shape == (32, 36, 32) and phantom[key].dtype == np.uint8
    for seg in (phantom["seg"], phantom["nominal"], *phantom["raters"]):
        assert set(np.unique(seg).tolist()) == {0, 1, 2, 3}  # every subregion present
    affine = np.eye(4)
    affine[:3, 3] = [-15.5, -17.5, -15.5]
    np.testing.assert_array_equal(phantom["affine"], affine)


def test_consensus_is_majority_vote(phantom):
    raters, seg = phantom["raters"], phantom["seg"]
    votes = (raters == seg[None]).sum(0)
    assert (votes >= 2).all()  # 3 raters: the consensus label always has a majority here (no 3-way ties)
    # raters disagree, but realistically: whole-tumour Dice between raters well above chance, below 1
    wt = raters > 0
    for a in range(3):
        for b in range(a + 1, 3):
            dice = 2 * (wt[a] & wt[b]).sum() / (wt[a].sum() + wt[b].sum())
            assert 0.6 < dice < 0.995, dice
    assert (raters[0] != raters[1]).any() or (raters[0] != raters[2]).any()


def test_modality_contrast(phantom):
    image, seg = phantom["image"], phantom["nominal"]
    t1n, t1c, t2w, t2f = (image[MODALITIES.index(m)] for m in ("t1n", "t1c", "t2w", "t2f"))
    normal = (phantom["brain"] > 0) & (seg == 0)
    # enhancing ring brightest on t1c
    assert t1c[seg == 3].mean() > 1.3 * t1c[seg == 2].mean()
    assert t1c[seg == 3].mean() > 1.3 * t1c[normal].mean()
    # edema bright on FLAIR and T2
    assert t2f[seg == 2].mean() > 1.3 * t2f[normal].mean()
    assert t2w[seg == 2].mean() > 1.3 * t2w[normal].mean()
    # necrotic core dark on native T1
    assert t1n[seg == 1].mean() < 0.8 * t1n[normal].mean()
    assert t1n[(seg == 1) | (seg == 3)].mean() < t1n[normal].mean()
    # the head is brighter than the air around it
    assert t1n[normal].mean() > 3 * t1n[0, 0, 0]


def test_majority_vote_is_the_shared_one():
    # kept importable from monai_probseg.data.synthetic; the one definition (and its tests) is in monai_probseg.utils
    assert majority_vote is monai_probseg.utils.majority_vote


def test_determinism():
    a = brats_phantom((24, 24, 20), 2, seed=3)
    b = brats_phantom((24, 24, 20), 2, seed=3)
    c = brats_phantom((24, 24, 20), 2, seed=4)
    for key in ("image", "seg", "raters"):
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["image"], c["image"])
    assert not np.array_equal(a["seg"], c["seg"])


def test_healthy_brain_is_the_same_case_without_its_tumour():
    """Same draws (acquisition, anatomy, noise), no lesion: only the tumour's neighbourhood differs, labels are 0."""
    sick = brats_phantom((32, 32, 32), 2, seed=5)
    healthy = brats_phantom((32, 32, 32), 2, seed=5, healthy=True)
    assert healthy["params"]["healthy"] and not sick["params"]["healthy"]
    assert healthy["params"]["tumour_center"] == sick["params"]["tumour_center"]
    for key in ("seg", "raters", "nominal"):
        assert not healthy[key].any()
    assert sick["seg"].any()
    np.testing.assert_array_equal(healthy["brain"], sick["brain"])
    same = np.isclose(healthy["image"], sick["image"]).all(0)
    assert same[sick["seg"] == 0].mean() > 0.8 and not same[sick["seg"] > 0].all()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"spatial_size": (8, 32, 32)}, "spatial_size"),
        ({"spatial_size": (32, 32)}, "spatial_size"),
        ({"num_raters": 0}, "num_raters"),
        ({"seed": -2}, "seed"),
        ({"noise": float("nan")}, "noise"),
    ],
)
def test_phantom_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        brats_phantom(**{"spatial_size": (32, 32, 32), **kwargs})


def test_write_brats_layout(tmp_path):
    out = tmp_path / "phantoms"
    path = write_brats_phantoms(out, 2, (32, 32, 24), num_raters=2, seed=1)
    assert path == os.path.join(str(out), "datalist.json")
    with open(path) as f:
        datalist = json.load(f)
    assert datalist["modality"] == {"0": "t1n", "1": "t1c", "2": "t2w", "3": "t2f"}
    assert set(datalist["labels"]) == {"0", "1", "2", "3"}
    assert [len(datalist[k]) for k in ("training", "validation", "test")] == [2, 0, 0]
    train = load_decathlon_datalist(path, data_list_key="training", base_dir=str(out))
    assert len(train) == 2
    reference = brats_phantom((32, 32, 24), 2, seed=[1, 1])
    for i, entry in enumerate(datalist["training"]):
        case = f"BraTS-PHANTOM-{i:05d}-000"
        assert entry["case_id"] == case
        assert entry["image"] == [f"{case}/{case}-{m}.nii.gz" for m in MODALITIES]
        assert entry["label"] == f"{case}/{case}-seg.nii.gz"
        assert entry["raters"] == [f"{case}/{case}-seg-rater{k}.nii.gz" for k in (1, 2)]
        assert train[i]["image"][0] == os.path.join(str(out), entry["image"][0])
        files = [*entry["image"], entry["label"], *entry["raters"]]
        affines, geometry = [], []
        for rel in files:
            full = os.path.join(str(out), rel)
            img = nib.load(full)
            assert img.shape == (32, 32, 24)
            assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
            affines.append(img.affine)
            itk_img = sitk.ReadImage(full)
            geometry.append((itk_img.GetOrigin(), itk_img.GetSpacing(), itk_img.GetDirection()))
            data = np.asarray(img.dataobj)
            np.testing.assert_array_equal(sitk.GetArrayFromImage(itk_img).transpose(2, 1, 0), data)
            if rel in entry["image"]:
                assert data.dtype == np.float32
            else:
                assert data.dtype == np.uint8 and set(np.unique(data).tolist()) <= {0, 1, 2, 3}
        for a in affines[1:]:
            np.testing.assert_array_equal(a, affines[0])
        assert all(g == geometry[0] for g in geometry)
        np.testing.assert_allclose(geometry[0][1], (1.0, 1.0, 1.0))
    # case 1 on disk is brats_phantom(seed=[seed, 1])
    seg1 = np.asarray(nib.load(os.path.join(str(out), datalist["training"][1]["label"])).dataobj)
    np.testing.assert_array_equal(seg1, reference["seg"])
    t2f = nib.load(os.path.join(str(out), datalist["training"][1]["image"][3])).get_fdata(dtype=np.float32)
    np.testing.assert_array_equal(t2f, reference["image"][3])
    leftovers = [f for _, _, names in os.walk(out) for f in names if f.startswith(".")]
    assert not leftovers


def test_write_brats_split(tmp_path):
    path = write_brats_phantoms(tmp_path, 5, (16, 16, 16), num_raters=1)
    with open(path) as f:
        datalist = json.load(f)
    assert [len(datalist[k]) for k in ("training", "validation", "test")] == [3, 1, 1]
    assert load_decathlon_datalist(path, data_list_key="test", base_dir=str(tmp_path))[0]["case_id"].endswith("4-000")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"spatial_size": (32, 8, 32)}, "spatial_size"),
        ({"num_cases": 0}, "num_cases"),
        ({"num_cases": -1}, "num_cases"),
        ({"num_raters": 0}, "num_raters"),
    ],
)
def test_write_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        write_brats_phantoms(**{"out_dir": tmp_path, "num_cases": 1, "spatial_size": (16, 16, 16), **kwargs})
    assert not os.listdir(tmp_path)  # nothing written


def test_write_unwritable(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        write_brats_phantoms(blocker, 1, (16, 16, 16))
    with pytest.raises(ValueError, match="cannot be created or is not writable"):
        write_brats_phantoms(blocker / "sub", 1, (16, 16, 16))


def test_split_cases():
    assert split_cases(1) == (1, 0, 0)
    assert split_cases(2) == (2, 0, 0)
    assert split_cases(3) == (1, 1, 1)
    assert split_cases(10) == (6, 2, 2)
    assert split_cases(4, (0.0, 0.5, 0.5)) == (1, 2, 1)
    assert split_cases(1, (0.0, 0.5, 0.5)) == (1, 0, 0)


def test_smooth_field():
    rng = np.random.default_rng(0)
    f = smooth_field((40, 30, 20), 4, rng)
    assert f.shape == (40, 30, 20) and f.dtype == np.float32 and f.flags["C_CONTIGUOUS"]
    assert 0.8 < f.std() < 1.25
    # smooth: neighbouring voxels are strongly correlated
    assert np.corrcoef(f[1:].ravel(), f[:-1].ravel())[0, 1] > 0.95
    np.testing.assert_array_equal(f, smooth_field((40, 30, 20), 4, np.random.default_rng(0)))


def test_skull_stripped_like_brats(phantom):
    """Every voxel outside the brain mask is exactly 0 in all four modalities; none inside is."""
    image, brain = phantom["image"], phantom["brain"].astype(bool)
    assert (image[:, ~brain] == 0).all()
    assert (image[:, brain] > 0).all()
    assert (phantom["raters"][:, ~brain] == 0).all() and (phantom["seg"][~brain] == 0).all()
    assert 0.1 < brain.mean() < 0.6


def test_case_variation_and_exact_truth():
    """Per-case acquisition and tumour draws cover the ranges, including non-enhancing tumours and satellites."""
    params = [brats_phantom((32, 32, 32), 3, seed=s)["params"] for s in range(24)]
    noise = [p["noise"] for p in params]
    assert 0.015 <= min(noise) and max(noise) <= 0.06 and max(noise) > 2 * min(noise)
    assert max(p["bias"] for p in params) > 2 * min(p["bias"] for p in params)
    sizes = [p["tumour_size_fraction"] for p in params]
    assert 0.12 <= min(sizes) < 0.16 and 0.28 < max(sizes) <= 0.34
    assert not all(p["enhancing"] for p in params) and any(p["enhancing"] for p in params)
    assert any(p["satellites"] for p in params)
    for p in params:  # the rater shifts record which satellites each rater drew
        for shift in p["rater_shifts"]:
            assert len(shift["satellites"]) == len(p["satellites"])
    # a non-enhancing tumour has no label 3 in any segmentation, and a core of label 1
    seed = next(s for s, p in enumerate(params) if not p["enhancing"])
    q = brats_phantom((32, 32, 32), 3, seed=seed)
    assert not (q["raters"] == 3).any() and (q["nominal"] == 1).any()


def test_fixed_levels_and_bad_ranges():
    p = brats_phantom((24, 24, 24), 1, seed=0, noise=0.02, bias=0.1, max_satellites=0)
    assert p["params"]["noise"] == 0.02 and p["params"]["bias"] == 0.1 and p["params"]["satellites"] == []
    with pytest.raises(ValueError, match="noise"):
        brats_phantom((24, 24, 24), 1, noise=(0.05, 0.01))
    with pytest.raises(ValueError, match="tumour_size"):
        brats_phantom((24, 24, 24), 1, tumour_size=(0.5, 0.9))


def test_write_brainmask(tmp_path):
    path = write_brats_phantoms(tmp_path, 1, (24, 24, 24), num_raters=1, seed=4)
    with open(path) as f:
        item = json.load(f)["training"][0]
    mask = np.asarray(nib.load(os.path.join(str(tmp_path), item["brainmask"])).dataobj)
    t2f = np.asarray(nib.load(os.path.join(str(tmp_path), item["image"][3])).dataobj)
    np.testing.assert_array_equal(mask.astype(bool), t2f != 0)
    np.testing.assert_array_equal(mask, brats_phantom((24, 24, 24), 1, seed=[4, 0])["brain"])
