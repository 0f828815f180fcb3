# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

from __future__ import annotations

from .diffusion import DiffusionPrepareBatch
from .trainer import KeywordLoss, LossTermsRecorder, PrepareBatchWithLabel, ProbSegTrainer, loss_terms_transform
