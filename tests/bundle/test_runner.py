# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

from __future__ import annotations

import json
import os
import shutil

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, NormalizeIntensityd, Orientationd, Spacingd

import monai_probseg.bundle.runner as runner_module
from monai_probseg.bundle import SAVED_OUTPUTS, BundleDatalist, InferenceFailedError, ProbSegInferenceRunner
from monai_probseg.data import write_brats_phantoms
from monai_probseg.inferers import StochasticSlidingWindowInferer
from monai_probseg.metrics import quality_report
from monai_probseg.networks.nets import StochasticSegmentationNetwork

from ..bundles.utils import folder_hash

MODS = ("t1n", "t1c", "t2w", "t2f")
SIZE = 16


def _runner(data, output_dir, **kwargs):
    torch.manual_seed(0)
    net = StochasticSegmentationNetwork(
        3, 4, 4, rank=2, channels=(4, 8), strides=(2,), num_res_units=0, backbone_channels=4
    )
    axes = (("L", "R"), ("P", "A"), ("I", "S"))
    pre = Compose(
        [
            LoadImaged("image", image_only=True),
            EnsureChannelFirstd("image"),
            Orientationd("image", axcodes="RAS", labels=axes),
            Spacingd("image", pixdim=(1.0, 1.0, 1.0)),
            NormalizeIntensityd("image", nonzero=True, channel_wise=True),
        ]
    )
    inferer = StochasticSlidingWindowInferer((SIZE,) * 3, num_samples=4, keep_samples=True, seed=0)
    kwargs.setdefault("progress", False)
    return ProbSegInferenceRunner(net, inferer, data, pre, output_dir, **kwargs)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_brats_phantoms(root, 2, (SIZE,) * 3, num_raters=2, seed=0)
    # case 2: case 0 stored left-right flipped (LAS): the same physical image, another voxel order
    src = root / "BraTS-PHANTOM-00000-000"
    dst = root / "FLIPPED-00000"
    dst.mkdir()
    for name in [*MODS, "seg", "seg-rater1", "seg-rater2"]:
        img = nib.load(str(src / f"BraTS-PHANTOM-00000-000-{name}.nii.gz"))
        flip = np.diag([-1.0, 1.0, 1.0, 1.0])
        flip[0, 3] = SIZE - 1
        out = nib.Nifti1Image(np.asarray(img.dataobj)[::-1].copy(), img.affine @ flip, header=img.header)
        nib.save(out, str(dst / f"FLIPPED-00000-{name}.nii.gz"))
    return root


def test_outputs_in_input_space(dataset, tmp_path):
    before = folder_hash(dataset)
    out = tmp_path / "out"
    result = _runner(BundleDatalist(str(dataset)), out, evaluate=True).run()
    assert folder_hash(dataset) == before
    assert [c["case_id"] for c in result["cases"]] == [
        "BraTS-PHANTOM-00000-000",
        "BraTS-PHANTOM-00001-000",
        "FLIPPED-00000",
    ]
    assert result["failed"] == {}
    for case in result["cases"]:
        cid = case["case_id"]
        t1n = case["inputs"]["image"][0]
        ref, ref_itk = nib.load(t1n), sitk.ReadImage(t1n)
        for key in SAVED_OUTPUTS:
            path = out / f"{cid}_{key}.nii.gz"
            img, itk = nib.load(str(path)), sitk.ReadImage(str(path))
            np.testing.assert_allclose(img.affine, ref.affine, atol=1e-5)
            assert itk.GetOrigin()[:3] == pytest.approx(ref_itk.GetOrigin())
            assert itk.GetSpacing()[:3] == pytest.approx(ref_itk.GetSpacing())
            direction = np.reshape(itk.GetDirection(), (itk.GetDimension(),) * 2)[:3, :3]
            np.testing.assert_allclose(direction, np.reshape(ref_itk.GetDirection(), (3, 3)), atol=1e-6)
            channels = {"prob": 4, "variance": 4, "samples": 4}.get(key)
            assert img.shape == (SIZE,) * 3 + ((channels,) if channels else ())
            assert img.get_data_dtype() == (np.uint8 if key in ("seg", "samples") else np.float32)
        prob = nib.load(str(out / f"{cid}_prob.nii.gz")).get_fdata()
        np.testing.assert_allclose(prob.sum(-1), 1.0, atol=1e-4)
        seg = np.asarray(nib.load(str(out / f"{cid}_seg.nii.gz")).dataobj)
        np.testing.assert_array_equal(seg, prob.argmax(-1))
    # the flipped case is the same physical image: its outputs are the flipped outputs of case 0
    for key in SAVED_OUTPUTS:
        a = nib.load(str(out / f"BraTS-PHANTOM-00000-000_{key}.nii.gz")).get_fdata()
        b = nib.load(str(out / f"FLIPPED-00000_{key}.nii.gz")).get_fdata()
        np.testing.assert_allclose(b, a[::-1], atol=1e-4, err_msg=key)
    assert not [n for n in os.listdir(out) if n.startswith(".")]
    with open(out / "inference_summary.json") as f:
        summary = json.load(f)
    assert summary["num_cases"] == 3 and set(summary["cases"][0]["volumes"]) == {"WT", "TC", "ET"}
    with open(out / "metrics.json") as f:
        metrics = json.load(f)
    assert set(metrics["cases"]) == {c["case_id"] for c in result["cases"]}
    assert {"dice_WT", "hd95_ET", "ged", "hm_iou", "ece"} <= set(metrics["mean"])
    assert os.path.isfile(out / "metrics.csv")


def _bad_dataset(root, tmp):
    """Five cases: one good, then 3 modalities, a missing file, mismatched shapes, a truncated .nii.gz."""
    data = tmp / "bad"
    shutil.copytree(root / "BraTS-PHANTOM-00000-000", data / "GOOD")
    for src in (data / "GOOD").iterdir():
        src.rename(data / "GOOD" / src.name.replace("BraTS-PHANTOM-00000-000", "GOOD"))
    for name in ("THREE", "MISSING", "SHAPE", "CORRUPT"):
        shutil.copytree(data / "GOOD", data / name)
        for src in (data / name).iterdir():
            src.rename(data / name / src.name.replace("GOOD", name))
    os.remove(data / "MISSING" / "MISSING-t1c.nii.gz")
    small = nib.Nifti1Image(
        np.ones((SIZE, SIZE, SIZE - 2), np.float32), nib.load(str(data / "SHAPE" / "SHAPE-t2w.nii.gz")).affine
    )
    nib.save(small, str(data / "SHAPE" / "SHAPE-t2w.nii.gz"))
    corrupt = data / "CORRUPT" / "CORRUPT-t2f.nii.gz"
    corrupt.write_bytes(corrupt.read_bytes()[: len(corrupt.read_bytes()) // 2])
    items = BundleDatalist(str(data)).items()
    three = next(it for it in items if it["case_id"] == "THREE")
    three["image"] = three["image"][:3]  # a datalist listing three modalities
    return data, items


def test_bad_cases_reported_others_written(dataset, tmp_path, caplog):
    data, items = _bad_dataset(dataset, tmp_path)
    before = folder_hash(data)
    out = tmp_path / "out"
    with pytest.raises(InferenceFailedError) as err:
        _runner(items, out, on_failure="raise").run()
    message = str(err.value)
    assert "4 of 5 case(s) failed" in message
    assert "THREE: lists 3 image file(s), expected 4 (t1n, t1c, t2w, t2f)" in message
    assert "MISSING: missing t1c file" in message and "MISSING-t1c.nii.gz" in message
    assert "SHAPE: t2w file 'SHAPE-t2w.nii.gz' has shape (16, 16, 14), expected (16, 16, 16)" in message
    assert "CORRUPT: preprocessing failed: cannot read" in message and "CORRUPT-t2f.nii.gz" in message
    assert "case 'SHAPE' failed" in caplog.text
    assert sorted(os.listdir(out)) == sorted([f"GOOD_{k}.nii.gz" for k in SAVED_OUTPUTS] + ["inference_summary.json"])
    assert folder_hash(data) == before
    with pytest.raises(SystemExit) as exit_err:
        _runner(items[:2], tmp_path / "out2").run()  # default: exit status 1 with the message
    assert "1 of 2 case(s) failed" in str(exit_err.value.code)


def test_no_partial_output_on_failure(dataset, tmp_path, monkeypatch):
    calls = []
    original = runner_module.save_like

    def failing_save(array, reference, path, dtype):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return original(array, reference, path, dtype)

    monkeypatch.setattr(runner_module, "save_like", failing_save)
    items = BundleDatalist(str(dataset)).items()[:1]
    with pytest.raises(InferenceFailedError, match="No space left on device"):
        _runner(items, tmp_path / "out", on_failure="raise").run()
    assert os.listdir(tmp_path / "out") == ["inference_summary.json"]


def test_output_dir_checked_before_any_work(dataset, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    data = BundleDatalist("", phantom_dir=str(tmp_path / "phantoms"), phantom_size=(SIZE,) * 3)
    with pytest.raises(ValueError, match="cannot be created or written to"):
        _runner(data, blocker / "out", on_failure="raise").run()
    assert not (tmp_path / "phantoms").exists()  # nothing generated
    with pytest.raises(SystemExit, match="error: output_dir .* exists and is not a folder"):
        _runner(BundleDatalist(str(dataset)), blocker).run()
    before = folder_hash(dataset)
    case_folder = dataset / "BraTS-PHANTOM-00001-000"
    for target in (dataset, case_folder):
        with pytest.raises(ValueError, match="is an input folder"):
            _runner(BundleDatalist(str(dataset)), target, on_failure="raise").run()
    assert folder_hash(dataset) == before
    with pytest.raises(ValueError, match="outputs must be some of"):
        _runner([], tmp_path, outputs=("seg", "nope"))


def test_plausibility_in_summary(dataset, tmp_path, caplog):
    """An untrained network gives noisy maps: every case is flagged, by name, in the log and the summary."""
    out = tmp_path / "out"
    with caplog.at_level("WARNING", logger="monai_probseg.bundle.runner"):
        result = _runner(BundleDatalist(str(dataset)), out).run()
    with open(out / "inference_summary.json") as f:
        summary = json.load(f)
    for case in summary["cases"]:
        plaus = case["plausibility"]
        assert {"far_entropy_median", "boundary_far_ratio", "high_entropy_fraction"} <= set(plaus)
        assert {"sample_volume_ratio_min", "sample_volume_ratio_max"} <= set(plaus)
        seg = np.asarray(nib.load(str(out / f"{case['case_id']}_seg.nii.gz")).dataobj)
        entropy = nib.load(str(out / f"{case['case_id']}_entropy.nii.gz")).get_fdata()
        brain = np.asarray(nib.load(case["inputs"]["image"][0]).dataobj) != 0
        if not (seg > 0).any():  # nothing predicted: "far" is the whole brain
            assert plaus["far_entropy_median"] == pytest.approx(np.median(entropy[brain]), abs=1e-5)
        assert plaus["high_entropy_fraction"] == pytest.approx((entropy[brain] > 0.5).mean(), abs=1e-6)
    flagged = [c["case_id"] for c in summary["cases"] if c["warnings"]]
    assert summary["implausible"] == result["implausible"] == flagged and flagged
    assert any(flagged[0] in r.getMessage() and "implausible" in r.getMessage() for r in caplog.records)


class _FixedQuality:
    """A quality estimate with known answers: case 0 looks good, every other case poor."""

    def __init__(self):
        self.seen = []

    def __call__(self, case_id, image, outputs):
        self.seen.append((case_id, tuple(image.shape), tuple(outputs["prob"].shape)))
        dice = 0.9 if case_id.endswith("00000-000") else 0.3
        return quality_report(case_id, {"TC": dice, "WT": dice, "ET": dice}, {"mean_entropy": 0.1}, 0.7, "fixed")


def test_quality_reports_ranking_and_evaluation(dataset, tmp_path, caplog):
    items = BundleDatalist(str(dataset)).items()[:2]
    quality = _FixedQuality()
    with caplog.at_level("WARNING", logger="monai_probseg.bundle.runner"):
        result = _runner(items, tmp_path / "out", quality=quality, evaluate=True).run()
    # called in network space (normalised image, maps before inversion), once per case
    assert [s[0] for s in quality.seen] == [it["case_id"] for it in items]
    assert all(s[1][:2] == (1, 4) and s[2][:2] == (1, 4) for s in quality.seen)
    for item in items:
        with open(tmp_path / "out" / f"{item['case_id']}_quality.json") as f:
            assert json.load(f)["quality_model"] == "fixed"
    poor = items[1]["case_id"]
    assert [r["case_id"] for r in result["quality_ranking"]] == [poor, items[0]["case_id"]]  # worst first
    assert result["flagged"] == [poor] and poor in caplog.text and "flagged for review" in caplog.text
    with open(tmp_path / "out" / "metrics.json") as f:
        metrics = json.load(f)
    case = metrics["cases"][poor]
    assert case["predicted_dice_mean"] == pytest.approx(0.3)
    assert case["true_dice_mean"] == pytest.approx(np.mean([case["dice_TC"], case["dice_WT"], case["dice_ET"]]))
    assert set(metrics["quality_prediction"]) >= {"pearson", "spearman", "mae", "auroc", "aurc", "failure_threshold"}

    # a rerun where the poor case fails: its quality report goes with its maps (no stale report)
    broken = dict(items[1], image=[str(tmp_path / "missing-t1n.nii.gz"), *items[1]["image"][1:]])
    _runner([items[0], broken], tmp_path / "out", quality=_FixedQuality(), on_failure="ignore").run()
    assert not os.path.exists(tmp_path / "out" / f"{poor}_quality.json")
    assert os.path.exists(tmp_path / "out" / f"{items[0]['case_id']}_quality.json")
