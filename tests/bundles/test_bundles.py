# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""Every bundle: metadata, network I/O, embedded weights, inference on small phantoms, one training iteration."""

from __future__ import annotations

import glob
import json
import os
import shutil

import pytest
import torch
from monai.bundle import ConfigParser, run, verify_metadata, verify_net_in_out

from monai_probseg.data import write_ambiguous_lesions_2d, write_brats_phantoms
from monai_probseg.data.synthetic import write_anatomy_phantoms
from monai_probseg.metrics import QUALITY_REPORT_KEYS

from .utils import BUNDLES_DIR, SCHEMA, check_outputs, config

BUNDLES = sorted(d for d in os.listdir(BUNDLES_DIR) if os.path.isfile(config(d, "metadata.json")))
FILES = ["configs/metadata.json", "configs/train.json", "configs/evaluate.json", "configs/inference.json"]
FILES += ["configs/multi_gpu_train.json", "configs/logging.conf", "docs/README.md", "LICENSE", "models/model.pt"]


def _small_data(bundle: str, root) -> tuple[str, dict]:
    """A 2-case data set of the bundle's kind and the config overrides that make a run small."""
    if bundle.startswith("lesions2d"):
        path = write_ambiguous_lesions_2d(root, 2, (32, 32), 2, seed=3, split=(0.5, 0.5, 0.0))
        return path, {"roi_size": [32, 32]}
    if bundle == "brain_anatomical_prior":  # 1 mm T1 phantoms, resampled to 2 mm: 16^3 voxels for the network
        path = write_anatomy_phantoms(root, 2, (32, 32, 32), ("t1",), seed=3, split=(0.5, 0.5, 0.0), family=2)
        return path, {"pixdim": [2.0, 2.0, 2.0], "roi_size": [16, 16, 16], "train_size": [16, 16, 16]}
    path = write_brats_phantoms(root, 2, (32, 32, 32), 2, seed=3, split=(0.5, 0.5, 0.0))
    return path, {"roi_size": [32, 32, 32]}


def test_bundles_found():
    assert {"brats_ssn", "brats_prob_unet", "brats_diffusion", "lesions2d_prob_unet"} <= set(BUNDLES)


@pytest.mark.parametrize("bundle", BUNDLES)
def test_layout_and_metadata(bundle, tmp_path):
    for name in FILES:
        assert os.path.isfile(os.path.join(BUNDLES_DIR, bundle, name)), name
    size_mb = os.path.getsize(os.path.join(BUNDLES_DIR, bundle, "models", "model.pt")) / 2**20
    assert size_mb < 4.0, f"embedded weights are {size_mb:.1f} MB"
    with open(os.path.join(BUNDLES_DIR, bundle, "LICENSE")) as f:
        assert "Apache License" in f.read()
    with open(config(bundle, "metadata.json")) as f:
        assert json.load(f)["name"] == bundle


@pytest.mark.parametrize("bundle", BUNDLES)
def test_verify_metadata_offline(bundle, tmp_path):
    if not os.path.isfile(SCHEMA):
        message = f"the bundle metadata schema is not at {os.path.normpath(SCHEMA)} (the project's shared/ folder)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message + ": CI must have it.")
        pytest.skip(message)
    schema = tmp_path / "schema.json"
    shutil.copy(SCHEMA, schema)  # an existing file is not downloaded again: the check runs offline
    verify_metadata(meta_file=config(bundle, "metadata.json"), filepath=str(schema))


@pytest.mark.parametrize("bundle", BUNDLES)
def test_net_in_out_and_weights(bundle):
    meta, infer = config(bundle, "metadata.json"), config(bundle, "inference.json")
    verify_net_in_out(net_id="network_def", meta_file=meta, config_file=infer, device="cpu", n=2)
    parser = ConfigParser()
    parser.read_config(infer)
    net = parser.get_parsed_content("network_def")
    state = torch.load(os.path.join(BUNDLES_DIR, bundle, "models", "model.pt"), map_location="cpu", weights_only=True)
    net.load_state_dict(state)  # the embedded weights fit the inference network exactly


@pytest.mark.parametrize("bundle", BUNDLES)
def test_inference_small_phantoms(bundle, tmp_path):
    datalist, overrides = _small_data(bundle, tmp_path / "data")
    out = tmp_path / "out"
    run(
        config_file=config(bundle, "inference.json"),
        logging_file=False,
        dataset_dir=datalist,
        output_dir=str(out),
        num_samples=4,
        progress=False,
        **overrides,
    )
    with open(out / "inference_summary.json") as f:
        summary = json.load(f)
    assert len(summary["cases"]) == 2 and summary["failed"] == {}
    num_classes = ConfigParser.load_config_file(config(bundle, "inference.json"))["num_classes"]
    regions = {"brain_anatomical_prior": ("CSF", "GM", "WM")}.get(bundle, ("TC", "WT", "ET"))
    regions = ("lesion",) if bundle.startswith("lesions2d") else regions
    for case in summary["cases"]:
        check_outputs(out, case["case_id"], case["inputs"]["image"][0], num_samples=4, num_classes=num_classes)
        with open(out / f"{case['case_id']}_quality.json") as f:  # DeVries & Taylor stage 2, next to the maps
            quality = json.load(f)
        assert list(quality)[: len(QUALITY_REPORT_KEYS)] == list(QUALITY_REPORT_KEYS)
        assert quality["case_id"] == case["case_id"] and tuple(quality["predicted_dice"]) == regions
        assert all(0.0 <= v <= 1.0 for v in quality["predicted_dice"].values())
        mean = sum(quality["predicted_dice"].values()) / len(regions)
        assert abs(quality["predicted_dice_mean"] - mean) < 1e-9
        assert quality["failure"] == (mean < quality["failure_threshold"]) or quality.get("out_of_distribution")
        assert {"mean_entropy", "sample_dice_agreement"} <= set(quality["scores"])
        assert quality["quality_model"] == (
            "SegmentationQualityNet" if bundle in ("brats_ssn", "brats_prob_unet") else "sample_dice_agreement"
        )
    ranking = [r["predicted_dice_mean"] for r in summary["quality_ranking"]]
    assert ranking == sorted(ranking) and len(ranking) == 2  # worst first
    assert summary["flagged"] == [r["case_id"] for r in summary["quality_ranking"] if r["failure"]]


@pytest.mark.parametrize("bundle", BUNDLES)
def test_train_one_iteration_and_resume(bundle, tmp_path):
    datalist, overrides = _small_data(bundle, tmp_path / "data")
    ckpt = tmp_path / "ckpt"
    args = dict(
        config_file=config(bundle, "train.json"),
        logging_file=False,
        dataset_dir=datalist,
        ckpt_dir=str(ckpt),
        log_dir=str(tmp_path / "runs"),
        max_epochs=1,
        epoch_length=1,
        val_interval=1,
        **overrides,
    )
    run(**args)
    assert os.path.isfile(ckpt / "model.pt")  # the best validation metric's weights
    assert [os.path.basename(p) for p in glob.glob(str(ckpt / "checkpoint*.pt"))] == [
        "checkpoint_checkpoint_epoch=1.pt"
    ]
    assert glob.glob(str(tmp_path / "runs" / "events.out.tfevents.*"))
    run(**{**args, "max_epochs": 2, "resume": True})  # continues at epoch 2
    # a fresh run would have replaced epoch 1's checkpoint; the resumed one trained epoch 2 only, next to it
    saved = sorted(os.path.basename(p) for p in glob.glob(str(ckpt / "checkpoint*.pt")))
    assert saved == ["checkpoint_checkpoint_epoch=1.pt", "checkpoint_checkpoint_epoch=2.pt"]
    state = torch.load(ckpt / "checkpoint_checkpoint_epoch=2.pt", map_location="cpu", weights_only=True)
    assert state["trainer"]["iteration"] == 2 and state["trainer"]["max_epochs"] == 2


def test_ssn_recipe_options():
    """brats_ssn's train config: the shipped recipe (mean cross-entropy 1, covariance inside the brain), and
    ``--mean_ce_weight 0`` gives the paper's loss alone."""
    parser = ConfigParser()
    parser.read_config(config("brats_ssn", "train.json"))
    assert parser.get_parsed_content("loss").mean_ce_weight == 1.0
    assert parser.get_parsed_content("network_def").roi_from_image
    parser = ConfigParser()
    parser.read_config(config("brats_ssn", "train.json"))
    parser["mean_ce_weight"] = 0.0
    assert parser.get_parsed_content("loss").mean_ce_weight == 0.0
