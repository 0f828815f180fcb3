# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

from __future__ import annotations

from . import blocks, nets
from .contract import (
    DistributionModel,
    IterativeSampler,
    ProbabilisticModel,
    RepeatedPassSampler,
    SamplingKind,
    WindowFn,
    sampling_kind,
    unwrap_parallel,
    whole_image,
)
