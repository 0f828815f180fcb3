# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

from __future__ import annotations

from .calibration import (
    expected_calibration_error,
    max_uncertainty_error_overlap,
    ncc_uncertainty_error,
    uncertainty_error_overlap,
)
from .ged import (
    GeneralizedEnergyDistanceMetric,
    SampleDiversityMetric,
    generalized_energy_distance,
    sample_diversity,
    sample_set_metrics,
)
from .hungarian import HungarianMatchedIoUMetric, hungarian_matched_iou, match_iou
from .plausibility import PLAUSIBILITY_LIMITS, plausibility_scores, plausibility_warnings
from .quality import (
    DEFAULT_FAILURE_THRESHOLD,
    LESION_REGIONS,
    QUALITY_REPORT_KEYS,
    area_under_risk_coverage,
    failure_auroc,
    mean_absolute_error,
    pearson_r,
    quality_prediction_metrics,
    quality_report,
    quality_scores,
    region_dice,
    risk_coverage_curve,
    spearman_r,
    write_quality_json,
)
from .regions import (
    BRATS_REGION_NAMES,
    BRATS_REGIONS,
    BraTSRegionMetrics,
    brats_regions,
    compute_brats_region_metrics,
    region_mask_scores,
    region_masks,
)
from .seams import plane_differences, seam_ratio, window_borders, window_transitions
from .uncertainty import (
    CASE_OUTPUTS,
    DEFAULT_UNCERTAINTY_MAPS,
    UNCERTAINTY_MAP_KEYS,
    StreamingUncertaintyMaps,
    class_probabilities,
    constant_uncertainty_maps,
    uncertainty_maps,
)
from .utils import check_label_range, pairwise_distance, pairwise_iou, set_iou_blocks
