# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

from __future__ import annotations

import os

import pytest

from monai_probseg.demo import main, run_demo


def test_demo_main(tmp_path, capsys):
    argv = ["--output_dir", str(tmp_path), "--cases", "1", "--size", "32", "32", "24", "--raters", "2"]
    assert main([*argv, "--lesion_cases", "3", "--lesion_size", "32", "32", "-q"]) == 0
    out = capsys.readouterr().out
    assert "BraTS-like phantoms: 1 case(s), modalities t1n, t1c, t2w, t2f of 32x32x24 voxels, 2 rater(s)" in out
    assert "2D ambiguous lesions: 3 case(s) of 32x32 pixels, 4 annotator(s) each" in out
    assert "every annotator mask is one of its case's modes: yes" in out
    assert os.path.join(str(tmp_path), "brats", "datalist.json") in out
    case = "BraTS-PHANTOM-00000-000"
    assert os.path.isfile(tmp_path / "brats" / case / f"{case}-seg-rater2.nii.gz")
    assert os.path.isfile(tmp_path / "lesions2d" / "lesion-00002" / "lesion-00002-modes.npz")


def test_run_demo_summary(tmp_path):
    summary = run_demo(tmp_path, 2, (24, 24, 24), 3, 4, (32, 32), 2, seed=1)
    brats, lesions = summary["brats"], summary["lesions2d"]
    assert brats["split"] == [2, 0, 0] and lesions["split"] == [2, 1, 1]
    for case in brats["cases"]:
        assert case["shape"] == (24, 24, 24)
        assert sum(case["seg_counts"]) == 24**3 and min(case["seg_counts"][1:]) > 0
        assert len(case["rater_counts"]) == 3
    assert lesions["annotators_are_modes"]
    assert all(2 <= n <= 5 for n in lesions["num_modes"])
    lo, hi = lesions["mode_probability_range"]
    assert 0 < lo <= hi < 1


def test_demo_bad_input(tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        main(["--output_dir", str(tmp_path), "--size", "32", "32", "4"])
    assert err.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
