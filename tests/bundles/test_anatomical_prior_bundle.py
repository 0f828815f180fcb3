# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""brain_anatomical_prior: outputs in the input's space for any spacing, the two training stages, input errors."""

from __future__ import annotations

import json
import os

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import run

from monai_probseg.data.synthetic import anatomy_phantom, write_anatomy_phantoms

from .utils import BUNDLES_DIR, config, root_cause

BUNDLE = "brain_anatomical_prior"
SMALL = {"pixdim": [2.0, 2.0, 2.0], "roi_size": [16, 16, 16], "train_size": [16, 16, 16]}


def _t1_file(path, affine, size=(32, 36, 30), seed=4, scale=873.0) -> str:
    """A skull-stripped T1 phantom stored with ``affine`` (any spacing and orientation) in scanner units."""
    p = anatomy_phantom(size, "t1", seed=seed, family=2)
    nib.save(nib.Nifti1Image((scale * p["image"][0]).astype(np.float32), affine), path)
    return path


def test_inference_writes_tissue_labels_in_the_input_space(tmp_path):
    """An LPS-stored scan with anisotropic voxels and scanner-scale intensities: outputs on its grid, labels 0-3.

    A 96x112x80 phantom stored with 1.5 x 1.4 x 1.6 mm voxels: a brain of adult size at the bundle's own 3 mm grid.
    """
    affine = np.diag([-1.5, -1.4, 1.6, 1.0])
    affine[:3, 3] = [70.0, 75.0, -60.0]
    image = _t1_file(str(tmp_path / "case1_t1.nii.gz"), affine, size=(96, 112, 80))
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"test": [{"image": [image], "case_id": "case1"}]}))
    out = tmp_path / "out"
    run(
        config_file=config(BUNDLE, "inference.json"),
        logging_file=False,
        dataset_dir=str(datalist),
        output_dir=str(out),
        num_samples=3,
        progress=False,
    )
    ref = nib.load(image)
    for key, extra in (("seg", ()), ("prob", (4,)), ("samples", (3,)), ("entropy", ())):
        img = nib.load(out / f"case1_{key}.nii.gz")
        np.testing.assert_allclose(img.affine, ref.affine, atol=1e-5)
        assert img.shape == ref.shape + extra, key
    seg = np.asarray(nib.load(out / "case1_seg.nii.gz").dataobj)
    samples = np.asarray(nib.load(out / "case1_samples.nii.gz").dataobj)
    assert set(np.unique(seg)) <= {0, 1, 2, 3} and set(np.unique(samples)) <= {0, 1, 2, 3}
    assert {1, 2, 3} <= set(np.unique(seg))  # the shipped model finds every tissue
    brain = np.asarray(ref.dataobj) > 0
    assert (seg[~brain] == 0).mean() > 0.9 and (seg[brain] > 0).mean() > 0.9  # air is background
    prob = np.asarray(nib.load(out / "case1_prob.nii.gz").dataobj)
    np.testing.assert_allclose(prob.sum(-1), 1.0, atol=1e-3)


def test_a_scan_that_is_not_skull_stripped_fails_with_one_line(tmp_path):
    image = str(tmp_path / "head_t1.nii.gz")
    p = anatomy_phantom((32, 32, 32), "t1", seed=1, family=2)
    nib.save(nib.Nifti1Image((p["image"][0] + 0.2).astype(np.float32), np.eye(4)), image)  # no air at 0
    with pytest.raises(SystemExit) as info:
        run(
            config_file=config(BUNDLE, "inference.json"),
            logging_file=False,
            dataset_dir=str(_datalist(tmp_path, image)),
            output_dir=str(tmp_path / "out"),
            num_samples=2,
            progress=False,
            **{k: v for k, v in SMALL.items() if k != "train_size"},
        )
    message = str(info.value)
    assert "head_t1.nii.gz" in message and "0.0% of its voxels at 0" in message and "skull-stripped" in message


def _datalist(tmp_path, image):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"test": [{"image": [image], "case_id": "head"}]}))
    return path


def test_train_prior_then_unsupervised_keeps_the_prior_decoder(tmp_path):
    """train_prior.json on label maps only, then train.json on the images with that prior: its decoder is frozen."""
    labels = write_anatomy_phantoms(tmp_path / "labels", 2, (32, 32, 32), (), seed=0, split=(0.5, 0.5, 0.0), family=0)
    prior_dir = tmp_path / "prior"
    common = dict(logging_file=False, max_epochs=1, epoch_length=1, val_interval=1, **SMALL)
    run(
        config_file=config(BUNDLE, "train_prior.json"),
        dataset_dir=labels,
        ckpt_dir=str(prior_dir),
        log_dir=str(tmp_path / "runs_prior"),
        **common,
    )
    assert os.path.isfile(prior_dir / "prior.pt")
    prior_state = torch.load(prior_dir / "prior.pt", map_location="cpu", weights_only=True)

    images = write_anatomy_phantoms(
        tmp_path / "images", 2, (32, 32, 32), ("t1",), seed=0, split=(0.5, 0.5, 0.0), family=1
    )
    seg_dir = tmp_path / "seg"
    run(
        config_file=config(BUNDLE, "train.json"),
        dataset_dir=images,
        ckpt_dir=str(seg_dir),
        log_dir=str(tmp_path / "runs_seg"),
        prior_checkpoint=str(prior_dir / "prior.pt"),
        **common,
    )
    state = torch.load(seg_dir / "checkpoint_checkpoint_epoch=1.pt", map_location="cpu", weights_only=True)["model"]
    decoder = {k: v for k, v in prior_state.items() if k.startswith("decoder.")}
    assert decoder and all(torch.equal(state[k], v) for k, v in decoder.items())  # frozen: bitwise the prior's
    assert any(not torch.equal(state[k], v) for k, v in prior_state.items() if k.startswith("encoder.") and k in state)


def test_train_prior_names_a_label_file_with_foreign_values(tmp_path):
    labels = write_anatomy_phantoms(tmp_path / "labels", 2, (32, 32, 32), (), seed=0, split=(0.5, 0.5, 0.0), family=0)
    with open(labels) as f:
        first = json.load(f)["training"][0]["label"]
    path = os.path.join(os.path.dirname(labels), first)
    img = nib.load(path)
    data = np.asarray(img.dataobj).astype(np.uint8)
    data[data == 3] = 41  # a FreeSurfer-like white-matter label
    nib.save(nib.Nifti1Image(data, img.affine), path)
    with pytest.raises(Exception) as info:
        run(
            config_file=config(BUNDLE, "train_prior.json"),
            logging_file=False,
            dataset_dir=labels,
            ckpt_dir=str(tmp_path / "ckpt"),
            log_dir=str(tmp_path / "runs"),
            max_epochs=1,
            epoch_length=1,
            **SMALL,
        )
    cause = root_cause(info.value)
    assert os.path.basename(path) in str(cause) and "41" in str(cause)


def test_shipped_prior_fits_the_configs():
    models = os.path.join(BUNDLES_DIR, BUNDLE, "models")
    for name in ("model.pt", "prior.pt"):
        assert os.path.getsize(os.path.join(models, name)) < 4 * 2**20
