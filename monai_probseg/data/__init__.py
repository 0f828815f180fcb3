# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

from __future__ import annotations

from .datalists import (
    BRATS_MODALITIES,
    IMAGE_EXTENSIONS,
    NIFTI_EXTENSIONS,
    NoCaseFoldersError,
    brats_datalist,
    case_folder_datalist,
    find_image,
    find_nifti,
    lidc_datalist,
    multi_annotator_datalist,
    qubiq_datalist,
    write_datalist,
)
from .synthetic import (
    ambiguous_lesions_2d,
    anatomy_phantom,
    brats_phantom,
    lesion_mode_mask,
    lesion_mode_probabilities,
    lesion_modes,
    lesion_regions,
    lesion_signal,
    match_modes,
    read_lesion_modes,
    sample_oracle,
    write_ambiguous_lesions_2d,
    write_anatomy_phantoms,
    write_brats_phantoms,
)
from .utils import check_same_geometry
