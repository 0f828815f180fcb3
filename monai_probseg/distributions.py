# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""The probability math that networks and losses share: diagonal Gaussians and low-rank normals over logits.

This module sits below :py:mod:`monai_probseg.networks` and :py:mod:`monai_probseg.losses` and imports neither, so
that both can use one definition of each formula (see docs/design.rst):

- :py:func:`gaussian_kl_divergence`: the analytic ``KL(q || p)`` of axis-aligned Gaussians, the KL term of the
  Probabilistic U-Net (Kohl et al., NeurIPS 2018), used by its training forward pass and by the ELBO and KL losses;
- :py:func:`low_rank_sample`: samples ``mean + P @ eps + sqrt(D) * eta`` of the low-rank normal over logits of
  Stochastic Segmentation Networks (Monteiro et al., NeurIPS 2020), used by the network's sampler and by the Monte
  Carlo likelihood of its loss; :py:func:`low_rank_moments`, the fused form the whole-volume inferer uses: the
  moments of the probabilities of ``N`` such samples (mean, spread, mean entropy) without storing the samples;
- :py:func:`variance_to_std`: ``sqrt`` of the covariance diagonal with a finite gradient at 0 (used by the sampler);
- :py:func:`gaussian_log_density`: ``log N(x; mean, exp(log_var))`` element-wise, the intensity likelihood of the
  anatomical-prior segmentation model (Dalca et al., CVPR 2018) and of its ELBO loss.

Low-rank parameter maps (never a dense ``(C V) x (C V)`` covariance) for ``C`` classes and rank ``R``:
``mean`` ``(B, C, *spatial)``, ``cov_factor`` ``(B, C * R, *spatial)`` with channel ``c * R + r`` holding column
``r`` of ``P`` for class ``c``, and ``cov_diag`` ``(B, C, *spatial)``, the diagonal of ``D`` (variances). The
low-rank noise ``eps`` (``R`` numbers per sample) is shared by every voxel: it is *global*, which makes samples
spatially coherent and lets a sliding-window inferer stitch windows without seams.
"""

from __future__ import annotations

import math

import torch

from monai_probseg.utils import check_positive_int, make_generator

__all__ = [
    "MIN_VARIANCE",
    "gaussian_kl_divergence",
    "gaussian_log_density",
    "low_rank_moments",
    "low_rank_noise",
    "merge_moments",
    "low_rank_sample",
    "variance_to_std",
]

# variances at or below this are treated as 0 by the low-rank sampler (see variance_to_std)
MIN_VARIANCE = 1e-12


def gaussian_kl_divergence(
    mean_q: torch.Tensor, log_sigma_q: torch.Tensor, mean_p: torch.Tensor, log_sigma_p: torch.Tensor
) -> torch.Tensor:
    """Element-wise analytic ``KL(q || p)`` of Gaussians ``q = N(mean_q, sigma_q^2)`` and ``p = N(mean_p, sigma_p^2)``.

    ``KL = log(sigma_p / sigma_q) + (sigma_q^2 + (mean_q - mean_p)^2) / (2 sigma_p^2) - 1/2``. Summing over the
    latent axis gives the KL of the axis-aligned Gaussians of the Probabilistic U-Net (Kohl et al., NeurIPS 2018).

    When every log standard deviation (and their difference) is below 40 in magnitude, the textbook form is used as
    it is. Otherwise both ratios are evaluated in log space, as ``exp(2 (log_sigma_q - log_sigma_p))`` and
    ``exp(2 (log|mean_q - mean_p| - log_sigma_p))``, so that no ``sigma`` or ``1 / sigma^2`` is formed on its own:
    the result is finite and accurate (in float32) for log standard deviations far beyond what ``exp(-2 log_sigma)``
    allows (it overflows for ``|log_sigma| > 44``; here ``|log_sigma|`` up to 80 and beyond is fine), and equal
    means contribute exactly 0 with a finite gradient. Half-precision inputs are computed and returned in float32.
    A KL too large for the result's dtype (a ratio ``sigma_q / sigma_p`` or ``|mean_q - mean_p| / sigma_p`` above
    about ``e^43`` in float32) saturates at about ``e^86`` instead of becoming ``inf``, with zero gradient for that
    term.

    Args:
        mean_q: means of q.
        log_sigma_q: log standard deviations of q (same shape).
        mean_p: means of p (same shape).
        log_sigma_p: log standard deviations of p (same shape).

    Returns:
        the KL of every element, the shape of the inputs.

    Example::

        z = torch.zeros(1, 1)
        gaussian_kl_divergence(z, z, z + 1, z + math.log(2))  # log 2 + 2 / 8 - 1/2
    """
    dtype = torch.promote_types(torch.promote_types(mean_q.dtype, mean_p.dtype), log_sigma_q.dtype)
    dtype = torch.promote_types(torch.promote_types(dtype, log_sigma_p.dtype), torch.float32)
    mean_q, log_sigma_q, mean_p, log_sigma_p = (t.to(dtype) for t in (mean_q, log_sigma_q, mean_p, log_sigma_p))
    diff = mean_q - mean_p
    # the common case, every term far from overflow: the textbook form, to the last bit (values and gradients)
    moderate = (log_sigma_p.abs() < 40.0) & ((log_sigma_q - log_sigma_p).abs() < 40.0) & (diff.abs() < 1e15)
    if bool(moderate.all()):
        return (
            (log_sigma_p - log_sigma_q)
            + 0.5 * torch.exp(2.0 * (log_sigma_q - log_sigma_p))
            + 0.5 * diff**2 * torch.exp(-2.0 * log_sigma_p)
            - 0.5
        )
    # largest exponent whose exp, halved and added to the other terms, stays finite in this dtype
    max_exponent = math.log(torch.finfo(dtype).max) - 2.0
    nonzero = diff != 0
    # log|diff| with a finite gradient at diff = 0 (the masked branch never sees a zero)
    log_abs_diff = torch.where(nonzero, torch.where(nonzero, diff, torch.ones_like(diff)).abs().log(), -math.inf)
    variance_ratio = torch.exp((2.0 * (log_sigma_q - log_sigma_p)).clamp(max=max_exponent))
    mean_term = torch.exp((2.0 * (log_abs_diff - log_sigma_p)).clamp(max=max_exponent))
    return (log_sigma_p - log_sigma_q) + 0.5 * (variance_ratio + mean_term) - 0.5


def gaussian_log_density(x: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """Element-wise log-density ``log N(x; mean, sigma^2)`` of a Gaussian with log-variance ``log_var``.

    ``-(log(2 pi) + log_var + (x - mean)^2 exp(-log_var)) / 2``, computed in at least float32 (half-precision
    inputs give a float32 result) and broadcast over the inputs. The squared residual is scaled as
    ``exp(2 log|x - mean| - log_var)``, clamped below the dtype's overflow, so extreme intensities with a tiny
    variance give a large finite negative value instead of ``-inf``; equal values contribute exactly 0 with a
    finite gradient.

    Args:
        x: observations.
        mean: means (broadcastable to ``x``).
        log_var: log-variances ``log sigma^2`` (broadcastable to ``x``).

    Returns:
        the log-density of every element, the broadcast shape of the inputs.

    Example::

        gaussian_log_density(torch.zeros(1), torch.zeros(1), torch.zeros(1))  # -log(2 pi) / 2
    """
    dtype = torch.promote_types(
        torch.promote_types(x.dtype, mean.dtype), torch.promote_types(log_var.dtype, torch.float32)
    )
    x, mean, log_var = x.to(dtype), mean.to(dtype), log_var.to(dtype)
    max_exponent = math.log(torch.finfo(dtype).max) - 2.0
    diff = x - mean
    nonzero = diff != 0
    log_abs_diff = torch.where(nonzero, torch.where(nonzero, diff, torch.ones_like(diff)).abs().log(), -math.inf)
    scaled_sq = torch.exp((2.0 * log_abs_diff - log_var).clamp(max=max_exponent))
    return -0.5 * (math.log(2.0 * math.pi) + log_var + scaled_sq)


def variance_to_std(variance: torch.Tensor) -> torch.Tensor:
    """Standard deviations ``sqrt(variance)`` with a finite gradient everywhere, for the low-rank sampler.

    ``d sqrt(v) / dv = 1 / (2 sqrt(v))`` is infinite at ``v = 0``, which a user-supplied diagonal (or a masked
    one) can hold. Variances at or below :py:data:`MIN_VARIANCE` (``1e-12``, a standard deviation of ``1e-6``
    logits; negative values included) give a standard deviation of exactly 0 and a zero gradient; above it the
    value and gradient are the exact ``sqrt`` (the gradient is then at most ``1 / (2e-6) = 5e5``).

    Args:
        variance: variances of any shape.

    Returns:
        standard deviations, the shape and dtype of ``variance``.

    Example::

        std = variance_to_std(torch.tensor([0.0, 4.0]))  # [0, 2]; the gradient at 0 is 0
    """
    keep = variance > MIN_VARIANCE
    safe = torch.where(keep, variance, torch.ones_like(variance))  # the masked branch never sees v <= 0
    return torch.where(keep, safe.sqrt(), torch.zeros_like(variance))


def low_rank_noise(
    mean: torch.Tensor,
    rank: int,
    num_draw: int,
    generator: int | torch.Generator | None = None,
    eps: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The noise of ``num_draw`` low-rank samples, in the order :py:func:`low_rank_sample` documents.

    ``eps = randn(B, num_draw, R)`` (unless given), then ``eta = randn(B, num_draw, C, *spatial)``, both in float32
    on the generator's device (the device of ``mean`` when ``generator`` is None), returned on the device and in
    the dtype of ``mean`` (``(B, C, *spatial)``). Shared by the sampler and the Monte Carlo likelihood of
    :py:class:`~monai_probseg.losses.LowRankMVNNLLLoss`, so that one seed gives the same draws in both.
    """
    gen = make_generator(generator, mean.device)
    eps = _global_noise(mean, rank, num_draw, gen, eps).to(mean.dtype)
    shape = (mean.shape[0], num_draw, mean.shape[1], *mean.shape[2:])
    eta = torch.randn(shape, generator=gen, device=gen.device if gen is not None else mean.device, dtype=torch.float32)
    return eps, eta.to(device=mean.device, dtype=mean.dtype)


def _global_noise(
    mean: torch.Tensor, rank: int, num_draw: int, gen: torch.Generator | None, eps: torch.Tensor | None
) -> torch.Tensor:
    """The low-rank noise ``(B, num_draw, R)`` float32 on ``mean``'s device: drawn first from ``gen``, or ``eps``
    checked and expanded."""
    batch = mean.shape[0]
    if eps is None:
        noise_device = gen.device if gen is not None else mean.device
        eps = torch.randn((batch, num_draw, rank), generator=gen, device=noise_device, dtype=torch.float32)
    elif eps.ndim != 3 or eps.shape[0] not in (1, batch) or tuple(eps.shape[1:]) != (num_draw, rank):
        raise ValueError(
            f"eps must be ({batch} or 1, {num_draw}, {rank}) (batch, drawn samples, rank), got {tuple(eps.shape)}."
        )
    return eps.to(device=mean.device, dtype=torch.float32).expand(batch, num_draw, rank)


def low_rank_sample(
    mean: torch.Tensor,
    cov_factor: torch.Tensor,
    cov_diag: torch.Tensor,
    num_samples: int,
    generator: int | torch.Generator | None = None,
    antithetic: bool = False,
    eps: torch.Tensor | None = None,
) -> torch.Tensor:
    """Draw logit samples ``mean + P @ eps + sqrt(D) * eta`` from low-rank normal parameter maps.

    The sampler of Stochastic Segmentation Networks (Monteiro et al., NeurIPS 2020), computed directly from the
    spatial maps: no dense covariance is formed and the cost per sample is ``C * R`` multiply-adds, ``C`` normal
    draws and ``C`` square roots per voxel.

    Random draws, in this order (so that a caller with the same generator can reproduce them):
    ``eps = randn(B, n, R)`` (skipped when ``eps`` is given), then ``eta = randn(B, n, C, *spatial)``, both in
    float32 on the generator's device (the tensors' device when ``generator`` is None), with ``n = num_samples``,
    or ``num_samples // 2`` when ``antithetic``.

    Memory: the result holds ``B * N * C * V`` values; with gradients enabled the computation keeps about three
    such tensors (the per-voxel noise, the centred samples and the result), without gradients about two.
    To bound memory, call it several times with fewer samples, or on spatial chunks of the maps with the same
    ``eps`` (the low-rank noise is global, so chunks of one sample stay coherent).

    Args:
        mean: ``(B, C, *spatial)`` mean logits.
        cov_factor: ``(B, C * R, *spatial)`` covariance factor; channel ``c * R + r`` is rank ``r`` of class ``c``.
        cov_diag: ``(B, C, *spatial)`` non-negative diagonal of the covariance (variances); values at or below
            :py:data:`MIN_VARIANCE` (``1e-12``, and negative ones) count as 0, see :py:func:`variance_to_std`.
        num_samples: number of samples ``N``.
        generator: seed or ``torch.Generator`` for the draws (``None``: torch's global random state).
        antithetic: draw ``N / 2`` centred samples ``z`` and return ``mean + z`` followed by ``mean - z``, so that
            sample ``m`` and sample ``m + N / 2`` are mirrored about the mean (as the reference implementation
            of Monteiro et al. does for its loss). ``N`` must be even.
        eps: optional low-rank noise ``(B, n, R)`` or ``(1, n, R)`` to use instead of drawing it (e.g. to share it
            between spatial chunks or sliding windows of one image).

    Returns:
        logits ``(B, N, C, *spatial)``.

    Example::

        mean, factor, diag = torch.zeros(1, 2, 8, 8), torch.randn(1, 2 * 3, 8, 8), torch.full((1, 2, 8, 8), 0.1)
        samples = low_rank_sample(mean, factor, diag, num_samples=10, generator=0)  # (1, 10, 2, 8, 8)
    """
    num_samples = check_positive_int(num_samples, "num_samples")
    if mean.ndim < 3:
        raise ValueError(f"mean must be (B, C, *spatial), got shape {tuple(mean.shape)}.")
    if cov_diag.shape != mean.shape:
        raise ValueError(f"cov_diag must have the shape of mean {tuple(mean.shape)}, got {tuple(cov_diag.shape)}.")
    batch, num_classes = mean.shape[:2]
    spatial = tuple(mean.shape[2:])
    if cov_factor.ndim != mean.ndim or cov_factor.shape[0] != batch or tuple(cov_factor.shape[2:]) != spatial:
        raise ValueError(
            f"cov_factor must be (B, C * R, *spatial) = ({batch}, {num_classes} * R, {', '.join(map(str, spatial))}), "
            f"got {tuple(cov_factor.shape)}."
        )
    if cov_factor.shape[1] % num_classes != 0:
        raise ValueError(
            f"cov_factor has {cov_factor.shape[1]} channels, expected a multiple of the {num_classes} classes (C * R)."
        )
    rank = cov_factor.shape[1] // num_classes
    if antithetic and num_samples % 2 != 0:
        raise ValueError(f"antithetic sampling needs an even num_samples, got {num_samples}.")
    num_draw = num_samples // 2 if antithetic else num_samples

    eps, eta = low_rank_noise(mean, rank, num_draw, generator, eps)

    factor = cov_factor.reshape(batch, num_classes, rank, *spatial)
    low_rank = torch.einsum("bcr...,bnr->bnc...", factor, eps)  # (B, n, C, *spatial), P @ eps per voxel
    scale = variance_to_std(cov_diag).unsqueeze(1)
    track = torch.is_grad_enabled() and (mean.requires_grad or cov_factor.requires_grad or cov_diag.requires_grad)
    if track:
        centred = low_rank + scale * eta
        if antithetic:
            centred = torch.cat([centred, -centred], dim=1)
        return mean.unsqueeze(1) + centred
    # no autograd: reuse buffers in place
    centred = eta.mul_(scale).add_(low_rank)
    del low_rank
    if antithetic:
        centred = torch.cat([centred, centred.neg()], dim=1)
    return centred.add_(mean.unsqueeze(1))


# elements (classes x voxels x samples) of one fused chunk: small enough to stay in a CPU core's cache
_FUSED_CHUNK_ELEMENTS = {"cpu": 2**17, "cuda": 2**24}
# chunks of the fused sampler folded in one go (larger operations, fewer dispatches; the random stream is unchanged)
_FUSED_GROUP = {"cpu": 32}


def _grouped(t: torch.Tensor, count: int) -> torch.Tensor:
    """``(C, count * w)`` as ``(count, C, w)`` (a view)."""
    return t.reshape(t.shape[0], count, -1).transpose(0, 1)


def _ungrouped(t: torch.Tensor) -> torch.Tensor:
    """``(count, C, w)`` as ``(C, count * w)``."""
    return t.transpose(0, 1).reshape(t.shape[1], -1)


@torch.no_grad()
def merge_moments(
    count_a: int, moments_a: dict[str, torch.Tensor], count_b: int, moments_b: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The moments of two groups of samples together (the pairwise update of Chan, Golub and LeVeque, 1983).

    Each group is ``{"mean": (B, C, *spatial) mean probabilities, "m2": (B, C, *spatial) sum of squared deviations
    from that mean, "expected_entropy": (B, 1, *spatial) mean entropy}`` of ``count`` samples, as
    :py:func:`low_rank_moments` returns it; the result is the same for the ``count_a + count_b`` samples, equal to
    computing it on all of them at once up to rounding (stable in float32).

    Args:
        count_a: number of samples of the first group (> 0).
        moments_a: their moments.
        count_b: number of samples of the second group (> 0).
        moments_b: their moments.
    """
    total = count_a + count_b
    weight = count_b / total
    delta = moments_b["mean"] - moments_a["mean"]
    entropy_a = moments_a["expected_entropy"]
    return {
        "mean": moments_a["mean"] + delta * weight,
        "m2": moments_a["m2"] + moments_b["m2"] + delta.square() * (count_a * weight),
        "expected_entropy": entropy_a + (moments_b["expected_entropy"] - entropy_a) * weight,
    }


def low_rank_moments(
    mean: torch.Tensor,
    cov_factor: torch.Tensor,
    cov_diag: torch.Tensor,
    num_samples: int,
    generator: int | torch.Generator | None = None,
    eps: torch.Tensor | None = None,
    keep_labels: bool = False,
    chunk_elements: int | None = None,
) -> dict[str, torch.Tensor]:
    """The moments of the softmax probabilities of ``num_samples`` low-rank samples, without storing the samples.

    The fused sampler behind whole-volume uncertainty maps of Stochastic Segmentation Networks: for a chunk of
    voxels at a time, all ``N`` samples ``mean + P @ eps + sqrt(D) * eta`` are drawn (one small matrix product
    for the low-rank part, the per-voxel noise drawn into the chunk), turned into probabilities with one
    softmax and folded into the per-voxel mean, sum of squared deviations and mean entropy before the next
    chunk. Every sample's probabilities are visited once, in a chunk that stays in cache, which makes the cost per
    sample close to that of drawing the noise itself (``benchmarks/bench_sampler.py``). The samples follow exactly
    the distribution of :py:func:`low_rank_sample`; the random stream is laid out differently (``eps = randn(B,
    N, R)``, then per batch item and chunk of voxels ``eta`` of shape ``(C, voxels, N)``), so the same seed gives
    the same moments here, not the samples of :py:func:`low_rank_sample`.

    Args:
        mean: ``(B, C, *spatial)`` mean logits, ``C >= 2`` (softmax over classes).
        cov_factor: ``(B, C * R, *spatial)`` covariance factor (channel ``c * R + r`` is rank ``r`` of class ``c``).
        cov_diag: ``(B, C, *spatial)`` covariance diagonal (variances, see :py:func:`variance_to_std`).
        num_samples: number of samples ``N``.
        generator: seed or ``torch.Generator`` (``None``: torch's global random state).
        eps: optional global low-rank noise ``(B or 1, N, R)`` instead of drawing it.
        keep_labels: also return the label map (argmax) of every sample.
        chunk_elements: classes x voxels x samples per chunk (default: ``2**17`` on CPU, ``2**24`` on CUDA). It
            sets the layout of the random stream, so keep it fixed to reproduce results.

    Returns:
        ``{"mean": (B, C, *spatial) mean probabilities, "m2": (B, C, *spatial) sum over samples of the squared
        deviations from it, "expected_entropy": (B, 1, *spatial) mean over samples of the entropy}`` (float32;
        the entropy is exact, no clamp inside its logarithm), and ``"labels"`` ``(B, N, *spatial)`` uint8 with
        ``keep_labels``.
    """
    num_samples = check_positive_int(num_samples, "num_samples")
    if mean.ndim < 3 or mean.shape[1] < 2:
        raise ValueError(f"mean must be (B, C, *spatial) logits with C >= 2 classes, got shape {tuple(mean.shape)}.")
    if cov_diag.shape != mean.shape:
        raise ValueError(f"cov_diag must have the shape of mean {tuple(mean.shape)}, got {tuple(cov_diag.shape)}.")
    batch, num_classes = mean.shape[:2]
    spatial = tuple(mean.shape[2:])
    if (
        cov_factor.ndim != mean.ndim
        or cov_factor.shape[0] != batch
        or tuple(cov_factor.shape[2:]) != spatial
        or cov_factor.shape[1] % num_classes != 0
    ):
        raise ValueError(
            f"cov_factor must be (B, C * R, *spatial) = ({batch}, {num_classes} * R, {', '.join(map(str, spatial))}), "
            f"got {tuple(cov_factor.shape)}."
        )
    rank = cov_factor.shape[1] // num_classes
    gen = make_generator(generator, mean.device)
    noise_device = gen.device if gen is not None else mean.device
    eps = _global_noise(mean, rank, num_samples, gen, eps)
    if chunk_elements is None:
        chunk_elements = _FUSED_CHUNK_ELEMENTS.get(mean.device.type, _FUSED_CHUNK_ELEMENTS["cuda"])
    num_voxels = math.prod(spatial)
    step = max(1, int(chunk_elements) // (num_classes * num_samples))

    f32 = {"device": mean.device, "dtype": torch.float32}
    out_mean = torch.empty((batch, num_classes, num_voxels), **f32)
    out_m2 = torch.empty((batch, num_classes, num_voxels), **f32)
    out_entropy = torch.empty((batch, 1, num_voxels), **f32)
    labels = (
        torch.empty((batch, num_samples, num_voxels), device=mean.device, dtype=torch.uint8) if keep_labels else None
    )
    group = _FUSED_GROUP.get(mean.device.type, 1)
    for b in range(batch):
        m = mean[b].reshape(num_classes, num_voxels).float()
        factor = cov_factor[b].reshape(num_classes, rank, num_voxels).float()
        std = variance_to_std(cov_diag[b].reshape(num_classes, num_voxels).float())
        eps_b = eps[b].transpose(0, 1).contiguous()  # (R, N)
        starts = list(range(0, num_voxels, step))
        first = 0
        while first < len(starts):
            # `count` chunks of `width` voxels folded at once (fewer, larger operations); each chunk's noise is
            # still drawn on its own, so the random stream is that of one chunk at a time
            start = starts[first]
            width = min(step, num_voxels - start)
            count = 1 if width < step else min(group, (num_voxels - start) // step)
            stop = start + count * width
            z = torch.empty((count, num_classes, width, num_samples), **f32)  # chunk, class, voxel, sample
            for k in range(count):
                lo = start + k * width
                torch.matmul(factor[:, :, lo : lo + width].transpose(1, 2), eps_b, out=z[k])  # P @ eps
                eta = torch.randn(z.shape[1:], generator=gen, device=noise_device, dtype=torch.float32)
                z[k].addcmul_(eta.to(z.device), std[:, lo : lo + width, None])
            z.add_(_grouped(m[:, start:stop], count)[..., None])
            if labels is not None:
                labels[b, :, start:stop] = _ungrouped(z.argmax(1).transpose(1, 2)).to(torch.uint8)
            # softmax and entropy in one go: with z centred on its max, p = e^z / s and H = log s - sum_c p z
            z.sub_(z.amax(dim=1, keepdim=True))
            p = z.exp()
            total = p.sum(dim=1, keepdim=True)
            p.div_(total)
            entropy = (total.log_().sum(dim=(1, 3)) - (p * z).sum(dim=(1, 3))) / num_samples  # (count, width)
            out_entropy[b, 0, start:stop] = entropy.reshape(-1)
            mu = p.mean(dim=3)  # (count, C, width)
            out_mean[b, :, start:stop] = _ungrouped(mu)
            out_m2[b, :, start:stop] = _ungrouped(p.sub_(mu[..., None]).square_().sum(dim=3))
            first += count
    result = {
        "mean": out_mean.reshape(batch, num_classes, *spatial),
        "m2": out_m2.reshape(batch, num_classes, *spatial),
        "expected_entropy": out_entropy.reshape(batch, 1, *spatial),
    }
    if labels is not None:
        result["labels"] = labels.reshape(batch, num_samples, *spatial)
    return result
