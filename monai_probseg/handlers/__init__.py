# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

from __future__ import annotations

from .ema import EMAHandler, ExponentialMovingAverage
from .sample_metrics import GeneralizedEnergyDistance, lower_is_better
from .tensorboard_samples import DEFAULT_GRID_KEYS, TensorBoardSampleHandler
