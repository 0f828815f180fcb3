# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

from __future__ import annotations

from .backbone import backbone_features, feature_backbone
from .bias_field import cosine_basis, fit_log_bias, fit_tissue_gaussians
from .latent import ConvEncoder, GaussianLatentEncoder, LatentCombiner, soft_clamp
from .lowrank import LowRankHead, low_rank_sample
