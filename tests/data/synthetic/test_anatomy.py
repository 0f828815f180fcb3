# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

from __future__ import annotations

import json
import os

import nibabel as nib
import numpy as np
import pytest
from monai.data import load_decathlon_datalist

from monai_probseg.data import anatomy_phantom, write_anatomy_phantoms
from monai_probseg.data.synthetic import ANATOMY_CONTRASTS, ANATOMY_LABELS, ANATOMY_TISSUES
from monai_probseg.data.synthetic.cli import main

CONTRASTS = tuple(ANATOMY_CONTRASTS)


@pytest.fixture(scope="module", params=[(96, 96), (48, 56, 48)], ids=["2d", "3d"])
def phantom(request):
    return anatomy_phantom(request.param, CONTRASTS, seed=[0, 1])


def test_contents(phantom):
    size = phantom["label"].shape
    assert len(size) in (2, 3)
    assert phantom["image"].shape == (3, *size) and phantom["image"].dtype == np.float32
    assert phantom["label"].dtype == np.uint8
    assert phantom["fractions"].shape == (4, *size) and phantom["fractions"].dtype == np.float32
    assert phantom["contrasts"] == CONTRASTS
    assert set(np.unique(phantom["label"]).tolist()) == {0, 1, 2, 3}
    assert np.isfinite(phantom["image"]).all()
    affine = np.eye(len(size) + 1)
    affine[: len(size), -1] = -(np.array(size) - 1) / 2
    np.testing.assert_array_equal(phantom["affine"], affine)
    params = phantom["params"]
    assert params["seed"] == [0, 1] and params["family"] == 0 and set(params["contrasts"]) == set(CONTRASTS)
    assert 2.0 <= params["shape"]["cortex_thickness"] <= 4.0
    json.dumps(params)  # plain numbers and lists only


def test_skull_stripped(phantom):
    brain = phantom["label"] > 0
    for image in phantom["image"]:
        assert (image[~brain] == 0).all() and (image[brain] > 0).all()


def test_fractions(phantom):
    frac, label = phantom["fractions"], phantom["label"]
    assert frac.min() >= 0 and frac.max() <= 1
    np.testing.assert_allclose(frac.sum(0)[label > 0], 1.0, atol=1e-5)
    np.testing.assert_allclose(frac.sum(0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(np.argmax(frac, axis=0), label)
    # partial volume: the brain border and tissue borders hold mixed voxels, the deep white matter does not
    mixed = (frac.max(0) < 0.9).mean()
    assert 0.01 < mixed < 0.5
    assert np.median(frac[3][label == 3]) > 0.95


@pytest.mark.parametrize("contrast,order", [("t1", (1, 2, 3)), ("t2", (3, 2, 1)), ("flair", (1, 3, 2))])
def test_contrast_order(phantom, contrast, order):
    """Mean intensity increases along ``order`` (labels): T1 CSF < GM < WM, T2 WM < GM < CSF, FLAIR CSF < WM < GM."""
    image = phantom["image"][CONTRASTS.index(contrast)]
    label = phantom["label"]
    means = [float(image[label == k].mean()) for k in order]
    assert means[0] < means[1] < means[2], means
    if contrast == "t1":  # roughly CSF:GM:WM = 0.3:0.65:1 in mostly pure voxels (deep grey nuclei are brighter)
        mostly = phantom["fractions"].max(0) > 0.75
        csf, gm, wm = (float(image[(label == k) & mostly].mean()) for k in (1, 2, 3))
        assert 0.2 < csf / wm < 0.5 and 0.55 < gm / wm < 0.85, (csf, gm, wm)


def test_proportions_3d():
    """GM 45-50 %, WM 35-40 %, CSF 10-15 % of the intracranial volume, over seeds and both families."""
    for seed, family in ((0, 0), (1, 0), (2, 1), (3, 1)):
        label = anatomy_phantom((96, 96, 96), (), seed=[seed, 7], family=family)["label"]
        icv = (label > 0).sum()
        csf, gm, wm = ((label == k).sum() / icv for k in (1, 2, 3))
        assert 0.10 <= csf <= 0.15 and 0.45 <= gm <= 0.50 and 0.35 <= wm <= 0.40, (seed, family, csf, gm, wm)


def test_proportions_2d():
    """An axial slice at the ventricles: more WM than the whole brain, CSF 8-16 %, GM 37-48 %."""
    for seed in range(4):
        label = anatomy_phantom((128, 128), (), seed=seed)["label"]
        icv = (label > 0).sum()
        csf, gm, wm = ((label == k).sum() / icv for k in (1, 2, 3))
        assert 0.08 <= csf <= 0.16 and 0.37 <= gm <= 0.48 and 0.4 <= wm <= 0.55, (seed, csf, gm, wm)


def test_anatomy():
    """Ventricles (CSF) near the centre, white matter inside, a grey-matter ribbon outside it."""
    p = anatomy_phantom((64, 72, 64), (), seed=3)
    label = p["label"]
    centre = label[24:40, 26:46, 32:44]
    assert (centre == 1).mean() > 0.05  # the lateral ventricles
    # along a ray from the centre to the left: WM before GM before background
    ray = label[:32, 36, 36][::-1]
    first = {k: int(np.argmax(ray == k)) for k in (2, 3)}
    assert first[3] < first[2] < int(np.argmax(ray == 0))
    assert 0.02 < (label == 2)[24:40, 26:46, 20:32].mean()  # deep grey nuclei beside and below the ventricles


def test_seeding():
    a = anatomy_phantom((64, 64), ("t1", "t2"), seed=[5, 2])
    b = anatomy_phantom((64, 64), ("t2", "t1"), seed=[5, 2])
    np.testing.assert_array_equal(a["label"], b["label"])
    np.testing.assert_array_equal(a["image"][0], b["image"][1])  # a contrast does not depend on the others
    assert a["params"] == anatomy_phantom((64, 64), ("t1", "t2"), seed=[5, 2])["params"]
    for other in ({"seed": [5, 3]}, {"seed": [6, 2]}, {"seed": [5, 2], "family": 1}):
        c = anatomy_phantom((64, 64), ("t1", "t2"), **other)
        assert (c["label"] != a["label"]).mean() > 0.05
        assert not np.allclose(c["image"], a["image"])


def test_noise_types():
    g = anatomy_phantom((48, 48), "t1", seed=0, noise=0.0, bias=0.0, noise_type="gaussian")
    r = anatomy_phantom((48, 48), "t1", seed=0, noise=0.0, bias=0.0)
    np.testing.assert_allclose(g["image"], r["image"], rtol=1e-6)
    noisy = anatomy_phantom((48, 48), "t1", seed=0, noise=0.05, bias=0.0)
    assert 0.03 < float(np.std((noisy["image"] - r["image"])[0][r["label"] == 3])) < 0.07


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"spatial_size": (64,)}, "2 .axial slice. or 3"),
        ({"spatial_size": (8, 64)}, ">= 16"),
        ({"contrast": "t1w"}, "contrast must be"),
        ({"family": -1}, "family"),
        ({"noise_type": "poisson"}, "noise_type"),
        ({"seed": -3}, "seed"),
        ({"noise": (0.1, 0.01)}, "noise"),
    ],
)
def test_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        anatomy_phantom(**{"spatial_size": (32, 32), **kwargs})


@pytest.mark.parametrize("size", [(40, 48), (40, 48, 32)], ids=["2d", "3d"])
def test_writer(tmp_path, size):
    path = write_anatomy_phantoms(tmp_path / "a", 5, size, contrasts=("t1", "flair"), seed=4, family=1)
    with open(path) as f:
        datalist = json.load(f)
    assert datalist["labels"] == ANATOMY_LABELS and datalist["family"] == 1
    assert [len(datalist[k]) for k in ("training", "validation", "test")] == [3, 1, 1]
    entry = datalist["test"][0]
    case = "ANAT-F1-00004"
    assert entry == {
        "image": [f"{case}/{case}-t1.nii.gz", f"{case}/{case}-flair.nii.gz"],
        "label": f"{case}/{case}-seg.nii.gz",
        "case_id": case,
    }
    seg = nib.load(tmp_path / "a" / entry["label"])
    t1 = nib.load(tmp_path / "a" / entry["image"][0])
    assert seg.get_data_dtype() == np.uint8 and t1.get_data_dtype() == np.float32
    assert seg.shape == t1.shape == size
    affine = np.eye(4)
    affine[: len(size), 3] = -(np.array(size) - 1) / 2
    np.testing.assert_allclose(seg.affine, affine)
    np.testing.assert_allclose(t1.header.get_zooms()[: len(size)], 1.0)
    truth = anatomy_phantom(size, ("t1", "flair"), seed=[4, 4], family=1)
    np.testing.assert_array_equal(np.asanyarray(seg.dataobj), truth["label"])
    np.testing.assert_allclose(t1.get_fdata(), truth["image"][0], rtol=1e-6)
    loaded = load_decathlon_datalist(path, data_list_key="training")
    assert all(os.path.exists(p) for item in loaded for p in (*item["image"], item["label"]))


def test_writer_labels_only_and_cli(tmp_path, capsys):
    out = tmp_path / "prior"
    assert main(["anatomy", "--out", str(out), "--cases", "2", "--size", "32", "40", "--contrasts", "-q"]) == 0
    assert "2 anatomy phantom(s) of 32x40 voxels (labels only; family 0)" in capsys.readouterr().out
    with open(out / "datalist.json") as f:
        entry = json.load(f)["training"][0]
    assert entry["image"] == [] and sorted(os.listdir(out / entry["case_id"])) == [f"{entry['case_id']}-seg.nii.gz"]
    with pytest.raises(SystemExit) as err:
        main(["anatomy", "--out", str(out), "--size", "32"])
    assert err.value.code == 2 and "expected 2 or 3 sizes" in capsys.readouterr().err
    assert ANATOMY_TISSUES == ("background", "csf", "gm", "wm")
