# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""Whole-volume sampling cost of StochasticSlidingWindowInferer vs one deterministic sliding-window pass.

On a 4 x 240 x 240 x 155 BraTS-like phantom (skull-stripped: the air is zero, as BraTS is distributed), for the
SSN (rank 10, MONAI UNet backbone 32..256) and the Probabilistic U-Net (32, 64, 128, 192), all timed in one run:

- ``deterministic``: one ``monai.inferers.sliding_window_inference`` pass of the network's eval forward (the
  same backbone, the best single answer);
- ``coherent``: ``--samples`` samples plus all maps with the stochastic inferer (one distribution() pass, then the
  cheap sampler on the voxels that need it: ``sample_roi="nonzero"`` and the network's ``sampling_mask``);
- ``naive``: the N-pass approach (a full sliding-window pass per sample, every window its own noise), measured
  with ``--naive-samples`` samples and reported per sample and extrapolated to ``--samples``;
- peak memory (max RSS of a fresh process) of the coherent inferer with ``keep_samples=False`` for 10 and for
  ``--samples`` samples.

Run::

    python benchmarks/bench_inferer.py --naive-samples 1 --memory-size 128 128 128   # results/inferer.md
    python benchmarks/bench_inferer.py --size 96 96 64 --samples 20 --naive-samples 1 --name inferer_smoke
    python benchmarks/bench_inferer.py --memory-only --size 128 128 128 --threads 1   # peak memory only

Writes ``benchmarks/results/<name>.json`` and ``<name>.md``: ``--name inferer`` by default (the canonical result),
``inferer_memory`` with ``--memory-only``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import time

import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.inferers import sliding_window_inference

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import machine_info, md_table, write_results  # noqa: E402

from monai_probseg.data.synthetic import brats_phantom  # noqa: E402
from monai_probseg.inferers import StochasticSlidingWindowInferer  # noqa: E402
from monai_probseg.metrics import DEFAULT_UNCERTAINTY_MAPS, StreamingUncertaintyMaps  # noqa: E402
from monai_probseg.networks.nets import ProbabilisticUNet, StochasticSegmentationNetwork  # noqa: E402

logger = logging.getLogger("bench_inferer")


BUNDLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bundles")


def build(name: str, weights: str | None) -> torch.nn.Module:
    if name == "brats_ssn":  # the shipped bundle's network and weights, as its inference.json builds them
        parser = ConfigParser()
        parser.read_config(os.path.join(BUNDLES, name, "configs", "inference.json"))
        net = parser.get_parsed_content("network_def")
        weights = weights or os.path.join(BUNDLES, name, "models", "model.pt")
    elif name == "ssn":
        net = StochasticSegmentationNetwork(3, 4, 4, rank=10)
    elif name == "prob_unet":
        net = ProbabilisticUNet(3, 4, 4, latent_dim=6, channels=(32, 64, 128, 192))
    else:
        raise ValueError(f"unknown model {name}")
    if weights:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        net.load_state_dict(state.get("network", state) if isinstance(state, dict) else state)
    return net.eval()


def phantom(size, seed=0) -> torch.Tensor:
    case = brats_phantom(tuple(size), num_raters=1, seed=seed)
    image = case["image"] * case["brain"][None]  # skull-stripped, like BraTS
    image = torch.from_numpy(np.ascontiguousarray(image)).float()
    for c in range(image.shape[0]):  # NormalizeIntensity(nonzero=True, channel_wise=True)
        fg = image[c] != 0
        image[c][fg] = (image[c][fg] - image[c][fg].mean()) / image[c][fg].std().clamp_min(1e-8)
    return image[None]


def _per_sample_seconds(fn, num_samples: int, repeats: int = 2) -> float:
    """The best of ``repeats`` timings of ``fn()`` (which draws ``num_samples`` samples), per sample."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best / num_samples


def sampler_costs(name: str, net, maps: dict, num_samples: int, chunk: int) -> dict:
    """Per-sample cost of the sampler + maps against the limit: the work every sample needs and nothing else.

    SSN: the limit is drawing the per-voxel noise, the low-rank product ``P @ eps`` and the softmax, done the
    fastest way measured (one matrix product for all samples of a chunk of voxels, in place; the faster of chunks
    that stay in a core's cache and larger ones, best of 2 each);
    the sampler is ``sample_moments`` (the same work plus the mean, spread and entropy of every sample). PU-Net:
    the limit is fcomb's per-sample layers (``combine`` on the features projected once) and the softmax; the
    sampler is what the inferer runs, ``sample`` plus the streamed maps. ``previous_per_sample_ms`` is the generic
    path (``sample`` chunk by chunk, softmax, :class:`StreamingUncertaintyMaps`), the SSN's path before the fused
    sampler.
    """
    gen = torch.Generator()

    def generic():
        acc = StreamingUncertaintyMaps()
        for start in range(0, num_samples, chunk):
            acc.update(torch.softmax(net.sample(maps, min(chunk, num_samples - start), gen).float(), 2))
        return acc.compute()

    if name in ("ssn", "brats_ssn"):
        scale = net.sample_scale
        mean, factor, diag = maps["mean"], maps["cov_factor"] * scale, maps["cov_diag"] * scale**2
        c, v = mean.shape[1], mean[0, 0].numel()
        r = factor.shape[1] // c
        m, p, sd = mean[0].reshape(c, v), factor[0].reshape(c, r, v), diag[0].reshape(c, v).sqrt()

        def limit_in_chunks(elements):
            eps = torch.randn(r, num_samples, generator=gen)
            step = max(1, elements // (c * num_samples))
            for a in range(0, v, step):
                z = torch.matmul(p[:, :, a : a + step].transpose(1, 2), eps)
                z.addcmul_(torch.randn(z.shape, generator=gen), sd[:, a : a + step, None]).add_(
                    m[:, a : a + step, None]
                )
                torch.softmax(z, 0)

        def limit_seconds():  # chunks that stay in a core's cache, or fewer, larger operations: the faster
            return min(_per_sample_seconds(lambda e=e: limit_in_chunks(e), num_samples) for e in (2**17, 2**22))

        def ours():
            return net.sample_moments(maps, num_samples, gen)

    else:
        projected = net.fcomb.project_features(maps["features"])
        z_mean, z_std = maps["latent_mean"].unsqueeze(1), maps["latent_std"].unsqueeze(1)
        view = (1, chunk, z_mean.shape[2], *([1] * (z_mean.ndim - 3)))

        def limit():
            for _ in range(0, num_samples, chunk):
                z = z_mean + z_std * torch.randn(chunk * z_mean.shape[2], generator=gen).view(view)
                torch.softmax(net.fcomb.combine(projected, z), 2)

        def limit_seconds():
            return _per_sample_seconds(limit, num_samples)

        ours = generic
    limit_s = limit_seconds()
    ours_s = _per_sample_seconds(ours, num_samples)
    previous_s = _per_sample_seconds(generic, num_samples, repeats=1)
    return {
        "sampler_voxels": int(next(iter(maps.values()))[0, 0].numel()),
        "limit_per_sample_ms": 1000 * limit_s,
        "per_sample_ms": 1000 * ours_s,
        "per_sample_over_limit": ours_s / limit_s,
        "previous_per_sample_ms": 1000 * previous_s,
    }


def make_inferer(args, num_samples, sampling="shared"):
    return StochasticSlidingWindowInferer(
        roi_size=args.roi,
        sw_batch_size=1,
        overlap=0.25,
        mode="gaussian",
        num_samples=num_samples,
        sample_batch_size=args.sample_batch_size,
        outputs=DEFAULT_UNCERTAINTY_MAPS,
        seed=0,
        sample_roi="nonzero" if sampling == "shared" else None,
        sampling=sampling,
    )


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def memory_probe(args) -> None:
    """Run the coherent inferer once in this (fresh) process and print its peak RSS in MiB as JSON."""
    torch.set_num_threads(args.threads)
    net = build(args.memory_probe_model, args.weights.get(args.memory_probe_model))
    x = phantom(args.size)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with torch.no_grad():
        make_inferer(args, args.memory_probe)(x, net)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_rss_mib": peak, "before_mib": before}))


def probe_memory(args, model: str, num_samples: int) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--memory-probe", str(num_samples), "--memory-probe-model", model]
    size = args.memory_size or args.size
    cmd += ["--size", *map(str, size), "--roi", *map(str, args.roi), "--threads", str(args.threads)]
    cmd += ["--sample-batch-size", str(args.sample_batch_size)]
    for key, path in args.weights.items():
        cmd += [f"--{key.replace('_', '-')}-weights", path]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    return json.loads(out)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--cases",
        nargs="+",
        default=["brats_ssn:phantom", "ssn:phantom", "ssn:random", "prob_unet:phantom"],
        help="model:input pairs. Models: brats_ssn (the shipped bundle's network), ssn (rank 10, UNet 32..256, "
        "untrained), prob_unet; inputs: phantom (skull-stripped, sampled with the brain ROI), random (noise "
        "everywhere: no ROI helps)",
    )
    parser.add_argument("--sampler-samples", type=int, default=100, help="samples of the per-sample cost runs")
    parser.add_argument("--size", type=int, nargs=3, default=[240, 240, 155])
    parser.add_argument("--roi", type=int, nargs=3, default=[96, 96, 96])
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--naive-samples", type=int, default=2)
    parser.add_argument("--sample-batch-size", type=int, default=4)
    parser.add_argument("--ssn-weights", default=None, help="state dict for the SSN (optional)")
    parser.add_argument("--prob-unet-weights", default=None, help="state dict for the PU-Net (optional)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument(
        "--memory-size", type=int, nargs=3, default=None, help="volume size of the peak-memory runs (default: --size)"
    )
    parser.add_argument("--memory-only", action="store_true", help="only the peak-memory runs (no timing)")
    parser.add_argument("--name", default=None, help="results file stem (inferer; inferer_memory with --memory-only)")
    parser.add_argument("--memory-probe", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--memory-probe-model", default="ssn", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.name is None:
        args.name = "inferer_memory" if args.memory_only else "inferer"
    args.weights = {k: v for k, v in (("ssn", args.ssn_weights), ("prob_unet", args.prob_unet_weights)) if v}
    if args.memory_probe:
        memory_probe(args)
        return {}
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)

    if args.memory_only:
        rows = []
        for name in dict.fromkeys(c.split(":")[0] for c in args.cases):
            small, large = probe_memory(args, name, 10), probe_memory(args, name, args.samples)
            rows.append(
                {
                    "model": name,
                    "before_mib": small["before_mib"],
                    "peak_rss_mib_10": small["peak_rss_mib"],
                    "peak_rss_mib_n": large["peak_rss_mib"],
                    "peak_rss_ratio": large["peak_rss_mib"] / small["peak_rss_mib"],
                }
            )
            logger.info("%s: %s", name, rows[-1])
        size = "x".join(map(str, args.memory_size or args.size))
        md = (
            f"# Peak memory of whole-volume sampling: 10 vs {args.samples} samples, 4x{size} phantom\n\n"
            "Max RSS (MiB) of a fresh process that loads the network and runs the coherent inferer once with "
            f"keep_samples=False; roi {args.roi}, sample_batch_size {args.sample_batch_size}, {args.threads} threads."
            "\n\n"
            + md_table(rows, ["model", "before_mib", "peak_rss_mib_10", "peak_rss_mib_n", "peak_rss_ratio"])
            + "\n\nCommand: `python benchmarks/bench_inferer.py "
            + " ".join(argv if argv is not None else sys.argv[1:])
            + "`\n"
        )
        paths = write_results(args.name, {"machine": machine_info(), "args": vars(args), "rows": rows}, md)
        logger.info("wrote %s", ", ".join(paths))
        return {"rows": rows}

    inputs = {"phantom": phantom(args.size)}
    inputs["random"] = torch.randn_like(inputs["phantom"], generator=torch.Generator().manual_seed(1))
    brain_fraction = float((inputs["phantom"] != 0).any(1).float().mean())
    rows = []
    for case in args.cases:
        name, kind = case.split(":")
        x = inputs[kind]
        torch.manual_seed(0)
        net = build(name, args.weights.get(name))
        window = x[..., : args.roi[0], : args.roi[1], : args.roi[2]]
        centre = [slice(max(0, (s - r) // 2), max(0, (s - r) // 2) + r) for s, r in zip(x.shape[2:], args.roi)]
        with torch.no_grad():
            net(window)  # warm-up (allocator, kernels)
            t_det, _ = timed(
                lambda net=net, x=x: sliding_window_inference(x, args.roi, 1, net, overlap=0.25, mode="gaussian")
            )
            logger.info("%s deterministic pass: %.1f s", case, t_det)
            t_coh, out = timed(lambda net=net, x=x: make_inferer(args, args.samples)(x, net))
            logger.info("%s coherent %d samples + maps: %.1f s", case, args.samples, t_coh)
            t_naive, _ = timed(
                lambda net=net, x=x: make_inferer(args, args.naive_samples, sampling="per_window")(x, net)
            )
            logger.info("%s naive %d samples: %.1f s", case, args.naive_samples, t_naive)
            maps = net.distribution(x[(..., *centre)])
            mask = net.sampling_mask(maps)
            # the share of the window's non-zero (brain) voxels the inferer samples (the rest get the mean)
            brain = (x[(..., *centre)] != 0).any(1, keepdim=True)
            sampled_fraction = float((brain if mask is None else mask & brain).sum() / brain.sum().clamp_min(1))
            costs = sampler_costs(name, net, maps, args.sampler_samples, args.sample_batch_size)
            logger.info("%s sampler per sample: %s", case, costs)
        per_naive = t_naive / args.naive_samples
        row = {
            "model": name,
            "input": kind,
            "deterministic_s": t_det,
            "coherent_s": t_coh,
            "coherent_over_deterministic": t_coh / t_det,
            "naive_per_sample_s": per_naive,
            "naive_extrapolated_s": per_naive * args.samples,
            "naive_over_deterministic": per_naive * args.samples / t_det,
            **costs,
            "mean_entropy_in_brain": float(out["entropy"][(x != 0).any(1, keepdim=True)].mean()),
            "weights": args.weights.get(name, "bundle" if name.startswith("brats") else "untrained (random init)"),
            "sampled_brain_fraction_centre_window": sampled_fraction,
        }
        if not args.no_memory and kind == "phantom":
            m_small = probe_memory(args, name, 10)
            m_large = probe_memory(args, name, args.samples)
            row.update(
                peak_rss_mib_10=m_small["peak_rss_mib"],
                peak_rss_mib_n=m_large["peak_rss_mib"],
                peak_rss_ratio=m_large["peak_rss_mib"] / m_small["peak_rss_mib"],
            )
        rows.append(row)
        logger.info("%s: %s", case, row)

    results = {
        "machine": machine_info(),
        "args": {k: v for k, v in vars(args).items()},
        "brain_fraction": brain_fraction,
        "rows": rows,
    }
    cols = [
        "model",
        "input",
        "deterministic_s",
        "coherent_s",
        "coherent_over_deterministic",
        "naive_extrapolated_s",
        "naive_over_deterministic",
        "limit_per_sample_ms",
        "per_sample_ms",
        "per_sample_over_limit",
        "previous_per_sample_ms",
        "sampled_brain_fraction_centre_window",
        "peak_rss_mib_10",
        "peak_rss_mib_n",
        "peak_rss_ratio",
    ]
    md = (
        f"# Whole-volume sampling: {args.samples} samples of a 4x{'x'.join(map(str, args.size))} phantom\n\n"
        f"roi {args.roi}, overlap 0.25, gaussian blending, {args.threads} CPU threads, brain (non-zero) fraction "
        f"{brain_fraction:.3f}. Times in seconds, one run each, all in the same process.\n\n"
        + md_table(rows, cols)
        + f"\n\n`naive_extrapolated_s`: measured with {args.naive_samples} samples (a full pass each), times "
        f"{args.samples}/{args.naive_samples}. `input`: `phantom` is the skull-stripped phantom sampled with the "
        'brain ROI (`sample_roi="nonzero"` and the network\'s sampling mask), `random` is noise everywhere (no '
        "ROI helps). `brats_ssn` is the shipped bundle's network and weights. Per-sample costs (ms, best of 2, "
        f"{args.sampler_samples} samples of the centre window's maps): `limit` is the work each sample needs "
        "(SSN: per-voxel noise, low-rank product and softmax done the fastest way measured; PU-Net: fcomb on "
        "the projected features and softmax), `per_sample` what the inferer spends (with the mean, spread and "
        "entropy), `previous` the generic chunked path (sample, softmax, streamed maps). "
        "`sampled_brain_fraction_centre_window`: the share of the centre window's non-zero voxels inside the "
        "network's sampling mask (the others get the mean prediction). `peak_rss_mib_*`: max "
        "RSS of a fresh process running the coherent inferer (keep_samples=False) with 10 and "
        f"{args.samples} samples, on a "
        f"{'x'.join(map(str, args.memory_size or args.size))} volume.\n\n"
        + f"Command: `python benchmarks/bench_inferer.py {' '.join(argv if argv is not None else sys.argv[1:])}`\n"
    )
    paths = write_results(args.name, results, md)
    logger.info("wrote %s", ", ".join(paths))
    return results


if __name__ == "__main__":
    main()
