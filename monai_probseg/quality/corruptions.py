# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""Image corruptions that push a stage-1 segmentation across the whole range of quality.

Training a quality predictor (DeVries & Taylor 2018) needs cases where the segmentation fails as well as cases where
it succeeds. :func:`corrupt_image` degrades an intensity-normalised multimodal image ``(C, *spatial)`` with one
corruption of a given severity in ``[0, 1]``; the parameters of every corruption are fixed by the severity and a
seed, so a case is reproducible. MONAI transforms are used where MONAI has them (``RandGaussianNoise``,
``RandBiasField``, ``GaussianSmooth``, ``GibbsNoise``, ``AdjustContrast``); skull-stripped images stay exactly 0
outside the brain.

:data:`SEEN_CORRUPTIONS` are meant for training the predictor, :data:`HELD_OUT_CORRUPTIONS` only for testing it:
an intensity shift of the normalised histogram (gamma and offset, as from another scanner or normalisation) and
motion-like ghosting (k-space lines with alternating phase errors, which replicate the image at half the field of
view along the phase-encoding axis, the classic Nyquist / periodic-motion ghost).
"""

from __future__ import annotations

import numpy as np
import torch
from monai.transforms import AdjustContrast, GaussianSmooth, GibbsNoise, RandBiasField, RandGaussianNoise

__all__ = ["CORRUPTIONS", "HELD_OUT_CORRUPTIONS", "SEEN_CORRUPTIONS", "corrupt_image"]

#: corruptions used to train the quality predictor
SEEN_CORRUPTIONS = ("noise", "bias", "blur", "zero_modality")
#: corruptions kept for testing only
HELD_OUT_CORRUPTIONS = ("intensity_shift", "ghosting", "gibbs")
#: every corruption :func:`corrupt_image` knows, plus ``"none"``
CORRUPTIONS = ("none", *SEEN_CORRUPTIONS, *HELD_OUT_CORRUPTIONS)


def _ghosting(image: torch.Tensor, strength: float, axis: int, rng: np.random.Generator) -> torch.Tensor:
    """Alternate k-space lines along ``axis`` get a phase error of ``strength * pi``: ghosts at FOV/2."""
    spectrum = torch.fft.fftn(image.to(torch.float64), dim=tuple(range(1, image.ndim)))
    n = image.shape[axis + 1]
    phase = torch.zeros(n, dtype=torch.float64)
    phase[1::2] = strength * np.pi * float(rng.uniform(0.8, 1.2))
    shape = [1] * image.ndim
    shape[axis + 1] = n
    spectrum = spectrum * torch.polar(torch.ones_like(phase), phase).reshape(shape)
    out = torch.fft.ifftn(spectrum, dim=tuple(range(1, image.ndim))).real
    return out.to(image.dtype)


def corrupt_image(
    image: torch.Tensor,
    corruption: str,
    severity: float,
    seed: int = 0,
    brain: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float | int | str]]:
    """Apply one corruption of a given severity to an intensity-normalised image.

    The image is expected normalised per channel inside the brain (zero mean, unit variance over the non-zero voxels,
    as the bundles' ``NormalizeIntensityd(nonzero=True, channel_wise=True)`` leaves it), so the parameters below are in
    units of the brain's intensity spread. With ``severity`` ``s`` in ``[0, 1]``:

    - ``"noise"``: Gaussian noise of standard deviation ``1.5 s`` (MONAI ``RandGaussianNoise``);
    - ``"bias"``: a smooth multiplicative field of degree 3 with coefficients up to ``0.9 s`` (``RandBiasField``);
    - ``"blur"``: Gaussian smoothing with sigma ``0.3 + 1.7 s`` voxels (``GaussianSmooth``);
    - ``"zero_modality"``: channel ``seed % C`` set to 0 (a missing sequence) and, for ``s > 0.5``, also channel
      ``(seed + 1) % C``;
    - ``"intensity_shift"`` (held out): every channel ``x -> (x - min) ** gamma`` with ``gamma = 1 + 0.8 s`` on
      alternate channels and ``1 / (1 + 0.8 s)`` on the others (``AdjustContrast``), re-standardised, plus an offset
      of ``+-0.6 s`` standard deviations;
    - ``"ghosting"`` (held out): alternate k-space lines along a seeded axis get a phase error of ``0.6 s pi``;
    - ``"gibbs"`` (held out): k-space truncation ringing with ``alpha = 0.2 + 0.5 s`` (``GibbsNoise``).

    Args:
        image: ``(C, *spatial)`` float image.
        corruption: one of :data:`CORRUPTIONS`.
        severity: in ``[0, 1]``.
        seed: seeds the random parts (noise, field, axis, channel).
        brain: optional ``(*spatial)`` bool mask; voxels outside it are set to 0 afterwards (default: the voxels
            where any channel of ``image`` is non-zero, i.e. skull-stripped images stay skull-stripped).

    Returns:
        ``(corrupted image, parameters)``, the parameters as a JSON-able dict.

    Example::

        bad, params = corrupt_image(image, "blur", 0.8, seed=3)  # params == {"corruption": "blur", "sigma": 1.66, ...}
    """
    if corruption not in CORRUPTIONS:
        raise ValueError(f"corruption must be one of {CORRUPTIONS}, got {corruption!r}.")
    if not 0.0 <= float(severity) <= 1.0:
        raise ValueError(f"severity must be in [0, 1], got {severity!r}.")
    if image.ndim < 3:
        raise ValueError(f"image must have shape (C, *spatial), got {tuple(image.shape)}.")
    s = float(severity)
    image = torch.as_tensor(image, dtype=torch.float32)
    if brain is None:
        brain = (image != 0).any(0)
    brain = torch.as_tensor(brain, dtype=torch.bool)
    rng = np.random.default_rng(seed)
    params: dict[str, float | int | str] = {"corruption": corruption, "severity": s}
    num_channels = image.shape[0]
    out = image.clone()
    if corruption == "noise":
        std = 1.5 * s
        noise = RandGaussianNoise(prob=1.0, std=std, sample_std=False)
        noise.set_random_state(seed=seed)
        out = torch.as_tensor(noise(out))
        params["std"] = std
    elif corruption == "bias":
        coeff = 0.9 * s
        field = RandBiasField(degree=3, coeff_range=(0.0, coeff), prob=1.0)
        field.set_random_state(seed=seed)
        # the field multiplies positive intensities; shift to positive, apply, shift back
        low = out.amin(dim=tuple(range(1, out.ndim)), keepdim=True)
        out = torch.as_tensor(field(out - low)) + low
        params["coeff"] = coeff
    elif corruption == "blur":
        sigma = 0.3 + 1.7 * s
        out = torch.as_tensor(GaussianSmooth(sigma=sigma)(out))
        params["sigma"] = sigma
    elif corruption == "zero_modality":
        channels = [seed % num_channels] + ([(seed + 1) % num_channels] if s > 0.5 else [])
        out[channels] = 0.0
        params["channels"] = ",".join(str(c) for c in channels)
    elif corruption == "intensity_shift":
        g = 1.0 + 0.8 * s
        offsets = rng.choice([-1.0, 1.0], size=num_channels) * 0.6 * s
        for c in range(num_channels):
            x = out[c]
            inside = x[brain]
            if inside.numel() == 0:
                continue
            x = x - inside.min()
            x = torch.as_tensor(AdjustContrast(gamma=g if c % 2 == 0 else 1.0 / g)(x[None]))[0]
            inside = x[brain]
            out[c] = (x - inside.mean()) / inside.std().clamp_min(1e-6) + float(offsets[c])
        params["gamma"] = g
        params["offset"] = 0.6 * s
    elif corruption == "ghosting":
        axis = int(rng.integers(0, image.ndim - 1))
        out = _ghosting(out, 0.6 * s, axis, rng)
        params["phase_error"] = 0.6 * s
        params["axis"] = axis
    elif corruption == "gibbs":
        alpha = 0.2 + 0.5 * s
        out = torch.as_tensor(GibbsNoise(alpha=alpha)(out))
        params["alpha"] = alpha
    out = torch.where(brain[None], out, torch.zeros_like(out))
    return out.float(), params
