# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

from __future__ import annotations

import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from monai_probseg.data.synthetic.cli import main


def _fails(argv, capsys):
    with pytest.raises(SystemExit) as err:
        main(argv)
    assert err.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines  # one line, no usage block, no traceback
    return lines[0]


def test_brats_cli(tmp_path, capsys):
    out = tmp_path / "p"
    assert main(["brats", "--out", str(out), "--cases", "2", "--size", "24", "20", "16", "--raters", "2", "-q"]) == 0
    printed = capsys.readouterr().out
    assert "2 BraTS phantom(s) of 24x20x16 voxels with 2 raters" in printed and str(out) in printed
    with open(out / "datalist.json") as f:
        datalist = json.load(f)
    entry = datalist["training"][0]
    assert nib.load(out / entry["image"][1]).shape == (24, 20, 16)
    assert len(entry["raters"]) == 2


def test_lesions2d_cli(tmp_path, capsys):
    out = tmp_path / "l"
    argv = ["lesions2d", "--out", str(out), "--cases", "3", "--size", "24", "32", "--annotators", "2", "--seed", "3"]
    assert main([*argv, "--classes", "3", "-q"]) == 0
    assert "3 2D lesion case(s) of 24x32 pixels with 2 annotators" in capsys.readouterr().out
    with open(out / "datalist.json") as f:
        datalist = json.load(f)
    entry = datalist["training"][0]
    assert nib.load(out / entry["image"]).shape == (24, 32)
    annot = np.asarray(nib.load(out / entry["label"][1]).dataobj)
    assert set(np.unique(annot).tolist()) <= {0, 1, 2}
    assert os.path.isfile(out / entry["modes"])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["brats", "--out", "{tmp}", "--size", "8", "32", "32"], "--size: expected an integer >= 16, got 8"),
        (["brats", "--out", "{tmp}", "--cases", "-1"], "--cases: expected an integer >= 1, got -1"),
        (["brats", "--out", "{tmp}", "--cases", "two"], "--cases: expected an integer >= 1, got 'two'"),
        (["brats", "--out", "{tmp}", "--raters", "0"], "--raters"),
        (["brats", "--cases", "1"], "required: --out"),
        (["brats", "--out", "{tmp}/file"], "is not a directory"),
        (["brats", "--out", "{tmp}/file/sub"], "cannot be created or is not writable"),
        (["lesions2d", "--out", "{tmp}", "--size", "32", "15"], "--size: expected an integer >= 16, got 15"),
        (["lesions2d", "--out", "{tmp}", "--classes", "4"], "--classes"),
        ([], "required: {anatomy,brats,lesions2d}"),
    ],
)
def test_bad_input(tmp_path, capsys, argv, message):
    (tmp_path / "file").write_text("x")
    line = _fails([a.replace("{tmp}", str(tmp_path)) for a in argv], capsys)
    assert "error:" in line and message in line, line
    assert sorted(os.listdir(tmp_path)) == ["file"]  # nothing written


def test_help(capsys):
    for argv in (["--help"], ["brats", "--help"], ["lesions2d", "--help"]):
        with pytest.raises(SystemExit) as err:
            main(argv)
        assert err.value.code == 0
    assert "--annotators" in capsys.readouterr().out


def test_module_entry_point(tmp_path):
    # the real command line: bad input gives a one-line error, exit code 2, no traceback
    cmd = [sys.executable, "-m", "monai_probseg.data.synthetic", "brats", "--out", str(tmp_path), "--size", "8", "8"]
    proc = subprocess.run([*cmd, "8"], capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "python -m monai_probseg.data.synthetic brats: error: argument --size: expected an integer >= 16, got 8 "
        "(see --help)"
    ]
