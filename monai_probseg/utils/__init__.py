# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

from __future__ import annotations

from .io import (
    PARTIAL_PREFIX,
    atomic_write,
    atomic_writes,
    remove_stale_partials,
    to_jsonable,
    write_json_atomic,
    write_text_atomic,
)
from .labels import majority_vote
from .misc import check_finite, check_positive_int, check_spatial_dims, make_generator
