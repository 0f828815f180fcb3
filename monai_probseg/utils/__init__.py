# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

from __future__ import annotations

from .misc import as_tuple, check_finite, check_positive_int, check_spatial_dims, make_generator
