# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

from __future__ import annotations

from .anatomical_prior import AnatomicalPriorSegmentation, AnatomicalPriorVAE
from .diffusion_seg import DiffusionSegmentation
from .intensity_mixture import IntensityMixtureSegmentation
from .mose import MixtureOfStochasticExperts, MoSE, gate_weights
from .prob_unet import ProbabilisticUNet, ProbUNet
from .quality_net import SegmentationQualityNet
from .ssn import SSN, StochasticSegmentationNetwork
