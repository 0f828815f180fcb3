# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

from __future__ import annotations

from .annotators import RandAnnotator, RandAnnotatord, StackAnnotators, StackAnnotatorsd
from .intensity import ScaleBrainIntensity, ScaleBrainIntensityd, fill_background
from .uncertainty import UncertaintyMapsD, UncertaintyMapsd, UncertaintyMapsDict
