# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""Dictionary transform turning per-case sample probabilities into voxel uncertainty maps."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from copy import deepcopy

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform
from monai.utils import convert_to_tensor, ensure_tuple, ensure_tuple_rep

from monai_probseg.metrics.uncertainty import DEFAULT_UNCERTAINTY_MAPS, UNCERTAINTY_MAP_KEYS, uncertainty_maps

__all__ = ["UncertaintyMapsd", "UncertaintyMapsD", "UncertaintyMapsDict"]


class UncertaintyMapsd(MapTransform):
    """Compute voxel uncertainty maps from the sample probabilities of one case (a post-transform).

    For each key the value must hold the class probabilities of ``N`` samples of one case, ``(N, C, *spatial)``
    (no batch axis, as after ``decollate_batch``), or logits with ``from_logits=True``. The maps of
    :py:func:`monai_probseg.metrics.uncertainty_maps` are written to new keys ``prefix + map_name``
    (``"prob"`` ``(C, *s)``, ``"seg"`` ``(1, *s)``, ``"entropy"``, ``"expected_entropy"``, ``"mutual_info"``
    ``(1, *s)``, ``"variance"`` ``(C, *s)``), channel-first and ready for ``SaveImaged``. When the input is a
    ``MetaTensor`` every map gets a deep copy of its metadata and applied operations, so ``SaveImaged`` writes
    them with the input's affine and ``Invertd`` can undo the preprocessing on them.

    Args:
        keys: keys holding sample probabilities ``(N, C, *spatial)``.
        maps: names of the maps to write, any of ``UNCERTAINTY_MAP_KEYS`` (``"prob"``, ``"seg"``, ``"entropy"``,
            ``"expected_entropy"``, ``"mutual_info"``, ``"variance"``); default
            :data:`monai_probseg.metrics.DEFAULT_UNCERTAINTY_MAPS` (all but ``"expected_entropy"``).
        prefix: prefix of the output keys, one for all keys or one per key; defaults to ``""`` for a single key
            and to ``"{key}_"`` when there are several keys.
        from_logits: apply softmax over ``C`` (sigmoid for ``C = 1``) first.
        eps: lower clamp of the probabilities inside the logarithm.
        delete_keys: remove the sample key after computing the maps (saves memory).
        allow_missing_keys: don't raise an exception if a key is missing.

    Example::

        post = UncertaintyMapsd(keys="samples", maps=("seg", "entropy", "mutual_info"))
        out = post({"samples": torch.softmax(torch.randn(8, 3, 32, 32, 32), dim=1)})
        out["entropy"].shape  # (1, 32, 32, 32)
    """

    def __init__(
        self,
        keys: KeysCollection,
        maps: Sequence[str] = DEFAULT_UNCERTAINTY_MAPS,
        prefix: str | Sequence[str] | None = None,
        from_logits: bool = False,
        eps: float = 1e-12,
        delete_keys: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.maps = ensure_tuple(maps)
        unknown = [m for m in self.maps if m not in UNCERTAINTY_MAP_KEYS]
        if unknown:
            raise ValueError(f"maps must be among {UNCERTAINTY_MAP_KEYS}, got unknown {unknown}.")
        if prefix is None:
            prefix = "" if len(self.keys) == 1 else [f"{k}_" for k in self.keys]
        self.prefix = ensure_tuple_rep(prefix, len(self.keys))
        out_keys = [f"{p}{m}" for p in self.prefix for m in self.maps]
        if len(set(out_keys)) != len(out_keys):
            raise ValueError(f"output keys collide: {out_keys}; give one distinct prefix per key (prefix={prefix!r}).")
        self.from_logits = from_logits
        self.eps = eps
        self.delete_keys = delete_keys

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key, prefix in self.key_iterator(d, self.prefix):
            samples = d[key]
            if samples.ndim not in (4, 5):
                raise ValueError(
                    f"{key!r} must hold the sample probabilities of one case, (N, C, H, W) or (N, C, H, W, D), "
                    f"got shape {tuple(samples.shape)}; apply the transform after decollate_batch."
                )
            probs = convert_to_tensor(samples, track_meta=False)
            result = uncertainty_maps(probs[None], from_logits=self.from_logits, eps=self.eps)
            for name in self.maps:
                value = result[name][0]
                if isinstance(samples, MetaTensor):
                    value = MetaTensor(
                        value, meta=deepcopy(samples.meta), applied_operations=deepcopy(samples.applied_operations)
                    )
                d[f"{prefix}{name}"] = value
            if self.delete_keys:
                del d[key]
        return d


UncertaintyMapsD = UncertaintyMapsDict = UncertaintyMapsd
