# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""Input images of any format MONAI reads, and NIfTI outputs that carry the input's geometry and header.

A case's image files may be NIfTI (read with nibabel, as MONAI's ``NibabelReader`` does) or any format MONAI's
``ITKReader`` reads: NRRD (``.nrrd``, ``.nhdr``), MetaImage (``.mha``, ``.mhd``), and a DICOM series given as its
folder. The geometry of a file is its voxel shape and its affine in MONAI's convention (RAS, voxel order of
``LoadImage``), so outputs written with :func:`save_like` lie on the input's grid: for a NIfTI input with its header
(qform and sform with their codes, untouched), for other formats with the input's origin, spacing and direction
(qform and sform both that affine, code 1, "scanner").
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import nibabel as nib
import numpy as np
from monai.data import ITKReader
from monai.data.utils import correct_nifti_header_if_necessary

from monai_probseg.data import IMAGE_EXTENSIONS, NIFTI_EXTENSIONS

__all__ = ["IMAGE_EXTENSIONS", "ImageGeometry", "is_nifti", "load_voxels", "read_geometry", "save_like"]


def is_nifti(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a NIfTI file (``.nii``, ``.nii.gz``)."""
    return os.fspath(path).lower().endswith(NIFTI_EXTENSIONS)


@dataclass
class ImageGeometry:
    """Shape and affine of an image file, plus its NIfTI image (header only) when it is one.

    Attributes:
        path: the file (or DICOM series folder).
        shape: the voxel shape (spatial axes first, as ``LoadImage`` gives them).
        affine: the ``4 x 4`` voxel-to-world (RAS) matrix MONAI uses for it.
        nifti: the lazily loaded ``nibabel`` image of a NIfTI file, else ``None``.
    """

    path: str
    shape: tuple[int, ...]
    affine: np.ndarray
    nifti: Any = None

    @property
    def spacing(self) -> tuple[float, ...]:
        """Voxel size along each spatial axis (mm)."""
        n = min(len(self.shape), 3)
        return tuple(float(v) for v in np.linalg.norm(self.affine[:n, :n], axis=0))


def _itk_read(path: str) -> tuple[np.ndarray, dict]:
    reader = ITKReader()
    return reader.get_data(reader.read(path))


def read_geometry(path: str | os.PathLike) -> ImageGeometry:
    """The :class:`ImageGeometry` of an image file (NIfTI: the header only; other formats through ``ITKReader``).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file cannot be read, naming it and the reader's message.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"'{path}' does not exist.")
    try:
        if is_nifti(path):
            img = nib.load(path)  # header only
            # the affine MONAI's NibabelReader uses: it prefers the qform when the sform disagrees with the zooms
            affine = np.asarray(correct_nifti_header_if_necessary(nib.load(path)).affine, float)
            return ImageGeometry(path, tuple(int(s) for s in img.shape), affine, img)
        _, meta = _itk_read(path)
    except Exception as e:  # nibabel and ITK raise several types for broken files
        raise ValueError(f"cannot read '{path}' ({type(e).__name__}: {' '.join(str(e).split())[:300]})") from e
    shape = tuple(int(s) for s in np.asarray(meta["spatial_shape"]).tolist())
    return ImageGeometry(path, shape, np.asarray(meta["affine"], float))


def load_voxels(path: str | os.PathLike) -> np.ndarray:
    """The voxels of an image file in the voxel order of its :func:`read_geometry` (and of MONAI's ``LoadImage``)."""
    path = os.fspath(path)
    if is_nifti(path):
        return np.asanyarray(nib.load(path).dataobj)
    return np.asarray(_itk_read(path)[0])


def save_like(array: np.ndarray, reference: nib.Nifti1Image | ImageGeometry, path: str, dtype: np.dtype | type) -> str:
    """Write ``array`` as NIfTI on ``reference``'s voxel grid.

    A NIfTI reference's header is copied with its qform and sform and their codes (only the data type, shape,
    zooms of extra axes and scaling change), so an input with ``qform != sform`` or without an sform keeps them;
    another format's reference gives the NIfTI its affine as qform and sform (code 1).

    Args:
        array: ``(*spatial)`` or ``(*spatial, C)`` in the reference's voxel order.
        reference: the input image whose space the output shares (a ``nibabel`` image or an :class:`ImageGeometry`).
        path: the file to write (``.nii.gz``).
        dtype: the stored data type.

    Example::

        save_like(seg, read_geometry("case-t1n.nrrd"), "out/case_seg.nii.gz", np.uint8)
    """
    if isinstance(reference, ImageGeometry):
        geometry = reference
    else:
        geometry = ImageGeometry(
            getattr(reference, "get_filename", lambda: "")() or "",
            tuple(reference.shape),
            np.asarray(reference.affine, float),
            reference,
        )
    spatial_dims = min(len(geometry.shape), 3)
    if tuple(array.shape[:spatial_dims]) != tuple(geometry.shape[:spatial_dims]):
        raise ValueError(
            f"output of shape {array.shape} does not match the input's spatial shape {geometry.shape[:spatial_dims]}."
        )
    data = np.asarray(array, dtype=dtype)
    if geometry.nifti is not None:
        header = geometry.nifti.header.copy()
        image_type = nib.Nifti2Image if isinstance(geometry.nifti, nib.Nifti2Image) else nib.Nifti1Image
        header.set_data_dtype(dtype)
        header.set_data_shape(data.shape)
        zooms = tuple(header.get_zooms()[:spatial_dims]) + (1.0,) * (data.ndim - spatial_dims)
        header.set_zooms(zooms)
        header["cal_min"], header["cal_max"] = 0, 0
        header["descrip"] = b"monai_probseg"
        image = image_type(data, None, header=header)  # no affine: the header's qform and sform stay as they are
    else:
        image = nib.Nifti1Image(data, geometry.affine)
        image.set_qform(geometry.affine, code=1)
        image.set_sform(geometry.affine, code=1)
        zooms = tuple(geometry.spacing[:spatial_dims]) + (1.0,) * (data.ndim - spatial_dims)
        image.header.set_zooms(zooms)
        image.header["descrip"] = b"monai_probseg"
    image.header.set_slope_inter(None, None)  # no scaling: the stored values are the values
    nib.save(image, path)
    return path
