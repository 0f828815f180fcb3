# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""Segmentation-quality prediction (DeVries & Taylor 2018): corruptions and data for training a stage-2 predictor.

The network is :py:class:`monai_probseg.networks.nets.SegmentationQualityNet`; scores, reports and evaluation
metrics are in :py:mod:`monai_probseg.metrics.quality`.
"""

from __future__ import annotations

from .corruptions import CORRUPTIONS, HELD_OUT_CORRUPTIONS, SEEN_CORRUPTIONS, corrupt_image
from .data import (
    TUMOUR_VARIANTS,
    generate_quality_dataset,
    load_quality_dataset,
    quality_datalist,
    quality_net_inputs,
    quality_split,
    score_names,
    score_statistics,
    score_vector,
    simulate_quality_case,
    weights_fingerprint,
)
from .predictor import QualityPredictor, SampleAgreementQuality, predict_with_flips
from .regression import ScoreRegressor
