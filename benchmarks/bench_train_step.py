# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""Cost of one training step of the probabilistic models relative to the deterministic network they build on.

All in one process, 2D and 3D, with the models' default widths (the sizes the bundles and tutorials use):

- ``backbone``: the SSN's backbone (a MONAI ``UNet`` emitting the ``F`` full-resolution feature maps the SSN's
  heads read) followed by a 1x1 convolution to the ``C`` logits, trained with cross-entropy: the deterministic
  network an SSN is built on;
- ``ssn``: :py:class:`~monai_probseg.networks.nets.StochasticSegmentationNetwork` on that backbone with
  :py:class:`~monai_probseg.losses.LowRankMVNNLLLoss` (rank 10, 20 Monte Carlo samples, antithetic, as
  Monteiro et al. 2020);
- ``unet``: the Probabilistic U-Net's own U-Net (the same encoder-decoder, ``channels`` and convolutions per
  level) with a 1x1 convolution to the logits and cross-entropy;
- ``prob_unet``: :py:class:`~monai_probseg.networks.nets.ProbabilisticUNet` (prior and posterior nets, fcomb) with
  :py:class:`~monai_probseg.losses.ELBOLoss`.

A step is forward, loss, backward and an Adam update; the time is the median of ``--steps`` steps after
``--warmup`` steps, the model's steps alternating with its baseline's (the ratio is the median of the per-round
ratios, robust to a machine that other work slows now and then), on random images with random labels (the cost
does not depend on the values). ``--amp`` adds bfloat16 autocast rows (CPU) / float16 (CUDA) for the same models.

Run::

    python benchmarks/bench_train_step.py --threads 1      # results/train_step.md
    python benchmarks/bench_train_step.py --steps 2 --warmup 1 --size2d 32 --size3d 16 --name train_step_smoke

Writes ``benchmarks/results/<name>.json`` and ``<name>.md`` (``--name train_step`` by default).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import machine_info, md_table, write_results  # noqa: E402

from monai_probseg.losses import ELBOLoss, LowRankMVNNLLLoss  # noqa: E402
from monai_probseg.networks.blocks.backbone import feature_backbone  # noqa: E402
from monai_probseg.networks.nets import ProbabilisticUNet, StochasticSegmentationNetwork  # noqa: E402

logger = logging.getLogger("bench_train_step")


class _Deterministic(nn.Module):
    """A feature network followed by a 1x1 convolution to logits (the deterministic counterpart)."""

    def __init__(self, features: nn.Module, spatial_dims: int, feature_channels: int, out_channels: int) -> None:
        super().__init__()
        self.features = features
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        self.head = conv(feature_channels, out_channels, 1)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.features(x))


def build(name: str, dims: int, in_channels: int, num_classes: int):
    """``(network, loss_fn(network, x, y) -> loss)`` of a model."""
    if name == "backbone":
        ssn = StochasticSegmentationNetwork(dims, in_channels, num_classes)  # its default backbone
        features, width = feature_backbone(
            dims, in_channels, None, ssn.backbone_channels, (32, 64, 128, 256), (2, 2, 2), 2
        )
        net = _Deterministic(features, dims, width, num_classes)
        return net, lambda n, x, y: F.cross_entropy(n(x), y[:, 0])
    if name == "ssn":
        net = StochasticSegmentationNetwork(dims, in_channels, num_classes)
        loss = LowRankMVNNLLLoss(num_mc_samples=20, antithetic=True, generator=0)
        return net, lambda n, x, y: loss(n(x, y), y)
    if name == "unet":
        pu = ProbabilisticUNet(dims, in_channels, num_classes)
        net = _Deterministic(pu.unet, dims, pu.channels[0], num_classes)
        return net, lambda n, x, y: F.cross_entropy(n(x), y[:, 0])
    if name == "prob_unet":
        net = ProbabilisticUNet(dims, in_channels, num_classes)
        loss = ELBOLoss(beta=1.0)
        return net, lambda n, x, y: loss(n(x, y), y)["loss"]
    raise ValueError(f"unknown model {name}")


def _stepper(name, dims, args, amp: bool):
    """A function running one training step of ``name`` and returning its wall time in seconds."""
    torch.manual_seed(0)
    in_channels, num_classes, batch, size = (
        (1, 2, args.batch2d, args.size2d) if dims == 2 else (4, 4, args.batch3d, args.size3d)
    )
    net, loss_fn = build(name, dims, in_channels, num_classes)
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(1)
    x = torch.randn((batch, in_channels, *([size] * dims)), generator=g)
    y = torch.randint(0, num_classes, (batch, 1, *([size] * dims)), generator=g)
    device_type = "cuda" if torch.cuda.is_available() else "cpu"

    def step() -> float:
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type, dtype=torch.bfloat16 if device_type == "cpu" else torch.float16, enabled=amp):
            loss = loss_fn(net, x, y)
        loss.backward()
        opt.step()
        if device_type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    return step


def paired_step_seconds(model: str, base: str, dims: int, args, amp: bool) -> tuple[float, float, float]:
    """Median step times of ``model`` and ``base`` and the median of their per-round ratios.

    The two models' steps alternate (the order flips every round), so a slow spell of a shared machine slows both
    sides of a ratio alike.
    """
    steppers = {model: _stepper(model, dims, args, amp), base: _stepper(base, dims, args, amp)}
    times: dict[str, list[float]] = {model: [], base: []}
    for i in range(args.warmup + args.steps):
        for name in (model, base) if i % 2 == 0 else (base, model):
            seconds = steppers[name]()
            if i >= args.warmup:
                times[name].append(seconds)
    ratios = [a / b for a, b in zip(times[model], times[base])]
    return statistics.median(times[model]), statistics.median(times[base]), statistics.median(ratios)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch2d", type=int, default=16)
    parser.add_argument("--size2d", type=int, default=64)
    parser.add_argument("--batch3d", type=int, default=2)
    parser.add_argument("--size3d", type=int, default=48)
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--amp", action="store_true", help="also time each model under autocast")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--name", default="train_step")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)

    rows = []
    for dims in args.dims:
        float32_steps = {}
        for amp in [False, True] if args.amp else [False]:
            for model, base in (("ssn", "backbone"), ("prob_unet", "unet")):
                step_s, base_s, ratio = paired_step_seconds(model, base, dims, args, amp)
                if not amp:
                    float32_steps[model] = step_s
                logger.info(
                    "%dD %s%s: %.3f s per step, %s %.3f s, ratio %.3f",
                    dims, model, " (autocast)" if amp else "", step_s, base, base_s, ratio,
                )  # fmt: skip
                rows.append(
                    {
                        "dims": dims,
                        "model": model,
                        "autocast": amp,
                        "step_s": step_s,
                        "baseline": base,
                        "baseline_step_s": base_s,
                        "ratio": ratio,
                        "over_float32": step_s / float32_steps[model],
                    }
                )
    shapes = (
        f"2D: batch {args.batch2d} of 1x{args.size2d}^2, 2 classes; 3D: batch {args.batch3d} of 4x{args.size3d}^3, "
        "4 classes"
    )
    md = (
        "# Train step: the probabilistic models against the deterministic networks they build on\n\n"
        f"{shapes}. Median of {args.steps} steps (forward, loss, backward, Adam) after {args.warmup}, "
        f"{args.threads} CPU thread(s), all in one process; a model's steps alternate with its baseline's and "
        "`ratio` is the median of the per-round ratios. `ssn` against `backbone` (the same MONAI UNet emitting "
        "the features the SSN's heads read, plus a 1x1 convolution and cross-entropy), `prob_unet` against `unet` "
        "(its own U-Net with a 1x1 convolution and cross-entropy). `over_float32`: the step against the same "
        "model's float32 step.\n\n"
        + md_table(
            rows, ["dims", "model", "autocast", "step_s", "baseline", "baseline_step_s", "ratio", "over_float32"]
        )
        + "\n\nCommand: `python benchmarks/bench_train_step.py "
        + " ".join(argv if argv is not None else sys.argv[1:])
        + "`\n"
    )
    results = {"machine": machine_info(), "args": vars(args), "rows": rows}
    paths = write_results(args.name, results, md)
    logger.info("wrote %s", ", ".join(paths))
    return results


if __name__ == "__main__":
    main()
