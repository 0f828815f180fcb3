# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""Datalist builders for real data that users bring: BraTS, LIDC-IDRI 2D crops, QUBIQ, generic multi-annotator lists.

Every builder returns a MONAI decathlon-style datalist: a dict with ``"training"``, ``"validation"`` and ``"test"``
lists of items (plus a few descriptive keys), that :func:`write_datalist` writes as JSON and
``monai.data.load_decathlon_datalist`` reads back. Paths in the items are absolute. Annotator masks are always a
*list* of files (``"label"`` for LIDC/QUBIQ/generic lists, ``"raters"`` next to the consensus ``"label"`` for BraTS),
so ``monai.transforms.LoadImaged`` stacks them into ``(K, *spatial)`` and
:class:`monai_probseg.transforms.RandAnnotatord` picks one annotator per draw.

Items with a reference segmentation go to ``"training"`` (a seeded, patient-wise part of them to ``"validation"``
when ``val_fraction > 0``); items without one (challenge validation/test sets) go to ``"test"``.

Errors name the case, the file and what was expected, for example::

    FileNotFoundError: BraTS case 'BraTS-GLI-00001-000': missing t2f file 'BraTS-GLI-00001-000-t2f.nii.gz'
    in /data/BraTS2023/BraTS-GLI-00001-000; expected the modalities t1n, t1c, t2w, t2f.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from monai.config import PathLike

from monai_probseg.data.utils import check_same_geometry
from monai_probseg.utils import atomic_writes, write_json_atomic

__all__ = [
    "BRATS_MODALITIES",
    "IMAGE_EXTENSIONS",
    "NIFTI_EXTENSIONS",
    "NoCaseFoldersError",
    "brats_datalist",
    "case_folder_datalist",
    "find_image",
    "find_nifti",
    "lidc_datalist",
    "qubiq_datalist",
    "multi_annotator_datalist",
    "write_datalist",
]

logger = logging.getLogger(__name__)

#: modality suffixes of each BraTS naming convention, in the channel order of ``"image"``.
BRATS_MODALITIES: dict[str, tuple[str, ...]] = {
    "2023": ("t1n", "t1c", "t2w", "t2f"),
    "2021": ("t1", "t1ce", "t2", "flair"),
    "2020": ("t1", "t1ce", "t2", "flair"),
}
# label of the enhancing tumour: 4 in BraTS 2018-2022, 3 from BraTS 2023 on (1 necrotic core, 2 edema in both)
_BRATS_ET_LABEL = {"2023": 3, "2021": 4, "2020": 4}
_BRATS_SEP = {"2023": "-", "2021": "_", "2020": "_"}
#: file name endings read as NIfTI, in the order they are looked for
NIFTI_EXTENSIONS = (".nii.gz", ".nii")
#: file name endings of the images a case may be made of: NIfTI, and what MONAI's ``ITKReader`` reads (NRRD,
#: MetaImage); a DICOM series is a folder named like the file would be, without an ending
IMAGE_EXTENSIONS = (*NIFTI_EXTENSIONS, ".nrrd", ".nhdr", ".mha", ".mhd")


class NoCaseFoldersError(FileNotFoundError):
    """A data folder holds no case folders of the expected layout (the message names the folder and the layout)."""


def find_image(
    folder: PathLike, stem: str, extensions: Sequence[str] = IMAGE_EXTENSIONS, series: bool = True
) -> Path | None:
    """Return the image ``folder/stem<ext>`` for the first ending of ``extensions`` that exists, else ``None``.

    Args:
        folder: the folder to look in.
        stem: the file name without its ending.
        extensions: the endings looked for, in order (default :data:`IMAGE_EXTENSIONS`).
        series: also accept a non-empty folder ``folder/stem`` (a DICOM series) when no file is found.

    Example::

        find_image("/data/BraTS-GLI-00000-000", "BraTS-GLI-00000-000-t1n")  # .../BraTS-GLI-00000-000-t1n.nii.gz
    """
    for ext in extensions:
        path = Path(folder) / f"{stem}{ext}"
        if path.is_file():
            return path
    path = Path(folder) / stem
    if series and path.is_dir() and any(p.is_file() for p in path.iterdir()):
        return path
    return None


def find_nifti(folder: PathLike, stem: str) -> Path | None:
    """Return ``folder/stem.nii.gz`` or ``folder/stem.nii`` if one exists, else ``None`` (:func:`find_image` for
    NIfTI only).

    Example::

        find_nifti("/data/BraTS-GLI-00000-000", "BraTS-GLI-00000-000-t1n")  # .../BraTS-GLI-00000-000-t1n.nii.gz
    """
    return find_image(folder, stem, NIFTI_EXTENSIONS, series=False)


def _check_root(root: PathLike, what: str) -> Path:
    path = Path(root).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"{what} '{root}' is not an existing directory.")
    return path.resolve()


def _check_fraction(value: float, name: str) -> float:
    value = float(value)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}.")
    return value


def _check_case_headers(case_id: str, paths: Sequence[PathLike], atol: float = 1e-3) -> None:
    """Check that the NIfTI files of one case share their spatial shape and affine (headers only, no voxel data).

    The spatial shapes are compared over the leading dimensions the two files have in common (at most 3, NIfTI's
    spatial axes), so a multi-channel image ``(H, W, C)`` may sit next to ``(H, W)`` masks.
    """
    headers = []
    for path in paths:
        name = str(path)
        if not name.endswith(NIFTI_EXTENSIONS):
            raise ValueError(f"case '{case_id}': check_headers supports NIfTI files only, got '{path}'.")
        try:
            headers.append(("", name, nib.load(name)))  # lazy: reads the header, not the voxels
        except Exception as e:  # nibabel raises several types for broken files
            raise ValueError(f"case '{case_id}': cannot read the NIfTI header of '{path}': {e}") from e
    try:
        check_same_geometry(headers, atol=atol)
    except ValueError as e:
        raise ValueError(f"case '{case_id}': {e}.") from e


def _split(items: list[dict], groups: Sequence[str], val_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Split ``items`` into (training, validation) so that no group (patient) is in both; seeded, order-keeping.

    The split policy of every builder: ``round(val_fraction * number of groups)`` groups (at least one, and at least
    one left for training, when ``val_fraction > 0``) drawn by a ``numpy`` permutation seeded with ``seed``.
    """
    if val_fraction <= 0 or not items:
        return items, []
    unique = sorted(set(groups))
    num_val = int(round(val_fraction * len(unique)))
    if num_val == 0 or num_val >= len(unique):
        num_val = min(max(num_val, 1), len(unique) - 1)
    perm = np.random.default_rng(seed).permutation(len(unique))
    val_groups = {unique[i] for i in perm[:num_val]}
    train = [it for it, g in zip(items, groups) if g not in val_groups]
    val = [it for it, g in zip(items, groups) if g in val_groups]
    return train, val


def _make_datalist(
    labelled: list[dict], unlabelled: list[dict], groups: Sequence[str], val_fraction: float, seed: int, **extra: Any
) -> dict[str, Any]:
    train, val = _split(labelled, groups, val_fraction, seed)
    datalist: dict[str, Any] = dict(extra)
    datalist.update({"training": train, "validation": val, "test": unlabelled})
    return datalist


def _annotator_files(
    folder: Path, pattern: re.Pattern, case_id: str, what: str, fmt: str, allow_missing: bool = False
) -> list[Path]:
    """Annotator files in ``folder`` matching ``pattern`` (group 1 = 1-based annotator number), checked for gaps.

    With ``allow_missing`` a gap is listed under the name the file should have (``fmt.format(k)``) instead of raising.
    """
    found: dict[int, Path] = {}
    for path in folder.iterdir():
        m = pattern.fullmatch(path.name)
        if m:
            found[int(m.group(1))] = path
    if not found:
        return []
    for k in range(1, max(found) + 1):
        if k not in found:
            if allow_missing:
                found[k] = folder / fmt.format(k)
                continue
            raise FileNotFoundError(
                f"{what} case '{case_id}': missing annotator file '{fmt.format(k)}' in {folder}; found annotators "
                f"{sorted(found)}, expected 1..{max(found)}."
            )
    return [found[k] for k in sorted(found)]


# ---------------------------------------------------------------------------------------------------- case folders


def _case_dirs(root: Path, detect: Callable[[Path], str | None]) -> list[tuple[Path, str]]:
    """Case folders directly under ``root`` or one level deeper (e.g. ``root/TrainingData/<case>``), in sorted order.

    ``detect(folder)`` returns the folder's naming convention, or ``None`` when it is not a case folder.
    """
    cases = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        convention = detect(sub)
        if convention is not None:
            cases.append((sub, convention))
            continue
        for subsub in sorted(p for p in sub.iterdir() if p.is_dir()):
            convention = detect(subsub)
            if convention is not None:
                cases.append((subsub, convention))
    return cases


def _case_item(
    folder: Path,
    sep: str,
    modalities: Sequence[str],
    label: str | None,
    rater: str | None,
    optional: Sequence[str],
    what: str,
    allow_missing: bool,
    check_headers: bool,
) -> dict[str, Any]:
    """The item of one case folder ``<case>/<case><sep><suffix>.nii.gz``: the scanner behind every folder builder.

    Returns ``{"case_id", "image": [one file per modality], "label"?, "raters"?, <optional>?}``; ``"label"``,
    ``"raters"`` and each optional key only when their files exist. A missing modality raises, or with
    ``allow_missing`` is listed under the name it should have (``<case>/<case>-t2f.nii.gz``) so that the case fails
    with a clear message when it is read.
    """
    case_id = folder.name
    images = []
    for m in modalities:
        path = find_image(folder, f"{case_id}{sep}{m}")
        if path is None:
            if not allow_missing:
                raise FileNotFoundError(
                    f"{what} case '{case_id}': missing {m} file '{case_id}{sep}{m}.nii.gz' in {folder}; expected the "
                    f"modalities {', '.join(modalities)}."
                )
            path = folder / f"{case_id}{sep}{m}.nii.gz"
        images.append(path)
    item: dict[str, Any] = {"case_id": case_id, "image": [str(p) for p in images]}
    files = [p for p in images if p.is_file()]
    seg = find_image(folder, f"{case_id}{sep}{label}") if label else None
    if seg is not None:
        item["label"] = str(seg)
        files.append(seg)
    if rater:
        endings = "|".join(re.escape(e) for e in IMAGE_EXTENSIONS)
        pattern = re.compile(re.escape(f"{case_id}{sep}{rater}") + rf"(\d+)(?:{endings})")
        fmt = f"{case_id}{sep}{rater}{{}}.nii.gz"
        raters = _annotator_files(folder, pattern, case_id, what, fmt, allow_missing)
        if raters:
            item["raters"] = [str(p) for p in raters]
            files.extend(p for p in raters if p.is_file())
    for key in optional:
        path = find_image(folder, f"{case_id}{sep}{key}")
        if path is not None:
            item[key] = str(path)
            files.append(path)
    if check_headers:
        _check_case_headers(case_id, files)
    return item


def case_folder_datalist(
    root: PathLike,
    modalities: Sequence[str] = ("image",),
    label: str | None = "seg",
    rater: str | None = "seg-rater",
    optional: Sequence[str] = (),
    sep: str = "-",
    val_fraction: float = 0.0,
    seed: int = 0,
    allow_missing: bool = False,
    check_headers: bool = False,
) -> dict[str, Any]:
    """Build a datalist from case folders ``<case>/<case><sep><suffix>.nii.gz`` (the BraTS 2023 naming scheme).

    Case folders are looked for directly under ``root`` and one level deeper; a folder is a case folder when it holds
    a modality or the ``label`` file named after it. The layout of the LIDC crops :func:`lidc_datalist` writes
    (``modalities=("image",)``, ``label=None``, ``rater="seg-rater"``) and of the synthetic 2D lesions
    (``rater="annot"``); :func:`brats_datalist` reads BraTS releases with the same scanner.

    Items are ``{"case_id", "image": [one file per modality, in order], "label": consensus, "raters": [<case>-<rater>1,
    ...], <optional key>: file}``, ``"label"``, ``"raters"`` and the optional keys only when their files exist. Cases
    with a label or raters go to ``"training"`` (a seeded part of them to ``"validation"``, one group per case), the
    others to ``"test"``.

    Args:
        root: folder holding the case folders (or folders of case folders).
        modalities: suffixes of the image files, in channel order.
        label: suffix of the consensus segmentation (``None``: none).
        rater: prefix of the numbered annotator files (``None``: none).
        optional: suffixes of further files recorded under their suffix when they exist (e.g. ``"brainmask"``).
        sep: separator between the case name and the suffix.
        val_fraction: fraction of labelled cases put in ``"validation"``.
        seed: seed of the validation split.
        allow_missing: list a missing modality (or annotator in the middle of the numbers) under the name it should
            have instead of raising, so that a per-case consumer can report that case and go on with the others.
        check_headers: check that all files of a case share their shape and affine (NIfTI headers only).

    Returns:
        the datalist ``{"training", "validation", "test"}``.

    Raises:
        NoCaseFoldersError: ``root`` has no case folder of this layout.
        FileNotFoundError: ``root`` is missing, or a case lacks a modality (without ``allow_missing``).
        ValueError: a header mismatch (``check_headers``) or a bad ``val_fraction``.

    Example::

        datalist = case_folder_datalist("/data/lesions", modalities=("image",), label=None, rater="annot")
    """
    root_path = _check_root(root, "data root")
    val_fraction = _check_fraction(val_fraction, "val_fraction")
    modalities = tuple(modalities)
    stems = [*modalities, *([label] if label else [])]

    def detect(folder: Path) -> str | None:
        return "case" if any(find_image(folder, f"{folder.name}{sep}{s}") for s in stems) else None

    cases = _case_dirs(root_path, detect)
    if not cases:
        expected = ", ".join(f"<case>/<case>{sep}{s}.nii.gz" for s in stems)
        raise NoCaseFoldersError(
            f"no case folders found under '{root}': expected {expected} in the folder or one below."
        )
    labelled, unlabelled = [], []
    for folder, _ in cases:
        item = _case_item(folder, sep, modalities, label, rater, optional, "data", allow_missing, check_headers)
        (labelled if "label" in item or "raters" in item else unlabelled).append(item)
    groups = [it["case_id"] for it in labelled]
    return _make_datalist(labelled, unlabelled, groups, val_fraction, seed)


# --------------------------------------------------------------------------------------------------------- BraTS


def _brats_convention(folder: Path) -> str | None:
    """``"2023"``, ``"2020"``, ``"2021"`` or ``"legacy"`` from the file names in a case folder, ``None`` if none."""
    name = folder.name
    if any(find_image(folder, f"{name}-{m}") for m in (*BRATS_MODALITIES["2023"], "seg")):
        return "2023"
    if any(find_image(folder, f"{name}_{m}") for m in (*BRATS_MODALITIES["2020"], "seg")):
        if name.startswith("BraTS20_"):
            return "2020"
        if name.startswith("BraTS2021_"):
            return "2021"
        return "legacy"
    return None


def brats_datalist(
    root: PathLike,
    year: str | int | None = None,
    val_fraction: float = 0.0,
    seed: int = 0,
    require_label: bool = False,
    check_headers: bool = False,
    allow_missing: bool = False,
) -> dict[str, Any]:
    """Build a datalist from a BraTS 2020, 2021 or 2023 folder tree.

    Case folders are looked for directly under ``root`` and one level deeper (so ``root`` may hold the training and
    validation folders of a release). File names:

    - BraTS 2023 (GLI, MEN, MET, PED, SSA): ``<case>/<case>-t1n.nii.gz``, ``-t1c``, ``-t2w``, ``-t2f``,
      ``-seg.nii.gz`` (e.g. ``BraTS-GLI-00000-000``);
    - BraTS 2020/2021: ``<case>/<case>_t1.nii.gz``, ``_t1ce``, ``_t2``, ``_flair``, ``_seg.nii.gz``
      (e.g. ``BraTS20_Training_001``, ``BraTS2021_00000``).

    Each item is ``{"case_id", "image": [t1n, t1c, t2w, t2f] (or [t1, t1ce, t2, flair]) in this fixed order,
    "label": seg, "raters": [<case>-seg-rater1, ...], "brainmask": <case>-brainmask, "et_label"}``; ``"label"`` only
    when the segmentation exists (challenge validation/test sets have none: those items go to ``"test"``),
    ``"raters"`` and ``"brainmask"`` only when those files exist (monai_probseg's phantoms write them).

    Label convention: labels are 1 necrotic/non-enhancing core, 2 edema and, for the enhancing tumour, **4 in BraTS
    2020/2021 but 3 in BraTS 2023**. Every item records its value in ``"et_label"``, and the datalist in ``"labels"``.
    Use it with ``monai.transforms.ConvertToMultiChannelBasedOnBratsClassesd(keys="label", et_label=...)``, or map
    2020/2021 labels to the 2023 convention with ``monai.transforms.MapLabelValued("label", [4], [3])``.

    With ``val_fraction > 0``, a seeded part of the labelled *patients* goes to ``"validation"``: BraTS 2023 cases
    ``<patient>-<timepoint>`` (``BraTS-GLI-00000-000``, ``BraTS-GLI-00000-001``) of one patient stay together.

    Args:
        root: folder holding the case folders (or folders of case folders).
        year: ``"2023"``, ``"2021"``, ``"2020"``, or ``None`` to detect it from the file names (all cases must then
            follow one convention). 2020 and 2021 share their file names; the case names tell them apart.
        val_fraction: fraction of labelled patients put in ``"validation"`` (0 keeps all in ``"training"``).
        seed: seed of the validation split.
        require_label: raise if a case has no segmentation file instead of putting it in ``"test"``.
        check_headers: read every file's NIfTI header (not the voxels) and check that all files of a case share
            their shape and affine (``np.allclose``, atol 1e-3).
        allow_missing: list a missing modality (or rater in the middle of the rater numbers) under the name it
            should have (``<case>/<case>-t2f.nii.gz``) instead of raising, so that a per-case consumer (the bundles'
            inference runner) reports that case and goes on with the others.

    Returns:
        the datalist ``{"name", "modality", "labels", "training", "validation", "test"}``.

    Raises:
        NoCaseFoldersError: ``root`` has no BraTS case folders (a ``FileNotFoundError``).
        FileNotFoundError: ``root`` is missing, or a case lacks a modality (without ``allow_missing``), a
            segmentation with ``require_label``, or a rater in the middle of the rater numbers.
        ValueError: bad ``year``, case names in another convention than ``year`` or mixed conventions, header
            mismatch.

    Example::

        datalist = brats_datalist("/data/ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData", val_fraction=0.2)
        write_datalist(datalist, "brats23.json")
        train_files = monai.data.load_decathlon_datalist("brats23.json", data_list_key="training")
    """
    root_path = _check_root(root, "BraTS root")
    if year is not None:
        year = str(year)
        if year not in BRATS_MODALITIES:
            raise ValueError(f"year must be one of {sorted(BRATS_MODALITIES)} or None, got {year!r}.")
    val_fraction = _check_fraction(val_fraction, "val_fraction")
    cases = _case_dirs(root_path, _brats_convention)
    if not cases:
        raise NoCaseFoldersError(
            f"no BraTS case folders found under '{root}': expected '<case>/<case>-t1n.nii.gz' (2023) or "
            f"'<case>/<case>_t1.nii.gz' (2020/2021) in the folder or one level below."
        )
    if year is None:
        is_2023 = {folder.name: conv == "2023" for folder, conv in cases}
        if len(set(is_2023.values())) > 1:
            new = next(n for n, v in is_2023.items() if v)
            old = next(n for n, v in is_2023.items() if not v)
            raise ValueError(
                f"BraTS cases under '{root}' mix naming conventions: '{new}' uses 2023 names (-t1n) and '{old}' "
                "2020/2021 names (_t1); their labels differ (enhancing tumour 3 vs 4): build one datalist per release."
            )
        if next(iter(is_2023.values())):
            year = "2023"
        else:
            years = {conv for _, conv in cases} - {"legacy"}
            year = years.pop() if len(years) == 1 else "2021"
    for folder, conv in cases:
        if (conv == "2023") != (year == "2023"):
            sep = _BRATS_SEP[year]
            raise ValueError(
                f"BraTS case '{folder.name}' in {folder.parent}: expected BraTS {year} file names like "
                f"'{folder.name}{sep}{BRATS_MODALITIES[year][0]}.nii.gz', found the "
                f"{'2023' if conv == '2023' else '2020/2021'} convention."
            )

    modalities, sep, et_label = BRATS_MODALITIES[year], _BRATS_SEP[year], _BRATS_ET_LABEL[year]
    labelled, unlabelled, groups = [], [], []
    for folder, _ in cases:
        case_id = folder.name
        item = _case_item(
            folder, sep, modalities, "seg", f"seg{sep}rater", ("brainmask",), "BraTS", allow_missing, check_headers
        )
        if "label" not in item and require_label:
            raise FileNotFoundError(
                f"BraTS case '{case_id}': missing segmentation '{case_id}{sep}seg.nii.gz' in {folder} "
                "(require_label=True)."
            )
        item["et_label"] = et_label
        if "label" in item:
            labelled.append(item)
            # BraTS 2023 ids end with a 3-digit timepoint: keep all timepoints of a patient on one side of the split
            groups.append(re.sub(r"-\d{3}$", "", case_id) if year == "2023" else case_id)
        else:
            unlabelled.append(item)
    if labelled and unlabelled:
        logger.warning(
            "%d BraTS case(s) under %s have no segmentation and go to 'test' while %d others have one, e.g. %s; "
            "pass require_label=True to make this an error.",
            len(unlabelled),
            root_path,
            len(labelled),
            unlabelled[0]["case_id"],
        )
    labels = {"0": "background", "1": "necrotic tumour core", "2": "edema", str(et_label): "enhancing tumour"}
    return _make_datalist(
        labelled,
        unlabelled,
        groups,
        val_fraction,
        seed,
        name=f"BraTS{year}",
        modality={str(i): m for i, m in enumerate(modalities)},
        labels=labels,
    )


# ---------------------------------------------------------------------------------------------------------- LIDC

# what a pickle of numpy arrays, dicts, lists and strings may reference; anything else is refused
_SAFE_PICKLE_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
    ("collections", "OrderedDict"),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds numpy arrays/scalars and builtin containers, so a pickle cannot run code."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _SAFE_PICKLE_GLOBALS:
            raise pickle.UnpicklingError(
                f"refusing to load '{module}.{name}': only numpy arrays, dicts, lists and strings are allowed "
                "(pass trusted=True for a file you trust)."
            )
        return super().find_class(module, name)


def _safe_name(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(key)).strip("._") or "case"


def lidc_datalist(
    pickle_path: PathLike,
    out_dir: PathLike,
    val_fraction: float = 0.0,
    test_fraction: float = 0.0,
    seed: int = 0,
    spacing: Sequence[float] = (1.0, 1.0),
    num_annotators: int | None = None,
    trusted: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Write the LIDC-IDRI 2D crops of the widely used pickle as NIfTI files and return their datalist.

    The pickle (``data_lidc.pickle`` of the PyTorch Probabilistic U-Net ports, used by Kohl et al., NeurIPS 2018,
    PHiSeg and SSN experiments) is a dict keyed by slice name; each value holds ``"image"`` (a 128x128 float array),
    ``"masks"`` (a list of 4 binary 128x128 annotator masks) and ``"series_uid"``. For every key this writes
    ``out_dir/<key>/<key>-image.nii.gz`` (float32, ``(H, W)``) and ``out_dir/<key>/<key>-seg-rater<k>.nii.gz``
    (uint8 0/1, ``(H, W)``, k = 1..K); characters other than letters, digits, ``.``, ``_`` and ``-`` in keys
    become ``_``. Items are ``{"case_id": key, "image", "label": [K rater files], "series_uid"}``, so
    ``LoadImaged(["image", "label"])`` gives the image ``(H, W)`` and the masks ``(K, H, W)``.

    The split is patient-wise: all crops of one ``series_uid`` land in the same section, chosen with a seeded
    shuffle of the series.

    Security: unpickling can run arbitrary code. By default the file is read with a restricted unpickler that only
    rebuilds numpy arrays, dicts, lists and strings and refuses anything else; ``trusted=True`` uses plain
    :func:`pickle.load`, which you should only do for a file from a source you trust.

    Args:
        pickle_path: path of the pickle file.
        out_dir: folder to write the NIfTI files to (created if needed; existing files are overwritten).
        val_fraction: fraction of the series put in ``"validation"``.
        test_fraction: fraction of the series put in ``"test"``.
        seed: seed of the split.
        spacing: in-plane pixel spacing (mm) written to the affines; the pickle does not store it.
        num_annotators: expected number of masks per crop; ``None`` takes the count of the first crop.
        trusted: use plain ``pickle.load`` (runs code from the file: trusted files only).
        progress: show a tqdm progress bar.

    Returns:
        the datalist ``{"name", "training", "validation", "test"}``; every item has its label files.

    Raises:
        FileNotFoundError: the pickle does not exist.
        ValueError: the pickle's content is not in the layout above (naming the key and what was found), or the
            fractions are invalid.

    Example::

        datalist = lidc_datalist("data_lidc.pickle", "lidc_nifti", val_fraction=0.1, test_fraction=0.2, seed=0)
        write_datalist(datalist, "lidc_nifti/datalist.json")
    """
    pickle_file = Path(pickle_path).expanduser()
    if not pickle_file.is_file():
        raise FileNotFoundError(f"LIDC pickle '{pickle_path}' does not exist.")
    val_fraction = _check_fraction(val_fraction, "val_fraction")
    test_fraction = _check_fraction(test_fraction, "test_fraction")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(
            f"val_fraction + test_fraction must be < 1, got {val_fraction} + {test_fraction}: no training data left."
        )
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != 2 or min(spacing) <= 0:
        raise ValueError(f"spacing must be two positive numbers (mm), got {spacing}.")
    with open(pickle_file, "rb") as f:
        try:
            data = pickle.load(f) if trusted else _NumpyOnlyUnpickler(f).load()
        except pickle.UnpicklingError as e:
            raise ValueError(f"LIDC pickle '{pickle_path}': {e}") from e
    if not isinstance(data, Mapping) or not data:
        raise ValueError(
            f"LIDC pickle '{pickle_path}' holds a {type(data).__name__}, expected a non-empty dict keyed by slice name."
        )

    out = Path(out_dir).expanduser().resolve()
    affine = np.diag([spacing[0], spacing[1], 1.0, 1.0])
    items, groups, names = [], [], {}
    keys = list(data.keys())
    if progress:
        from tqdm import tqdm

        keys = tqdm(keys, desc="LIDC crops")
    for key in keys:
        value = data[key]
        if not isinstance(value, Mapping) or not {"image", "masks"} <= set(value):
            found = sorted(value) if isinstance(value, Mapping) else type(value).__name__
            raise ValueError(f"LIDC pickle entry '{key}': expected a dict with 'image' and 'masks', found {found}.")
        image = np.asarray(value["image"], dtype=np.float32)
        if image.ndim != 2:
            raise ValueError(f"LIDC pickle entry '{key}': image has shape {image.shape}, expected a 2D (H, W) array.")
        masks = value["masks"]
        masks = list(masks) if isinstance(masks, (list, tuple, np.ndarray)) else [masks]
        if num_annotators is None:
            num_annotators = len(masks)
        if len(masks) != num_annotators or num_annotators < 1:
            raise ValueError(
                f"LIDC pickle entry '{key}': has {len(masks)} annotator masks, expected {num_annotators} "
                "(like the first entry, or num_annotators)."
            )
        for k, mask in enumerate(masks):
            if np.shape(mask) != image.shape:
                raise ValueError(
                    f"LIDC pickle entry '{key}': mask {k} has shape {np.shape(mask)}, expected {image.shape} like "
                    "the image."
                )
        name = _safe_name(key)
        if name in names:
            raise ValueError(f"LIDC pickle entries '{names[name]}' and '{key}' map to the same file name '{name}'.")
        names[name] = key
        folder = out / name
        image_path = folder / f"{name}-image.nii.gz"
        label_paths = [str(folder / f"{name}-seg-rater{k}.nii.gz") for k in range(1, len(masks) + 1)]
        with atomic_writes(folder) as staged:  # the crop's files appear together, complete
            nib.save(nib.Nifti1Image(image, affine), staged(image_path.name))
            for path, mask in zip(label_paths, masks):
                nib.save(nib.Nifti1Image((np.asarray(mask) > 0).astype(np.uint8), affine), staged(Path(path).name))
        series_uid = str(value.get("series_uid", key))
        items.append({"case_id": str(key), "image": str(image_path), "label": label_paths, "series_uid": series_uid})
        groups.append(series_uid)

    rest, test = _split(items, groups, test_fraction, seed)
    rest_groups = [it["series_uid"] for it in rest]
    # the validation fraction is of all series: rescale it to the series left after the test split
    val_of_rest = val_fraction / (1.0 - test_fraction) if test else val_fraction
    train, val = _split(rest, rest_groups, min(val_of_rest, 0.999), seed + 1)
    return {"name": "LIDC-IDRI 2D crops", "training": train, "validation": val, "test": test}


# --------------------------------------------------------------------------------------------------------- QUBIQ


def qubiq_datalist(
    task_dir: PathLike,
    task: int | None = None,
    num_annotators: int | None = None,
    val_fraction: float = 0.0,
    seed: int = 0,
    check_headers: bool = False,
) -> dict[str, Any]:
    """Build a datalist from a QUBIQ (Quantification of Uncertainties in Biomedical Image Quantification) folder.

    Layout: ``<task_dir>/<case>/image.nii.gz`` plus the annotations ``task01_seg01.nii.gz``, ``task01_seg02.nii.gz``,
    ... (several annotators; some datasets, e.g. brain-tumor and prostate, have several tasks per case: choose one
    with ``task``). Items: ``{"case_id", "image", "label": [annotator files, in annotator order]}``; cases without
    annotations (test sets) go to ``"test"`` without ``"label"``.

    Args:
        task_dir: the folder holding the case folders (e.g. ``prostate/Training``).
        task: task number (``1`` for ``task01_*``); ``None`` works when the folder has a single task.
        num_annotators: expected number of annotators; ``None`` takes the largest count found.
        val_fraction: fraction of labelled cases put in ``"validation"`` (seeded).
        seed: seed of the validation split.
        check_headers: check that the image and all annotations of a case share spatial shape and affine
            (NIfTI headers only).

    Returns:
        the datalist ``{"name", "training", "validation", "test"}``.

    Raises:
        FileNotFoundError: ``task_dir`` is missing or has no case folders, or a case lacks an annotator file.
        ValueError: several tasks and ``task=None``, or a header mismatch.

    Example::

        datalist = qubiq_datalist("QUBIQ/prostate/Training", task=1)
        train_files = datalist["training"]  # [{"case_id": "case01", "image": ..., "label": [6 files]}, ...]
    """
    root = _check_root(task_dir, "QUBIQ task_dir")
    val_fraction = _check_fraction(val_fraction, "val_fraction")
    cases = [p for p in sorted(root.iterdir()) if p.is_dir() and find_nifti(p, "image") is not None]
    if not cases:
        raise FileNotFoundError(f"no QUBIQ case folders ('<case>/image.nii.gz') found under '{task_dir}'.")
    seg_re = re.compile(r"task(\d+)_seg(\d+)\.nii(?:\.gz)?", re.IGNORECASE)
    tasks_per_case: dict[str, set[int]] = {}
    for folder in cases:
        tasks_per_case[folder.name] = {int(m.group(1)) for p in folder.iterdir() if (m := seg_re.fullmatch(p.name))}
    all_tasks = sorted(set().union(*tasks_per_case.values()))
    if task is None:
        if len(all_tasks) > 1:
            raise ValueError(f"QUBIQ folder '{task_dir}' has tasks {all_tasks}: choose one with task=<number>.")
        task = all_tasks[0] if all_tasks else 1
    task = int(task)
    if all_tasks and task not in all_tasks:
        raise FileNotFoundError(
            f"QUBIQ folder '{task_dir}': no annotation 'task{task:02d}_seg01.nii.gz' in any case; found tasks "
            f"{all_tasks}."
        )

    pattern = re.compile(rf"task0*{task}_seg(\d+)\.nii(?:\.gz)?", re.IGNORECASE)
    fmt = f"task{task:02d}_seg{{:02d}}.nii.gz"
    found = {}
    for folder in cases:
        if tasks_per_case[folder.name] and task not in tasks_per_case[folder.name]:
            raise FileNotFoundError(
                f"QUBIQ case '{folder.name}': missing annotation '{fmt.format(1)}' in {folder}; the case has tasks "
                f"{sorted(tasks_per_case[folder.name])}."
            )
        found[folder.name] = _annotator_files(folder, pattern, folder.name, "QUBIQ", fmt)
    expected = num_annotators if num_annotators is not None else max(len(v) for v in found.values())
    labelled, unlabelled = [], []
    for folder in cases:
        segs = found[folder.name]
        if segs and len(segs) != expected:
            what = f"missing annotation '{fmt.format(len(segs) + 1)}'" if len(segs) < expected else "too many"
            raise FileNotFoundError(
                f"QUBIQ case '{folder.name}': {what} in {folder}; found {len(segs)} annotators, expected {expected}."
            )
        image = find_nifti(folder, "image")
        if check_headers:
            _check_case_headers(folder.name, [image, *segs])
        item: dict[str, Any] = {"case_id": folder.name, "image": str(image)}
        if segs:
            item["label"] = [str(p) for p in segs]
            labelled.append(item)
        else:
            unlabelled.append(item)
    groups = [it["case_id"] for it in labelled]
    return _make_datalist(labelled, unlabelled, groups, val_fraction, seed, name=f"QUBIQ {root.name} task {task}")


# ------------------------------------------------------------------------------------------------------- generic


def _as_path_list(value: Any, where: str, key: str) -> list[str]:
    if isinstance(value, (str, os.PathLike)):
        return [os.fspath(value)]
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, (str, os.PathLike)) for v in value):
        return [os.fspath(v) for v in value]
    raise ValueError(f"{where}: '{key}' must be a file path or a non-empty list of file paths, got {value!r}.")


def _resolve_items(
    items: Any,
    section: str,
    base_dir: Path,
    path_keys: Sequence[str],
    num_annotators: int | None,
    check_headers: bool,
) -> list[dict]:
    if not isinstance(items, (list, tuple)):
        raise ValueError(f"datalist section '{section}' must be a list of items, got {type(items).__name__}.")
    resolved = []
    for i, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise ValueError(f"datalist item {section}[{i}] must be a dict, got {type(item).__name__}.")
        where = f"datalist item {section}[{i}]" + (f" (case '{item['case_id']}')" if "case_id" in item else "")
        if "image" not in item:
            raise ValueError(f"{where}: no 'image' key; expected a dict with 'image' and a list of 'label' files.")
        out = dict(item)
        files = []
        for key in path_keys:
            if key not in item:
                continue
            paths = []
            for p in _as_path_list(item[key], where, key):
                path = Path(p).expanduser()
                path = path if path.is_absolute() else base_dir / path
                if not path.exists():
                    raise FileNotFoundError(f"{where}: {key} file '{path}' does not exist.")
                paths.append(os.path.normpath(path))
            # "label" is always a list of annotator files; other keys keep their single/list form
            out[key] = paths if key == "label" or not isinstance(item[key], (str, os.PathLike)) else paths[0]
            files.extend(paths)
        if num_annotators is not None and "label" in out and len(out["label"]) != num_annotators:
            raise ValueError(
                f"{where}: has {len(out['label'])} label (annotator) files, expected num_annotators={num_annotators}."
            )
        if check_headers:
            _check_case_headers(str(item.get("case_id", f"{section}[{i}]")), files)
        resolved.append(out)
    return resolved


def multi_annotator_datalist(
    items_or_json: PathLike | Sequence[Mapping] | Mapping[str, Any],
    base_dir: PathLike | None = None,
    data_list_key: str | None = None,
    num_annotators: int | None = None,
    path_keys: Sequence[str] = ("image", "label", "raters"),
    check_headers: bool = False,
) -> dict[str, Any] | list[dict]:
    """Validate a decathlon-style datalist whose ``"label"`` is a list of annotator files, resolving relative paths.

    Accepts a JSON file, a decathlon dict (every value that is a list of items is checked: ``"training"``,
    ``"validation"``, ``"test"``, ...; other keys are kept as they are) or a plain list of items. Relative paths are
    joined with ``base_dir`` (default: the JSON file's folder, else the current directory), as
    ``monai.data.load_decathlon_datalist`` does. Every file under ``path_keys`` must exist. A single ``"label"`` path
    becomes a one-element list, so ``LoadImaged`` always gives ``(K, *spatial)`` masks.

    Args:
        items_or_json: a JSON path, a decathlon dict or a list of item dicts (each with ``"image"``).
        base_dir: folder relative paths are relative to.
        data_list_key: return only this section (a list), like ``load_decathlon_datalist``.
        num_annotators: if given, every item with a ``"label"`` must have that many annotator files.
        path_keys: the item keys that hold file paths to resolve and check.
        check_headers: check that all files of an item share spatial shape and affine (NIfTI headers only).

    Returns:
        the same structure (dict or list) with absolute, checked paths.

    Raises:
        FileNotFoundError: a JSON file or a listed file does not exist (naming the item and the file).
        ValueError: malformed items, a wrong number of annotators, a header mismatch, a missing ``data_list_key``.

    Example::

        datalist = multi_annotator_datalist(
            {"training": [{"image": "img01.nii.gz", "label": ["img01_a1.nii.gz", "img01_a2.nii.gz"]}]},
            base_dir="/data/mine",
        )
    """
    if isinstance(items_or_json, (str, os.PathLike)):
        json_path = Path(items_or_json).expanduser()
        if not json_path.is_file():
            raise FileNotFoundError(f"datalist JSON '{items_or_json}' does not exist.")
        with open(json_path) as f:
            try:
                content = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"datalist JSON '{items_or_json}' is not valid JSON: {e}") from e
        default_base = json_path.resolve().parent
    else:
        content = items_or_json
        default_base = Path.cwd()
    base = Path(base_dir).expanduser().resolve() if base_dir is not None else default_base
    args = (base, path_keys, num_annotators, check_headers)
    if isinstance(content, Mapping):
        if data_list_key is not None:
            if data_list_key not in content:
                raise ValueError(f"datalist has no section '{data_list_key}', found keys {sorted(content)}.")
            return _resolve_items(content[data_list_key], data_list_key, *args)
        out: dict[str, Any] = {}
        for key, value in content.items():
            is_items = isinstance(value, (list, tuple)) and all(isinstance(v, Mapping) for v in value)
            out[key] = _resolve_items(value, key, *args) if is_items else value
        return out
    if isinstance(content, (list, tuple)):
        return _resolve_items(content, "items", *args)
    raise ValueError(f"items_or_json must be a JSON path, a dict or a list of items, got {type(content).__name__}.")


def write_datalist(datalist: Mapping[str, Any] | Sequence[Mapping], path: PathLike) -> Path:
    """Write ``datalist`` as JSON, atomically (:func:`monai_probseg.utils.write_json_atomic`).

    A reader never sees a half-written file, and an error leaves any previous file untouched.

    Args:
        datalist: the datalist (dict of sections or list of items) with JSON-serialisable values (paths and numpy
            scalars are converted).
        path: the JSON file to write; its folder is created if needed.

    Returns:
        the path written.

    Raises:
        TypeError: naming a value that cannot be written as JSON.

    Example::

        write_datalist(brats_datalist("/data/BraTS2021"), "/data/BraTS2021/datalist.json")
    """
    target = Path(path).expanduser()
    write_json_atomic(datalist, target, indent=4)
    return target
