# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

from __future__ import annotations

from .datalists import (
    BRATS_MODALITIES,
    brats_datalist,
    lidc_datalist,
    multi_annotator_datalist,
    qubiq_datalist,
    write_datalist,
)
