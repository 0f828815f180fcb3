# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import SaveImaged

from monai_probseg.metrics import uncertainty_maps
from monai_probseg.transforms import UncertaintyMapsd


@pytest.mark.parametrize("spatial", [(6, 5), (4, 5, 3)])
def test_maps_values_and_shapes(spatial):
    probs = torch.softmax(torch.randn(7, 3, *spatial, generator=torch.Generator().manual_seed(0)), dim=1)
    out = UncertaintyMapsd(keys="samples")({"samples": probs, "image": torch.zeros(1, *spatial)})
    expected = uncertainty_maps(probs[None])
    assert {"prob", "seg", "entropy", "mutual_info", "variance", "samples", "image"} == set(out)
    assert out["prob"].shape == (3, *spatial) and out["seg"].shape == (1, *spatial)
    assert out["entropy"].shape == (1, *spatial) and out["variance"].shape == (3, *spatial)
    for key in ("prob", "seg", "entropy", "mutual_info", "variance"):
        torch.testing.assert_close(out[key], expected[key][0])


def test_hand_values_and_logits():
    # two confident disagreeing samples of one voxel: entropy = MI = log 2
    probs = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).reshape(2, 2, 1, 1)
    out = UncertaintyMapsd(keys="samples", maps=("entropy", "mutual_info", "expected_entropy"))({"samples": probs})
    assert out["entropy"].item() == pytest.approx(math.log(2))
    assert out["mutual_info"].item() == pytest.approx(math.log(2))
    assert out["expected_entropy"].item() == pytest.approx(0.0)
    assert "prob" not in out
    logits = torch.randn(4, 3, 5, 5)
    a = UncertaintyMapsd(keys="x", from_logits=True)({"x": logits})
    b = UncertaintyMapsd(keys="x")({"x": torch.softmax(logits, dim=1)})
    torch.testing.assert_close(a["entropy"], b["entropy"])


def test_meta_is_copied_and_saved(tmp_path):
    affine = torch.diag(torch.tensor([2.0, 3.0, 4.0, 1.0]))
    probs = MetaTensor(
        torch.softmax(torch.randn(5, 2, 4, 5, 6), dim=1),
        affine=affine,
        meta={"filename_or_obj": "case_007.nii.gz"},
    )
    out = UncertaintyMapsd(keys="samples", prefix="pred_", delete_keys=True)({"samples": probs})
    assert "samples" not in out
    ent = out["pred_entropy"]
    assert isinstance(ent, MetaTensor)
    torch.testing.assert_close(ent.affine, affine.double())
    assert ent.meta["filename_or_obj"] == "case_007.nii.gz"
    ent.meta["filename_or_obj"] = "changed"  # a deep copy: the other maps keep theirs
    assert out["pred_seg"].meta["filename_or_obj"] == "case_007.nii.gz"
    out["pred_entropy"].meta["filename_or_obj"] = "case_007.nii.gz"
    SaveImaged(keys="pred_entropy", output_dir=str(tmp_path), output_postfix="entropy", separate_folder=False)(out)
    saved = nib.load(str(tmp_path / "case_007_entropy.nii.gz"))
    np.testing.assert_allclose(saved.affine, affine.numpy())
    np.testing.assert_allclose(saved.get_fdata(), out["pred_entropy"][0].numpy(), rtol=1e-6, atol=1e-7)


def test_several_keys_and_errors():
    data = {"a": torch.rand(3, 2, 4, 4), "b": torch.rand(3, 2, 4, 4)}
    out = UncertaintyMapsd(keys=["a", "b"], maps=("seg",))(data)
    assert {"a_seg", "b_seg"} <= set(out)
    with pytest.raises(ValueError, match="collide"):
        UncertaintyMapsd(keys=["a", "b"], prefix="")
    with pytest.raises(ValueError, match="maps must be among"):
        UncertaintyMapsd(keys="a", maps=("std",))
    with pytest.raises(ValueError, match="decollate"):
        UncertaintyMapsd(keys="a")({"a": torch.rand(1, 3, 2, 4, 4, 4)})
    assert "seg" not in UncertaintyMapsd(keys="missing", allow_missing_keys=True)(data)
