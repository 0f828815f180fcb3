# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""bundles/brats_ssn/configs/train_quality.json and the shipped quality_model.pt."""

from __future__ import annotations

import os

import torch
from monai.bundle import ConfigParser

from monai_probseg.metrics import BRATS_REGIONS
from monai_probseg.quality import QualityPredictor, score_names

BUNDLE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "bundles", "brats_ssn"
)


def _parser() -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(os.path.join(BUNDLE, "configs", "train_quality.json"))
    return parser


def test_config_saves_outside_models_and_shipped_weights_fit():
    parser = _parser()
    assert os.path.normpath(parser.get_parsed_content("ckpt_dir")) == os.path.join(
        "outputs", "brats_ssn_quality", "models"
    )
    assert parser["loss"]["_target_"] == "torch.nn.L1Loss"
    network = parser.get_parsed_content("network_def", instantiate=True)
    assert network.num_scores == len(score_names(BRATS_REGIONS)) and network.num_regions == 3
    predictor = QualityPredictor(network, os.path.join(BUNDLE, "models", "quality_model.pt"))
    assert torch.all(predictor.network.score_std > 0)  # training statistics are part of the weights
    assert not torch.allclose(predictor.network.score_mean, torch.zeros_like(predictor.network.score_mean))
    with torch.no_grad():
        out = predictor.network(torch.zeros(1, 10, 32, 32, 32), predictor.network.score_mean[None])
    assert out.shape == (1, 3) and torch.all((out >= 0) & (out <= 1))
