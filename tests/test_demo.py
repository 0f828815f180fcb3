# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

from __future__ import annotations

import os

import pytest
from monai.bundle import run

from monai_probseg.demo import main, summarise_outputs

CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bundles", "brats_ssn", "configs")


def test_demo_reports_bundle_outputs(tmp_path, capsys):
    out = tmp_path / "demo"
    run(
        config_file=os.path.join(CONFIG, "inference.json"),
        logging_file=False,
        output_dir=str(out),
        phantom_size=[32, 32, 32],
        roi_size=[32, 32, 32],
        num_samples=2,
        progress=False,
    )  # no dataset_dir: phantoms are generated, as in `make demo`
    report = summarise_outputs(out)
    assert len(report["cases"]) == 2 and report["failed"] == {}
    for case in report["cases"]:
        assert case["affine_ok"] and case["sitk_ok"]
        assert set(case["dice"]) == {"WT", "TC", "ET"} and all(0.0 <= d <= 1.0 for d in case["dice"].values())
        assert case["files"]["samples"][1] == (32, 32, 32, 2) and case["files"]["prob"][1] == (32, 32, 32, 4)
    assert main(["--output_dir", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"NIfTI outputs of 2 case(s) in {out}" in text
    assert "BraTS-PHANTOM-00000-000_seg.nii.gz" in text and "Dice vs the phantom's consensus: TC" in text


def test_demo_without_outputs(tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        main(["--output_dir", str(tmp_path)])
    assert err.value.code == 2
    assert "inference_summary.json' does not exist" in capsys.readouterr().err
