# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""The shipped 3D models give plausible samples and uncertainty maps on phantoms they never saw.

The acceptance limits of :data:`monai_probseg.bundle.ACCEPTANCE` (entropy about 0 far from the tumour and
highest at its boundary, every sample's whole tumour within 0.5-2x the consensus, whole-tumour Dice >= 0.85),
checked on small unseen phantoms (seed 2; the bundles trained on seed 0). ``benchmarks/bench_plausibility3d.py``
runs the same check at full size.
"""

from __future__ import annotations

import pytest
from monai.bundle import run

from monai_probseg.bundle import acceptance_failures, score_run
from monai_probseg.data import write_brats_phantoms

from .utils import config

# (bundle, cases, samples): diffusion runs 10 denoising steps per sample, so it gets fewer cases
SETTINGS = [
    ("brats_ssn", 2, 8),
    ("brats_prob_unet", 2, 8),
    ("brats_diffusion", 1, 8),
]


@pytest.mark.slow
@pytest.mark.parametrize("bundle, cases, samples", SETTINGS)
def test_shipped_model_is_plausible(bundle, cases, samples, tmp_path):
    unseen = write_brats_phantoms(tmp_path / "unseen", cases, (64, 64, 64), 3, seed=2, split=(0.0, 0.0, 1.0))
    out = tmp_path / bundle
    run(
        config_file=config(bundle, "inference.json"),
        logging_file=False,
        dataset_dir=unseen,
        data_list_key="all",
        output_dir=str(out),
        num_samples=samples,
        progress=False,
    )
    rows = score_run(out)
    assert len(rows) == cases
    failures = [f for row in rows for f in acceptance_failures(row)]
    assert not failures, failures
