# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

from __future__ import annotations

import csv
import json
import os

import pytest
import torch

from monai_probseg.bundle import evaluate_case, write_metrics

LESION = {"lesion": (1,)}


def _masks():
    a = torch.zeros(4, 4, dtype=torch.long)
    a[:2, :2] = 1  # 4 pixels
    b = torch.zeros(4, 4, dtype=torch.long)
    b[:1, :2] = 1  # 2 pixels inside a: IoU(a, b) = 0.5
    return a, b


def test_perfect_prediction():
    a, b = _masks()
    prob = torch.stack([1 - a, a]).float()
    scores = evaluate_case(a, prob, torch.stack([a, b]), a, torch.stack([a, b]), num_classes=2, regions=LESION)
    assert scores["dice_lesion"] == 1.0 and scores["hd95_lesion"] == 0.0
    assert scores["ged"] == pytest.approx(0.0, abs=1e-6) and scores["hm_iou"] == pytest.approx(1.0)
    assert scores["ece"] == pytest.approx(0.0, abs=1e-6)


def test_hand_computed_scores():
    a, b = _masks()
    seg = a.clone()
    seg[3, 3] = 1  # 5 pixels, 4 of them right: Dice 8 / 9
    prob = torch.full((2, 4, 4), 0.5)
    scores = evaluate_case(seg, prob, torch.stack([a, a]), a, torch.stack([a, b]), num_classes=2, regions=LESION)
    assert scores["dice_lesion"] == pytest.approx(8 / 9, abs=1e-6)
    assert scores["hd95_lesion"] > 0
    # GED = 2 E d(S, Y) - E d(S, S') - E d(Y, Y') = 2 * 0.25 - 0 - 0.25 (d(a, b) = 1 - IoU = 0.5, diagonals included)
    assert scores["ged"] == pytest.approx(0.25, abs=1e-6)
    assert scores["diversity_samples"] == pytest.approx(0.0) and scores["diversity_raters"] == pytest.approx(0.25)
    assert scores["hm_iou"] == pytest.approx(0.75, abs=1e-6)  # matched IoUs 1 and 0.5
    assert scores["ece"] == pytest.approx(0.25, abs=1e-6)  # confidence 0.5 everywhere, 4 of 16 pixels are lesion


def test_brats_regions_and_fallbacks():
    label = torch.zeros(6, 6, 6, dtype=torch.long)
    label[1:4, 1:4, 1:4] = 2
    label[2, 2, 2] = 1  # no enhancing tumour in label nor prediction: ET Dice 1, HD 0 (BraTS convention)
    prob = torch.nn.functional.one_hot(label, 4).permute(3, 0, 1, 2).float()
    scores = evaluate_case(label, prob, label[None], label, None, num_classes=4, spacing=(2.0, 2.0, 2.0))
    assert [scores[f"dice_{r}"] for r in ("WT", "TC", "ET")] == [1.0, 1.0, 1.0]
    assert scores["hd95_ET"] == 0.0
    only_raters = evaluate_case(label, prob, label[None], None, torch.stack([label, label]), num_classes=4)
    assert only_raters["dice_WT"] == 1.0
    with pytest.raises(ValueError, match="neither"):
        evaluate_case(label, prob, label[None], None, None, num_classes=4)
    with pytest.raises(ValueError, match="samples has shape"):
        evaluate_case(label, prob, label[None, :5], label, None, num_classes=4)


def test_consensus_from_raters_ties_to_larger_label():
    # no label: the consensus is monai_probseg.utils.majority_vote of the raters; 1 vs 1 votes -> lesion
    raters = torch.tensor([[[1, 1], [1, 1]], [[1, 0], [0, 0]]])
    seg = torch.ones(2, 2, dtype=torch.long)
    prob = torch.stack([1 - seg, seg]).float()
    scores = evaluate_case(seg, prob, seg[None], None, raters, num_classes=2, regions={"lesion": (1,)})
    assert scores["dice_lesion"] == 1.0  # the consensus is all lesion


def test_write_metrics(tmp_path):
    per_case = {"a": {"dice_WT": 0.5, "ged": 0.2}, "b": {"dice_WT": 1.0, "ged": float("nan")}}
    json_path, csv_path = write_metrics(per_case, tmp_path, extra={"failed": {"c": "missing t2f file"}})
    with open(json_path) as f:
        content = json.load(f)
    assert content["mean"] == {"dice_WT": 0.75, "ged": 0.2}  # NaN left out of the mean
    assert content["cases"]["b"]["ged"] is None and content["failed"] == {"c": "missing t2f file"}
    with open(csv_path) as f:
        rows = list(csv.reader(f))
    assert rows == [["case_id", "dice_WT", "ged"], ["a", "0.5", "0.2"], ["b", "1", "nan"], ["mean", "0.75", "0.2"]]
    assert sorted(os.listdir(tmp_path)) == ["metrics.csv", "metrics.json"]  # no temporary file left
