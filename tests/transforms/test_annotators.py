# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, LoadImaged
from monai.utils import set_determinism
from scipy.stats import chisquare

from monai_probseg.transforms import RandAnnotator, RandAnnotatord, StackAnnotators, StackAnnotatorsd

SPATIAL = [(5, 6), (4, 5, 3)]


def _stack(num: int, spatial, scale: float = 1.0) -> torch.Tensor:
    """K annotator masks where mask k holds the value ``scale * k`` everywhere, so a result tells its index."""
    return torch.arange(num, dtype=torch.float32).reshape(num, *([1] * len(spatial))).expand(num, *spatial) * scale


# ------------------------------------------------------------------------------------------------------ RandAnnotator


@pytest.mark.parametrize("spatial", SPATIAL)
def test_rand_annotator_uniform_picks(spatial):
    num, draws = 4, 2000
    picker = RandAnnotator().set_random_state(0)
    img = _stack(num, spatial)
    counts = np.zeros(num)
    for _ in range(draws):
        out = picker(img)
        assert tuple(out.shape) == (1, *spatial)
        k = int(out.flatten()[0])
        assert k == picker.index and torch.equal(out, img[k : k + 1])
        counts[k] += 1
    assert chisquare(counts).pvalue > 1e-3, counts  # uniform over the 4 annotators
    assert counts.min() > 0.2 * draws


def test_rand_annotator_seeded_and_numpy():
    img = _stack(5, (3, 3))
    a, b, c = RandAnnotator().set_random_state(7), RandAnnotator().set_random_state(7), RandAnnotator()
    c.set_random_state(8)
    seq_a = [int(a(img)[0, 0, 0]) for _ in range(40)]
    seq_b = [int(b(img)[0, 0, 0]) for _ in range(40)]
    seq_c = [int(c(img)[0, 0, 0]) for _ in range(40)]
    assert seq_a == seq_b and seq_a != seq_c
    out = RandAnnotator().set_random_state(1)(img.numpy())
    assert isinstance(out, np.ndarray) and out.shape == (1, 3, 3)
    # randomize=False reuses the last index
    k = a.index
    assert int(a(img * 2, randomize=False)[0, 0, 0]) == 2 * k


def test_rand_annotator_dim_and_errors():
    img = _stack(3, (4, 2)).permute(1, 0, 2).unsqueeze(0)  # (1, 4, K=3, 2)
    picker = RandAnnotator(annotator_dim=-2).set_random_state(0)
    out = picker(img)
    assert tuple(out.shape) == (1, 4, 1, 2) and float(out.max()) == picker.index
    with pytest.raises(ValueError, match=r"annotator_dim=4 is out of range.*\(1, 4, 3, 2\)"):
        RandAnnotator(annotator_dim=4)(img)
    with pytest.raises(ValueError, match="no annotators"):
        RandAnnotator()(torch.zeros(0, 3, 3))
    picker(_stack(3, (2, 2)))
    picker.annotator_dim = 0
    picker._index = 2
    with pytest.raises(ValueError, match="out of range for 2 annotators"):
        picker(_stack(2, (2, 2)), randomize=False)


def test_rand_annotator_keeps_metatensor():
    affine = torch.diag(torch.tensor([0.5, 0.7, 1.0, 1.0], dtype=torch.float64))
    img = MetaTensor(_stack(4, (3, 5, 2)), affine=affine, meta={"filename_or_obj": "case01_masks.nii.gz"})
    out = RandAnnotator().set_random_state(0)(img)
    assert isinstance(out, MetaTensor) and tuple(out.shape) == (1, 3, 5, 2)
    assert torch.equal(out.affine, affine) and out.meta["filename_or_obj"] == "case01_masks.nii.gz"


# ----------------------------------------------------------------------------------------------------- RandAnnotatord


@pytest.mark.parametrize("spatial", SPATIAL)
def test_rand_annotatord_same_index_for_all_keys(spatial):
    transform = RandAnnotatord(keys=["label", "weight"]).set_random_state(3)
    image = torch.rand(1, *spatial)
    data = {"image": image, "label": _stack(4, spatial), "weight": _stack(4, spatial, scale=10.0)}
    seen = set()
    for _ in range(30):
        out = transform(data)
        assert out["image"] is image  # other keys untouched
        assert tuple(out["label"].shape) == (1, *spatial) and tuple(out["weight"].shape) == (1, *spatial)
        assert torch.equal(out["weight"], 10 * out["label"])
        assert int(out["label"].flatten()[0]) == transform.index
        seen.add(transform.index)
    assert seen == {0, 1, 2, 3}
    assert tuple(data["label"].shape) == (4, *spatial)  # input dict not modified


def test_rand_annotatord_frequencies_and_errors():
    transform = RandAnnotatord(keys="label").set_random_state(11)
    counts = np.bincount([transform({"label": _stack(3, (2, 2))})["label"][0, 0, 0].long() for _ in range(1500)])
    assert chisquare(counts).pvalue > 1e-3, counts
    with pytest.raises(ValueError, match=r"different numbers of annotators.*'a': 3.*'b': 2"):
        RandAnnotatord(keys=["a", "b"])({"a": _stack(3, (2, 2)), "b": _stack(2, (2, 2))})
    with pytest.raises(KeyError):
        RandAnnotatord(keys=["label", "raters"])({"label": _stack(3, (2, 2))})
    out = RandAnnotatord(keys=["label", "raters"], allow_missing_keys=True)({"label": _stack(3, (2, 2))})
    assert tuple(out["label"].shape) == (1, 2, 2)


def test_rand_annotatord_in_compose_is_reproducible():
    data = {"label": _stack(6, (2, 2)), "raters": _stack(6, (2, 2), scale=-1.0)}

    def picks(pipeline):
        outs = [pipeline(data) for _ in range(25)]
        assert all(torch.equal(o["raters"], -o["label"]) for o in outs)
        return [int(o["label"][0, 0, 0]) for o in outs]

    try:
        set_determinism(seed=0)
        first = picks(Compose([RandAnnotatord(keys=["label", "raters"])]))
        set_determinism(seed=0)
        second = picks(Compose([RandAnnotatord(keys=["label", "raters"])]))
        set_determinism(seed=1)
        third = picks(Compose([RandAnnotatord(keys=["label", "raters"])]))
    finally:
        set_determinism(seed=None)
    assert first == second and first != third
    a = picks(Compose([RandAnnotatord(keys=["label", "raters"])]).set_random_state(5))
    b = picks(Compose([RandAnnotatord(keys=["label", "raters"])]).set_random_state(5))
    assert a == b and len(set(a)) > 3


# --------------------------------------------------------------------------------------------------- StackAnnotators


@pytest.mark.parametrize("spatial", SPATIAL)
def test_stack_annotators_arrays(spatial):
    masks = [torch.full((1, *spatial), float(k)) for k in range(3)]
    out = StackAnnotators()(masks)
    assert isinstance(out, torch.Tensor) and tuple(out.shape) == (3, *spatial)
    assert out.reshape(3, -1)[:, 0].tolist() == [0.0, 1.0, 2.0]
    out = StackAnnotators()([np.full(spatial, k, dtype=np.uint8) for k in range(4)])  # (*spatial) numpy masks
    assert isinstance(out, np.ndarray) and out.shape == (4, *spatial) and out.dtype == np.uint8
    assert out.reshape(4, -1)[:, -1].tolist() == [0, 1, 2, 3]
    mixed = [np.ones((1, *spatial)), torch.zeros(spatial)]  # one with, one without channel
    out = StackAnnotators()(mixed)
    assert isinstance(out, torch.Tensor) and tuple(out.shape) == (2, *spatial) and float(out[0].min()) == 1.0
    already = torch.zeros(5, *spatial)
    assert StackAnnotators()(already) is already


def test_stack_annotators_spatial_dims_resolves_size_one_axes():
    masks = [np.zeros((1, 4, 3)), np.ones((1, 4, 3))]
    assert StackAnnotators()(masks).shape == (2, 4, 3)  # inferred: (1, *spatial) 2D masks
    assert StackAnnotators(spatial_dims=3)(masks).shape == (2, 1, 4, 3)  # 3D masks with a size-1 axis
    with pytest.raises(ValueError, match=r"annotator 1 has shape \(4, 3\).*spatial_dims=3"):
        StackAnnotators(spatial_dims=3)([np.zeros((1, 4, 3)), np.zeros((4, 3))])
    with pytest.raises(ValueError, match="spatial_dims must be"):
        StackAnnotators(spatial_dims=4)


def test_stack_annotatorsd_shape_mismatch_names_key():
    transform = StackAnnotatorsd(keys="label")
    with pytest.raises(ValueError, match=r"key 'label': annotator 2 has spatial shape \(4, 4\), expected \(4, 5\)"):
        transform({"label": [torch.zeros(1, 4, 5), torch.zeros(1, 4, 5), torch.zeros(1, 4, 4)]})
    with pytest.raises(ValueError, match="mix file paths and arrays"):
        transform({"label": ["a.nii.gz", np.zeros((2, 2))]})
    with pytest.raises(ValueError, match="non-empty sequence"):
        transform({"label": []})


def _write(path, data, affine=None):
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    return str(path)


def test_stack_annotatorsd_loads_files(tmp_path):
    affine = np.diag([0.8, 0.8, 2.0, 1.0])
    paths = [_write(tmp_path / f"seg{k}.nii.gz", np.full((4, 5, 3), k, dtype=np.uint8), affine) for k in range(3)]
    image = _write(tmp_path / "image.nii.gz", np.random.default_rng(0).random((4, 5, 3)).astype(np.float32), affine)
    pipeline = Compose(
        [
            LoadImaged(keys="image", ensure_channel_first=True),
            StackAnnotatorsd(keys="label"),
            RandAnnotatord(keys="label"),
        ]
    ).set_random_state(0)
    out = StackAnnotatorsd(keys="label")({"label": paths})
    label = out["label"]
    assert isinstance(label, MetaTensor) and tuple(label.shape) == (3, 4, 5, 3)
    assert label.reshape(3, -1)[:, 0].tolist() == [0.0, 1.0, 2.0]
    np.testing.assert_allclose(label.affine.numpy(), affine)
    assert label.meta["original_channel_dim"] == 0
    # LoadImaged on the list stacks the same way, after which StackAnnotatorsd changes nothing
    stacked = LoadImaged(keys="label")({"label": paths})["label"]
    assert torch.equal(StackAnnotatorsd(keys="label")({"label": stacked})["label"], label)
    seen = set()
    for _ in range(12):
        res = pipeline({"image": image, "label": paths})
        assert tuple(res["image"].shape) == (1, 4, 5, 3) and tuple(res["label"].shape) == (1, 4, 5, 3)
        seen.add(int(res["label"].max()))
    assert seen == {0, 1, 2}


def test_stack_annotators_file_errors_name_the_file(tmp_path):
    good = [_write(tmp_path / f"a{k}.nii.gz", np.zeros((4, 5, 3), np.uint8)) for k in range(2)]
    bad_shape = _write(tmp_path / "bad_shape.nii.gz", np.zeros((4, 5, 2), np.uint8))
    bad_affine = _write(tmp_path / "bad_affine.nii.gz", np.zeros((4, 5, 3), np.uint8), np.diag([2.0, 1.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match=r"key 'label': annotator 2 \('.*bad_shape\.nii\.gz'\).*\(4, 5, 2\)"):
        StackAnnotatorsd(keys="label")({"label": [*good, bad_shape]})
    with pytest.raises(ValueError, match=r"annotator 1 \('.*bad_affine\.nii\.gz'\) has affine"):
        StackAnnotators()([good[0], bad_affine])
    with pytest.raises(ValueError, match=r"cannot load annotator 1 from '.*missing\.nii\.gz'"):
        StackAnnotators()([good[0], str(tmp_path / "missing.nii.gz")])
