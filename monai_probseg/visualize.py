# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""Figures a person would rather look at than read: samples and uncertainty maps, calibration, mode frequencies.

- :func:`plot_sample_grid`: one row per case (or per chosen slice of a 3D case): the image, the raters (or the
  reference), the mean segmentation, a few samples, the entropy and the mutual information;
- :func:`plot_reliability_diagram`: the observed frequency of a class against the predicted probability, binned,
  for one or several sets of mean probabilities;
- :func:`plot_mode_frequencies`: how often samples fall in each mode of a known distribution of masks (the 2D
  synthetic lesions, :func:`~monai_probseg.data.match_modes`) next to the true mode probabilities;
- :func:`plot_risk_coverage` (with :func:`risk_coverage_curve`): selective prediction, the mean error of the
  cases kept when only the cases with the best predicted quality are kept, against the fraction kept.

Every function takes numpy arrays or tensors and returns a matplotlib ``Figure``; matplotlib is imported only
when a figure is drawn (``pip install matplotlib``, part of the ``[all]`` extra). :func:`figure_to_array` turns a
figure into an RGB array (for TensorBoard, see :py:class:`~monai_probseg.handlers.TensorBoardSampleHandler`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "figure_to_array",
    "pick_slice",
    "plot_mode_frequencies",
    "plot_reliability_diagram",
    "plot_risk_coverage",
    "plot_sample_grid",
    "reliability_bins",
    "risk_coverage_curve",
]


def _np(x: Any) -> np.ndarray | None:
    if x is None:
        return None
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        if hasattr(x, "as_tensor"):  # MetaTensor
            x = x.as_tensor()
        x = x.numpy()
    return np.asarray(x)


def pick_slice(mask: np.ndarray, axis: int = -1) -> int:
    """Index along ``axis`` of the slice with the most foreground voxels of ``mask`` (the middle when empty).

    Args:
        mask: a label map or mask (any number of dimensions); non-zero is foreground.
        axis: the axis along which slices are indexed.

    Example::

        z = pick_slice(seg, axis=2)  # the axial slice through the largest cross-section of a (H, W, D) label
    """
    mask = _np(mask) > 0
    axis = axis % mask.ndim
    counts = mask.sum(axis=tuple(a for a in range(mask.ndim) if a != axis))
    return int(counts.argmax()) if counts.any() else mask.shape[axis] // 2


def _spatial_dims(case: Mapping[str, Any], image: np.ndarray) -> int:
    """2 or 3, from the stacks of label maps (``(N, *spatial)``) when there are any, else from the image."""
    for key in ("samples", "raters"):
        stack = _np(case.get(key))
        if stack is not None and stack.ndim in (3, 4):
            return stack.ndim - 1
    seg = _np(case.get("seg"))
    if seg is not None:
        if seg.ndim == image.ndim and image.ndim in (3, 4) and seg.shape[0] == 1 and seg.shape[1:] == image.shape[1:]:
            return image.ndim - 1  # both have a channel axis
        if seg.ndim in (2, 3):
            return seg.ndim
    return 3 if image.ndim == 4 else 2


def _spatial(x: Any, spatial_dims: int, name: str, stack: bool = False) -> np.ndarray | None:
    """``x`` as ``(*spatial)`` (or ``(N, *spatial)`` if ``stack``), dropping a leading channel of size 1."""
    x = _np(x)
    if x is None:
        return None
    want = spatial_dims + int(stack)
    if x.ndim == want + 1 and x.shape[0] == 1:
        x = x[0]
    if not stack and x.ndim == want + 1 and x.shape[0] > 1 and name == "seg":  # one-hot or probabilities
        x = x.argmax(0)
    if stack and x.ndim == spatial_dims:
        x = x[None]
    if x.ndim != want:
        expected = "(N, *spatial)" if stack else "(*spatial) or (1, *spatial)"
        raise ValueError(f"'{name}' has shape {x.shape}, expected {expected} with {spatial_dims} spatial dims.")
    return x


def _cut(x: np.ndarray | None, spatial_dims: int, index: int | None, axis: int) -> np.ndarray | None:
    """The 2D slice ``index`` along spatial ``axis`` of ``x`` (``(*spatial)`` or ``(N, *spatial)``)."""
    if x is None or spatial_dims == 2:
        return x
    return np.take(x, index, axis=x.ndim - 3 + axis)


def plot_sample_grid(
    cases: Sequence[Mapping[str, Any]] | Mapping[str, Any],
    num_samples: int = 4,
    slice_index: int | Sequence[int] | None = None,
    slice_axis: int = 2,
    image_channel: int = 0,
    num_classes: int | None = None,
    titles: Sequence[str] | None = None,
    entropy_max: float | None = None,
    figsize_per_panel: float = 1.9,
    spatial_dims: int | None = None,
) -> Any:
    """One row per case (or per slice): image, raters, mean segmentation, samples, entropy, mutual information.

    Args:
        cases: a dict or a list of dicts with ``"image"`` ``(C, *spatial)`` (or ``(*spatial)``) and any of
            ``"raters"`` ``(K, *spatial)`` label maps (or ``"label"``, ``(*spatial)`` or ``(K, *spatial)``),
            ``"seg"`` mean label map, ``"samples"`` ``(N, *spatial)`` label maps, ``"entropy"`` and
            ``"mutual_info"``; numpy arrays or tensors, 2D or 3D spatial. ``"seg"``, ``"entropy"`` and
            ``"mutual_info"`` may keep a channel axis of size 1, as :py:class:`~monai_probseg.inferers.
            StochasticSlidingWindowInferer` returns them (one batch item of its output is such a dict).
        num_samples: how many samples to show per row.
        slice_index: the slice of 3D volumes along ``slice_axis``, or several (one row each); default: the largest
            cross-section of the raters (else of the mean segmentation) of each case.
        slice_axis: the spatial axis that is cut (2: axial for RAS volumes).
        image_channel: the image channel shown (e.g. 3 for FLAIR in the BraTS order t1n, t1c, t2w, t2f).
        num_classes: colour range of the label maps (default: the largest label seen + 1).
        titles: one title per case (default: ``case_id`` when given).
        entropy_max: upper end of the entropy colour scale (default: ``log(num_classes)``).
        figsize_per_panel: inches per panel.
        spatial_dims: 2 or 3; default: from the shapes (``samples``/``raters`` are ``(N, *spatial)``).

    Returns:
        the matplotlib ``Figure``.

    Example::

        out = inferer(image, network)  # StochasticSlidingWindowInferer(..., keep_samples=True)
        fig = plot_sample_grid({"image": image[0], "raters": raters[0], **{k: v[0] for k, v in out.items()}},
                               image_channel=3, slice_index=[20, 24])
        fig.savefig("samples.png")
    """
    import matplotlib.pyplot as plt

    if isinstance(cases, Mapping):
        cases = [cases]
    if not cases:
        raise ValueError("cases is empty: pass at least one dict with an 'image'.")
    if titles is not None and len(titles) != len(cases):
        raise ValueError(f"titles has {len(titles)} entries for {len(cases)} cases.")
    rows = []
    max_label = 1
    for c, case in enumerate(cases):
        if "image" not in case:
            raise ValueError(f"case {c} has no 'image' (keys: {sorted(map(str, case))}).")
        image = _np(case["image"])
        dims = spatial_dims or _spatial_dims(case, image)
        if image.ndim == dims:
            image = image[None]
        if image.ndim != dims + 1:
            raise ValueError(f"case {c}: 'image' has shape {image.shape}, expected (C, *spatial) with {dims} dims.")
        if not 0 <= image_channel < image.shape[0]:
            raise ValueError(f"image_channel {image_channel} is out of range: the image has {image.shape[0]} channels.")
        raters = _spatial(case.get("raters"), dims, "raters", stack=True)
        if raters is None and case.get("label") is not None:
            raters = _spatial(case["label"], dims, "label", stack=True)
        seg = _spatial(case.get("seg"), dims, "seg")
        samples = _spatial(case.get("samples"), dims, "samples", stack=True)
        entropy = _spatial(case.get("entropy"), dims, "entropy")
        mutual_info = _spatial(case.get("mutual_info"), dims, "mutual_info")
        title = titles[c] if titles is not None else str(case.get("case_id", ""))
        if dims == 3:
            if slice_index is None:
                ref = raters.max(0) if raters is not None else seg
                indices = [pick_slice(ref, slice_axis) if ref is not None else image.shape[1 + slice_axis] // 2]
            else:
                indices = [slice_index] if isinstance(slice_index, (int, np.integer)) else list(slice_index)
        else:
            indices = [None]
        for index in indices:
            row = {
                "image": _cut(image[image_channel], dims, index, slice_axis),
                "raters": list(_cut(raters, dims, index, slice_axis)) if raters is not None else [],
                "seg": _cut(seg, dims, index, slice_axis),
                "samples": list(_cut(samples[:num_samples], dims, index, slice_axis)) if samples is not None else [],
                "entropy": _cut(entropy, dims, index, slice_axis),
                "mutual_info": _cut(mutual_info, dims, index, slice_axis),
                "title": title + (f" slice {index}" if index is not None else ""),
            }
            for lab in [*row["raters"], row["seg"], *row["samples"]]:
                if lab is not None:
                    max_label = max(max_label, int(lab.max()))
            rows.append(row)
    num_classes = num_classes or max_label + 1
    entropy_max = entropy_max if entropy_max is not None else float(np.log(max(num_classes, 2)))
    num_raters = max(len(r["raters"]) for r in rows)
    num_shown = max(len(r["samples"]) for r in rows)
    has = {key: any(r[key] is not None for r in rows) for key in ("seg", "entropy", "mutual_info")}
    label_kw = {"cmap": "viridis", "vmin": 0, "vmax": num_classes - 1, "interpolation": "nearest"}
    map_kw = {"cmap": "magma", "vmin": 0, "vmax": entropy_max}
    layout = [("image", "image", None, {"cmap": "gray"})]
    layout += [(f"rater {k + 1}", "raters", k, label_kw) for k in range(num_raters)]
    layout += [("mean", "seg", None, label_kw)] if has["seg"] else []
    layout += [(f"sample {k + 1}", "samples", k, label_kw) for k in range(num_shown)]
    layout += [("entropy", "entropy", None, map_kw)] if has["entropy"] else []
    layout += [("mutual info", "mutual_info", None, map_kw)] if has["mutual_info"] else []
    fig, axes = plt.subplots(
        len(rows),
        len(layout),
        figsize=(figsize_per_panel * len(layout), figsize_per_panel * len(rows)),
        squeeze=False,
    )
    for r, row in enumerate(rows):
        for c, (name, key, k, kw) in enumerate(layout):
            ax = axes[r, c]
            ax.axis("off")
            data = row[key] if k is None else (row[key][k] if k < len(row[key]) else None)
            if data is None:
                continue
            ax.imshow(np.asarray(data, dtype=np.float32).T, origin="lower", **kw)
            if r == 0:
                ax.set_title(name, fontsize=8)
        axes[r, 0].text(
            -0.05, 0.5, row["title"], transform=axes[r, 0].transAxes, rotation=90, va="center", ha="right", fontsize=7
        )
    fig.tight_layout()
    return fig


def reliability_bins(
    probs: Any, target: Any, num_bins: int = 10, include_background: bool = False
) -> dict[str, np.ndarray]:
    """Bin class probabilities and count how often the class is the true one (one-vs-rest, pooled over classes).

    Args:
        probs: class probabilities ``(B, C, *spatial)`` (e.g. the mean over samples, the inferer's ``"prob"``).
        target: label map ``(B, 1, *spatial)`` or ``(B, *spatial)``, or one-hot ``(B, C, *spatial)``.
        num_bins: equal-width bins of [0, 1].
        include_background: whether class 0 is pooled with the others.

    Returns:
        ``{"edges": (num_bins + 1,), "confidence": (num_bins,) mean probability per bin, "frequency": (num_bins,)
        observed frequency per bin, "count": (num_bins,) voxels per bin, "ece": ()}`` (NaN in empty bins; ``ece``
        is the count-weighted mean of ``|frequency - confidence|``).

    Example::

        bins = reliability_bins(out["prob"], label, num_bins=10)
    """
    p = _np(probs).astype(np.float64)
    t = _np(target)
    if p.ndim < 3:
        raise ValueError(f"probs must be (B, C, *spatial), got shape {p.shape}.")
    num_classes = p.shape[1]
    if t.shape == p.shape:
        onehot = t > 0.5
    else:
        if t.ndim == p.ndim and t.shape[1] == 1:
            t = t[:, 0]
        if t.shape != (p.shape[0], *p.shape[2:]):
            raise ValueError(f"target of shape {t.shape} matches neither a label map nor one-hot for probs {p.shape}.")
        onehot = t[:, None] == np.arange(num_classes).reshape(1, -1, *([1] * (p.ndim - 2)))
    first = 0 if include_background or num_classes == 1 else 1
    conf = p[:, first:].ravel()
    hit = onehot[:, first:].ravel().astype(np.float64)
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1]), 0, num_bins - 1)
    count = np.bincount(which, minlength=num_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.bincount(which, conf, minlength=num_bins) / count
        frequency = np.bincount(which, hit, minlength=num_bins) / count
    filled = count > 0
    ece = float(np.sum(count[filled] * np.abs(frequency[filled] - confidence[filled])) / max(count.sum(), 1))
    return {"edges": edges, "confidence": confidence, "frequency": frequency, "count": count, "ece": np.array(ece)}


def _named(values: Any, default: str) -> dict[str, Any]:
    """A ``{name: value}`` dict from a dict or a single value."""
    return dict(values) if isinstance(values, Mapping) else {default: values}


def plot_reliability_diagram(
    probs: Any,
    target: Any,
    num_bins: int = 10,
    include_background: bool = False,
    ax: Any = None,
    title: str | None = "reliability diagram",
) -> Any:
    """Observed frequency against predicted probability, one curve per set of probabilities, with the voxel counts.

    A calibrated model's curve follows the diagonal; a curve under it is over-confident. The legend gives each
    curve's expected calibration error (count-weighted, bins pooled over the classes, see
    :func:`reliability_bins`; :func:`~monai_probseg.metrics.expected_calibration_error` gives MONAI's per-class
    values).

    Args:
        probs: class probabilities ``(B, C, *spatial)``, or a dict ``{name: probabilities}`` to compare models.
        target: label map ``(B, 1, *spatial)`` / ``(B, *spatial)`` or one-hot ``(B, C, *spatial)``, the same for all.
        num_bins: equal-width probability bins.
        include_background: whether class 0 is pooled with the others.
        ax: a matplotlib ``Axes`` to draw in (default: a new figure).
        title: the axes title.

    Returns:
        the matplotlib ``Figure``.

    Example::

        fig = plot_reliability_diagram({"SSN": ssn_prob, "U-Net": unet_prob}, label, num_bins=10)
    """
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=(4.2, 4.2))
    else:
        fig = ax.figure
    ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="calibrated")
    hist = ax.twinx()
    for i, (name, p) in enumerate(_named(probs, "model").items()):
        bins = reliability_bins(p, target, num_bins, include_background)
        filled = bins["count"] > 0
        color = f"C{i}"
        ax.plot(
            bins["confidence"][filled],
            bins["frequency"][filled],
            marker="o",
            markersize=3,
            color=color,
            label=f"{name} (ECE {float(bins['ece']):.3f})",
        )
        centres = 0.5 * (bins["edges"][1:] + bins["edges"][:-1])
        hist.bar(centres, bins["count"], width=1.0 / num_bins, color=color, alpha=0.15)
    hist.set_yscale("log")
    hist.set_ylabel("voxels per bin", fontsize=8)
    ax.set_zorder(hist.get_zorder() + 1)
    ax.patch.set_visible(False)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("predicted probability")
    ax.set_ylabel("observed frequency")
    if title:
        ax.set_title(title)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return fig


def plot_mode_frequencies(
    sample_modes: Any,
    probabilities: Sequence[float] | Any,
    mode_names: Sequence[str] | None = None,
    ax: Any = None,
    title: str | None = "mode frequencies",
) -> Any:
    """Bars of how often samples fall in each mode of a known mask distribution, beside the true probabilities.

    Args:
        sample_modes: int ``(N,)`` mode index of each sample, ``-1`` for a sample equal to no mode (as
            :func:`~monai_probseg.data.match_modes` returns), or a dict ``{name: indices}`` to compare samplers.
        probabilities: ``(M,)`` true probability of each mode (e.g. ``[p for _, p in case["modes"]]``).
        mode_names: ``M`` mode names (e.g. ``case["mode_names"]``); default ``mode 0``, ``mode 1``, ...
        ax: a matplotlib ``Axes`` to draw in (default: a new figure).
        title: the axes title.

    Returns:
        the matplotlib ``Figure``; the last group of bars ("other") is the fraction of samples equal to no mode.

    Example::

        modes = match_modes(samples, case)  # samples (N, H, W) label maps
        fig = plot_mode_frequencies(modes, [p for _, p in case["modes"]], case["mode_names"])
    """
    import matplotlib.pyplot as plt

    probs = _np(probabilities).astype(np.float64).ravel()
    num_modes = len(probs)
    names = list(mode_names) if mode_names is not None else [f"mode {m}" for m in range(num_modes)]
    if len(names) != num_modes:
        raise ValueError(f"mode_names has {len(names)} names for {num_modes} probabilities.")
    groups = _named(sample_modes, "samples")
    if ax is None:
        fig, ax = plt.subplots(figsize=(1.0 + 0.9 * (num_modes + 1) * (1 + 0.3 * len(groups)), 3.2))
    else:
        fig = ax.figure
    width = 0.8 / (len(groups) + 1)
    x = np.arange(num_modes + 1)
    ax.bar(x[:-1] - 0.4 + width / 2, probs, width, color="0.3", label="true")
    for i, (name, idx) in enumerate(groups.items()):
        idx = _np(idx).astype(np.int64).ravel()
        if idx.size == 0:
            raise ValueError(f"sample_modes {name!r} is empty.")
        if idx.min() < -1 or idx.max() >= num_modes:
            raise ValueError(f"sample_modes {name!r} has indices outside [-1, {num_modes - 1}].")
        freq = np.bincount(np.where(idx < 0, num_modes, idx), minlength=num_modes + 1) / idx.size
        ax.bar(x - 0.4 + width * (i + 1.5), freq, width, color=f"C{i}", label=f"{name} (N={idx.size})")
    ax.set_xticks(x)
    ax.set_xticklabels([*names, "other"], fontsize=8, rotation=20)
    ax.set_ylabel("frequency")
    ax.set_ylim(0, 1)
    if title:
        ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def risk_coverage_curve(
    predicted_quality: Any, true_quality: Any, higher_is_better: bool = True
) -> dict[str, np.ndarray]:
    """Selective-prediction curve: keep the cases with the best predicted quality, measure the error of those kept.

    The risk of a case is ``1 - quality`` (``quality`` when ``higher_is_better=False``, e.g. an error), so for
    Dice the risk at coverage 1 is the mean Dice loss of all cases. A useful quality predictor gives a curve that
    falls as coverage shrinks; the oracle (ranked by the true quality) bounds it from below.

    Args:
        predicted_quality: ``(n,)`` predicted quality per case (any score that ranks cases).
        true_quality: ``(n,)`` measured quality per case (e.g. Dice against the reference).
        higher_is_better: whether a higher quality is better (Dice) or worse (an error).

    Returns:
        ``{"coverage": (n,) fraction of cases kept (1/n .. 1), "risk": (n,) mean risk of the kept cases,
        "oracle_risk": (n,) the same when ranked by the true quality, "aurc": () area under the risk curve,
        "oracle_aurc": ()}``.

    Example::

        curve = risk_coverage_curve(predicted_dice, dice)
        curve["aurc"], curve["oracle_aurc"]
    """
    pred = _np(predicted_quality).astype(np.float64).ravel()
    true = _np(true_quality).astype(np.float64).ravel()
    if pred.shape != true.shape or pred.size == 0:
        raise ValueError(
            f"predicted_quality {pred.shape} and true_quality {true.shape} must be non-empty and of the same length."
        )
    if not (np.isfinite(pred).all() and np.isfinite(true).all()):
        raise ValueError("predicted_quality and true_quality must be finite (drop or impute NaN cases first).")
    risk = 1.0 - true if higher_is_better else true
    sign = -1.0 if higher_is_better else 1.0
    n = np.arange(1, pred.size + 1)
    curve = np.cumsum(risk[np.argsort(sign * pred, kind="stable")]) / n
    oracle = np.cumsum(np.sort(risk)) / n
    return {
        "coverage": n / pred.size,
        "risk": curve,
        "oracle_risk": oracle,
        "aurc": np.array(curve.mean()),
        "oracle_aurc": np.array(oracle.mean()),
    }


def plot_risk_coverage(
    predicted_quality: Any,
    true_quality: Any,
    higher_is_better: bool = True,
    ax: Any = None,
    title: str | None = "risk-coverage",
) -> Any:
    """Risk-coverage curves of one or several quality predictors, with the oracle and the random ranking.

    Args:
        predicted_quality: ``(n,)`` predicted quality per case, or a dict ``{name: (n,)}`` to compare predictors
            (e.g. a quality network and the mean entropy, negated so that higher is better).
        true_quality: ``(n,)`` measured quality per case.
        higher_is_better: see :func:`risk_coverage_curve`.
        ax: a matplotlib ``Axes`` to draw in (default: a new figure).
        title: the axes title.

    Returns:
        the matplotlib ``Figure``; the legend gives each curve's AURC (lower is better).

    Example::

        fig = plot_risk_coverage({"quality net": predicted_dice, "-entropy": -mean_entropy}, dice)
    """
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=(4.6, 3.6))
    else:
        fig = ax.figure
    oracle = None
    for i, (name, pred) in enumerate(_named(predicted_quality, "predicted").items()):
        curve = risk_coverage_curve(pred, true_quality, higher_is_better)
        ax.plot(curve["coverage"], curve["risk"], color=f"C{i}", label=f"{name} (AURC {float(curve['aurc']):.3f})")
        oracle = curve
    ax.plot(
        oracle["coverage"],
        oracle["oracle_risk"],
        color="0.3",
        linestyle="--",
        label=f"oracle (AURC {float(oracle['oracle_aurc']):.3f})",
    )
    ax.axhline(float(oracle["risk"][-1]), color="0.6", linestyle=":", label="random")
    ax.set_xlim(0, 1)
    ax.set_xlabel("coverage (fraction of cases kept)")
    ax.set_ylabel("risk of the kept cases")
    if title:
        ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def figure_to_array(fig: Any, close: bool = True) -> np.ndarray:
    """The RGB pixels ``(H, W, 3)`` uint8 of a matplotlib figure (drawn on an Agg canvas).

    Args:
        fig: a matplotlib ``Figure``.
        close: close the figure afterwards (so that notebooks do not show it too).

    Example::

        writer.add_image("samples", figure_to_array(plot_sample_grid(cases)), step, dataformats="HWC")
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    rgb = np.asarray(canvas.buffer_rgba())[..., :3].copy()
    if close:
        import matplotlib.pyplot as plt

        plt.close(fig)
    return rgb
