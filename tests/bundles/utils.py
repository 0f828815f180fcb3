# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""Shared helpers of the bundle tests."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from monai_probseg.metrics import CASE_OUTPUTS as OUTPUT_KEYS

#: the file suffixes of one case's outputs: the NIfTI maps and the quality report
CASE_FILES = [f"{k}.nii.gz" for k in OUTPUT_KEYS] + ["quality.json"]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUNDLES_DIR = os.path.join(REPO, "bundles")
SCHEMA = os.path.join(REPO, os.pardir, "shared", "schemas", "bundle_meta_schema.json")


def config(bundle: str, name: str) -> str:
    return os.path.join(BUNDLES_DIR, bundle, "configs", name)


def run_cli(args, timeout=240, env_extra=None, cwd=REPO):
    """Run ``args`` (a list, the first being a module run with ``python -m``) and return the completed process."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **(env_extra or {}))
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=timeout,
    )


def root_cause(error: BaseException) -> BaseException:
    """The innermost ``__cause__`` of ``error`` (MONAI wraps a config expression's error in a RuntimeError)."""
    while error.__cause__ is not None:
        error = error.__cause__
    return error


def folder_hash(root) -> str:
    digest = hashlib.sha256()
    for folder, _, files in sorted(os.walk(root)):
        for name in sorted(files):
            path = os.path.join(folder, name)
            digest.update(path.encode())
            with open(path, "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()


def check_outputs(output_dir, case_id: str, reference: str, num_samples: int, num_classes: int) -> None:
    """Assert the six outputs of a case exist with the reference image's affine (nibabel and SimpleITK)."""
    ref, ref_itk = nib.load(reference), sitk.ReadImage(reference)
    spatial = ref.shape[:3] if len(ref.shape) >= 3 else ref.shape
    for key in OUTPUT_KEYS:
        path = os.path.join(output_dir, f"{case_id}_{key}.nii.gz")
        img, itk = nib.load(path), sitk.ReadImage(path)
        np.testing.assert_allclose(img.affine, ref.affine, atol=1e-5, err_msg=path)
        np.testing.assert_allclose(itk.GetOrigin()[: ref_itk.GetDimension()], ref_itk.GetOrigin(), atol=1e-5)
        np.testing.assert_allclose(itk.GetSpacing()[: ref_itk.GetDimension()], ref_itk.GetSpacing(), atol=1e-5)
        extra = {"prob": (num_classes,), "variance": (num_classes,), "samples": (num_samples,)}.get(key, ())
        assert img.shape == tuple(spatial) + extra, (key, img.shape)
