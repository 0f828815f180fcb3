# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""Bad-input matrix of the bundles (issue 15): every bad input gives a clear message naming the thing, the right exit
status, no output outside ``output_dir`` and no stale output under a final name.

Most cases run the brats_ssn bundle in-process (``monai.bundle.run``, 32^3 phantoms, 2 samples: the behaviour is the
runner's and shared by every bundle); a few run the command line to check the exit status and the one-line error.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.bundle import run as bundle_run

from monai_probseg.bundle import (
    BundleDatalist,
    CaseError,
    ConfigError,
    check_case_id,
    check_inference_config,
    check_label_values,
    evaluate_case,
    find_non_finite,
    install_concise_errors,
    latest_checkpoint,
    load_weights,
    read_geometry,
    save_like,
    validation_sampler,
)
from monai_probseg.bundle.validation import DEBUG_ENV
from monai_probseg.data import find_image, write_brats_phantoms
from monai_probseg.utils import atomic_writes, remove_stale_partials

from .utils import CASE_FILES, OUTPUT_KEYS, config, run_cli

pytestmark = pytest.mark.filterwarnings("ignore:parsing config_file", "ignore:Detected deprecated name")

MODS = ("t1n", "t1c", "t2w", "t2f")
SIZE = 32
CASES = [f"BraTS-PHANTOM-{i:05d}-000" for i in range(2)]
INFERENCE = config("brats_ssn", "inference.json")
EVALUATE = [INFERENCE, config("brats_ssn", "evaluate.json")]


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantoms")
    write_brats_phantoms(root, 2, (SIZE,) * 3, num_raters=2, seed=0, split=(1.0, 0.0, 0.0))
    return root


@pytest.fixture
def data(phantoms, tmp_path):
    """A fresh copy of the phantoms (cases can be damaged) and an output folder next to it."""
    root = tmp_path / "data"
    shutil.copytree(phantoms, root)
    return root


def _run(dataset_dir, output_dir, config_file=INFERENCE, **override):
    override = {"num_samples": 2, "progress": False, **override}
    bundle_run(config_file=config_file, dataset_dir=str(dataset_dir), output_dir=str(output_dir), **override)


def _summary(output_dir):
    with open(os.path.join(output_dir, "inference_summary.json")) as f:
        return json.load(f)


def _status(output_dir):
    return {c["case_id"]: c for c in _summary(output_dir)["case_status"]}


def _case(root, i=0):
    return root / CASES[i], CASES[i]


def _tree(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, files in os.walk(root) for f in files)


def _outside(tmp_path, output_dir, before):
    """Files written under tmp_path outside output_dir since ``before``."""
    out = os.path.relpath(output_dir, tmp_path)
    return [p for p in _tree(tmp_path) if p not in before and not p.startswith(out + os.sep)]


def _chain(exc):
    while exc is not None:
        yield exc
        exc = exc.__cause__ or exc.__context__


def _user_error(excinfo):
    """The ConfigError/CaseError that monai.bundle wrapped."""
    return next(e for e in _chain(excinfo.value) if isinstance(e, (ConfigError, CaseError)))


def _write_datalist(path, items):
    with open(path, "w") as f:
        json.dump({"test": items}, f)
    return path


def _items(root):
    return [{"case_id": c, "image": [str(root / c / f"{c}-{m}.nii.gz") for m in MODS]} for c in CASES]


# ------------------------------------------------------------------------------------------------ 1. case ids


@pytest.mark.parametrize(
    "case_id, shown",
    [
        ("ABSOLUTE", "case_id '/"),
        ("a/b", "case_id 'a/b'"),
        ("..", "case_id '..'"),
        ("../escape", "case_id '../escape'"),
        (".hidden", "case_id '.hidden'"),
        ("", None),  # empty: derived from the file name, which is fine
    ],
)
def test_case_id_in_datalist(data, tmp_path, case_id, shown):
    escape = tmp_path / "escape" / "case"
    case_id = str(escape) if case_id == "ABSOLUTE" else case_id
    items = _items(data)[:1]
    items[0]["case_id"] = case_id
    datalist = _write_datalist(tmp_path / "list.json", items)
    before = _tree(tmp_path)
    out = tmp_path / "out"
    if shown is None:
        _run(datalist, out)
        assert _status(out)[CASES[0]]["status"] == "written"
        return
    with pytest.raises(SystemExit) as excinfo:
        _run(datalist, out)
    message = str(excinfo.value.code)
    assert shown in message and "list.json" in message and "test[0]" in message and "\n" not in message
    assert not out.exists() and not escape.parent.exists() and _outside(tmp_path, out, before) == []


def test_duplicate_case_ids(data, tmp_path):
    items = _items(data)
    items[1]["case_id"] = items[0]["case_id"]
    with pytest.raises(ConfigError, match=f"case_id '{CASES[0]}' is used by items 0 and 1"):
        BundleDatalist(str(_write_datalist(tmp_path / "dup.json", items))).items()


@pytest.mark.parametrize("case_id", ["/abs", "x\\y", "a/../b", 3.5, None])
def test_check_case_id_function(case_id):
    with pytest.raises(ConfigError, match="is not a plain name"):
        check_case_id(case_id, "data[0]")


# ------------------------------------------------------------------------------------------------ 2. folder scans


def test_folder_scan_runs_every_case(data, tmp_path):
    case_dir, cid = _case(data, 1)
    for f in case_dir.glob(f"{cid}-seg*"):
        f.unlink()  # case 1 is unlabelled now, case 0 labelled: the default data_list_key "test" must run both
    out = tmp_path / "out"
    _run(data, out)
    summary = _summary(out)
    assert [c["status"] for c in summary["case_status"]] == ["written", "written"]
    assert summary["selection"] == {"source": "folder", "list": "all", "num_cases": 2, "not_run": {}}


def test_datalist_lists_not_run_are_reported(data, tmp_path):
    items = _items(data)
    path = tmp_path / "list.json"
    with open(path, "w") as f:
        json.dump({"training": [items[0]], "test": [items[1]]}, f)
    out = tmp_path / "out"
    _run(path, out)
    selection = _summary(out)["selection"]
    assert selection["list"] == "test" and selection["not_run"] == {"training": 1}


# ------------------------------------------------------------------------------------------------ 3. label values


@pytest.mark.parametrize("bad, dtype", [(4, np.uint8), (255, np.uint8), (-1, np.int16)])
def test_evaluate_label_outside_the_set(data, tmp_path, bad, dtype):
    case_dir, cid = _case(data)
    seg_path = case_dir / f"{cid}-seg.nii.gz"
    seg = nib.load(seg_path)
    arr = np.asarray(seg.dataobj).astype(dtype)
    arr[arr == 3] = bad
    arr[0, 0, 0] = bad
    nib.save(nib.Nifti1Image(arr, seg.affine, seg.header), seg_path)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as excinfo:
        _run(data, out, config_file=EVALUATE, num_phantoms=2)
    message = str(excinfo.value.code)
    assert f"{cid}-seg.nii.gz' has values [" in message and "expected labels 0, 1, 2, 3" in message
    assert str(bad) in message.split("has values [")[1].split("]")[0].split(", ")
    assert ("MapLabelValued" in message) == (bad == 4)
    status = _status(out)
    assert status[cid]["status"] == "evaluation_failed" and status[CASES[1]]["status"] == "written"
    assert all((out / f"{cid}_{k}.nii.gz").is_file() for k in OUTPUT_KEYS)  # its maps are kept


def test_evaluate_case_and_check_label_values():
    seg = torch.zeros(4, 4, 4, dtype=torch.long)
    prob = torch.full((4, 4, 4, 4), 0.25)
    label = seg.clone()
    label[0, 0, 0] = 4
    with pytest.raises(ValueError, match=r"label has values \[0, 4\], expected labels 0, 1, 2, 3.*MapLabelValued"):
        evaluate_case(seg, prob, seg[None], label, None, num_classes=4)
    with pytest.raises(ValueError, match=r"raters has values \[-1\], expected labels 0, 1, 2, 3\.$"):
        evaluate_case(seg, prob, seg[None], None, torch.full((1, 4, 4, 4), -1), num_classes=4)
    check_label_values(np.arange(4), 4, "x")  # fine


# ------------------------------------------------------------------------------------------------ 4. stale outputs


def test_failed_rerun_removes_earlier_outputs(data, tmp_path):
    out = tmp_path / "out"
    _run(data, out)
    case_dir, cid = _case(data)
    (case_dir / f"{cid}-t2w.nii.gz").write_bytes(b"not a nifti")
    stale = out / ".partial-999999999-abc"  # left by a killed run (no such process)
    stale.mkdir()
    (stale / f"{cid}_seg.nii.gz").write_bytes(b"half")
    with pytest.raises(SystemExit) as excinfo:
        _run(data, out)
    assert excinfo.value.code != 0 and f"{cid}-t2w.nii.gz" in str(excinfo.value.code)
    status = _status(out)
    assert status[cid]["status"] == "failed" and len(status[cid]["removed_stale"]) == len(CASE_FILES)
    assert not any(p.name.startswith(cid) for p in out.iterdir()) and not stale.exists()
    assert status[CASES[1]]["status"] == "written" and status[CASES[1]]["overwritten"]
    assert _summary(out)["overwritten"] == [CASES[1]]


def test_stale_partials_of_running_processes_are_kept(tmp_path):
    alive = tmp_path / f".partial-{os.getpid()}-x"
    dead = tmp_path / ".partial-999999999-y"
    legacy = tmp_path / ".partial-zzz"
    for d in (alive, dead, legacy):
        d.mkdir()
    assert sorted(remove_stale_partials(tmp_path)) == sorted([str(dead), str(legacy)])
    assert alive.exists()
    with atomic_writes(tmp_path) as staged:
        path = staged("a.txt")
        assert os.path.basename(os.path.dirname(path)).startswith(f".partial-{os.getpid()}-")
        with open(path, "w") as f:
            f.write("a")
        with pytest.raises(ValueError, match="plain file name"):
            staged("../a.txt")


def test_evaluate_skips_unlabelled_and_removes_its_old_outputs(data, tmp_path):
    out = tmp_path / "out"
    _run(data, out)
    case_dir, cid = _case(data, 1)
    for f in case_dir.glob(f"{cid}-seg*"):
        f.unlink()
    _run(data, out, config_file=EVALUATE)
    status = _status(out)
    assert status[cid]["status"] == "skipped" and "no label" in status[cid]["message"]
    assert not any(p.name.startswith(cid) for p in out.iterdir())
    with open(out / "metrics.json") as f:
        assert list(json.load(f)["skipped"]) == [cid]


# ------------------------------------------------------------------------------------------------ 5. headers


def _oblique(path, qform_only=False):
    """Replace a case file by an oblique uint8 NIfTI whose qform (rotation) differs from its sform (shear)."""
    img = nib.load(path)
    arr = np.clip(np.asarray(img.dataobj), 0, None)
    arr = (255 * arr / max(float(arr.max()), 1e-6)).astype(np.uint8)
    angle = np.deg2rad(12)
    rot = np.eye(4)
    rot[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    rot[:3, 3] = (-10.0, 4.0, 2.5)
    out = nib.Nifti1Image(arr, None)
    out.set_qform(rot, code=1)
    sform = rot.copy()  # another rotation and shifted by tenths of a mm: what a registration tool may write
    angle = np.deg2rad(13)
    sform[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    sform[:3, 3] += 0.3
    out.set_sform(None if qform_only else sform, code=0 if qform_only else 2)
    nib.save(out, path)
    return nib.load(path)


@pytest.mark.parametrize("qform_only", [False, True])
def test_outputs_keep_qform_and_sform(data, tmp_path, qform_only):
    case_dir, cid = _case(data)
    refs = [_oblique(case_dir / f"{cid}-{m}.nii.gz", qform_only) for m in MODS]
    for extra in case_dir.glob(f"{cid}-[sb]*"):  # segmentation, raters, brain mask: in another space now
        extra.unlink()
    out = tmp_path / "out"
    _run(data, out)
    ref = refs[0].header
    for key in OUTPUT_KEYS:
        hdr = nib.load(out / f"{cid}_{key}.nii.gz").header
        assert int(hdr["qform_code"]) == int(ref["qform_code"]) and int(hdr["sform_code"]) == int(ref["sform_code"])
        np.testing.assert_allclose(hdr.get_qform(), ref.get_qform(), atol=1e-6, err_msg=key)
        np.testing.assert_allclose(hdr.get_sform(), ref.get_sform(), atol=1e-6, err_msg=key)
    assert (int(ref["sform_code"]) == 0) == qform_only


def test_save_like_sform_only(tmp_path):
    ref = nib.Nifti1Image(np.zeros((4, 5, 6), np.float32), np.diag([2.0, 1.0, 0.5, 1.0]))
    ref.set_qform(None, code=0)
    path = save_like(np.ones((4, 5, 6, 3)), ref, str(tmp_path / "x.nii.gz"), np.float32)
    hdr = nib.load(path).header
    assert int(hdr["qform_code"]) == 0 and int(hdr["sform_code"]) == 2 and hdr.get_zooms() == (2.0, 1.0, 0.5, 1.0)
    with pytest.raises(ValueError, match=r"does not match the input's spatial shape \(4, 5, 6\)"):
        save_like(np.ones((4, 5, 7)), ref, str(tmp_path / "y.nii.gz"), np.float32)


# ------------------------------------------------------------------------------------------------ 6. NaN / Inf


@pytest.mark.parametrize("modality, values", [("t2f", (np.nan,) * 5), ("t1c", (np.inf, -np.inf, np.nan))])
def test_non_finite_counted_raw(data, tmp_path, modality, values):
    case_dir, cid = _case(data)
    path = case_dir / f"{cid}-{modality}.nii.gz"
    img = nib.load(path)
    arr = np.asarray(img.dataobj).astype(np.float32)
    arr[np.unravel_index(np.arange(len(values)), arr.shape)] = values
    nib.save(nib.Nifti1Image(arr, img.affine, img.header), path)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as excinfo:
        _run(data, out)
    num_nan = sum(np.isnan(v) for v in values)
    expected = f"{modality} file '{cid}-{modality}.nii.gz' has {num_nan} NaN and {len(values) - num_nan} Inf voxel(s)"
    assert expected in str(excinfo.value.code)
    assert _status(out)[cid]["status"] == "failed" and _status(out)[CASES[1]]["status"] == "written"
    assert find_non_finite([str(path)], [modality]).startswith(expected)


# ------------------------------------------------------------------------------------------------ 7. config errors


@pytest.mark.parametrize(
    "override, match",
    [
        ({"num_samples": 0}, "--num_samples 0: expected a positive integer"),
        ({"num_samples": -3}, "--num_samples -3: expected a positive integer"),
        ({"num_samples": "abc"}, "--num_samples 'abc': expected a positive integer"),
        ({"sample_batch_size": 0}, "--sample_batch_size 0"),
        ({"checkpoint": "MISSING"}, "does not exist: expected a .pt file"),
        ({"output_dir": ""}, "--output_dir is empty"),
        ({"device": "cuda:99"}, "--device 'cuda:99'"),
    ],
)
def test_config_errors_in_process(data, tmp_path, override, match):
    if override.get("checkpoint") == "MISSING":
        override["checkpoint"] = str(tmp_path / "nothing.pt")
    out = override.pop("output_dir", tmp_path / "out")
    with pytest.raises(RuntimeError) as excinfo:  # monai.bundle wraps it; the command line prints it alone
        _run(data, out, **override)
    assert match in str(_user_error(excinfo))
    assert not (tmp_path / "out").exists()


def test_device_cuda_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("CUDA is available")
    with pytest.raises(ConfigError, match="--device 'cuda': CUDA is not available on this machine"):
        check_inference_config(device="cuda")
    with pytest.raises(ConfigError, match="--device 'gpu0'"):
        check_inference_config(device="gpu0")


def test_foreign_checkpoint(data, tmp_path):
    foreign = tmp_path / "foreign.pt"
    torch.save({"model": torch.nn.Linear(2, 2).state_dict()}, foreign)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as excinfo:
        _run(data, out, checkpoint=str(foreign))
    message = str(excinfo.value.code)
    assert "foreign.pt' do not fit the network StochasticSegmentationNetwork" in message and "\n" not in message
    assert "2 (weight, bias) unexpected" in message and not out.exists()
    with pytest.raises(RuntimeError, match="cannot be read as torch weights"):
        (tmp_path / "junk.pt").write_bytes(b"junk")
        load_weights(torch.nn.Linear(2, 2), tmp_path / "junk.pt")


def test_resume_with_empty_ckpt_dir(tmp_path):
    with pytest.raises(ConfigError, match=r"--resume: ckpt_dir '.*empty' holds no file matching 'checkpoint\*.pt'"):
        (tmp_path / "empty").mkdir()
        latest_checkpoint(tmp_path / "empty", required=True)
    with pytest.raises(ConfigError, match="does not exist"):
        latest_checkpoint(tmp_path / "missing", required=True)
    assert latest_checkpoint(tmp_path / "empty") is None  # not resuming: nothing to load


def test_output_dir_is_a_file(data, tmp_path):
    target = tmp_path / "a_file"
    target.write_text("keep me")
    with pytest.raises(RuntimeError) as excinfo:
        _run(data, target)
    assert "exists and is not a folder" in str(_user_error(excinfo)) and target.read_text(encoding="utf-8") == "keep me"


# the command line: exit status and one line, no traceback, no output folder (a few: each starts a Python)


def _one_line_error(proc):
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return errors[0]


def test_cli_num_samples_zero(tmp_path):
    out = tmp_path / "out"
    proc = run_cli(["monai.bundle", "run", "--config_file", INFERENCE, "--num_samples", "0", "--output_dir", str(out)])
    assert "--num_samples 0: expected a positive integer" in _one_line_error(proc)
    assert not out.exists()


def test_cli_duplicate_case_ids(data, tmp_path):
    items = _items(data)
    items[1]["case_id"] = items[0]["case_id"]
    datalist = str(_write_datalist(tmp_path / "dup.json", items))
    out = tmp_path / "out"
    args = ["monai.bundle", "run", "--config_file", INFERENCE, "--dataset_dir", datalist, "--output_dir", str(out)]
    line = _one_line_error(run_cli(args))
    assert f"case_id '{CASES[0]}' is used by items 0 and 1" in line and "dup.json" in line
    assert not out.exists()


def test_concise_errors_hook(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(sys, "excepthook", lambda *args: calls.append(args))
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    monkeypatch.setattr(sys, "argv", ["monai/bundle/__main__.py", "run"])
    assert install_concise_errors(force=True)
    try:
        try:
            raise ConfigError("--num_samples 0: expected a positive integer.")
        except ConfigError as e:
            raise RuntimeError("Failed to evaluate\n many lines") from e
    except RuntimeError as e:
        wrapped = e
    sys.excepthook(RuntimeError, wrapped, wrapped.__traceback__)
    err = capsys.readouterr().err
    assert err.startswith("error: --num_samples 0: expected a positive integer.") and err.count("\n") == 1
    assert calls == []
    other = KeyError("a bug")
    sys.excepthook(KeyError, other, None)  # not a user error: the full traceback of the previous hook
    monkeypatch.setattr(sys, "argv", ["monai/bundle/__main__.py", "run", "--debug", "True"])
    sys.excepthook(RuntimeError, wrapped, None)  # --debug True: the full traceback too
    assert [c[1] for c in calls] == [other, wrapped]


# ------------------------------------------------------------------------------------------------ 8. resampling


def test_degenerate_resampling(data, tmp_path):
    case_dir, cid = _case(data)
    for m in MODS:
        path = case_dir / f"{cid}-{m}.nii.gz"
        img = nib.load(path)
        affine = img.affine.copy()
        affine[:, 2] *= 0.02  # 0.02 mm slices: 32 of them resample to two 1 mm voxels
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj), affine), path)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as excinfo:
        _run(data, out)
    message = str(excinfo.value.code)
    assert f"'{cid}-t1n.nii.gz' (shape (32, 32, 32), voxel size (1.0, 1.0, 0.02) mm)" in message
    assert "collapses to 2 voxel(s)" in message and _status(out)[cid]["status"] == "failed"


# ------------------------------------------------------------------------------------------------ 9. distributed


@pytest.mark.parametrize("num_cases, expected", [(1, [[0], [0]]), (3, [[0, 2], [1]])])
def test_validation_sampler_fewer_cases_than_ranks(num_cases, expected):
    assert [list(validation_sampler(list(range(num_cases)), num_replicas=2, rank=r)) for r in (0, 1)] == expected


# ------------------------------------------------------------------------------------------------ 12. formats


def _write_dicom_series(image, folder):
    """Write a 3D SimpleITK image as a DICOM series (one file per slice, int16) in ``folder``."""
    os.makedirs(folder)
    image = sitk.Cast(sitk.RescaleIntensity(image, 0, 1000), sitk.sitkInt16)
    direction = image.GetDirection()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for z in range(image.GetDepth()):
        s = image[:, :, z]
        s.SetMetaData("0008|0060", "MR")
        s.SetMetaData("0020|000d", "1.2.826.0.1.3680043.2.1125.1")
        s.SetMetaData("0020|000e", "1.2.826.0.1.3680043.2.1125.1.1")
        s.SetMetaData("0020|0037", "\\".join(str(direction[i]) for i in (0, 3, 6, 1, 4, 7)))
        s.SetMetaData("0020|0032", "\\".join(map(str, image.TransformIndexToPhysicalPoint((0, 0, z)))))
        s.SetMetaData("0020|0013", str(z + 1))
        s.SetMetaData("0018|0050", str(image.GetSpacing()[2]))
        writer.SetFileName(os.path.join(folder, f"{z:03d}.dcm"))
        writer.Execute(s)


@pytest.mark.parametrize("fmt", [".nrrd", ".mha", "dicom"])
def test_itk_formats(data, tmp_path, fmt):
    case_dir, cid = _case(data)
    direction = (0.98, -0.199, 0.0, 0.199, 0.98, 0.0, 0.0, 0.0, 1.0)
    norm = np.linalg.norm(np.reshape(direction, (3, 3)), axis=0)
    direction = tuple((np.reshape(direction, (3, 3)) / norm).ravel())
    for f in case_dir.glob(f"{cid}-[sb]*"):
        f.unlink()  # label, raters, brain mask
    for m in MODS:
        path = case_dir / f"{cid}-{m}.nii.gz"
        image = sitk.ReadImage(str(path), sitk.sitkFloat32)
        image.SetOrigin((12.0, -30.0, 7.5))
        image.SetSpacing((1.2, 0.9, 1.1))
        image.SetDirection(direction)
        path.unlink()
        target = case_dir / f"{cid}-{m}"
        if fmt == "dicom":
            _write_dicom_series(image, str(target))
        else:
            sitk.WriteImage(image, f"{target}{fmt}")
    found = find_image(case_dir, f"{cid}-t1n")
    assert found is not None and found.name == f"{cid}-t1n{'' if fmt == 'dicom' else fmt}"
    out = tmp_path / "out"
    _run(data, out)
    assert _status(out)[cid]["status"] == "written"
    if fmt == "dicom":
        reference = sitk.ReadImage(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(found)))
    else:
        reference = sitk.ReadImage(str(found))
    for key in OUTPUT_KEYS:
        written = sitk.ReadImage(str(out / f"{cid}_{key}.nii.gz"))
        np.testing.assert_allclose(written.GetOrigin()[:3], reference.GetOrigin(), atol=1e-4, err_msg=key)
        np.testing.assert_allclose(written.GetSpacing()[:3], reference.GetSpacing(), atol=1e-4, err_msg=key)
        np.testing.assert_allclose(
            np.reshape(written.GetDirection(), (written.GetDimension(),) * 2)[:3, :3].ravel(),
            reference.GetDirection(),
            atol=1e-4,
            err_msg=key,
        )
        assert written.GetSize()[:3] == reference.GetSize()
    assert read_geometry(found).shape == tuple(reference.GetSize())


def test_unreadable_format_names_the_file(data, tmp_path):
    case_dir, cid = _case(data)
    path = case_dir / f"{cid}-t1n.nii.gz"
    path.unlink()
    (case_dir / f"{cid}-t1n.mha").write_text("not an image")
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as excinfo:
        _run(data, out)
    assert f"cannot read the t1n file '{case_dir / (cid + '-t1n.mha')}'" in str(excinfo.value.code)
