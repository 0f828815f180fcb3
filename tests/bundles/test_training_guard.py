# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""Training with a bundle's documented command never overwrites the weights it ships."""

from __future__ import annotations

import os

import pytest
import torch
from monai.bundle import ConfigParser, run

from monai_probseg.bundle import check_checkpoint_dir
from monai_probseg.data import write_ambiguous_lesions_2d, write_brats_phantoms
from monai_probseg.data.synthetic import write_anatomy_phantoms

from .utils import BUNDLES_DIR, config, folder_hash, root_cause

BUNDLES = ("brats_ssn", "brats_prob_unet", "brats_diffusion", "lesions2d_prob_unet", "brain_anatomical_prior")


def _small(bundle: str, root) -> tuple[str, dict]:
    if bundle.startswith("lesions2d"):
        return write_ambiguous_lesions_2d(root, 2, (32, 32), 2, seed=3, split=(0.5, 0.5, 0.0)), {"roi_size": [32, 32]}
    if bundle == "brain_anatomical_prior":
        path = write_anatomy_phantoms(root, 2, (32, 32, 32), ("t1",), seed=3, split=(0.5, 0.5, 0.0), family=1)
        return path, {"pixdim": [2.0, 2.0, 2.0], "train_size": [16, 16, 16]}
    path = write_brats_phantoms(root, 2, (32, 32, 32), 2, seed=3, split=(0.5, 0.5, 0.0))
    return path, {"roi_size": [32, 32, 32], "val_num_samples": 2}


@pytest.mark.parametrize("bundle", BUNDLES)
def test_documented_training_keeps_shipped_weights(bundle, tmp_path, monkeypatch):
    models = os.path.join(BUNDLES_DIR, bundle, "models")
    before = folder_hash(models)
    datalist, overrides = _small(bundle, tmp_path / "data")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # the documented command, run from the user's folder: no --ckpt_dir, no --log_dir
    run(
        config_file=config(bundle, "train.json"),
        logging_file=False,
        dataset_dir=datalist,
        max_epochs=1,
        epoch_length=1,
        val_interval=1,
        **overrides,
    )
    assert folder_hash(models) == before
    assert os.path.isfile(work / "outputs" / f"{bundle}_train" / "models" / "model.pt")
    assert os.listdir(work / "outputs" / f"{bundle}_train" / "runs")  # TensorBoard logs beside it


@pytest.mark.parametrize("bundle", ["brats_ssn", "lesions2d_prob_unet"])
def test_training_into_models_is_refused(bundle, tmp_path):
    models = os.path.join(BUNDLES_DIR, bundle, "models")
    before = folder_hash(models)
    datalist, overrides = _small(bundle, tmp_path / "data")
    with pytest.raises(Exception) as info:  # MONAI wraps the config expression's ValueError in a RuntimeError
        run(
            config_file=config(bundle, "train.json"),
            logging_file=False,
            dataset_dir=datalist,
            ckpt_dir=models,
            log_dir=str(tmp_path / "runs"),
            max_epochs=1,
            epoch_length=1,
            **overrides,
        )
    cause = root_cause(info.value)
    assert isinstance(cause, ValueError) and "--overwrite_shipped True" in str(cause)
    assert folder_hash(models) == before
    assert not (tmp_path / "runs").exists()  # refused before anything was written


def test_check_checkpoint_dir(tmp_path):
    bundle = tmp_path / "b"
    (bundle / "models").mkdir(parents=True)
    assert check_checkpoint_dir(tmp_path / "out", bundle) == os.path.realpath(tmp_path / "out")
    for inside in (bundle / "models", bundle / "models" / "sub", bundle / "x" / ".." / "models"):
        with pytest.raises(ValueError, match="shipped models folder"):
            check_checkpoint_dir(inside, bundle)
    assert check_checkpoint_dir(bundle / "models", bundle, overwrite_shipped=True).endswith("models")
    assert check_checkpoint_dir(bundle / "models", bundle, overwrite_shipped="True").endswith("models")
    assert check_checkpoint_dir(bundle / "models_old", bundle)  # a sibling whose name starts alike is fine


@pytest.mark.parametrize("bundle", BUNDLES)
def test_init_checkpoint_starts_from_shipped_weights(bundle, tmp_path):
    """``--init_checkpoint`` fine-tunes from a weights file (e.g. the shipped model) instead of a random start."""
    parser = ConfigParser()
    parser.read_config(config(bundle, "train.json"))
    shipped = os.path.join(BUNDLES_DIR, bundle, "models", "model.pt")
    parser.update({"init_checkpoint": shipped, "ckpt_dir": str(tmp_path / "ckpt"), "device": "$torch.device('cpu')"})
    parser.get_parsed_content("initialize")
    network = parser.get_parsed_content("network")
    expected = torch.load(shipped, map_location="cpu", weights_only=True)
    got = network.state_dict()
    assert set(got) == set(expected)
    assert all(torch.equal(got[k], expected[k]) for k in expected)

    parser = ConfigParser()
    parser.read_config(config(bundle, "train.json"))
    parser.update({"init_checkpoint": str(tmp_path / "missing.pt"), "device": "$torch.device('cpu')"})
    with pytest.raises(Exception) as info:
        parser.get_parsed_content("initialize")
    cause = root_cause(info.value)
    assert "missing.pt" in str(cause)


@pytest.mark.parametrize("bundle", ["brats_ssn", "lesions2d_prob_unet"])
def test_resume_without_checkpoints_names_the_folder(bundle, tmp_path):
    datalist, overrides = _small(bundle, tmp_path / "data")
    with pytest.raises(Exception) as info:
        run(
            config_file=config(bundle, "train.json"),
            logging_file=False,
            dataset_dir=datalist,
            ckpt_dir=str(tmp_path / "empty"),
            log_dir=str(tmp_path / "runs"),
            resume=True,
            max_epochs=1,
            epoch_length=1,
            **overrides,
        )
    cause = root_cause(info.value)
    assert "--resume" in str(cause) and "empty" in str(cause)
