# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from monai_probseg.utils import atomic_write, atomic_writes, to_jsonable, write_json_atomic, write_text_atomic


def test_atomic_writes_all_or_nothing(tmp_path):
    out = tmp_path / "out"
    with atomic_writes(out) as staged:
        for name in ("a.nii.gz", "b.nii.gz"):
            nib.save(nib.Nifti1Image(np.ones((2, 2, 2), np.float32), np.eye(4)), staged(name))
        assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == []  # nothing visible yet
    assert sorted(p.name for p in out.iterdir()) == ["a.nii.gz", "b.nii.gz"]  # no temporary folder left
    assert nib.load(str(out / "a.nii.gz")).get_fdata().sum() == 8.0  # a real gzipped NIfTI: the name is kept

    with pytest.raises(OSError, match="disk full"):
        with atomic_writes(out) as staged:
            Path(staged("a.nii.gz")).write_bytes(b"new")
            raise OSError(28, "disk full")
    assert sorted(p.name for p in out.iterdir()) == ["a.nii.gz", "b.nii.gz"]
    assert nib.load(str(out / "a.nii.gz")).get_fdata().sum() == 8.0  # the previous file is intact
    with pytest.raises(ValueError, match="expected a plain file name"):
        with atomic_writes(out) as staged:
            staged("../escape.txt")


def test_atomic_write_text_and_json(tmp_path):
    path = tmp_path / "sub" / "x.json"
    written = write_json_atomic({"a": float("nan"), "b": np.float32(0.5), "c": (1, np.int64(2)), "p": Path("f")}, path)
    assert written == str(path)
    assert json.loads(path.read_text(encoding="utf-8")) == {"a": None, "b": 0.5, "c": [1, 2], "p": "f"}
    with pytest.raises(TypeError, match="object value .* is not JSON serialisable"):
        write_json_atomic({"a": object()}, path)
    assert json.loads(path.read_text(encoding="utf-8"))["b"] == 0.5  # untouched
    assert write_text_atomic("x\r\ny", tmp_path / "t.csv") == str(tmp_path / "t.csv")
    assert (tmp_path / "t.csv").read_bytes() == b"x\r\ny"  # newlines as given
    atomic_write(tmp_path / "raw.bin", lambda p: Path(p).write_bytes(b"\x00\x01"))
    assert (tmp_path / "raw.bin").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw.bin", "sub", "t.csv"]
    assert to_jsonable({1: np.arange(2), "inf": float("inf")}) == {"1": [0, 1], "inf": None}
