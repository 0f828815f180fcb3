# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

from __future__ import annotations

from .baselines import DeepEnsemble, FlippedNetwork, FlipTTA, MCDropout, enable_mc_dropout, mc_dropout
from .stochastic import SAMPLE_OUTPUTS, StochasticSlidingWindowInferer
