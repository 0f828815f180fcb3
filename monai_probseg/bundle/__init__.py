# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""What MONAI bundles need beyond their configs: data resolution, the per-case inference runner, evaluation files."""

from __future__ import annotations

from .data import (
    DATASET_KINDS,
    BundleDatalist,
    CaseError,
    check_case_files,
    find_non_finite,
    find_unreadable,
    scan_case_folders,
)
from .distributed import (
    default_backend,
    distributed_device,
    gather_objects,
    init_distributed,
    partition_items,
    rank_and_world_size,
    validation_sampler,
)
from .evaluation import evaluate_case, write_metrics
from .images import IMAGE_EXTENSIONS, ImageGeometry, load_voxels, read_geometry, save_like
from .plausibility import ACCEPTANCE, acceptance_failures, score_run
from .runner import SAVED_OUTPUTS, InferenceFailedError, ProbSegInferenceRunner
from .training import check_checkpoint_dir
from .utils import bundle_root, latest_checkpoint, load_weights
from .validation import (
    CheckLabelValuesd,
    ConfigError,
    check_case_id,
    check_inference_config,
    check_label_values,
    check_unique_case_ids,
    install_concise_errors,
)

install_concise_errors()  # one-line user errors under ``python -m monai.bundle run`` (see validation.py)
