# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""Multi-annotator transforms: stack K annotator masks into ``(K, *spatial)`` and pick one annotator per draw.

Training on several annotations per image (LIDC-IDRI, QUBIQ, BraTS raters) usually shows the model one randomly
chosen annotation per iteration (Kohl et al., "A Probabilistic U-Net for Segmentation of Ambiguous Images",
NeurIPS 2018); evaluation metrics such as the generalised energy distance use all K at once. A typical pipeline::

    Compose([
        LoadImaged(keys="image", ensure_channel_first=True),
        StackAnnotatorsd(keys="label"),   # list of K files -> (K, *spatial)
        RandAnnotatord(keys="label"),     # (K, *spatial) -> (1, *spatial), one annotator per draw
    ])
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import DtypeLike, KeysCollection, NdarrayOrTensor
from monai.data import MetaTensor
from monai.data.image_reader import ImageReader
from monai.transforms import LoadImage, MapTransform, Randomizable, Transform
from monai.utils import MetaKeys, TransformBackends

__all__ = ["RandAnnotator", "StackAnnotators", "RandAnnotatord", "StackAnnotatorsd"]


def _annotator_axis(img: NdarrayOrTensor, annotator_dim: int) -> int:
    """Return ``annotator_dim`` as a non-negative axis of ``img``, raising a clear error if it does not exist."""
    ndim = len(img.shape)
    if not -ndim <= annotator_dim < ndim:
        raise ValueError(
            f"annotator_dim={annotator_dim} is out of range for an input of shape {tuple(img.shape)}; expected the "
            "annotators on an axis of a (K, *spatial) array."
        )
    return annotator_dim % ndim


class RandAnnotator(Randomizable, Transform):
    """Pick one annotator at random from a ``(K, *spatial)`` stack of annotator masks, returning ``(1, *spatial)``.

    Each call draws an index uniformly from ``0..K-1`` with the transform's own random state (``set_random_state``),
    so a seeded pipeline gives the same picks. The annotator axis is kept with size 1 (the channel axis of the
    result); ``MetaTensor`` metadata (affine, file name) is kept. This is how models for ambiguous segmentation are
    trained on multi-annotator data (Kohl et al., NeurIPS 2018: "a randomly sampled one of the four annotations").

    Args:
        annotator_dim: axis holding the K annotators (0: ``(K, *spatial)``).

    Example::

        picker = RandAnnotator().set_random_state(0)
        masks = torch.randint(0, 2, (4, 64, 64))  # 4 annotators
        one = picker(masks)  # (1, 64, 64), one of the four
        picker.index  # which one
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, annotator_dim: int = 0) -> None:
        self.annotator_dim = int(annotator_dim)
        self._index: int | None = None

    @property
    def index(self) -> int | None:
        """The annotator index of the last draw (``None`` before the first)."""
        return self._index

    def randomize(self, num_annotators: int) -> None:
        """Draw the annotator index uniformly from ``0..num_annotators-1``.

        Args:
            num_annotators: the number of annotators K.
        """
        if num_annotators < 1:
            raise ValueError(f"num_annotators must be >= 1, got {num_annotators}.")
        self._index = int(self.R.randint(num_annotators))

    def __call__(self, img: NdarrayOrTensor, randomize: bool = True) -> NdarrayOrTensor:
        """
        Args:
            img: annotator masks with K annotators on ``annotator_dim``, e.g. ``(K, H, W[, D])``.
            randomize: draw a new index first (``False`` reuses the last one, e.g. for a paired array).

        Returns:
            ``img`` restricted to the chosen annotator, the annotator axis kept with size 1; same type as ``img``.
        """
        axis = _annotator_axis(img, self.annotator_dim)
        num = int(img.shape[axis])
        if num < 1:
            raise ValueError(f"input of shape {tuple(img.shape)} has no annotators on axis {axis}.")
        if randomize or self._index is None:
            self.randomize(num)
        elif self._index >= num:
            raise ValueError(
                f"annotator index {self._index} of the last draw is out of range for {num} annotators "
                f"(input shape {tuple(img.shape)})."
            )
        index = (slice(None),) * axis + (slice(self._index, self._index + 1),)
        return img[index]


class StackAnnotators(Transform):
    """Stack K annotator masks into one ``(K, *spatial)`` array.

    Accepts a sequence of K masks, each ``(1, *spatial)`` or ``(*spatial)`` (numpy arrays, tensors or
    ``MetaTensor``), or a sequence of K file paths that are loaded one by one with ``monai.transforms.LoadImage``
    (so a file with the wrong shape or affine is named in the error). A single array or tensor is taken as already
    stacked and returned unchanged: ``LoadImaged`` on a *list* of files already stacks them on a new first axis,
    so after ``LoadImaged`` this transform is a no-op (with the shape check left to the loader).

    Whether a mask has a leading channel of size 1 is decided by ``spatial_dims`` when given; otherwise masks whose
    first axis has size 1 and that have at least 3 axes (or one axis more than the others) are taken as
    ``(1, *spatial)``. Give ``spatial_dims`` when a spatial axis itself may have size 1.

    Args:
        spatial_dims: number of spatial dimensions of the masks (2 or 3), or ``None`` to infer it as above.
        reader: image reader for ``LoadImage`` when loading file paths (``None``: MONAI picks one by extension).
        dtype: data type of loaded files (as ``LoadImage``; ``None`` keeps the stored type).
        affine_atol: absolute tolerance when comparing the affines of ``MetaTensor`` masks.

    Example::

        stack = StackAnnotators()
        masks = stack(["case01/task01_seg01.nii.gz", "case01/task01_seg02.nii.gz", "case01/task01_seg03.nii.gz"])
        masks.shape  # (3, H, W)
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        spatial_dims: int | None = None,
        reader: ImageReader | str | None = None,
        dtype: DtypeLike | torch.dtype = np.float32,
        affine_atol: float = 1e-3,
    ) -> None:
        if spatial_dims is not None and spatial_dims not in (1, 2, 3):
            raise ValueError(f"spatial_dims must be 1, 2, 3 or None, got {spatial_dims}.")
        self.spatial_dims = spatial_dims
        self.loader = LoadImage(reader=reader, image_only=True, dtype=dtype, ensure_channel_first=True)
        self.affine_atol = float(affine_atol)

    def _load(self, paths: Sequence[str | os.PathLike]) -> list[NdarrayOrTensor]:
        masks = []
        for k, path in enumerate(paths):
            try:
                masks.append(self.loader(path))
            except Exception as e:
                raise ValueError(f"cannot load annotator {k} from '{path}': {e}") from e
        return masks

    def _with_channel(self, masks: Sequence[NdarrayOrTensor]) -> list[NdarrayOrTensor]:
        """Give every mask a leading axis of size 1."""
        ndims = [len(m.shape) for m in masks]
        if self.spatial_dims is not None:
            has_channel = []
            for k, (m, nd) in enumerate(zip(masks, ndims)):
                if nd == self.spatial_dims + 1 and m.shape[0] == 1:
                    has_channel.append(True)
                elif nd == self.spatial_dims:
                    has_channel.append(False)
                else:
                    raise ValueError(
                        f"annotator {k} has shape {tuple(m.shape)}; expected (1, *spatial) or (*spatial) with "
                        f"spatial_dims={self.spatial_dims}."
                    )
        elif len(set(ndims)) == 1:
            first_axis_one = all(m.shape[0] == 1 for m in masks)
            has_channel = [first_axis_one and ndims[0] >= 3] * len(masks)
        elif len(set(ndims)) == 2 and max(ndims) - min(ndims) == 1:
            has_channel = [nd == max(ndims) for nd in ndims]
            for k, (m, c) in enumerate(zip(masks, has_channel)):
                if c and m.shape[0] != 1:
                    raise ValueError(
                        f"annotator {k} has shape {tuple(m.shape)} while others have {min(ndims)} axes; expected "
                        "(1, *spatial) or (*spatial) masks."
                    )
        else:
            shapes = [tuple(m.shape) for m in masks]
            raise ValueError(f"annotator masks have shapes {shapes}; expected (1, *spatial) or (*spatial) masks.")
        return [m if c else m[None] for m, c in zip(masks, has_channel)]

    def __call__(self, annotators: Sequence[NdarrayOrTensor | str | os.PathLike] | NdarrayOrTensor) -> NdarrayOrTensor:
        """
        Args:
            annotators: K masks or K file paths (or one already stacked array, returned as is).

        Returns:
            ``(K, *spatial)``: a numpy array if all masks are numpy arrays, else a tensor (a ``MetaTensor`` with the
            first mask's metadata if the masks are ``MetaTensor``, e.g. loaded from files).
        """
        if isinstance(annotators, (np.ndarray, torch.Tensor)):
            return annotators
        if isinstance(annotators, (str, os.PathLike)):
            annotators = [annotators]
        if not isinstance(annotators, Sequence) or len(annotators) == 0:
            raise ValueError(
                f"expected a non-empty sequence of annotator masks or file paths, got {type(annotators).__name__}."
            )
        if all(isinstance(a, (str, os.PathLike)) for a in annotators):
            masks = self._load(annotators)  # channel first already: (1, *spatial) for a single-channel file
        elif any(isinstance(a, (str, os.PathLike)) for a in annotators):
            raise ValueError("annotators mix file paths and arrays; expected all paths or all arrays.")
        else:
            masks = [a if isinstance(a, (np.ndarray, torch.Tensor)) else np.asarray(a) for a in annotators]
            masks = self._with_channel(masks)

        ref_shape = tuple(masks[0].shape[1:])
        for k, m in enumerate(masks[1:], start=1):
            if tuple(m.shape[1:]) != ref_shape:
                raise ValueError(
                    f"annotator {k}{_describe(m)} has spatial shape {tuple(m.shape[1:])}, expected {ref_shape} like "
                    f"annotator 0{_describe(masks[0])}."
                )
        metas = [m for m in masks if isinstance(m, MetaTensor)]
        if len(metas) == len(masks):
            ref_affine = metas[0].affine
            for k, m in enumerate(metas[1:], start=1):
                if not torch.allclose(m.affine.to(ref_affine), ref_affine, atol=self.affine_atol):
                    raise ValueError(
                        f"annotator {k}{_describe(m)} has affine {m.affine.tolist()}, expected {ref_affine.tolist()} "
                        f"like annotator 0{_describe(masks[0])}."
                    )

        if all(isinstance(m, np.ndarray) for m in masks):
            return np.concatenate(masks, axis=0)
        tensors = [torch.as_tensor(m) for m in masks]
        device = tensors[0].device
        out = torch.cat([t.to(device) for t in tensors], dim=0)
        if isinstance(out, MetaTensor):
            out.meta[MetaKeys.ORIGINAL_CHANNEL_DIM] = 0  # the annotator axis is now the channel axis
        return out


def _describe(mask: NdarrayOrTensor) -> str:
    """`` ('file.nii.gz')`` for a mask loaded from a file, else an empty string."""
    if isinstance(mask, MetaTensor) and mask.meta.get("filename_or_obj"):
        return f" ('{mask.meta['filename_or_obj']}')"
    return ""


class RandAnnotatord(Randomizable, MapTransform):
    """Dictionary-based version of :class:`RandAnnotator`: picks ONE annotator index per call for all ``keys``.

    All keys use the same index, so paired annotator stacks (for example per-annotator masks and per-annotator
    weights) stay consistent; all must have the same number of annotators.

    Args:
        keys: keys of the ``(K, *spatial)`` annotator stacks.
        annotator_dim: axis holding the K annotators.
        allow_missing_keys: don't raise an exception if a key is missing.

    Example::

        transform = RandAnnotatord(keys="label").set_random_state(0)
        out = transform({"image": torch.rand(1, 64, 64), "label": torch.randint(0, 2, (4, 64, 64))})
        out["label"].shape  # (1, 64, 64)
    """

    backend = RandAnnotator.backend

    def __init__(self, keys: KeysCollection, annotator_dim: int = 0, allow_missing_keys: bool = False) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.annotator = RandAnnotator(annotator_dim=annotator_dim)

    @property
    def index(self) -> int | None:
        """The annotator index of the last draw (``None`` before the first)."""
        return self.annotator.index

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> RandAnnotatord:
        super().set_random_state(seed, state)
        self.annotator.set_random_state(seed, state)
        return self

    def randomize(self, num_annotators: int) -> None:
        """Draw the annotator index uniformly from ``0..num_annotators-1``.

        Args:
            num_annotators: the number of annotators K.
        """
        self.annotator.randomize(num_annotators)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        """
        Args:
            data: a dictionary whose ``keys`` hold annotator stacks.

        Returns:
            a copy of ``data`` with each key restricted to the same randomly chosen annotator.
        """
        d = dict(data)
        keys = list(self.key_iterator(d))
        if not keys:
            return d
        counts = {}
        for key in keys:
            counts[key] = int(d[key].shape[_annotator_axis(d[key], self.annotator.annotator_dim)])
        if len(set(counts.values())) > 1:
            raise ValueError(
                f"keys have different numbers of annotators on axis {self.annotator.annotator_dim}: {counts}; "
                "expected the same K for every key so that one index fits all."
            )
        self.randomize(counts[keys[0]])
        for key in keys:
            d[key] = self.annotator(d[key], randomize=False)
        return d


class StackAnnotatorsd(MapTransform):
    """Dictionary-based version of :class:`StackAnnotators`: each key's list of K masks or files -> ``(K, *spatial)``.

    Args:
        keys: keys holding a list of annotator masks or file paths.
        spatial_dims: number of spatial dimensions of the masks, or ``None`` to infer it (see
            :class:`StackAnnotators`).
        reader: image reader used to load file paths.
        dtype: data type of loaded files.
        affine_atol: absolute tolerance when comparing the affines of loaded masks.
        allow_missing_keys: don't raise an exception if a key is missing.

    Example::

        transform = StackAnnotatorsd(keys="label")
        out = transform({"label": ["case01/task01_seg01.nii.gz", "case01/task01_seg02.nii.gz"]})
        out["label"].shape  # (2, H, W)
    """

    backend = StackAnnotators.backend

    def __init__(
        self,
        keys: KeysCollection,
        spatial_dims: int | None = None,
        reader: ImageReader | str | None = None,
        dtype: DtypeLike | torch.dtype = np.float32,
        affine_atol: float = 1e-3,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.stacker = StackAnnotators(spatial_dims=spatial_dims, reader=reader, dtype=dtype, affine_atol=affine_atol)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        """
        Args:
            data: a dictionary whose ``keys`` hold K annotator masks or file paths.

        Returns:
            a copy of ``data`` with each key stacked into ``(K, *spatial)``.
        """
        d = dict(data)
        for key in self.key_iterator(d):
            try:
                d[key] = self.stacker(d[key])
            except ValueError as e:
                raise ValueError(f"StackAnnotatorsd key '{key}': {e}") from e
        return d
