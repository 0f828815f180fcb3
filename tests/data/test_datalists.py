# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monai.data import load_decathlon_datalist
from monai.transforms import LoadImaged

from monai_probseg.data import (
    NoCaseFoldersError,
    brats_datalist,
    case_folder_datalist,
    find_nifti,
    lidc_datalist,
    multi_annotator_datalist,
    qubiq_datalist,
    write_datalist,
)

SHAPE = (8, 8, 8)


def _nifti(path: Path, shape=SHAPE, affine=None, value=0, dtype=np.float32) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.full(shape, value, dtype=dtype)
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    return path


def _brats_case(root: Path, case: str, year: str = "2023", seg=True, raters=0, skip=(), shapes=None, affines=None):
    sep = "-" if year == "2023" else "_"
    mods = ("t1n", "t1c", "t2w", "t2f") if year == "2023" else ("t1", "t1ce", "t2", "flair")
    names = list(mods) + (["seg"] if seg else []) + [f"seg{sep}rater{k}" for k in range(1, raters + 1)]
    for i, m in enumerate(names):
        if m in skip:
            continue
        shape = (shapes or {}).get(m, SHAPE)
        _nifti(root / case / f"{case}{sep}{m}.nii.gz", shape, (affines or {}).get(m), value=i)
    return root / case


# ------------------------------------------------------------------------------------------------------------ BraTS


def test_brats_2023_items_order_raters_and_sections(tmp_path):
    # raters written out of order, one of them numbered 10 (numeric, not lexical, order expected)
    _brats_case(tmp_path, "BraTS-GLI-00000-000", raters=2)
    for k in (3, 4, 5, 6, 7, 8, 9, 10):
        _nifti(tmp_path / "BraTS-GLI-00000-000" / f"BraTS-GLI-00000-000-seg-rater{k}.nii.gz")
    _brats_case(tmp_path, "BraTS-GLI-00002-000")
    _brats_case(tmp_path, "BraTS-GLI-00003-000", seg=False)
    (tmp_path / "not_a_case").mkdir()
    datalist = brats_datalist(tmp_path)
    assert datalist["name"] == "BraTS2023"
    assert datalist["labels"]["3"] == "enhancing tumour" and "4" not in datalist["labels"]
    assert [it["case_id"] for it in datalist["training"]] == ["BraTS-GLI-00000-000", "BraTS-GLI-00002-000"]
    assert [it["case_id"] for it in datalist["test"]] == ["BraTS-GLI-00003-000"]
    assert datalist["validation"] == []
    item = datalist["training"][0]
    case = tmp_path.resolve() / "BraTS-GLI-00000-000"
    assert item["image"] == [str(case / f"BraTS-GLI-00000-000-{m}.nii.gz") for m in ("t1n", "t1c", "t2w", "t2f")]
    assert item["label"] == str(case / "BraTS-GLI-00000-000-seg.nii.gz")
    assert item["raters"] == [str(case / f"BraTS-GLI-00000-000-seg-rater{k}.nii.gz") for k in range(1, 11)]
    assert item["et_label"] == 3
    assert "raters" not in datalist["training"][1]
    assert "label" not in datalist["test"][0] and "raters" not in datalist["test"][0]
    # the 4 modalities load as channels in the fixed order (file i holds the value i)
    loaded = LoadImaged(keys=["image", "label"])(item)
    assert tuple(loaded["image"].shape) == (4, *SHAPE)
    assert loaded["image"].reshape(4, -1)[:, 0].tolist() == [0.0, 1.0, 2.0, 3.0]
    assert float(loaded["label"].max()) == 4.0


@pytest.mark.parametrize(
    "case, year, et_label",
    [("BraTS20_Training_001", "2020", 4), ("BraTS2021_00000", "2021", 4), ("Patient_7", "2021", 4)],
)
def test_brats_legacy_naming(tmp_path, case, year, et_label):
    _brats_case(tmp_path / "TrainingData", case, year="2020")  # one level below root
    _brats_case(tmp_path / "ValidationData", case + "_val", year="2020", seg=False)
    datalist = brats_datalist(tmp_path)
    assert datalist["name"] == f"BraTS{year}"
    assert datalist["labels"]["4"] == "enhancing tumour"
    (item,) = datalist["training"]
    assert item["et_label"] == et_label
    assert [Path(p).name for p in item["image"]] == [f"{case}_{m}.nii.gz" for m in ("t1", "t1ce", "t2", "flair")]
    assert Path(item["label"]).name == f"{case}_seg.nii.gz"
    assert [it["case_id"] for it in datalist["test"]] == [case + "_val"]
    assert brats_datalist(tmp_path, year=2020)["training"][0]["et_label"] == 4


def test_brats_missing_root_and_no_cases(tmp_path):
    with pytest.raises(FileNotFoundError, match="does_not_exist"):
        brats_datalist(tmp_path / "does_not_exist")
    (tmp_path / "empty_case").mkdir()
    with pytest.raises(FileNotFoundError, match="no BraTS case folders"):
        brats_datalist(tmp_path)


def test_brats_missing_modality_names_case_and_file(tmp_path):
    _brats_case(tmp_path, "BraTS-MEN-00004-000", skip=("t2f",))
    with pytest.raises(FileNotFoundError, match=r"BraTS-MEN-00004-000.*BraTS-MEN-00004-000-t2f\.nii\.gz"):
        brats_datalist(tmp_path)
    with pytest.raises(ValueError, match="year must be one of"):
        brats_datalist(tmp_path, year="2019")


def test_brats_year_mismatch_and_mixed_conventions(tmp_path):
    _brats_case(tmp_path, "BraTS2021_00001", year="2021")
    with pytest.raises(ValueError, match=r"BraTS2021_00001.*BraTS2021_00001-t1n\.nii\.gz"):
        brats_datalist(tmp_path, year="2023")
    _brats_case(tmp_path, "BraTS-GLI-00001-000")
    with pytest.raises(ValueError, match="mix naming conventions"):
        brats_datalist(tmp_path)


def test_brats_require_label_and_rater_gap(tmp_path):
    _brats_case(tmp_path, "BraTS-GLI-00005-000", seg=False)
    with pytest.raises(FileNotFoundError, match=r"BraTS-GLI-00005-000-seg\.nii\.gz"):
        brats_datalist(tmp_path, require_label=True)
    _brats_case(tmp_path, "BraTS-GLI-00006-000", raters=3, skip=("seg-rater2",))
    with pytest.raises(FileNotFoundError, match=r"BraTS-GLI-00006-000.*BraTS-GLI-00006-000-seg-rater2\.nii\.gz"):
        brats_datalist(tmp_path)


def test_brats_allow_missing_lists_expected_names_and_brainmask(tmp_path):
    case = _brats_case(tmp_path, "BraTS-GLI-00009-000", raters=3, skip=("t1c", "seg-rater2"))
    _nifti(case / "BraTS-GLI-00009-000-brainmask.nii.gz", dtype=np.uint8)
    _brats_case(tmp_path, "BraTS-GLI-00010-000")
    item, other = brats_datalist(tmp_path, allow_missing=True)["training"]
    case = case.resolve()
    assert item["image"][1] == str(case / "BraTS-GLI-00009-000-t1c.nii.gz") and not os.path.exists(item["image"][1])
    assert item["raters"][1] == str(case / "BraTS-GLI-00009-000-seg-rater2.nii.gz")  # the gap, by its name
    assert item["brainmask"] == str(case / "BraTS-GLI-00009-000-brainmask.nii.gz")
    assert "brainmask" not in other  # optional
    with pytest.raises(FileNotFoundError, match=r"missing t1c file 'BraTS-GLI-00009-000-t1c\.nii\.gz'"):
        brats_datalist(tmp_path)


def test_case_folder_datalist_layout_split_and_no_cases(tmp_path):
    for k in range(4):
        case = f"lesion-{k:05d}"
        _nifti(tmp_path / "cases" / case / f"{case}-image.nii.gz", (8, 8))
        for a in range(1, 3 if k < 3 else 1):  # the last case has no annotations: "test"
            _nifti(tmp_path / "cases" / case / f"{case}-annot{a}.nii.gz", (8, 8), dtype=np.uint8)
    datalist = case_folder_datalist(tmp_path, label=None, rater="annot", val_fraction=0.34, seed=1)
    assert [len(datalist[k]) for k in ("training", "validation", "test")] == [2, 1, 1]
    item = datalist["test"][0]
    assert item == {
        "case_id": "lesion-00003",
        "image": [str(tmp_path.resolve() / "cases" / "lesion-00003" / "lesion-00003-image.nii.gz")],
    }
    assert [os.path.basename(p) for p in datalist["validation"][0]["raters"]] == [
        f"{datalist['validation'][0]['case_id']}-annot{a}.nii.gz" for a in (1, 2)
    ]
    # the split of every builder: the same seed and fraction give the same cases
    again = case_folder_datalist(tmp_path, label=None, rater="annot", val_fraction=0.34, seed=1)
    assert again["validation"] == datalist["validation"]
    assert find_nifti(tmp_path / "cases" / "lesion-00000", "lesion-00000-image").name == "lesion-00000-image.nii.gz"
    assert find_nifti(tmp_path, "nothing") is None
    (tmp_path / "empty").mkdir()
    with pytest.raises(NoCaseFoldersError, match=r"no case folders found under .*<case>/<case>-image\.nii\.gz"):
        case_folder_datalist(tmp_path / "empty", label=None, rater="annot")
    with pytest.raises(NoCaseFoldersError, match="no BraTS case folders"):
        brats_datalist(tmp_path / "empty")


def test_brats_check_headers(tmp_path):
    near = np.eye(4)
    near[0, 3] = 1e-5  # within atol
    _brats_case(tmp_path, "BraTS-GLI-00007-000", raters=1, affines={"seg-rater1": near})
    assert len(brats_datalist(tmp_path, check_headers=True)["training"]) == 1

    _brats_case(tmp_path, "BraTS-GLI-00008-000", shapes={"t2w": (8, 8, 7)})
    with pytest.raises(ValueError, match=r"BraTS-GLI-00008-000.*-t2w\.nii\.gz.*\(8, 8, 7\).*\(8, 8, 8\)"):
        brats_datalist(tmp_path, check_headers=True)
    assert len(brats_datalist(tmp_path)["training"]) == 2  # headers are only read on request

    shifted = np.diag([2.0, 2.0, 2.0, 1.0])
    (tmp_path / "BraTS-GLI-00008-000" / "BraTS-GLI-00008-000-t2w.nii.gz").unlink()
    _brats_case(tmp_path, "BraTS-GLI-00008-000", skip=("t1n", "t1c", "t2f", "seg"), affines={"t2w": shifted})
    with pytest.raises(ValueError, match=r"BraTS-GLI-00008-000.*-t2w\.nii\.gz.*affine"):
        brats_datalist(tmp_path, check_headers=True)


def test_brats_validation_split_is_patient_wise_and_seeded(tmp_path):
    cases = [f"BraTS-GLI-{p:05d}-{t:03d}" for p in range(6) for t in range(2)]  # 6 patients x 2 timepoints
    for case in cases:
        _brats_case(tmp_path, case)
    splits = {}
    for seed in range(6):
        datalist = brats_datalist(tmp_path, val_fraction=0.5, seed=seed)
        train = {it["case_id"][:-4] for it in datalist["training"]}
        val = {it["case_id"][:-4] for it in datalist["validation"]}
        assert len(train) == 3 and len(val) == 3 and not train & val  # whole patients on one side
        assert len(datalist["training"]) + len(datalist["validation"]) == 12
        splits[seed] = tuple(sorted(val))
    assert (
        brats_datalist(tmp_path, val_fraction=0.5, seed=3)["validation"]
        == brats_datalist(tmp_path, val_fraction=0.5, seed=3)["validation"]
    )
    assert len(set(splits.values())) > 1  # the seed changes the split
    with pytest.raises(ValueError, match="val_fraction"):
        brats_datalist(tmp_path, val_fraction=1.0)


def test_brats_write_and_load_decathlon(tmp_path):
    _brats_case(tmp_path / "data", "BraTS-GLI-00009-000", raters=2)
    datalist = brats_datalist(tmp_path / "data")
    path = write_datalist(datalist, tmp_path / "out" / "datalist.json")
    assert json.loads(path.read_text(encoding="utf-8")) == datalist
    files = load_decathlon_datalist(str(path), data_list_key="training")
    assert files[0]["image"] == datalist["training"][0]["image"]
    assert files[0]["raters"] == datalist["training"][0]["raters"]


# ------------------------------------------------------------------------------------------------------------- LIDC


def _lidc_data(num_series=3, per_series=2, num_masks=4, seed=0):
    rng = np.random.default_rng(seed)
    data = {}
    for s in range(num_series):
        for i in range(per_series):
            masks = [(rng.random((6, 5)) > 0.5).astype(np.uint8) * (255 if k == 0 else 1) for k in range(num_masks)]
            data[f"LIDC-IDRI-{s:04d}/slice {i}"] = {
                "image": rng.random((6, 5)).astype(np.float32),
                "masks": masks,
                "series_uid": f"1.3.6.{s}",
                "pixel_spacing": 0.7,
            }
    return data


def _write_pickle(path: Path, obj, protocol=pickle.HIGHEST_PROTOCOL) -> Path:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)
    return path


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_lidc_writes_nifti_and_items(tmp_path, protocol):
    data = _lidc_data()
    pkl = _write_pickle(tmp_path / "data_lidc.pickle", data, protocol)
    datalist = lidc_datalist(pkl, tmp_path / "nifti", spacing=(0.5, 0.5))
    items = datalist["training"]
    assert len(items) == 6 and datalist["validation"] == [] and datalist["test"] == []
    item = items[1]
    key = "LIDC-IDRI-0000/slice 1"
    assert item["case_id"] == key and item["series_uid"] == "1.3.6.0"
    assert Path(item["image"]).name == "LIDC-IDRI-0000_slice_1-image.nii.gz"
    assert [Path(p).name for p in item["label"]] == [
        f"LIDC-IDRI-0000_slice_1-seg-rater{k}.nii.gz" for k in (1, 2, 3, 4)
    ]
    img = nib.load(item["image"])
    np.testing.assert_allclose(img.get_fdata(), data[key]["image"], rtol=1e-6)
    np.testing.assert_allclose(img.affine, np.diag([0.5, 0.5, 1.0, 1.0]))
    for k, path in enumerate(item["label"]):
        mask = np.asarray(nib.load(path).dataobj)
        assert mask.dtype == np.uint8
        np.testing.assert_array_equal(mask, (data[key]["masks"][k] > 0).astype(np.uint8))  # 255 -> 1
    loaded = LoadImaged(keys=["image", "label"])(item)
    assert tuple(loaded["image"].shape) == (6, 5) and tuple(loaded["label"].shape) == (4, 6, 5)


def test_lidc_patient_wise_split(tmp_path):
    pkl = _write_pickle(tmp_path / "d.pickle", _lidc_data(num_series=6, per_series=3))
    datalist = lidc_datalist(pkl, tmp_path / "nifti", val_fraction=1 / 3, test_fraction=1 / 3, seed=4)
    series = {s: {it["series_uid"] for it in datalist[s]} for s in ("training", "validation", "test")}
    assert [len(series[s]) for s in ("training", "validation", "test")] == [2, 2, 2]
    assert not (series["training"] & series["validation"]) and not (series["training"] & series["test"])
    assert sum(len(datalist[s]) for s in series) == 18
    again = lidc_datalist(pkl, tmp_path / "nifti2", val_fraction=1 / 3, test_fraction=1 / 3, seed=4)
    assert [it["case_id"] for it in again["test"]] == [it["case_id"] for it in datalist["test"]]
    with pytest.raises(ValueError, match="no training data left"):
        lidc_datalist(pkl, tmp_path / "nifti", val_fraction=0.5, test_fraction=0.5)


class _Exploit:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.makedirs, (self.target,))


def test_lidc_refuses_code_in_pickle(tmp_path):
    target = tmp_path / "pwned"
    data = _lidc_data(num_series=1, per_series=1)
    data["evil"] = {"image": np.zeros((6, 5)), "masks": [_Exploit(str(target))] * 4, "series_uid": "x"}
    pkl = _write_pickle(tmp_path / "evil.pickle", data)
    with pytest.raises(ValueError, match=r"refusing to load 'os\.makedirs'"):
        lidc_datalist(pkl, tmp_path / "nifti")
    assert not target.exists()


def test_lidc_bad_content(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pickle"):
        lidc_datalist(tmp_path / "missing.pickle", tmp_path / "out")
    data = _lidc_data(num_series=1, per_series=2)
    data["LIDC-IDRI-0000/slice 1"]["masks"] = data["LIDC-IDRI-0000/slice 1"]["masks"][:3]
    with pytest.raises(ValueError, match=r"'LIDC-IDRI-0000/slice 1'.*3 annotator masks, expected 4"):
        lidc_datalist(_write_pickle(tmp_path / "a.pickle", data), tmp_path / "out")
    data = _lidc_data(num_series=1, per_series=1)
    data["LIDC-IDRI-0000/slice 0"]["masks"][2] = np.zeros((5, 5))
    with pytest.raises(ValueError, match=r"mask 2 has shape \(5, 5\), expected \(6, 5\)"):
        lidc_datalist(_write_pickle(tmp_path / "b.pickle", data), tmp_path / "out")
    with pytest.raises(ValueError, match="expected a non-empty dict"):
        lidc_datalist(_write_pickle(tmp_path / "c.pickle", [1, 2]), tmp_path / "out")
    with pytest.raises(ValueError, match=r"'k'.*expected a dict with 'image' and 'masks'"):
        lidc_datalist(_write_pickle(tmp_path / "d.pickle", {"k": {"image": np.zeros((2, 2))}}), tmp_path / "out")


# ------------------------------------------------------------------------------------------------------------ QUBIQ


def _qubiq_case(root: Path, case: str, tasks=(1,), annotators=(1, 2, 3), shape=(8, 8), affine=None):
    _nifti(root / case / "image.nii.gz", shape)
    for t in tasks:
        for a in annotators:
            _nifti(root / case / f"task{t:02d}_seg{a:02d}.nii.gz", shape, affine, value=10 * t + a, dtype=np.uint8)


def test_qubiq_tasks_and_items(tmp_path):
    for case in ("case01", "case02"):
        _qubiq_case(tmp_path, case, tasks=(1, 2))
    _qubiq_case(tmp_path, "case03", tasks=())
    with pytest.raises(ValueError, match=r"tasks \[1, 2\].*task="):
        qubiq_datalist(tmp_path)
    datalist = qubiq_datalist(tmp_path, task=2, check_headers=True)
    assert [it["case_id"] for it in datalist["training"]] == ["case01", "case02"]
    assert [it["case_id"] for it in datalist["test"]] == ["case03"] and "label" not in datalist["test"][0]
    item = datalist["training"][1]
    assert item["image"] == str(tmp_path.resolve() / "case02" / "image.nii.gz")
    assert [Path(p).name for p in item["label"]] == [f"task02_seg0{a}.nii.gz" for a in (1, 2, 3)]
    loaded = LoadImaged(keys="label")(item)
    assert loaded["label"].reshape(3, -1)[:, 0].tolist() == [21.0, 22.0, 23.0]
    with pytest.raises(FileNotFoundError, match="found tasks"):
        qubiq_datalist(tmp_path, task=3)


def test_qubiq_single_task_and_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="task_dir"):
        qubiq_datalist(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no QUBIQ case folders"):
        qubiq_datalist(tmp_path)
    for case in ("case01", "case02"):
        _qubiq_case(tmp_path, case, annotators=range(1, 8))
    datalist = qubiq_datalist(tmp_path, val_fraction=0.5, seed=0)
    assert len(datalist["training"]) == 1 and len(datalist["validation"]) == 1
    assert all(len(it["label"]) == 7 for it in datalist["training"] + datalist["validation"])

    _qubiq_case(tmp_path, "case03", annotators=range(1, 7))
    with pytest.raises(FileNotFoundError, match=r"case03.*task01_seg07\.nii\.gz.*found 6 annotators, expected 7"):
        qubiq_datalist(tmp_path)
    _qubiq_case(tmp_path, "case03", annotators=range(1, 8))
    (tmp_path / "case03" / "task01_seg04.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"case03.*task01_seg04\.nii\.gz"):
        qubiq_datalist(tmp_path)
    _nifti(tmp_path / "case03" / "task01_seg04.nii.gz", (8, 7))
    with pytest.raises(ValueError, match=r"case03.*task01_seg04\.nii\.gz.*\(8, 7\)"):
        qubiq_datalist(tmp_path, check_headers=True)


# ---------------------------------------------------------------------------------------------------------- generic


def test_multi_annotator_datalist_resolves_and_checks(tmp_path):
    for name in ("img.nii.gz", "a1.nii.gz", "a2.nii.gz", "b1.nii.gz"):
        _nifti(tmp_path / "d" / name)
    items = [{"case_id": "c1", "image": "img.nii.gz", "label": ["a1.nii.gz", "a2.nii.gz"]}]
    out = multi_annotator_datalist(items, base_dir=tmp_path / "d")
    assert out == [
        {
            "case_id": "c1",
            "image": str(tmp_path / "d" / "img.nii.gz"),
            "label": [str(tmp_path / "d" / "a1.nii.gz"), str(tmp_path / "d" / "a2.nii.gz")],
        }
    ]
    content = {
        "name": "mine",
        "training": [{"image": "d/img.nii.gz", "label": ["d/a1.nii.gz", "d/a2.nii.gz"]}],
        "test": [{"image": "d/img.nii.gz", "label": "d/b1.nii.gz"}],
    }
    json_path = tmp_path / "list.json"
    json_path.write_text(json.dumps(content))
    out = multi_annotator_datalist(json_path)  # base_dir = the JSON's folder
    assert out["name"] == "mine"
    assert out["test"][0]["label"] == [str(tmp_path.resolve() / "d" / "b1.nii.gz")]  # one annotator -> list
    assert out["training"][0]["image"] == str(tmp_path.resolve() / "d" / "img.nii.gz")
    assert multi_annotator_datalist(json_path, data_list_key="test") == out["test"]
    assert multi_annotator_datalist(json_path, data_list_key="training", num_annotators=2, check_headers=True)

    with pytest.raises(ValueError, match=r"test\[0\].*1 label.*num_annotators=2"):
        multi_annotator_datalist(json_path, num_annotators=2)
    with pytest.raises(ValueError, match="no section 'validation'"):
        multi_annotator_datalist(json_path, data_list_key="validation")
    content["training"][0]["label"].append("d/a3.nii.gz")
    with pytest.raises(FileNotFoundError, match=r"training\[0\]: label file '.*a3\.nii\.gz' does not exist"):
        multi_annotator_datalist(content, base_dir=tmp_path)
    with pytest.raises(ValueError, match=r"\(case 'x'\): no 'image' key"):
        multi_annotator_datalist([{"case_id": "x", "label": ["a"]}])
    with pytest.raises(FileNotFoundError, match="nope.json"):
        multi_annotator_datalist(tmp_path / "nope.json")
    _nifti(tmp_path / "d" / "a3.nii.gz", affine=np.diag([1.0, 1.0, 3.0, 1.0]))
    with pytest.raises(ValueError, match=r"a3\.nii\.gz' has affine"):
        multi_annotator_datalist(content, base_dir=tmp_path, check_headers=True)


def test_write_datalist_is_atomic(tmp_path):
    path = tmp_path / "sub" / "list.json"
    write_datalist({"training": [{"image": "a", "x": np.int64(3), "p": Path("b")}]}, path)
    assert json.loads(path.read_text(encoding="utf-8")) == {"training": [{"image": "a", "x": 3, "p": "b"}]}
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)
    write_datalist([{"image": "c"}], path)
    assert json.loads(path.read_text(encoding="utf-8")) == [{"image": "c"}]
    with pytest.raises(TypeError, match="not JSON serialisable"):
        write_datalist({"training": [{"image": object()}]}, path)
    assert json.loads(path.read_text(encoding="utf-8")) == [{"image": "c"}]  # the old file is intact
    assert sorted(p.name for p in path.parent.iterdir()) == ["list.json"]  # no temporary file left
