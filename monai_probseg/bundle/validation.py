# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""The one validation layer of the bundles: case ids, label values and config settings, checked before any work.

Every check raises :class:`ConfigError` (or :class:`~monai_probseg.bundle.CaseError` for one case's files) with a
one-line message naming the setting, file or case, what it got and what it expects. The bundle configs call
:func:`check_inference_config` first in their ``initialize`` list, so a bad setting stops the run before a network,
a data set or an output folder is made.

On the command line (``python -m monai.bundle run ...``), MONAI wraps an error raised inside a config expression in
several ``RuntimeError("Failed to evaluate ...")`` layers, and the message ends up under a 60-line traceback.
:func:`install_concise_errors` (run when ``monai_probseg.bundle`` is imported by ``monai.bundle``) installs an
exception hook that prints ``error: <message>`` on one line and exits with status 1 when the root cause is one of
these errors; any other exception keeps Python's full traceback, and so do these with ``--debug True`` or the
environment variable ``MONAI_PROBSEG_DEBUG=1``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.transforms import MapTransform

from monai_probseg.metrics import check_label_range

__all__ = [
    "CheckLabelValuesd",
    "ConfigError",
    "check_case_id",
    "check_inference_config",
    "check_label_values",
    "check_unique_case_ids",
    "install_concise_errors",
]

DEBUG_ENV = "MONAI_PROBSEG_DEBUG"


class ConfigError(ValueError):
    """A bad bundle setting or data set description (the message names it, what it got and what it expects)."""


def check_case_id(case_id: Any, where: str) -> str:
    """Check that ``case_id`` can name output files inside ``output_dir`` and return it as a string.

    A case id names the outputs ``<output_dir>/<case_id>_seg.nii.gz``...: it must be a non-empty plain name, with no
    path separator, not absolute, not ``.``/``..`` and not starting with ``.`` (hidden files, the runner's
    ``.partial-*`` folders).

    Args:
        case_id: the id (from a datalist's ``"case_id"`` or derived from the image file name).
        where: where it comes from, for the message (``"datalist '/data/list.json' test[3]"``).

    Raises:
        ConfigError: e.g. ``datalist 'list.json' test[0]: case_id '/etc/x' is not a plain name ...``.
    """
    text = str(case_id) if isinstance(case_id, (str, int)) and not isinstance(case_id, bool) else None
    bad = (
        text is None
        or not text.strip()
        or text != text.strip()
        or any(sep in text for sep in ("/", "\\", "\0"))
        or os.path.isabs(text)
        or text.startswith(".")
        or ".." in text
    )
    if bad:
        raise ConfigError(
            f"{where}: case_id {case_id!r} is not a plain name; it names the output files <case_id>_seg.nii.gz "
            "inside output_dir, so it must be non-empty, without '/', '\\' or '..', not absolute and not start "
            "with '.'."
        )
    return text  # type: ignore[return-value]


def check_unique_case_ids(items: Sequence[Mapping[str, Any]], where: str) -> None:
    """Check that no two items (with different images) share a ``case_id``: they would write the same files.

    Args:
        items: ``{"case_id", "image", ...}`` items.
        where: the data set, for the message.

    Raises:
        ConfigError: naming the duplicated id and the positions of its items.
    """
    seen: dict[str, tuple[int, Any]] = {}
    for i, item in enumerate(items):
        cid = str(item["case_id"])
        image = tuple(item.get("image") or ())
        if cid in seen and seen[cid][1] != image:
            raise ConfigError(
                f"{where}: case_id '{cid}' is used by items {seen[cid][0]} and {i} with different images; case ids "
                "name the output files and must be unique."
            )
        seen.setdefault(cid, (i, image))


def check_label_values(values: np.ndarray | torch.Tensor, num_classes: int, what: str, et_hint: bool = True) -> None:
    """Check that a label map only holds the labels ``0 .. num_classes - 1``, with a file-level message.

    The range test itself is :func:`monai_probseg.metrics.check_label_range` (one pass, no sorting); this wrapper
    also accepts float maps (NIfTI label files are often stored as floats), lists every value found and adds the
    BraTS hint.

    Args:
        values: the label map (any shape).
        num_classes: number of classes, background included.
        what: the thing checked, for the message (``"label file 'case-seg.nii.gz'"``).
        et_hint: add the hint to map BraTS 2020/2021's enhancing-tumour label 4 to 3 when 4 is found.

    Raises:
        ValueError: e.g. ``label file 'c-seg.nii.gz' has values [0, 1, 2, 4], expected labels 0, 1, 2, 3 ...``.
    """
    arr = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    if arr.size == 0:
        return
    if np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.bool_):
        try:  # the common case, one pass without sorting the volume: the metrics' range check
            ints = arr.astype(np.int64) if arr.dtype in (np.uint16, np.uint32, np.uint64) else arr
            check_label_range(torch.from_numpy(np.ascontiguousarray(ints)), int(num_classes), what)
            return
        except ValueError:
            pass  # below: the file-level message (every value found, the BraTS hint)
    found = np.unique(arr)
    expected = np.arange(int(num_classes))
    if np.isin(found, expected).all():
        return
    shown = [v.item() if hasattr(v, "item") else v for v in found[:12]]
    more = f" (and {found.size - 12} more)" if found.size > 12 else ""
    hint = ""
    if et_hint and num_classes == 4 and 4 in found:
        hint = (
            "; BraTS 2020/2021 labels use 4 for the enhancing tumour: map it to 3 (BraTS 2023) with "
            "monai.transforms.MapLabelValued(keys='label', orig_labels=[4], target_labels=[3])"
        )
    raise ValueError(
        f"{what} has values {shown}{more}, expected labels {', '.join(map(str, expected.tolist()))}{hint}."
    )


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool):
        value = None
    try:
        number = (
            int(value) if isinstance(value, (int, np.integer)) or str(value).strip().lstrip("-").isdigit() else None
        )
    except (TypeError, ValueError):
        number = None
    if number is None or number < 1:
        raise ConfigError(f"--{name} {value!r}: expected a positive integer.")
    return number


def check_inference_config(
    num_samples: Any = None,
    device: Any = None,
    checkpoint: Any = None,
    output_dir: Any = None,
    **positive: Any,
) -> None:
    """Check an inference/evaluation config's settings before anything is built (the configs' first ``initialize``).

    Args:
        num_samples: number of samples per case, a positive integer.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or a ``torch.device``; CUDA must be available for a CUDA device.
        checkpoint: the weights file (``""``/``None``: the network's own weights); must be an existing file.
        output_dir: the output folder; must be given and must not be an existing file.
        positive: further settings that must be positive integers (``sample_batch_size=4``).

    Raises:
        ConfigError: naming the setting, the value and what is expected.

    Example::

        "initialize": ["$monai_probseg.bundle.check_inference_config(@num_samples, @device, @checkpoint, @output_dir)"]
    """
    if num_samples is not None:
        _positive_int(num_samples, "num_samples")
    for name, value in positive.items():
        _positive_int(value, name)
    if device is not None:
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError) as e:
            raise ConfigError(f"--device {device!r}: {e}; expected 'cpu', 'cuda' or 'cuda:<index>'.") from None
        if dev.type == "cuda":
            if not torch.cuda.is_available():
                raise ConfigError(f"--device {device!r}: CUDA is not available on this machine; pass --device cpu.")
            if dev.index is not None and dev.index >= torch.cuda.device_count():
                raise ConfigError(
                    f"--device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s), expected an "
                    f"index below it."
                )
    if checkpoint not in (None, "") and not os.path.isfile(os.fspath(checkpoint)):
        raise ConfigError(
            f"--checkpoint '{checkpoint}' does not exist: expected a .pt file (train the bundle with "
            "configs/train.json, or pass --checkpoint <file>)."
        )
    if output_dir is not None:
        if str(output_dir).strip() == "":
            raise ConfigError("--output_dir is empty: expected a folder to write the outputs to.")
        if os.path.exists(os.fspath(output_dir)) and not os.path.isdir(os.fspath(output_dir)):
            raise ConfigError(f"--output_dir '{output_dir}' exists and is not a folder: expected a folder.")


# ---------------------------------------------------------------------------------------------- command line


def _user_error(exc: BaseException | None) -> BaseException | None:
    """The first monai_probseg user error in ``exc``'s cause/context chain, ``None`` if there is none."""
    from monai_probseg.bundle.data import CaseError  # local: data imports this module

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (ConfigError, CaseError)):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def _debug_requested(argv: Iterable[str]) -> bool:
    if os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes"):
        return True
    args = list(argv)
    for i, arg in enumerate(args):
        if arg.startswith("--debug"):
            value = arg.split("=", 1)[1] if "=" in arg else (args[i + 1] if i + 1 < len(args) else "true")
            return value.strip().lower() in ("1", "true", "yes")
    return False


def install_concise_errors(force: bool = False) -> bool:
    """Print monai_probseg's user errors as one line on the bundle command line, see the module docstring.

    Installed when ``monai_probseg.bundle`` is imported by ``python -m monai.bundle`` (``force`` installs it in any
    program). Exceptions that are not :class:`ConfigError`/:class:`~monai_probseg.bundle.CaseError` (nor caused by
    one) go to the previous hook unchanged.

    Args:
        force: install even when the program is not ``monai.bundle``.

    Returns:
        whether the hook is installed.
    """
    main = os.path.normpath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if not force and not main.endswith(os.path.join("monai", "bundle", "__main__.py")):
        return False
    previous = sys.excepthook
    if getattr(previous, "_monai_probseg", False):
        return True

    def hook(exc_type: type[BaseException], exc: BaseException, tb: Any) -> None:
        error = _user_error(exc)
        if error is None or _debug_requested(sys.argv[1:]):
            previous(exc_type, exc, tb)
            return
        message = " ".join(str(error).split())  # one line
        sys.stderr.write(f"error: {message} [traceback: rerun with --debug True or {DEBUG_ENV}=1]\n")

    hook._monai_probseg = True  # type: ignore[attr-defined]
    sys.excepthook = hook
    return True


class CheckLabelValuesd(MapTransform):
    """Check that loaded label maps hold only ``0 .. num_classes - 1`` (:func:`check_label_values`), naming the file.

    Put right after loading in a training pipeline, so a label file with foreign values (e.g. a FreeSurfer
    ``aseg`` instead of 0/1/2/3 tissue labels) stops the run with one line naming the file, the values found and
    the labels expected, instead of an index error inside the loss.

    Args:
        keys: keys of the label maps.
        num_classes: number of classes, background included.
        allow_missing_keys: do not raise for missing keys.
    """

    def __init__(self, keys, num_classes: int, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.num_classes = int(num_classes)

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            meta = getattr(d[key], "meta", {}) or {}
            name = meta.get("filename_or_obj")
            check_label_values(d[key], self.num_classes, f"label file '{name}'" if name else f"'{key}'", et_hint=False)
        return d
