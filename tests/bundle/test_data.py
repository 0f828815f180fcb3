# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

from __future__ import annotations

import json
import os

import nibabel as nib
import numpy as np
import pytest

from monai_probseg.bundle import BundleDatalist, CaseError, check_case_files, scan_case_folders
from monai_probseg.data import brats_datalist, write_ambiguous_lesions_2d, write_brats_phantoms, write_datalist

CASE = "BraTS-PHANTOM-{:05d}-000"


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantoms")
    write_brats_phantoms(root, 3, (16, 16, 16), num_raters=2, seed=0, split=(0.6, 0.2, 0.2))
    return root


def test_scan_folder_complete_and_incomplete(phantoms, tmp_path):
    items = scan_case_folders(phantoms)
    assert [it["case_id"] for it in items] == [CASE.format(i) for i in range(3)]
    first = items[0]
    assert [os.path.basename(p) for p in first["image"]] == [
        f"{CASE.format(0)}-{m}.nii.gz" for m in ("t1n", "t1c", "t2w", "t2f")
    ]
    assert first["label"].endswith("-seg.nii.gz")
    assert [os.path.basename(p) for p in first["raters"]] == [f"{CASE.format(0)}-seg-rater{k}.nii.gz" for k in (1, 2)]
    assert first["brainmask"].endswith(f"{CASE.format(0)}-brainmask.nii.gz")  # optional, picked up when present

    # a case folder without t2f is still listed, under the name the file should have
    nested = tmp_path / "release" / "case-a"
    nested.mkdir(parents=True)
    img = nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4))
    for m in ("t1n", "t1c", "t2w"):
        nib.save(img, str(nested / f"case-a-{m}.nii.gz"))
    (tmp_path / "release" / "notes").mkdir()
    items = scan_case_folders(tmp_path)  # one level deeper
    assert len(items) == 1 and items[0]["case_id"] == "case-a"
    assert items[0]["image"][3] == str(nested / "case-a-t2f.nii.gz") and not os.path.exists(items[0]["image"][3])
    assert items[0]["label"] is None and items[0]["raters"] == [] and "brainmask" not in items[0]
    assert scan_case_folders(tmp_path / "release" / "case-a") == []  # no case folders below


def test_datalist_json_and_folder(phantoms):
    data = BundleDatalist(os.path.join(phantoms, "datalist.json"))
    assert {k: len(v) for k, v in data.datalist.items()} == {"training": 1, "validation": 1, "test": 1}
    test = data.items()
    assert len(test) == 1 and test[0]["case_id"] == CASE.format(2)
    assert all(os.path.isabs(p) and os.path.isfile(p) for p in test[0]["image"])
    assert len(data.items("unknown")) == 3  # falls back to all cases
    with pytest.raises(ValueError, match="no 'unknown' cases"):
        data.items("unknown", fallback_to_all=False)
    train = data.training_items()
    assert len(train) == 1 and [os.path.basename(p) for p in train[0]["label"]] == [
        f"{CASE.format(0)}-seg-rater{k}.nii.gz" for k in (1, 2)
    ]
    assert data.labelled_items("validation")[0]["label"].endswith(f"{CASE.format(1)}-seg.nii.gz")
    brainmask = test[0]["brainmask"]  # relative in the JSON, absolute here
    assert os.path.isabs(brainmask) and os.path.isfile(brainmask) and brainmask.endswith("-brainmask.nii.gz")
    assert os.path.realpath(phantoms) in data.input_folders()

    folder = BundleDatalist(str(phantoms), val_fraction=0.4)
    assert [len(folder.datalist[k]) for k in ("training", "validation", "test")] == [2, 1, 0]
    assert len(folder.items()) == 3  # "test" is empty: every case


def test_folder_split_is_the_datalist_builders(tmp_path):
    # 4 patients x 2 timepoints: the validation split is patient-wise and seeded, that of brats_datalist
    img = nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4))
    for p in range(4):
        for t in range(2):
            case = f"BraTS-GLI-{p:05d}-{t:03d}"
            (tmp_path / case).mkdir()
            for m in ("t1n", "t1c", "t2w", "t2f", "seg"):
                nib.save(img, str(tmp_path / case / f"{case}-{m}.nii.gz"))
    for seed in (0, 1, 2):
        data = BundleDatalist(str(tmp_path), val_fraction=0.5, split_seed=seed)
        val = [it["case_id"] for it in data.datalist["validation"]]
        expected = brats_datalist(tmp_path, val_fraction=0.5, seed=seed)["validation"]
        assert val == [it["case_id"] for it in expected]
        patients = {c[:-4] for c in val}
        assert len(patients) == 2 and len(val) == 4  # both timepoints of each validation patient
        assert not patients & {it["case_id"][:-4] for it in data.datalist["training"]}
    assert BundleDatalist(str(tmp_path)).datalist["validation"] == []  # val_fraction 0: every case trains


def test_lesions2d_folder(tmp_path):
    write_ambiguous_lesions_2d(tmp_path, 3, (16, 16), num_annotators=2, seed=0)
    os.remove(tmp_path / "datalist.json")  # the case folders alone
    data = BundleDatalist(str(tmp_path), kind="lesions2d")
    items = data.items("training")
    assert [it["case_id"] for it in items] == [f"lesion-{k:05d}" for k in range(3)]
    assert [os.path.basename(p) for p in items[0]["raters"]] == [
        "lesion-00000-annot1.nii.gz",
        "lesion-00000-annot2.nii.gz",
    ]
    assert items[0]["label"] is None and items[0]["image"][0].endswith("lesion-00000-image.nii.gz")


def test_annotator_list_and_consensus_fallback(tmp_path):
    img = nib.Nifti1Image(np.zeros((8, 8), np.float32), np.eye(4))
    for name in ("a-image", "a-annot1", "a-annot2", "b-image"):
        nib.save(img, str(tmp_path / f"{name}.nii.gz"))
    path = write_datalist(
        {
            "training": [{"image": "a-image.nii.gz", "label": ["a-annot1.nii.gz", "a-annot2.nii.gz"]}],
            "test": [{"image": "b-image.nii.gz"}],
        },
        tmp_path / "list.json",
    )
    data = BundleDatalist(str(path), kind="lesions2d")
    item = data.items("training")[0]
    assert item["case_id"] == "a" and item["label"] is None and len(item["raters"]) == 2
    assert data.labelled_items("training")[0]["label"] == item["raters"]
    assert data.items()[0]["case_id"] == "b"
    with pytest.raises(ValueError, match="no label or raters|neither a label nor raters"):
        BundleDatalist(str(path), kind="lesions2d").training_items("test")


def test_generated_when_empty(tmp_path, caplog):
    data = BundleDatalist("", num_phantoms=2, phantom_size=(16, 16, 16), phantom_dir=str(tmp_path / "gen"))
    with caplog.at_level("INFO"):
        items = data.items()
    assert len(items) == 2 and all(os.path.isfile(p) for p in items[0]["image"])
    assert str(tmp_path / "gen") in caplog.text
    with open(tmp_path / "gen" / "datalist.json") as f:
        assert json.load(f)["description"].endswith("seed 1")  # not the training seed


def test_bad_dataset_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        BundleDatalist(str(tmp_path / "nope")).items()
    with pytest.raises(FileNotFoundError, match="no case folders"):
        BundleDatalist(str(tmp_path)).items()
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a valid datalist JSON"):
        BundleDatalist(str(tmp_path / "bad.json")).items()
    with pytest.raises(ValueError, match="kind must be one of"):
        BundleDatalist(kind="ct")


def test_check_case_files(tmp_path):
    def save(name, shape=(6, 6, 6), affine=None):
        nib.save(
            nib.Nifti1Image(np.ones(shape, np.float32), np.eye(4) if affine is None else affine), str(tmp_path / name)
        )
        return str(tmp_path / name)

    mods = ("t1n", "t1c", "t2w", "t2f")
    good = [save(f"c-{m}.nii.gz") for m in mods]
    check_case_files({"image": good}, mods)
    check_case_files({"image": good[:1]}, mods)  # one multi-channel file: counted after loading
    with pytest.raises(CaseError, match=r"lists 3 image file\(s\), expected 4 \(t1n, t1c, t2w, t2f\)"):
        check_case_files({"image": good[:3]}, mods)
    with pytest.raises(CaseError, match="missing t2w file"):
        check_case_files({"image": [*good[:2], str(tmp_path / "x.nii.gz"), good[3]]}, mods)
    wrong_shape = save("c-t2w-small.nii.gz", (6, 6, 5))
    with pytest.raises(CaseError, match=r"t2w file 'c-t2w-small.nii.gz' has shape \(6, 6, 5\), expected \(6, 6, 6\)"):
        check_case_files({"image": [*good[:2], wrong_shape, good[3]]}, mods)
    shifted = np.eye(4)
    shifted[0, 3] = 5.0
    wrong_affine = save("c-t2f-shift.nii.gz", affine=shifted)
    with pytest.raises(CaseError, match="t2f file 'c-t2f-shift.nii.gz' has affine"):
        check_case_files({"image": [*good[:3], wrong_affine]}, mods)
    (tmp_path / "junk.nii.gz").write_bytes(b"not a nifti")
    with pytest.raises(CaseError, match="cannot read the t1n file"):
        check_case_files({"image": [str(tmp_path / "junk.nii.gz"), *good[1:]]}, mods)


def test_anatomy_kind_phantoms_and_label_only_lists(tmp_path):
    """kind="anatomy": T1 phantoms of the asked family; a label-only data set keeps every case (no images)."""
    data = BundleDatalist(
        None,
        kind="anatomy",
        num_phantoms=3,
        phantom_size=(20, 20, 20),
        seed=2,
        phantom_split=(0.4, 0.3, 0.3),
        phantom_dir=str(tmp_path / "t1"),
        phantom_family=2,
    )
    items = data.items("all")
    assert data.modalities == ("t1",) and len(items) == 3
    assert all(it["image"][0].endswith("-t1.nii.gz") and it["case_id"].startswith("ANAT-F2-") for it in items)
    labels = BundleDatalist(
        None,
        kind="anatomy",
        num_phantoms=3,
        phantom_size=(20, 20, 20),
        phantom_contrasts=(),
        phantom_split=(1.0, 0.0, 0.0),
        phantom_dir=str(tmp_path / "seg"),
        phantom_family=0,
    )
    train = labels.labelled_items("training")
    assert len(train) == 3 and all(it["image"] == [] and it["label"].endswith("-seg.nii.gz") for it in train)
