# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""The brats_ssn bundle through ``python -m monai.bundle run``, as users run it: good data, bad data, bad output dir."""

from __future__ import annotations

import json
import os
import shutil

import nibabel as nib
import numpy as np
import pytest

from monai_probseg.data import write_brats_phantoms, write_datalist

from .utils import CASE_FILES, check_outputs, config, folder_hash, run_cli

INFER = config("brats_ssn", "inference.json")
SMALL = ["--roi_size", "[32,32,32]", "--num_samples", "4", "--progress", "False"]


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantoms")
    write_brats_phantoms(root, 2, (32, 32, 32), 2, seed=5)
    return root


def test_inference_cli(phantoms, tmp_path):
    before = folder_hash(phantoms)
    out = tmp_path / "out"
    proc = run_cli(
        [
            "monai.bundle",
            "run",
            "--config_file",
            INFER,
            "--dataset_dir",
            str(phantoms),
            "--output_dir",
            str(out),
            *SMALL,
        ]
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for i in range(2):
        case = f"BraTS-PHANTOM-{i:05d}-000"
        check_outputs(out, case, str(phantoms / case / f"{case}-t1n.nii.gz"), num_samples=4, num_classes=4)
        assert f"{case}: shape 32x32x32" in proc.stdout and "mean entropy" in proc.stdout and "WT " in proc.stdout
    assert folder_hash(phantoms) == before


def test_bad_inputs_cli(phantoms, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(phantoms, data)
    good = "BraTS-PHANTOM-00000-000"
    files = {m: str(data / good / f"{good}-{m}.nii.gz") for m in ("t1n", "t1c", "t2w", "t2f")}
    small = data / "small-t2w.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((32, 32, 30), np.float32), nib.load(files["t1n"]).affine), str(small))
    corrupt = data / "corrupt-t2f.nii.gz"
    corrupt.write_bytes(open(files["t2f"], "rb").read()[:4000])  # a truncated gzip stream
    image = list(files.values())
    items = [
        {"case_id": "GOOD", "image": image},
        {"case_id": "THREE", "image": image[:3]},
        {"case_id": "MISSING", "image": [*image[:3], str(data / "nowhere-t2f.nii.gz")]},
        {"case_id": "SHAPE", "image": [*image[:2], str(small), image[3]]},
        {"case_id": "CORRUPT", "image": [*image[:3], str(corrupt)]},
    ]
    datalist = write_datalist({"test": items}, data / "bad.json")
    before = folder_hash(data)
    out = tmp_path / "out"
    proc = run_cli(
        [
            "monai.bundle",
            "run",
            "--config_file",
            INFER,
            "--dataset_dir",
            str(datalist),
            "--output_dir",
            str(out),
            *SMALL,
        ]
    )
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    err = proc.stderr
    assert "4 of 5 case(s) failed" in err
    assert "THREE: lists 3 image file(s), expected 4 (t1n, t1c, t2w, t2f)" in err
    assert "MISSING: missing t2f file" in err and "nowhere-t2f.nii.gz" in err
    assert "SHAPE: t2w file 'small-t2w.nii.gz' has shape (32, 32, 30), expected (32, 32, 32)" in err
    assert "CORRUPT: preprocessing failed: cannot read" in err and "corrupt-t2f.nii.gz" in err
    assert "Traceback" not in err
    check_outputs(out, "GOOD", files["t1n"], num_samples=4, num_classes=4)  # the good case was still processed
    assert sorted(os.listdir(out)) == sorted([f"GOOD_{k}" for k in CASE_FILES] + ["inference_summary.json"])
    with open(out / "inference_summary.json") as f:
        assert sorted(json.load(f)["failed"]) == ["CORRUPT", "MISSING", "SHAPE", "THREE"]
    assert folder_hash(data) == before

    # an output folder that cannot be created: a clear message before any work
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    proc = run_cli(
        [
            "monai.bundle",
            "run",
            "--config_file",
            INFER,
            "--dataset_dir",
            str(datalist),
            "--output_dir",
            str(blocker / "out"),
        ]
    )
    assert proc.returncode == 1
    assert f"error: output_dir '{blocker / 'out'}' cannot be created or written to" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert folder_hash(data) == before
