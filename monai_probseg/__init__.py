# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""monai_probseg: probabilistic segmentation of ambiguous medical images, built on MONAI."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
