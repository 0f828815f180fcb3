# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

from __future__ import annotations

import os
import time

import pytest
import torch

from monai_probseg.bundle import bundle_root, latest_checkpoint, load_weights

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_bundle_root_from_command_line_cwd_and_source_tree(tmp_path, monkeypatch):
    other = tmp_path / "copy_of_bundle"
    (other / "configs").mkdir(parents=True)
    (other / "configs" / "metadata.json").write_text("{}")
    argv = ["monai.bundle", "run", "--config_file", str(other / "configs" / "inference.json")]
    assert bundle_root("brats_ssn", argv) == str(other)
    both = f"['{other}/configs/train.json','{other}/configs/multi_gpu_train.json']"
    assert bundle_root("brats_ssn", ["run", f"--config_file={both}"]) == str(other)
    monkeypatch.chdir(tmp_path)
    assert bundle_root("brats_ssn", []) == os.path.join(REPO, "bundles", "brats_ssn")
    named = tmp_path / "brats_ssn"
    (named / "configs").mkdir(parents=True)
    (named / "configs" / "metadata.json").write_text("{}")
    monkeypatch.chdir(named)
    assert bundle_root("brats_ssn", []) == str(named)


def test_latest_checkpoint(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    for i, name in enumerate(["checkpoint_epoch=2.pt", "checkpoint_epoch=10.pt", "model.pt"]):
        (tmp_path / name).write_bytes(b"")
        os.utime(tmp_path / name, (time.time() + i, time.time() + i))
    assert latest_checkpoint(tmp_path) == str(tmp_path / "checkpoint_epoch=10.pt")  # newest, not lexical


def test_load_weights(tmp_path):
    src, dst = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    torch.save(src.state_dict(), tmp_path / "plain.pt")
    torch.save({"model": src.state_dict(), "optimizer": {}}, tmp_path / "nested.pt")
    for name in ("plain.pt", "nested.pt"):
        load_weights(torch.nn.Sequential(dst)[0], tmp_path / name)
        assert torch.equal(dst.weight, src.weight)
    with pytest.raises(FileNotFoundError, match="train the bundle"):
        load_weights(dst, tmp_path / "missing.pt")
    with pytest.raises(RuntimeError, match="do not fit the network Linear"):
        load_weights(torch.nn.Linear(4, 2), tmp_path / "plain.pt")
