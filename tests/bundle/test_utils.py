# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

from __future__ import annotations

import os
import sys
import time

import pytest
import torch

from monai_probseg.bundle import bundle_root, latest_checkpoint, load_weights

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _make_bundle(folder):
    (folder / "configs").mkdir(parents=True)
    (folder / "configs" / "metadata.json").write_text("{}")
    return folder


def test_bundle_root_from_cwd_checkout_and_source_tree(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["monai.bundle", "run", "--config_file", "/elsewhere/configs/inference.json"])
    monkeypatch.chdir(tmp_path)  # the command line is not read: the source tree's bundle
    assert bundle_root("brats_ssn") == os.path.join(REPO, "bundles", "brats_ssn")
    checkout = _make_bundle(tmp_path / "bundles" / "brats_ssn")  # cwd is the root of a checkout
    assert bundle_root("brats_ssn") == str(checkout)
    named = _make_bundle(tmp_path / "copy" / "brats_ssn")  # cwd is the bundle
    monkeypatch.chdir(named)
    assert bundle_root("brats_ssn") == str(named)


def test_bundle_root_unknown_warns(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    with caplog.at_level("WARNING"):
        assert bundle_root("no_such_bundle") == str(tmp_path)
    assert "cannot locate bundle 'no_such_bundle'" in caplog.text and "--bundle_root" in caplog.text


def test_bundle_root_config_from_any_directory(tmp_path, monkeypatch):
    # the expression of the shipped configs, evaluated by MONAI from an unrelated working directory
    from monai.bundle import ConfigParser

    monkeypatch.chdir(tmp_path)
    parser = ConfigParser()
    parser.read_config(os.path.join(REPO, "bundles", "brats_ssn", "configs", "inference.json"))
    assert parser.get_parsed_content("bundle_root") == os.path.join(REPO, "bundles", "brats_ssn")
    parser["bundle_root"] = str(tmp_path)  # what `monai.bundle run --bundle_root <folder>` does
    assert parser.get_parsed_content("checkpoint") == os.path.join(str(tmp_path), "models", "model.pt")


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
