# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""Synthetic data with a known ground truth: 2D ambiguous lesions, BraTS-like multimodal phantoms and brain anatomy
phantoms (CSF, grey and white matter with their partial-volume truth).

Command line: ``python -m monai_probseg.data.synthetic {anatomy,brats,lesions2d} --help``.
"""

from __future__ import annotations

from .anatomy import (
    ANATOMY_CONTRASTS,
    ANATOMY_LABELS,
    ANATOMY_TISSUES,
    anatomy_phantom,
    write_anatomy_phantoms,
)
from .brats import BRATS_LABELS, MODALITIES, brats_phantom, majority_vote, write_brats_phantoms
from .lesions import (
    ambiguous_lesions_2d,
    lesion_mode_mask,
    lesion_mode_probabilities,
    lesion_modes,
    lesion_regions,
    lesion_signal,
    match_modes,
    read_lesion_modes,
    sample_oracle,
    write_ambiguous_lesions_2d,
)

__all__ = [
    "ANATOMY_CONTRASTS",
    "ANATOMY_LABELS",
    "ANATOMY_TISSUES",
    "BRATS_LABELS",
    "MODALITIES",
    "ambiguous_lesions_2d",
    "anatomy_phantom",
    "brats_phantom",
    "lesion_mode_mask",
    "lesion_mode_probabilities",
    "lesion_modes",
    "lesion_regions",
    "lesion_signal",
    "majority_vote",
    "match_modes",
    "read_lesion_modes",
    "sample_oracle",
    "write_ambiguous_lesions_2d",
    "write_anatomy_phantoms",
    "write_brats_phantoms",
]
