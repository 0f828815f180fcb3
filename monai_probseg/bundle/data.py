# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""Where a bundle's cases come from: a BraTS-layout folder, a datalist JSON, or synthetic phantoms made on the fly.

A bundle config names one ``dataset_dir``. :class:`BundleDatalist` turns it into lists of cases in one schema::

    {"case_id": str, "image": [file per modality], "label": consensus file or None, "raters": [files],
     "brainmask": file (only when the data set has one)}

- a **datalist JSON** (MONAI decathlon style, as :func:`monai_probseg.data.write_datalist` and the synthetic
  generators write): relative paths are relative to the JSON's folder; a ``"label"`` that is a *list* of files is
  read as the annotators (``"raters"``) with no consensus, the convention of
  :func:`monai_probseg.data.multi_annotator_datalist`;
- a **folder**: case folders ``<case>/<case>-t1n.nii.gz``, ``-t1c``, ``-t2w``, ``-t2f``, ``-seg``,
  ``-seg-rater<k>``, ``-brainmask`` (BraTS 2023 layout, directly under the folder or one level deeper), read by
  :func:`monai_probseg.data.brats_datalist`, for ``kind="brats"``; ``<case>/<case>-image.nii.gz`` and ``-annot<k>``,
  read by :func:`monai_probseg.data.case_folder_datalist`, for ``kind="lesions2d"``. Labelled cases go to
  ``"training"`` (a seeded, patient-wise part of them to ``"validation"``, the split of those builders), the others
  to ``"test"``. A folder without case folders but with a ``datalist.json`` is read as that JSON;
- **nothing** (``None`` or ``""``): a few synthetic cases are written to a new temporary folder (its path is
  logged), so a bundle runs in a fresh clone with no data.

Scanning never stops at a bad case: a case folder that lacks a modality still yields an item whose missing file is
listed under its expected name, so the inference runner reports that case and carries on with the others.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from monai_probseg.bundle.images import ImageGeometry, load_voxels, read_geometry
from monai_probseg.bundle.validation import check_case_id, check_unique_case_ids
from monai_probseg.data import (
    IMAGE_EXTENSIONS,
    NoCaseFoldersError,
    brats_datalist,
    case_folder_datalist,
    check_same_geometry,
)
from monai_probseg.data.synthetic import (
    MODALITIES,
    write_ambiguous_lesions_2d,
    write_anatomy_phantoms,
    write_brats_phantoms,
)

__all__ = [
    "DATASET_KINDS",
    "BundleDatalist",
    "CaseError",
    "check_case_files",
    "find_non_finite",
    "find_unreadable",
    "scan_case_folders",
]

logger = logging.getLogger(__name__)

#: file naming of each kind of data set: modality suffixes (in channel order), consensus suffix, rater prefix
DATASET_KINDS: dict[str, dict[str, Any]] = {
    "brats": {"modalities": tuple(MODALITIES), "label": "seg", "rater": "seg-rater", "spatial_dims": 3},
    "lesions2d": {"modalities": ("image",), "label": None, "rater": "annot", "spatial_dims": 2},
    "anatomy": {"modalities": ("t1",), "label": "seg", "rater": "seg-rater", "spatial_dims": 3},
}
#: default size of the synthetic cases of each kind
_PHANTOM_SIZES = {"brats": (64, 64, 64), "lesions2d": (128, 128), "anatomy": (144, 176, 128)}
#: item keys holding one optional file path besides "image", "label" and "raters"
_OPTIONAL_FILES = ("brainmask",)


class CaseError(ValueError):
    """A problem with one case's input files (missing, unreadable, inconsistent); the message names what is wrong."""


def _kind(kind: str) -> dict[str, Any]:
    if kind not in DATASET_KINDS:
        raise ValueError(f"kind must be one of {sorted(DATASET_KINDS)}, got {kind!r}.")
    return DATASET_KINDS[kind]


def _scan(
    root: str, kind: str, val_fraction: float = 0.0, seed: int = 0, allow_missing: bool = True
) -> dict[str, list[dict[str, Any]]]:
    """The datalist of a folder of case folders, by the ``monai_probseg.data`` builder of ``kind``."""
    if kind == "brats":
        return brats_datalist(root, year="2023", val_fraction=val_fraction, seed=seed, allow_missing=allow_missing)
    spec = _kind(kind)
    return case_folder_datalist(
        root,
        modalities=spec["modalities"],
        label=spec["label"],
        rater=spec["rater"],
        optional=_OPTIONAL_FILES,
        val_fraction=val_fraction,
        seed=seed,
        allow_missing=allow_missing,
    )


def _sections(datalist: Mapping[str, Any], base_dir: str, where: str) -> dict[str, list[dict[str, Any]]]:
    """Every list of items of ``datalist`` in the common schema (absolute paths); other entries are dropped."""
    out: dict[str, list[dict[str, Any]]] = {}
    for key, value in datalist.items():
        if isinstance(value, list) and all(isinstance(v, Mapping) for v in value):
            out[key] = [_normalise_item(v, base_dir, f"{where} {key}[{i}]") for i, v in enumerate(value)]
            check_unique_case_ids(out[key], f"{where} '{key}'")
    return out


def scan_case_folders(root: str | os.PathLike, kind: str = "brats") -> list[dict[str, Any]]:
    """List the case folders under ``root`` (or one level deeper), tolerating incomplete cases.

    The folder is read by the ``monai_probseg.data`` builder of ``kind`` (:func:`monai_probseg.data.brats_datalist`
    with ``year="2023"``, :func:`monai_probseg.data.case_folder_datalist`) with ``allow_missing=True``.

    Args:
        root: the data folder.
        kind: ``"brats"`` (``<case>-t1n``, ``-t1c``, ``-t2w``, ``-t2f``, ``-seg``, ``-seg-rater<k>``, ``-brainmask``)
            or ``"lesions2d"`` (``<case>-image``, ``-annot<k>``).

    Returns:
        items ``{"case_id", "image", "label", "raters"}`` (plus ``"brainmask"`` where the file exists) sorted by
        case; a missing modality file is listed under the name it should have (``<case>/<case>-t2f.nii.gz``) so that
        the case fails with a clear message later. Empty when ``root`` holds no case folders.

    Example::

        items = scan_case_folders("/data/BraTS2023-GLI-Training")
        items[0]["image"]  # [.../BraTS-GLI-00000-000-t1n.nii.gz, ...-t1c..., ...-t2w..., ...-t2f...]
    """
    _kind(kind)
    root = os.path.abspath(os.fspath(root))
    try:
        datalist = _scan(root, kind)
    except NoCaseFoldersError:
        return []
    items = [it for section in _sections(datalist, root, f"folder '{root}'").values() for it in section]
    return sorted(items, key=lambda it: it["case_id"])


def _normalise_item(item: Mapping[str, Any], base_dir: str, where: str) -> dict[str, Any]:
    """One datalist entry in the common schema, with absolute paths."""
    if not isinstance(item, Mapping) or "image" not in item:
        raise ValueError(f"{where}: expected a dict with an 'image' entry, got {item!r}.")

    def absolute(p: Any) -> str:
        if not isinstance(p, (str, os.PathLike)):
            raise ValueError(f"{where}: expected file paths, got {p!r}.")
        p = os.path.expanduser(os.fspath(p))
        return os.path.normpath(p if os.path.isabs(p) else os.path.join(base_dir, p))

    image = item["image"]
    images = [absolute(p) for p in (image if isinstance(image, (list, tuple)) else [image])]
    label, raters = item.get("label"), item.get("raters")
    if isinstance(label, (list, tuple)):  # a list of annotator files and no consensus
        raters = label if raters is None else raters
        label = None
    out = dict(item)
    out["image"] = images
    out["label"] = absolute(label) if label is not None else None
    out["raters"] = [absolute(p) for p in (raters or [])]
    for key in _OPTIONAL_FILES:
        if out.get(key):
            out[key] = absolute(out[key])
    if out.get("case_id") in (None, ""):
        out["case_id"] = _case_id_from_path(images[0] if images else out["label"] or "")
    out["case_id"] = check_case_id(out["case_id"], where)
    return out


def _identity(item: Mapping[str, Any]) -> tuple:
    """What makes two items the same case: their image files and label (a label-only data set has no images)."""
    return (tuple(item["image"]), item.get("label"))


def _case_id_from_path(path: str) -> str:
    name = os.path.basename(path)
    for ext in IMAGE_EXTENSIONS:
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
            break
    # BraTS-style "<case>-t1n" -> "<case>"; a plain file name is kept as is
    for sep in ("-", "_"):
        head, _, tail = name.rpartition(sep)
        if head and tail in (*MODALITIES, "t1", "t1ce", "t2", "flair", "image"):
            return head
    return name


class BundleDatalist:
    """Resolve a bundle's ``dataset_dir`` into lists of cases, generating synthetic cases when there is none.

    Resolution happens on first use (so a bundle can check its output folder before any work) and is cached.

    Args:
        dataset_dir: a datalist JSON, a data folder (see the module docstring), or ``None``/``""`` for synthetic
            cases written to a temporary folder.
        kind: ``"brats"`` (3D, four MRI modalities, BraTS 2023 labels), ``"lesions2d"`` (2D, one channel, binary) or
            ``"anatomy"`` (3D skull-stripped T1, labels 0 background, 1 CSF, 2 GM, 3 WM;
            :func:`monai_probseg.data.synthetic.write_anatomy_phantoms` cases).
        data_list_key: the list :py:meth:`items` returns by default (``"test"``); when that list is missing or
            empty, all cases of the data set are used.
        num_phantoms: number of synthetic cases written when ``dataset_dir`` is empty.
        phantom_size: their spatial size (default 64^3 for ``"brats"``, 128^2 for ``"lesions2d"``, 144x176x128 at
            1 mm for ``"anatomy"``).
        num_raters: raters (annotators) per synthetic case.
        seed: seed of the synthetic cases (the embedded weights were trained on seed 0; the default 1 gives unseen
            cases).
        phantom_split: (training, validation, test) fractions of the synthetic cases.
        phantom_dir: where to write the synthetic cases (default: a new temporary folder).
        val_fraction: for a scanned folder, the fraction of labelled patients put in ``"validation"`` (seeded with
            ``split_seed``; all timepoints of a BraTS patient stay together), the split of
            :func:`monai_probseg.data.brats_datalist`.
        split_seed: seed of that validation split.
        phantom_family: shape family of synthetic ``"anatomy"`` cases (label maps of one family train a prior,
            images of another the segmenter; :func:`~monai_probseg.data.synthetic.write_anatomy_phantoms`).
        phantom_contrasts: contrasts of synthetic ``"anatomy"`` cases (default the kind's modalities, ``("t1",)``).

    Example::

        data = BundleDatalist("/data/BraTS2023")  # or "datalist.json", or None for phantoms
        for item in data.items():  # the "test" list, or every case if there is none
            print(item["case_id"], item["image"])
    """

    def __init__(
        self,
        dataset_dir: str | os.PathLike | None = None,
        kind: str = "brats",
        data_list_key: str = "test",
        num_phantoms: int = 2,
        phantom_size: Sequence[int] | None = None,
        num_raters: int = 3,
        seed: int = 1,
        phantom_split: Sequence[float] = (0.6, 0.2, 0.2),
        phantom_dir: str | os.PathLike | None = None,
        val_fraction: float = 0.0,
        split_seed: int = 0,
        phantom_family: int = 1,
        phantom_contrasts: Sequence[str] | None = None,
    ) -> None:
        self.spec = _kind(kind)
        self.phantom_family = int(phantom_family)
        self.phantom_contrasts = tuple(phantom_contrasts) if phantom_contrasts is not None else None
        self.kind = kind
        self.dataset_dir = os.fspath(dataset_dir) if dataset_dir not in (None, "") else None
        self.data_list_key = str(data_list_key)
        self.num_phantoms = int(num_phantoms)
        self.phantom_size = phantom_size
        self.num_raters = int(num_raters)
        self.seed = int(seed)
        self.phantom_split = tuple(phantom_split)
        self.phantom_dir = os.fspath(phantom_dir) if phantom_dir not in (None, "") else None
        if not 0.0 <= float(val_fraction) < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}.")
        self.val_fraction = float(val_fraction)
        self.split_seed = int(split_seed)
        self._datalist: dict[str, Any] | None = None
        self._root: str | None = None
        self._source: str | None = None
        #: what the last :py:meth:`items` call selected: ``{"source", "list", "num_cases", "not_run"}``
        self.selection: dict[str, Any] = {}

    @property
    def source(self) -> str:
        """``"folder"`` (scanned case folders) or ``"datalist"`` (a datalist JSON, also that of synthetic cases)."""
        self.datalist  # noqa: B018 (resolves)
        return self._source  # type: ignore[return-value]

    @property
    def modalities(self) -> tuple[str, ...]:
        """Names of the image channels, in order."""
        return tuple(self.spec["modalities"])

    @property
    def root(self) -> str:
        """The folder the data set lives in (the data folder, the JSON's folder or the synthetic folder)."""
        self.datalist  # noqa: B018 (resolves)
        return self._root  # type: ignore[return-value]

    @property
    def datalist(self) -> dict[str, Any]:
        """The resolved datalist ``{"training": [...], "validation": [...], "test": [...]}`` (common schema)."""
        if self._datalist is None:
            self._datalist = self._resolve()
        return self._datalist

    def _resolve(self) -> dict[str, Any]:
        path = self.dataset_dir
        if path is None:
            path = self._generate()
        path = os.path.abspath(os.path.expanduser(path))
        if os.path.isdir(path):
            try:
                datalist = _scan(path, self.kind, self.val_fraction, self.split_seed)
            except NoCaseFoldersError:
                datalist = None
            if datalist is not None:
                self._root, self._source = path, "folder"
                out = _sections(datalist, path, f"folder '{path}'")
                logger.info("found %d case(s) in %s", sum(len(v) for v in out.values()), path)
                return out
            json_path = os.path.join(path, "datalist.json")
            if not os.path.isfile(json_path):
                expected = ", ".join(f"<case>/<case>-{m}.nii.gz" for m in self.modalities)
                raise FileNotFoundError(
                    f"dataset_dir '{path}' holds no case folders ({expected}) and no datalist.json; "
                    "pass a data folder in that layout or a datalist JSON."
                )
            path = json_path
        if not os.path.isfile(path):
            raise FileNotFoundError(f"dataset_dir '{path}' does not exist: expected a data folder or a datalist JSON.")
        try:
            with open(path) as f:
                content = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"dataset_dir '{path}' is not a valid datalist JSON: {e}") from e
        base = os.path.dirname(path)
        if isinstance(content, list):
            content = {"test": content}
        if not isinstance(content, Mapping):
            raise ValueError(f"datalist '{path}' must hold a dict of lists (or a list of items), got {type(content)}.")
        base = os.path.abspath(os.path.expanduser(content.get("base_dir", base))) if "base_dir" in content else base
        self._root, self._source = base, "datalist"
        out = _sections(content, base, f"datalist '{path}'")
        logger.info("read datalist %s: %s", path, {k: len(v) for k, v in out.items()})
        return out

    def _generate(self) -> str:
        folder = self.phantom_dir or tempfile.mkdtemp(prefix=f"monai_probseg_{self.kind}_")
        size = tuple(self.phantom_size) if self.phantom_size is not None else _PHANTOM_SIZES[self.kind]
        if self.kind == "brats":
            path = write_brats_phantoms(
                folder, self.num_phantoms, size, self.num_raters, self.seed, split=self.phantom_split
            )
        elif self.kind == "anatomy":
            contrasts = self.phantom_contrasts if self.phantom_contrasts is not None else self.modalities
            path = write_anatomy_phantoms(
                folder,
                self.num_phantoms,
                size,
                contrasts=contrasts,
                seed=self.seed,
                split=self.phantom_split,
                family=self.phantom_family,
            )
        else:
            path = write_ambiguous_lesions_2d(
                folder, self.num_phantoms, size, self.num_raters, self.seed, split=self.phantom_split
            )
        logger.info(
            "no dataset_dir given: wrote %d synthetic %s case(s) of size %s (seed %d) to %s",
            self.num_phantoms,
            self.kind,
            "x".join(map(str, size)),
            self.seed,
            folder,
        )
        return path

    def all_items(self) -> list[dict[str, Any]]:
        """Every case of the data set (all lists, without duplicates), in list order.

        Raises:
            ConfigError: when two lists use one case id for different images.
        """
        seen, out = set(), []
        for value in self.datalist.values():
            for item in value:
                key = _identity(item)
                if key not in seen:
                    seen.add(key)
                    out.append(item)
        check_unique_case_ids(out, f"data set '{self.dataset_dir or self.root}'")
        return out

    def items(self, key: str | None = None, fallback_to_all: bool = True) -> list[dict[str, Any]]:
        """The cases to run: list ``key`` (default ``data_list_key``), or every case.

        Every case is returned for ``key="all"``, for a scanned **folder** when no ``key`` is passed (its lists only
        sort the cases by whether they have a label: inference and evaluation run all of them), and when the list is
        missing or empty (with ``fallback_to_all``). A datalist JSON's list is its own: the cases of its other lists
        are not run, and the log and :py:attr:`selection` say how many.

        Args:
            key: the datalist list to use (``"training"``, ``"validation"``, ``"test"``, ...; ``"all"`` for every case).
            fallback_to_all: return every case when the list is missing or empty (otherwise raise).
        """
        explicit = key is not None
        key = self.data_list_key if key is None else key
        every = self.all_items()
        if key == "all" or (self.source == "folder" and not explicit):
            if self.source == "folder" and key != "all":
                labelled = sum(1 for it in every if it.get("label") or it.get("raters"))
                logger.info(
                    "folder '%s': running all %d case(s) (%d with a label); data_list_key only selects among the "
                    "lists of a datalist JSON",
                    self.root,
                    len(every),
                    labelled,
                )
            items, chosen = every, "all"
        else:
            items, chosen = self.datalist.get(key) or [], key
            if not items:
                if not fallback_to_all:
                    raise ValueError(f"the data set has no '{key}' cases; lists found: {sorted(self.datalist)}.")
                items, chosen = every, "all"
                logger.info("the data set has no '%s' cases: using all %d case(s)", key, len(items))
        if not items:
            raise ValueError(f"the data set '{self.dataset_dir}' has no cases.")
        chosen_images = {_identity(it) for it in items}
        not_run = {
            name: sum(1 for it in value if _identity(it) not in chosen_images) for name, value in self.datalist.items()
        }
        not_run = {k: v for k, v in not_run.items() if v}
        self.selection = {"source": self.source, "list": chosen, "num_cases": len(items), "not_run": not_run}
        if not_run and not explicit:
            logger.log(
                logging.WARNING if self.dataset_dir else logging.INFO,
                "running the %d '%s' case(s) of %s; not run: %s (pass --data_list_key all to run every case)",
                len(items),
                chosen,
                self.dataset_dir or self.root,
                ", ".join(f"{v} '{k}' case(s)" for k, v in not_run.items()),
            )
        return [dict(it) for it in items]

    def training_items(self, key: str = "training") -> list[dict[str, Any]]:
        """Items for training: ``{"case_id", "image", "label": [rater files]}``; the consensus when there are none.

        Each item's ``"label"`` is the list of annotator files (``StackAnnotatorsd`` stacks them, ``RandAnnotatord``
        picks one per draw); a case with no raters falls back to ``[consensus]``.

        Args:
            key: the datalist list (no fallback: an empty list raises).
        """
        out = []
        for item in self.items(key, fallback_to_all=False):
            raters = item["raters"] or ([item["label"]] if item["label"] else [])
            if not raters:
                raise ValueError(f"case '{item['case_id']}' in '{key}' has neither a label nor raters to train on.")
            out.append({"case_id": item["case_id"], "image": item["image"], "label": raters})
        return out

    def labelled_items(self, key: str = "validation") -> list[dict[str, Any]]:
        """Items for validation: ``{"case_id", "image", "label", "raters"}``.

        ``"label"`` is the consensus file or, without one, the raters; ``"raters"`` the rater files or, without
        any, ``[consensus]`` (``StackAnnotatorsd`` stacks them for sample-set metrics such as the GED).

        Falls back to every case when the list is missing or empty; cases with neither are left out.

        Args:
            key: the datalist list.
        """
        out = []
        for item in self.items(key):
            label = item["label"] or (list(item["raters"]) if item["raters"] else None)
            if label is not None:
                raters = list(item["raters"]) if item["raters"] else [item["label"]]
                out.append({"case_id": item["case_id"], "image": item["image"], "label": label, "raters": raters})
        if not out:
            raise ValueError(f"no case of '{key}' has a label or raters to validate against.")
        return out

    def input_folders(self) -> list[str]:
        """Every folder holding an input file (and every DICOM series folder), plus the data set's root: folders a
        bundle must never write into."""
        folders = {os.path.realpath(self.root)}
        for item in self.all_items():
            optional = [item[k] for k in _OPTIONAL_FILES if item.get(k)]
            for p in [*item["image"], *([item["label"]] if item["label"] else []), *item["raters"], *optional]:
                folders.add(os.path.realpath(os.path.dirname(p)))
                if os.path.isdir(p):  # a DICOM series folder
                    folders.add(os.path.realpath(p))
        return sorted(folders)


def check_case_files(item: Mapping[str, Any], modalities: Sequence[str], atol: float = 1e-3) -> list[ImageGeometry]:
    """Check one case's image files before loading: count, existence, readable headers, equal shapes and affines.

    Files may be NIfTI or any format MONAI's ``ITKReader`` reads (:mod:`monai_probseg.bundle.images`).

    Args:
        item: ``{"image": [files], ...}``; a single multi-channel file is accepted as well (its channel count is
            checked after loading).
        modalities: the expected modality names (their number is the expected number of files).
        atol: tolerance on the affines.

    Returns:
        the :class:`~monai_probseg.bundle.ImageGeometry` of each image file.

    Raises:
        CaseError: with a message naming the file and what was expected.
    """
    images = list(item["image"])
    if len(images) != len(modalities) and not (len(images) == 1 and len(modalities) > 1):
        raise CaseError(
            f"lists {len(images)} image file(s), expected {len(modalities)} ({', '.join(modalities)}): "
            f"{[os.path.basename(p) for p in images]}"
        )
    names = modalities if len(images) == len(modalities) else ["image"]
    headers = []
    for name, path in zip(names, images):
        if not os.path.exists(path):
            raise CaseError(f"missing {name} file '{path}'")
        try:
            headers.append((name, path, read_geometry(path)))  # NIfTI: the header only
        except Exception as e:
            raise CaseError(f"cannot read the {name} file '{path}': {e}") from e
    try:
        check_same_geometry(headers, atol=atol)
    except ValueError as e:
        raise CaseError(str(e)) from e
    return [geometry for _, _, geometry in headers]


def find_unreadable(paths: Sequence[str]) -> str | None:
    """Return a message naming the first file whose voxels cannot be read (e.g. a truncated .nii.gz), else None."""
    for path in paths:
        try:
            load_voxels(path)
        except Exception as e:
            return f"cannot read '{path}' ({type(e).__name__}: {e}); is the file truncated or corrupt?"
    return None


def find_non_finite(paths: Sequence[str], names: Sequence[str]) -> str | None:
    """Count the NaN and Inf voxels of each file as stored (before any normalisation); a message naming them, or None.

    Args:
        paths: the image files.
        names: their modality names, for the message.
    """
    bad = []
    for name, path in zip(names, paths):
        voxels = np.asarray(load_voxels(path), dtype=np.float64)
        num_nan, num_inf = int(np.isnan(voxels).sum()), int(np.isinf(voxels).sum())
        if num_nan or num_inf:
            bad.append(
                f"{name} file '{os.path.basename(path)}' has {num_nan} NaN and {num_inf} Inf voxel(s) of {voxels.size}"
            )
    if not bad:
        return None
    return "; ".join(bad) + ": expected finite intensities (set them to 0, e.g. with numpy.nan_to_num, before running)"
