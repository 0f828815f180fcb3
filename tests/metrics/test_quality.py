# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from monai_probseg.metrics import BRATS_REGIONS
from monai_probseg.metrics.quality import (
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


def test_pearson_spearman_mae_by_hand():
    p, t = [1.0, 2.0, 3.0, 4.0], [1.0, 3.0, 2.0, 5.0]
    # by hand: centred p = (-1.5, -0.5, 0.5, 1.5), t = (-1.75, 0.25, -0.75, 2.25); sum pt = 5.5, |p|^2 = 5, |t|^2 = 8.75
    assert pearson_r(p, t) == pytest.approx(5.5 / math.sqrt(5 * 8.75))
    # ranks of t: (1, 3, 2, 4): d = (0, -1, 1, 0), rho = 1 - 6 * 2 / (4 * 15) = 0.8
    assert spearman_r(p, t) == pytest.approx(0.8)
    assert mean_absolute_error(p, t) == pytest.approx((0 + 1 + 1 + 1) / 4)
    assert math.isnan(pearson_r([1.0, 1.0], [0.0, 1.0]))
    assert pearson_r([1.0, float("nan"), 2.0], [0.0, 5.0, 1.0]) == pytest.approx(1.0)


def test_failure_auroc_by_hand():
    true = [0.2, 0.5, 0.8, 0.9]  # failures (< 0.7): cases 0 and 1
    assert failure_auroc([0.1, 0.3, 0.8, 0.9], true) == 1.0
    assert failure_auroc([0.9, 0.8, 0.3, 0.1], true) == 0.0
    # pairs (failure, success): (0.1 vs 0.2, 0.95), (0.85 vs 0.2, 0.95): lower failure prediction in 1 + 1 + 0 + 1
    assert failure_auroc([0.1, 0.85, 0.2, 0.95], true) == pytest.approx(3 / 4)
    assert failure_auroc([0.5, 0.5, 0.5, 0.5], true) == pytest.approx(0.5)  # ties count one half
    assert math.isnan(failure_auroc([0.1, 0.2], [0.9, 0.95]))


def test_risk_coverage_by_hand():
    predicted, true = [0.9, 0.1, 0.5], [0.8, 0.2, 0.6]
    coverage, risk, mean_dice = risk_coverage_curve(predicted, true)
    np.testing.assert_allclose(coverage, [1 / 3, 2 / 3, 1.0])
    np.testing.assert_allclose(mean_dice, [0.8, 0.7, 1.6 / 3])
    np.testing.assert_allclose(risk, [0.2, 0.3, 1 - 1.6 / 3])
    assert area_under_risk_coverage(predicted, true) == pytest.approx((0.2 + 0.3 + 1 - 1.6 / 3) / 3)
    # a reversed ranking is worse
    assert area_under_risk_coverage([0.1, 0.9, 0.5], true) > area_under_risk_coverage(predicted, true)
    m = quality_prediction_metrics(predicted, true, threshold=0.7)
    assert m["aurc_optimal"] == pytest.approx(m["aurc"]) and m["num_failures"] == 2 and m["auroc"] == 1.0


def _case(empty=False):
    shape = (12, 12, 12)
    prob = torch.zeros(4, *shape)
    prob[0] = 1.0
    samples = torch.zeros(3, *shape, dtype=torch.long)
    if not empty:
        prob[:, 4:8, 4:8, 4:8] = torch.tensor([0.1, 0.1, 0.2, 0.6])[:, None, None, None]
        samples[:, 4:8, 4:8, 4:8] = 3
        samples[1, 4, 4:8, 4:8] = 2  # one sample differs on a slab
    entropy = -(prob.clamp_min(1e-12) * prob.clamp_min(1e-12).log()).sum(0, keepdim=True)
    return prob, entropy, 0.5 * entropy, samples


def test_quality_scores_values():
    prob, entropy, mi, samples = _case()
    s = quality_scores(prob, entropy, mi, samples, BRATS_REGIONS)
    region_entropy = float(entropy[0, 4, 4, 4])
    assert s["mean_entropy"] == pytest.approx(region_entropy, rel=1e-5)  # uniform over the foreground cube
    assert s["mean_mutual_info"] == pytest.approx(0.5 * region_entropy, rel=1e-5)
    # WT: every sample has the 64-voxel cube: agreement 1; ET: sample 1 has 48 voxels, others 64 -> Dice 96/112
    assert s["sample_dice_agreement_WT"] == pytest.approx(1.0)
    d = 2 * 48 / (48 + 64)
    assert s["sample_dice_agreement_ET"] == pytest.approx((2 * d + 2 * 1.0 + 2 * d) / 6)
    assert s["volume_WT"] == pytest.approx(64 / 12**3)
    assert s["mean_max_prob_ET"] == pytest.approx(0.6)
    assert 0 < s["ged_to_mean"] < 1
    assert set(s) >= {"mean_entropy", "sample_dice_agreement", "ged_to_mean", "uncertainty_volume_ratio"}


def test_confident_empty_prediction_is_high_quality():
    prob, entropy, mi, samples = _case(empty=True)
    s = quality_scores(prob, entropy, mi, samples, BRATS_REGIONS)
    assert s["mean_entropy"] == 0.0 and s["sample_dice_agreement"] == 1.0 and s["ged_to_mean"] == 0.0
    assert s["uncertainty_volume_ratio"] < 1e-3
    assert region_dice(prob.argmax(0), torch.zeros(12, 12, 12, dtype=torch.long)) == {"TC": 1.0, "WT": 1.0, "ET": 1.0}
    label = torch.zeros(12, 12, 12, dtype=torch.long)
    label[0, 0, 0] = 3
    assert region_dice(prob.argmax(0), label)["ET"] == 0.0


def test_lesion_scores_2d():
    prob = torch.zeros(2, 16, 16)
    prob[0], prob[1, 4:8, 4:8] = 1.0, 0.9
    prob[0, 4:8, 4:8] = 0.1
    samples = (prob[1] > 0.5).long()[None].repeat(4, 1, 1)
    s = quality_scores(prob, torch.zeros(16, 16), torch.zeros(16, 16), samples, LESION_REGIONS)
    assert s["sample_dice_agreement_lesion"] == 1.0
    assert region_dice(prob.argmax(0), samples[0], LESION_REGIONS) == {"lesion": 1.0}


def test_report_schema_and_writer(tmp_path):
    r = quality_report("BraTS-1", {"WT": 0.87, "TC": 0.81, "ET": 0.74}, {"mean_entropy": 0.03})
    assert tuple(r)[: len(QUALITY_REPORT_KEYS)] == QUALITY_REPORT_KEYS
    assert r["predicted_dice_mean"] == pytest.approx((0.87 + 0.81 + 0.74) / 3)
    assert r["failure"] is False and r["failure_threshold"] == 0.7 and r["quality_model"] == "SegmentationQualityNet"
    bad = quality_report("c2", {"lesion": 0.5}, failure_threshold=0.6, quality_model="ridge", true_dice={"lesion": 0.4})
    assert bad["failure"] is True and bad["true_dice"] == {"lesion": 0.4}
    path = write_quality_json(r, tmp_path)
    assert path.endswith("BraTS-1_quality.json")
    with open(path) as f:
        loaded = json.load(f)
    assert set(loaded["predicted_dice"]) == {"WT", "TC", "ET"} and isinstance(loaded["failure"], bool)
    assert isinstance(loaded["scores"]["mean_entropy"], float)
    with pytest.raises(ValueError, match="expected \\[0, 1\\]"):
        quality_report("c", {"WT": 1.5})
    with pytest.raises(ValueError, match="misses"):
        write_quality_json({"case_id": "x"}, tmp_path)
