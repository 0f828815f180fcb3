# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""Multi-process training and inference with torchrun, 2 processes on CPU (gloo), tiny sizes."""

from __future__ import annotations

import glob
import json
import os

import pytest

from monai_probseg.data import write_brats_phantoms

from .utils import CASE_FILES, config, run_cli

TORCHRUN = ["torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2", "-m", "monai.bundle", "run"]


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantoms")
    # 3 training cases and 1 validation case for 2 processes: the validation sampler pads (issue 15, item 9)
    return write_brats_phantoms(root, 4, (32, 32, 32), 2, seed=7, split=(0.75, 0.25, 0.0))


def test_torchrun_train_gloo(phantoms, tmp_path):
    configs = f"['{config('brats_ssn', 'train.json')}','{config('brats_ssn', 'multi_gpu_train.json')}']"
    ckpt = tmp_path / "ckpt"
    args = ["--dataset_dir", phantoms, "--roi_size", "[32,32,32]", "--max_epochs", "1", "--epoch_length", "1"]
    args += ["--val_interval", "1", "--ckpt_dir", str(ckpt), "--log_dir", str(tmp_path / "runs")]
    proc = run_cli([*TORCHRUN, "--config_file", configs, *args], timeout=180)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "training on rank 0 of 2 (gloo backend" in log and "training on rank 1 of 2 (gloo backend" in log
    assert os.path.isfile(ckpt / "model.pt")
    assert glob.glob(str(ckpt / "checkpoint_checkpoint_epoch=1.pt"))


def test_torchrun_inference_gloo(phantoms, tmp_path):
    configs = f"['{config('brats_ssn', 'inference.json')}','{config('brats_ssn', 'multi_gpu_inference.json')}']"
    out = tmp_path / "out"
    args = ["--dataset_dir", phantoms, "--data_list_key", "all", "--output_dir", str(out), "--num_samples", "4"]
    proc = run_cli([*TORCHRUN, "--config_file", configs, *args, "--roi_size", "[32,32,32]"], timeout=180)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "inference on 2 case(s) (rank 0 of 2)" in log and "inference on 2 case(s) (rank 1 of 2)" in log
    cases = [f"BraTS-PHANTOM-{i:05d}-000" for i in range(4)]
    expected = sorted(f"{c}_{k}" for c in cases for k in CASE_FILES) + ["inference_summary.json"]
    assert sorted(os.listdir(out)) == expected  # every case once, no leftovers
    with open(out / "inference_summary.json") as f:
        summary = json.load(f)
    assert [c["case_id"] for c in summary["cases"]] == cases and summary["failed"] == {}
