# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""Synthetic data with a known ground truth: 2D ambiguous lesions and BraTS-like multimodal phantoms.

Command line: ``python -m monai_probseg.data.synthetic {brats,lesions2d} --help``.
"""

from __future__ import annotations

from .brats import BRATS_LABELS, MODALITIES, brats_phantom, majority_vote, write_brats_phantoms
from .lesions import (
    ambiguous_lesions_2d,
    lesion_mode_probabilities,
    match_modes,
    read_lesion_modes,
    sample_oracle,
    write_ambiguous_lesions_2d,
)

__all__ = [
    "BRATS_LABELS",
    "MODALITIES",
    "ambiguous_lesions_2d",
    "brats_phantom",
    "lesion_mode_probabilities",
    "majority_vote",
    "match_modes",
    "read_lesion_modes",
    "sample_oracle",
    "write_ambiguous_lesions_2d",
    "write_brats_phantoms",
]
