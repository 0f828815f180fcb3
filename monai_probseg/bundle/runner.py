# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""A robust per-case inference runner for bundles: samples and uncertainty maps written as NIfTI in the input space.

For every case the runner checks the input files, applies the bundle's MONAI preprocessing, draws the samples with
the bundle's inferer (:py:class:`~monai_probseg.inferers.StochasticSlidingWindowInferer`), inverts the spatial
preprocessing (the bundle's ``Invertd`` postprocessing) and writes, with the affine and header of the case's first
image file::

    <case>_seg.nii.gz          label map of the mean prediction (uint8)
    <case>_prob.nii.gz         mean class probabilities, C volumes (float32)
    <case>_samples.nii.gz      N sample label maps, 4D (uint8)
    <case>_entropy.nii.gz      predictive entropy (float32)
    <case>_mutual_info.nii.gz  mutual information between the prediction and the sample (float32)
    <case>_variance.nii.gz     per-class variance of the sample probabilities, C volumes (float32)

Robustness:

- inputs: NIfTI or any format MONAI's ``ITKReader`` reads (NRRD, MetaImage, a DICOM series folder); outputs are
  NIfTI on the input's grid (:func:`~monai_probseg.bundle.save_like`: a NIfTI input's qform and sform with their
  codes, another format's origin, spacing and direction);
- settings and the data set are checked before any work (:mod:`monai_probseg.bundle.validation`: case ids that
  could name a path outside ``output_dir`` or that repeat, a checkpoint that is missing or does not fit); an output
  folder created for a run that stops there is removed again;
- a bad case (missing or corrupt file, wrong number of modalities, files that disagree in shape or affine, NaN/Inf
  voxels counted in the stored values, a resampling that collapses an axis, label values outside the classes when
  evaluating) is reported with its name and what is wrong, the other cases still run, and the run ends with an
  error listing the failed cases;
- output sets are atomic: a case's files are written into ``output_dir/.partial-<pid>-*`` and moved into place
  only when all of them are complete; such folders left by killed runs are removed; a case that fails or is skipped
  has its outputs of an earlier run removed (with a warning); ``inference_summary.json`` lists every case with its
  status (``written``, ``evaluation_failed``: maps written but not scored, ``failed``, ``skipped``) and which
  outputs replaced an earlier run's;
- the runner refuses to write into a folder that holds input files. Under ``torch.distributed`` every rank
  processes its share of the cases.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, Invertd
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from monai_probseg.bundle.data import BundleDatalist, CaseError, check_case_files, find_non_finite, find_unreadable
from monai_probseg.bundle.distributed import gather_objects, partition_items, rank_and_world_size
from monai_probseg.bundle.evaluation import evaluate_case, write_metrics
from monai_probseg.bundle.images import ImageGeometry, load_voxels, save_like
from monai_probseg.bundle.utils import load_weights
from monai_probseg.bundle.validation import ConfigError, check_case_id, check_label_values, check_unique_case_ids
from monai_probseg.metrics import BRATS_REGIONS, DEFAULT_UNCERTAINTY_MAPS
from monai_probseg.metrics import CASE_OUTPUTS as SAVED_OUTPUTS
from monai_probseg.metrics.plausibility import plausibility_scores, plausibility_warnings
from monai_probseg.metrics.quality import quality_prediction_metrics
from monai_probseg.utils import atomic_writes, remove_stale_partials, write_json_atomic

__all__ = ["SAVED_OUTPUTS", "InferenceFailedError", "ProbSegInferenceRunner", "format_plausibility", "save_like"]

logger = logging.getLogger(__name__)

_LABEL_OUTPUTS = ("seg", "samples")


class InferenceFailedError(RuntimeError):
    """Raised at the end of a run in which some cases failed (the others were written)."""


def _root_cause(e: BaseException) -> str:
    """The innermost exception of a chain, as ``Type: message`` (MONAI wraps transform errors several times)."""
    while e.__cause__ is not None:
        e = e.__cause__
    return f"{type(e).__name__}: {e}"


def format_plausibility(scores: Mapping[str, float]) -> str:
    """The plausibility figures of a case as a short log fragment (empty when there are none)."""
    if not scores:
        return ""
    text = (
        f"; far entropy {scores['far_entropy_median']:.3f}, boundary/far entropy {scores['boundary_far_ratio']:.1f}x, "
        f"brain with entropy > 0.5: {100 * scores['high_entropy_fraction']:.1f}%"
    )
    if "sample_volume_ratio_min" in scores:
        low, high = scores["sample_volume_ratio_min"], scores["sample_volume_ratio_max"]
        text += f", sample/mean tumour volume {low:.2f}-{high:.2f}"
    return text


class ProbSegInferenceRunner:
    """Run a bundle's stochastic inference case by case and write the samples and uncertainty maps as NIfTI.

    Use it from a bundle config as ``"run": ["$@runner.run()"]``.

    Args:
        network: the probabilistic network (eval mode is set here).
        inferer: called as ``inferer(image (1, C_in, *spatial), network)`` and returning a dict with the maps in
            ``outputs`` (``StochasticSlidingWindowInferer(..., keep_samples=True)``).
        data: a :py:class:`~monai_probseg.bundle.BundleDatalist` (resolved after the output folder is checked) or a
            list of items ``{"case_id", "image": [files], "label", "raters"}``.
        preprocessing: MONAI transforms applied to ``{"image": [files], ...}`` (load, channel first, orientation,
            spacing, normalisation), the same object the postprocessing inverts.
        output_dir: the folder to write to (created if missing); must not be a folder holding input files.
        postprocessing: applied to ``{"image", <outputs>...}`` to bring the maps back to the input space; default
            ``Invertd`` of ``preprocessing`` (nearest neighbour for the label maps).
        checkpoint: weights to load into ``network`` before the first case (``None``: keep the network's weights).
        device: where the network runs (default: where its parameters are).
        modalities: names of the input channels, e.g. ``("t1n", "t1c", "t2w", "t2f")``; a case must list one file
            per modality (or one file with that many channels).
        outputs: the maps to write (a subset of ``SAVED_OUTPUTS``, :data:`monai_probseg.metrics.CASE_OUTPUTS`).
        regions: label groups whose volume is reported per case (and scored with ``evaluate``), default
            :data:`monai_probseg.metrics.BRATS_REGIONS`.
        evaluate: also score every case against its label and raters (region Dice/HD95 of the mean, GED and
            HM-IoU of the samples, ECE) and write ``metrics.json``/``metrics.csv``; a case without label or raters
            then fails.
        progress: show a progress bar over the cases.
        quality: a segmentation-quality estimate called as ``quality(case_id, image (1, C_in, *spatial), outputs)``
            on the inferer's outputs in network space (DeVries & Taylor 2018 stage 2, e.g.
            :py:class:`~monai_probseg.quality.QualityPredictor` or
            :py:class:`~monai_probseg.quality.SampleAgreementQuality`) and returning the
            :py:func:`~monai_probseg.metrics.quality_report` dict; written as ``<case>_quality.json`` with the
            case's maps. The summary then ranks the cases worst first (``quality_ranking``), lists the flagged ones
            (``flagged``) and the log names them. ``None``: no quality estimate.
        on_failure: ``"exit"`` ends with ``SystemExit`` (exit status 1, a one-paragraph message, no traceback) when
            any case failed; ``"raise"`` raises :py:class:`InferenceFailedError`; ``"ignore"`` only logs.

    Example::

        runner = ProbSegInferenceRunner(
            network=net, inferer=StochasticSlidingWindowInferer((96, 96, 96), num_samples=16, keep_samples=True),
            data=BundleDatalist("/data/BraTS2023"), preprocessing=pre, output_dir="/tmp/out",
            modalities=("t1n", "t1c", "t2w", "t2f"),
        )
        summary = runner.run()
    """

    def __init__(
        self,
        network: torch.nn.Module,
        inferer: Callable[..., Mapping[str, torch.Tensor]],
        data: BundleDatalist | Sequence[Mapping[str, Any]],
        preprocessing: Compose,
        output_dir: str | os.PathLike,
        postprocessing: Callable | None = None,
        checkpoint: str | os.PathLike | None = None,
        device: str | torch.device | None = None,
        modalities: Sequence[str] = ("t1n", "t1c", "t2w", "t2f"),
        outputs: Sequence[str] = SAVED_OUTPUTS,
        regions: Mapping[str, Sequence[int]] = BRATS_REGIONS,
        evaluate: bool = False,
        progress: bool = True,
        on_failure: str = "exit",
        plausibility_limits: Mapping[str, float] | None = None,
        quality: Callable[..., Mapping[str, Any]] | None = None,
    ) -> None:
        self.network = network
        self.quality = quality
        self.plausibility_limits = dict(plausibility_limits or {})
        self.inferer = inferer
        self.data = data
        self.preprocessing = preprocessing
        if output_dir in (None, ""):
            raise ValueError("output_dir is empty: pass --output_dir <folder>.")
        self.output_dir = os.path.abspath(os.path.expanduser(os.fspath(output_dir)))
        outputs = tuple(outputs)
        unknown = [k for k in outputs if k not in SAVED_OUTPUTS]
        if unknown or not outputs:
            raise ValueError(f"outputs must be some of {SAVED_OUTPUTS}, got {outputs}.")
        self.outputs = outputs
        self.postprocessing = postprocessing or Invertd(
            keys=list(outputs),
            transform=preprocessing,
            orig_keys="image",
            nearest_interp=[k in _LABEL_OUTPUTS for k in outputs],
            to_tensor=True,
        )
        self.checkpoint = os.fspath(checkpoint) if checkpoint not in (None, "") else None
        self.device = torch.device(device) if device is not None else None
        self.modalities = tuple(modalities)
        self.regions = {str(k): tuple(int(v) for v in vals) for k, vals in dict(regions).items()}
        self.evaluate = bool(evaluate)
        self.progress = bool(progress)
        if on_failure not in ("exit", "raise", "ignore"):
            raise ValueError(f"on_failure must be 'exit', 'raise' or 'ignore', got {on_failure!r}.")
        self.on_failure = on_failure

    # ------------------------------------------------------------------ checks before any work
    def _check_not_input_folder(self, folders: Sequence[str]) -> None:
        out = os.path.realpath(self.output_dir)
        for folder in folders:
            if out == os.path.realpath(folder):
                raise ValueError(
                    f"output_dir '{self.output_dir}' is an input folder (it holds input files of the data set); "
                    "the inputs are never modified: choose another --output_dir."
                )

    def _check_writable(self) -> None:
        path = self.output_dir
        if os.path.exists(path) and not os.path.isdir(path):
            raise ValueError(f"output_dir '{path}' exists and is not a folder: choose another --output_dir.")
        try:
            os.makedirs(path, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
                pass  # a real write: os.access is wrong for root and some file systems
        except OSError as e:
            raise ValueError(
                f"output_dir '{path}' cannot be created or written to ({e.strerror or e}): choose another --output_dir."
            ) from None

    def _items(self) -> list[dict[str, Any]]:
        if isinstance(self.data, BundleDatalist):
            generated = self.data.dataset_dir is None
            if generated:
                self._check_writable()
            items = self.data.items()
            self._check_not_input_folder(self.data.input_folders())
            if not generated:
                self._check_writable()
            return items
        items = [dict(it) for it in self.data]
        for i, it in enumerate(items):
            it["case_id"] = check_case_id(it.get("case_id"), f"data[{i}]")
        check_unique_case_ids(items, "data")
        folders = set()
        for it in items:
            for p in [*it["image"], *([it["label"]] if it.get("label") else []), *(it.get("raters") or [])]:
                folders.add(os.path.dirname(os.path.abspath(p)))
        self._check_not_input_folder(sorted(folders))
        self._check_writable()
        return items

    # ------------------------------------------------------------------ one case
    def _preprocess(self, item: Mapping[str, Any]) -> tuple[MetaTensor, ImageGeometry]:
        """The preprocessed image of a case and the geometry of its first file (the outputs' reference)."""
        reference = check_case_files(item, self.modalities)[0]
        try:
            data = self.preprocessing({"image": list(item["image"]) if len(item["image"]) > 1 else item["image"][0]})
        except Exception as e:
            detail = find_unreadable(item["image"]) or _root_cause(e)
            raise CaseError(f"preprocessing failed: {detail}") from e
        image = data["image"]
        expected = len(self.modalities)
        if image.shape[0] != expected:
            raise CaseError(
                f"the image has {image.shape[0]} channel(s) after loading (shape {tuple(image.shape)}), expected "
                f"{expected} ({', '.join(self.modalities)})"
            )
        if not torch.isfinite(torch.as_tensor(image)).all():
            names = self.modalities if len(item["image"]) == expected else ["image"]
            raise CaseError(
                find_non_finite(item["image"], names)
                or "the image holds NaN/Inf values after preprocessing although its files are finite: check the "
                "bundle's preprocessing"
            )
        self._check_resampling(item, image, reference)
        return image, reference

    def _check_resampling(self, item: Mapping[str, Any], image: torch.Tensor, reference: ImageGeometry) -> None:
        """Refuse a preprocessing that collapses an axis of the input (e.g. a 0.02 mm voxel resampled to 1 mm)."""
        spatial_dims = image.ndim - 1
        before = [int(v) for v in reference.shape[:spatial_dims]]
        after = [int(v) for v in image.shape[1:]]
        spacing = tuple(round(v, 4) for v in reference.spacing[:spatial_dims])
        where = f"the file '{os.path.basename(item['image'][0])}' (shape {tuple(before)}, voxel size {spacing} mm)"
        if sum(v <= 2 for v in after) > sum(v <= 2 for v in before):
            raise CaseError(
                f"preprocessing resamples {where} to shape {tuple(after)}: an axis collapses to {min(after)} "
                "voxel(s); expected every axis to keep at least 3 voxels: is the voxel size in the header right "
                "(mm), or the bundle's Spacingd pixdim?"
            )
        ratio = float(np.prod(after)) / max(float(np.prod(before)), 1.0)
        if ratio < 1.0 / 8.0:
            logger.warning(
                "case '%s': preprocessing resamples %s to shape %s (%.1f%% of the voxels): check the voxel size",
                item["case_id"],
                where,
                tuple(after),
                100 * ratio,
            )

    def _infer(self, image: MetaTensor, case_id: str) -> tuple[dict[str, MetaTensor], dict[str, Any] | None]:
        device = self.device if self.device is not None else next(self.network.parameters()).device
        with torch.no_grad():
            result = self.inferer(image[None].to(device), self.network)
        quality = None
        if self.quality is not None:  # in network space, before the inversion (what the estimate was trained on)
            raw = image.as_tensor() if isinstance(image, MetaTensor) else image
            plain = {k: v.as_tensor() if isinstance(v, MetaTensor) else v for k, v in result.items()}
            quality = dict(self.quality(case_id, raw[None], plain))
        missing = [k for k in self.outputs if k not in result]
        if missing:
            raise RuntimeError(
                f"the inferer returned {sorted(result)}, lacking {missing}: configure it with outputs "
                f"{DEFAULT_UNCERTAINTY_MAPS} and keep_samples=True."
            )
        data: dict[str, Any] = {"image": image}
        for key in self.outputs:
            value = result[key][0].detach().cpu()
            value = value.as_tensor() if isinstance(value, MetaTensor) else value
            if key in _LABEL_OUTPUTS:
                value = value.float()  # resampled by the inversion: integer tensors cannot be interpolated
            data[key] = MetaTensor(
                value, meta=copy.deepcopy(image.meta), applied_operations=copy.deepcopy(image.applied_operations)
            )
        inverted = self.postprocessing(data)
        out = {}
        for key in self.outputs:
            value = inverted[key]
            value = value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))
            out[key] = value.round().to(torch.uint8) if key in _LABEL_OUTPUTS else value.float()
        return out, quality

    def _to_array(self, value: torch.Tensor) -> np.ndarray:
        arr = value.detach().cpu().numpy()
        arr = np.moveaxis(arr, 0, -1)  # channel first -> last, as NIfTI stores vectors / 4D series
        return arr[..., 0] if arr.shape[-1] == 1 else arr

    def _case_files(self, case_id: str) -> list[str]:
        """The output files of a case under their final names."""
        files = [os.path.join(self.output_dir, f"{case_id}_{key}.nii.gz") for key in SAVED_OUTPUTS]
        return files + [os.path.join(self.output_dir, f"{case_id}_quality.json")]

    def _remove_outputs(self, case_id: str) -> list[str]:
        """Remove a case's outputs of an earlier run (it failed or was skipped now: they would be stale)."""
        removed = []
        for path in self._case_files(case_id):
            if os.path.isfile(path):
                os.remove(path)
                removed.append(os.path.basename(path))
        if removed:
            logger.warning(
                "case '%s': removed its outputs of an earlier run so that no stale result remains: %s",
                case_id,
                ", ".join(removed),
            )
        return removed

    def _run_case(self, item: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, float] | None]:
        start = time.perf_counter()
        case_id = str(item["case_id"])
        image, reference = self._preprocess(item)
        maps, quality = self._infer(image, case_id)
        spatial_dims = image.ndim - 1
        arrays = {k: self._to_array(v) for k, v in maps.items()}
        ref_shape = tuple(reference.shape[:spatial_dims])
        for key, arr in arrays.items():
            if tuple(arr.shape[:spatial_dims]) != ref_shape:
                raise RuntimeError(
                    f"the {key} map has shape {arr.shape} after the inversion, expected the input's {ref_shape}: "
                    "does the postprocessing invert every spatial preprocessing transform?"
                )
        affine = maps[self.outputs[0]].affine if isinstance(maps[self.outputs[0]], MetaTensor) else None
        if (
            affine is not None
            and spatial_dims == 3
            and not np.allclose(np.asarray(affine), reference.affine, atol=1e-3)
        ):
            raise RuntimeError(
                f"the inverted maps have affine {np.round(np.asarray(affine), 3).tolist()}, expected the input's "
                f"{np.round(reference.affine, 3).tolist()}."
            )

        written, overwritten = {}, []
        with atomic_writes(self.output_dir) as staged:  # every file is moved into place once all are complete
            for key in self.outputs:
                dtype = np.uint8 if key in _LABEL_OUTPUTS else np.float32
                name = f"{case_id}_{key}.nii.gz"
                save_like(arrays[key], reference, staged(name), dtype)
                written[key] = os.path.join(self.output_dir, name)
                if os.path.exists(written[key]):
                    overwritten.append(name)
            if quality is not None:
                name = f"{case_id}_quality.json"
                with open(staged(name), "w") as f:
                    json.dump(quality, f, indent=2)
                written["quality"] = os.path.join(self.output_dir, name)
                if os.path.exists(written["quality"]):
                    overwritten.append(name)
        if overwritten:
            logger.info("case '%s': overwrote the outputs of an earlier run (%d files)", case_id, len(overwritten))

        scores, evaluation_error = None, None
        if self.evaluate:  # after the maps are written: a bad label file does not lose them
            try:
                scores = self._evaluate(item, maps, reference, spatial_dims)
            except Exception as e:
                evaluation_error = str(e) if isinstance(e, CaseError) else _root_cause(e)

        voxel = float(abs(np.linalg.det(reference.affine[:spatial_dims, :spatial_dims])))
        seg = arrays["seg"] if "seg" in arrays else None
        volumes = {}
        if seg is not None:
            for name, labels in self.regions.items():
                count = int(np.isin(seg, labels).sum())
                volumes[name] = count * voxel / (1000.0 if spatial_dims == 3 else 1.0)
        entropy = float(arrays["entropy"].mean()) if "entropy" in arrays else float("nan")
        plausibility = self._plausibility(item, arrays, reference, spatial_dims)
        summary = {
            "case_id": case_id,
            "shape": list(ref_shape),
            "seconds": time.perf_counter() - start,
            "mean_entropy": entropy,
            "volumes": volumes,
            "volume_unit": "mL" if spatial_dims == 3 else "mm2",
            "plausibility": plausibility,
            "warnings": plausibility_warnings(plausibility, self.plausibility_limits) if plausibility else [],
            "inputs": {"image": list(item["image"]), "label": item.get("label"), "raters": item.get("raters") or []},
            "outputs": written,
            "overwritten": overwritten,
        }
        if quality is not None:
            summary["quality"] = quality
        if evaluation_error is not None:
            summary["evaluation_error"] = evaluation_error
        return summary, scores

    def _plausibility(
        self, item: Mapping[str, Any], arrays: Mapping[str, np.ndarray], reference: ImageGeometry, spatial_dims: int
    ) -> dict[str, float]:
        """Plausibility figures of the case's maps (:func:`~monai_probseg.metrics.plausibility_scores`), in mm.

        Distances are measured from the mean prediction's tumour (every label of ``regions``); the brain is the
        case's ``brainmask`` file when the datalist has one, else the voxels where any modality is non-zero.
        """
        if "entropy" not in arrays or "seg" not in arrays:
            return {}
        labels = sorted({lab for labs in self.regions.values() for lab in labs})
        tumour = np.isin(arrays["seg"], labels)
        samples = None
        if "samples" in arrays:
            samples = arrays["samples"]
            samples = samples[None] if samples.ndim == spatial_dims else np.moveaxis(samples, -1, 0)
            samples = np.isin(samples, labels)
        if item.get("brainmask"):
            brain = np.asarray(load_voxels(item["brainmask"])).reshape(tumour.shape) > 0
        else:
            brain = np.zeros(tumour.shape, dtype=bool)
            for path in item["image"]:
                data = np.asarray(load_voxels(path))
                if data.size == brain.size:  # a multi-channel file would not be one modality: leave it out
                    brain |= data.reshape(brain.shape) != 0
        spacing = reference.spacing[:spatial_dims]
        return plausibility_scores(arrays["entropy"], tumour, samples=samples, brain=brain, spacing=spacing)

    def _evaluate(
        self, item: Mapping[str, Any], maps: Mapping[str, torch.Tensor], reference: ImageGeometry, spatial_dims: int
    ) -> dict[str, float]:
        num_classes = int(maps["prob"].shape[0])

        def load(path: str, what: str) -> torch.Tensor:
            try:
                arr = np.asarray(load_voxels(path))
            except Exception as e:
                raise CaseError(f"cannot read the {what} file '{path}': {_root_cause(e)}") from e
            arr = (
                arr.reshape(arr.shape[:spatial_dims])
                if arr.ndim > spatial_dims and arr.size == np.prod(arr.shape[:spatial_dims])
                else arr
            )
            if tuple(arr.shape) != tuple(reference.shape[:spatial_dims]):
                raise CaseError(
                    f"the {what} file '{os.path.basename(path)}' has shape {arr.shape}, expected the image's "
                    f"{tuple(reference.shape[:spatial_dims])}"
                )
            labels = np.rint(arr).astype(np.int64)
            try:
                check_label_values(labels, num_classes, f"the {what} file '{path}'")
            except ValueError as e:
                raise CaseError(str(e)) from None
            return torch.as_tensor(labels)

        label = load(item["label"], "label") if item.get("label") else None
        raters = item.get("raters") or []
        rater_maps = torch.stack([load(p, "rater") for p in raters]) if raters else None
        return evaluate_case(
            maps["seg"][0].long(),
            maps["prob"],
            maps["samples"].long(),
            label,
            rater_maps,
            num_classes=num_classes,
            regions=self.regions,
            spacing=list(reference.spacing[:spatial_dims]),
        )

    # ------------------------------------------------------------------ the run
    def run(self) -> dict[str, Any]:
        """Process every case (this rank's share under torch.distributed); see the class docstring.

        Returns:
            ``{"cases": [summary of each written case], "failed": {case_id: message}, "skipped": {case_id: reason},
            "case_status": [{"case_id", "status", ...} for every case], "metrics": {case_id: scores}}`` over all
            ranks (``metrics`` only with ``evaluate``). ``status`` is ``"written"``, ``"evaluation_failed"`` (maps
            written, not scored), ``"failed"`` or ``"skipped"``.

        Raises:
            ValueError: a setting, the checkpoint, the output folder or the data set is wrong (before any work; an
                output folder created for the run is removed again; ``SystemExit`` with the message when
                ``on_failure="exit"``).
            SystemExit: (``on_failure="exit"``) some cases failed, after all others were written.
            InferenceFailedError: (``on_failure="raise"``) the same.
        """
        existed = os.path.isdir(self.output_dir)
        try:
            if self.evaluate and not {"seg", "prob", "samples"} <= set(self.outputs):
                raise ConfigError(f"evaluate needs the 'seg', 'prob' and 'samples' outputs, got {self.outputs}.")
            if self.device is not None:
                self.network.to(self.device)
            if self.checkpoint is not None:
                try:
                    load_weights(self.network, self.checkpoint)
                except RuntimeError as e:  # the weights do not fit: a setting, not a crash
                    raise ConfigError(str(e)) from e
            items = self._items()
        except (ValueError, FileNotFoundError) as e:
            if not existed and os.path.isdir(self.output_dir) and not os.listdir(self.output_dir):
                os.rmdir(self.output_dir)  # leave no empty output folder behind
            if self.on_failure == "exit":  # a one-line message for the command line, no traceback
                raise SystemExit(f"error: {' '.join(str(e).split())}") from None
            raise
        ids = [str(it["case_id"]) for it in items]
        rank, world = rank_and_world_size()
        mine = partition_items(items)
        self.network.eval()
        for path in remove_stale_partials(self.output_dir):
            logger.warning("removed '%s', the unfinished outputs of a killed run", path)
        selection = dict(getattr(self.data, "selection", {}) or {})
        logger.info(
            "inference on %d case(s)%s -> %s",
            len(mine),
            f" (rank {rank} of {world})" if world > 1 else "",
            self.output_dir,
        )

        summaries, failed, skipped, metrics, status = [], {}, {}, {}, {}
        with logging_redirect_tqdm():
            for item in tqdm(mine, desc="cases", unit="case", disable=not self.progress):
                case_id = str(item["case_id"])
                if self.evaluate and not item.get("label") and not item.get("raters"):
                    skipped[case_id] = "no label and no raters to evaluate against"
                    status[case_id] = {"status": "skipped", "message": skipped[case_id]}
                    status[case_id]["removed_stale"] = self._remove_outputs(case_id)
                    logger.warning("case '%s' skipped: %s", case_id, skipped[case_id])
                    continue
                try:
                    summary, scores = self._run_case(item)
                except Exception as e:
                    message = str(e) if isinstance(e, CaseError) else _root_cause(e)
                    failed[case_id] = message
                    logger.error("case '%s' failed: %s", case_id, message)
                    status[case_id] = {"status": "failed", "message": message}
                    status[case_id]["removed_stale"] = self._remove_outputs(case_id)
                    continue
                summaries.append(summary)
                status[case_id] = {"status": "written", "overwritten": summary["overwritten"]}
                if "evaluation_error" in summary:
                    failed[case_id] = f"maps written, not evaluated: {summary['evaluation_error']}"
                    status[case_id] = {**status[case_id], "status": "evaluation_failed", "message": failed[case_id]}
                    logger.error("case '%s': %s", case_id, failed[case_id])
                if scores is not None:
                    if "quality" in summary:  # predicted beside true Dice in metrics.csv
                        predicted = summary["quality"]["predicted_dice"]
                        scores.update({f"predicted_dice_{k}": float(v) for k, v in predicted.items()})
                        scores["predicted_dice_mean"] = float(summary["quality"]["predicted_dice_mean"])
                        scores["true_dice_mean"] = float(np.mean([scores[f"dice_{k}"] for k in predicted]))
                    metrics[case_id] = scores
                vols = ", ".join(f"{k} {v:.2f} {summary['volume_unit']}" for k, v in summary["volumes"].items())
                logger.info(
                    "%s: shape %s, %.1f s, mean entropy %.4f, %s%s",
                    case_id,
                    "x".join(map(str, summary["shape"])),
                    summary["seconds"],
                    summary["mean_entropy"],
                    vols,
                    format_plausibility(summary["plausibility"]),
                )
                if summary["warnings"]:
                    logger.warning(
                        "case '%s': the samples and maps look implausible: %s", case_id, "; ".join(summary["warnings"])
                    )
                if "quality" in summary:
                    q = summary["quality"]
                    logger.log(
                        logging.WARNING if q["failure"] else logging.INFO,
                        "case '%s': predicted Dice %s (mean %.3f, %s)%s",
                        case_id,
                        ", ".join(f"{k} {v:.3f}" for k, v in q["predicted_dice"].items()),
                        q["predicted_dice_mean"],
                        q["quality_model"],
                        f": flagged for review (below {q['failure_threshold']:.2f})" if q["failure"] else "",
                    )

        gathered = gather_objects((summaries, failed, skipped, metrics, status))
        summaries = sorted((s for g in gathered for s in g[0]), key=lambda s: ids.index(s["case_id"]))
        failed = {k: g[1][k] for k in ids for g in gathered if k in g[1]}
        skipped = {k: g[2][k] for k in ids for g in gathered if k in g[2]}
        all_metrics = {k: v for g in gathered for k, v in g[3].items()}
        all_status = {k: v for g in gathered for k, v in g[4].items()}
        metrics = {k: all_metrics[k] for k in ids if k in all_metrics}
        case_status = [{"case_id": k, **all_status[k]} for k in ids if k in all_status]
        implausible = [s["case_id"] for s in summaries if s["warnings"]]
        overwritten = [s["case_id"] for s in summaries if s["overwritten"]]
        result: dict[str, Any] = {
            "cases": summaries,
            "failed": failed,
            "skipped": skipped,
            "implausible": implausible,
            "overwritten": overwritten,
            "case_status": case_status,
        }
        rated = [s for s in summaries if "quality" in s]
        if rated:  # worst first: the order in which a person reviews them
            ranking = sorted(rated, key=lambda s: s["quality"]["predicted_dice_mean"])
            result["quality_ranking"] = [
                {
                    "case_id": s["case_id"],
                    "predicted_dice_mean": s["quality"]["predicted_dice_mean"],
                    "failure": s["quality"]["failure"],
                }
                for s in ranking
            ]
            result["flagged"] = [s["case_id"] for s in ranking if s["quality"]["failure"]]
        if rank == 0:
            write_json_atomic(
                {"output_dir": self.output_dir, "num_cases": len(items), "selection": selection, **result},
                os.path.join(self.output_dir, "inference_summary.json"),
            )
        if self.evaluate:
            result["metrics"] = metrics
            if rank == 0:
                extra: dict[str, Any] = {"failed": failed, "skipped": skipped}
                rated = [m for m in metrics.values() if "predicted_dice_mean" in m]
                if len(rated) >= 2:  # how well the quality estimate ranks and flags the cases (DeVries & Taylor)
                    threshold = float(summaries[0]["quality"]["failure_threshold"])
                    extra["quality_prediction"] = {
                        **quality_prediction_metrics(
                            [m["predicted_dice_mean"] for m in rated], [m["true_dice_mean"] for m in rated], threshold
                        ),
                        "failure_threshold": threshold,
                    }
                    logger.info(
                        "quality estimate vs true mean Dice over %d case(s): %s",
                        len(rated),
                        ", ".join(
                            f"{k} {v:.3f}" for k, v in extra["quality_prediction"].items() if isinstance(v, float)
                        ),
                    )
                json_path, csv_path = write_metrics(metrics, self.output_dir, extra=extra)
                logger.info("metrics of %d case(s): %s, %s", len(metrics), json_path, csv_path)
        counts = {s: sum(c["status"] == s for c in case_status) for s in ("written", "evaluation_failed", "failed")}
        logger.info(
            "wrote the outputs of %d of %d case(s) to %s (%d failed, %d skipped%s)",
            counts["written"] + counts["evaluation_failed"],
            len(items),
            self.output_dir,
            counts["failed"],
            len(skipped),
            f", {len(overwritten)} overwriting an earlier run" if overwritten else "",
        )
        if skipped:
            logger.warning(
                "%d case(s) skipped (see 'case_status' in inference_summary.json): %s",
                len(skipped),
                "; ".join(f"{k}: {v}" for k, v in skipped.items()),
            )
        if result.get("flagged"):
            logger.warning(
                "%d case(s) flagged for review by the quality estimate (worst first, see 'quality_ranking' in "
                "inference_summary.json): %s",
                len(result["flagged"]),
                ", ".join(result["flagged"]),
            )
        if implausible:
            logger.warning(
                "%d case(s) with implausible samples or maps (see 'warnings' in inference_summary.json): %s",
                len(implausible),
                ", ".join(implausible),
            )
        if failed and self.on_failure != "ignore":
            lines = "\n".join(f"  {k}: {v}" for k, v in failed.items())
            message = (
                f"{len(failed)} of {len(items)} case(s) failed (the others were written to {self.output_dir}):\n{lines}"
            )
            if self.on_failure == "raise":
                raise InferenceFailedError(message)
            raise SystemExit(message)
        return result
