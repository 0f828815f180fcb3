# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

from __future__ import annotations

from .anatomical_prior import (
    AnatomicalPriorELBOLoss,
    AnatomicalPriorVAELoss,
    label_log_likelihood,
    latent_kl_divergence,
)
from .elbo import ELBOLoss, cross_entropy_map
from .kl import KLDivergenceLoss, gaussian_kl_divergence
from .mose import MoSELoss, matching_plan, pairwise_seg_cost
from .mvn_nll import LowRankMVNNLLLoss
