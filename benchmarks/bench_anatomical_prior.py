# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""Unsupervised segmentation with an anatomical prior vs a supervised U-Net and an intensity mixture, 2D and 3D.

Dalca, Guttag & Sabuncu (CVPR 2018) learn a prior over anatomy from label maps alone (a VAE,
:py:class:`~monai_probseg.networks.nets.AnatomicalPriorVAE`) and then segment images of a modality for which no
label exists, by the ELBO with the label marginalised (their eq. 14,
:py:class:`~monai_probseg.losses.AnatomicalPriorELBOLoss`). On the brain anatomy phantoms of
:py:func:`monai_probseg.data.synthetic.anatomy_phantom` (labels 0 air, 1 CSF, 2 GM, 3 WM; skull-stripped):

- the prior is trained on the label maps of shape family 0 (no image);
- the unsupervised model (:py:class:`~monai_probseg.networks.nets.AnatomicalPriorSegmentation`, the prior's decoder
  frozen, ``intensity_posterior=True``: the segmentation is the per-voxel posterior ``p(s | z, x)``; with a smooth
  bias field of DCT order ``--bias-order`` fitted by EM in the likelihood, 0 for the paper's model) on the T1
  images of family 1, without their labels; at inference every test image gets its own tissue Gaussians
  (``--intensity-fit`` EM steps, 0 for the learnt ones; ablation row "the learnt tissue Gaussians for every
  image");
- the supervised upper bound, a MONAI ``UNet``, on the same family-1 T1 images *with* their labels (cross-entropy +
  Dice; ``--unet-iters`` iterations in 2D, ``--unet-iters3d`` in 3D);
- the intensity baseline, :py:class:`~monai_probseg.networks.nets.IntensityMixtureSegmentation`: a 3-component
  Gaussian mixture fitted by EM to each test image's brain voxels, no training;
- every model is scored on held-out phantoms of family 2 (T1, a contrast the prior never saw): Dice per tissue of
  the arg-max segmentation against the true label map. The prior alone (``decoder(mu(x))`` without the intensity
  term) is reported too, as an ablation.

2D: axial slices of ``--size2d`` (1 mm). 3D: volumes of ``--phantom3d`` at 1 mm resampled to ``--pixdim`` mm
(image bilinear, label nearest), padded or cropped to ``--shape3d``; images scaled by
:py:class:`~monai_probseg.transforms.ScaleBrainIntensity` (the 99th percentile of the brain voxels -> 1, air 0), as
``bundles/brain_anatomical_prior`` does. In 3D the unsupervised model is by default the one the bundle ships
(``--model3d``, trained by its ``train_prior.json`` + ``train.json``); ``--train3d`` trains one here instead.

Run (the canonical result, about 25 minutes on one CPU thread)::

    python benchmarks/bench_anatomical_prior.py
    python benchmarks/bench_anatomical_prior.py --dims 2 --prior-iters 50 --unsup-iters 50 --unet-iters 50 \\
        --name anatomical_prior_smoke   # smoke run

Writes ``benchmarks/results/<name>.json`` and ``<name>.md`` (and ``<name>.png``, an example 2D test slice).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.losses import DiceCELoss
from monai.networks.nets import UNet
from monai.transforms import CropForeground, ResizeWithPadOrCrop, Spacing

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import machine_info, md_table, results_dir, write_results  # noqa: E402

from monai_probseg.data.synthetic import anatomy_phantom  # noqa: E402
from monai_probseg.losses import AnatomicalPriorELBOLoss, AnatomicalPriorVAELoss  # noqa: E402
from monai_probseg.networks.nets import (  # noqa: E402
    AnatomicalPriorSegmentation,
    AnatomicalPriorVAE,
    IntensityMixtureSegmentation,
)
from monai_probseg.transforms import ScaleBrainIntensity  # noqa: E402

logger = logging.getLogger("bench_anatomical_prior")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUNDLE = os.path.join(ROOT, "bundles", "brain_anatomical_prior")
TISSUES = ("CSF", "GM", "WM")


# ----------------------------------------------------------------------------------------------------------- data
def make_cases(args, dims: int, num: int, family: int, contrast: str | None, seed: int) -> dict[str, torch.Tensor]:
    """``num`` phantoms of ``family``: ``image`` (num, 1, *shape) scaled, or none, and ``label`` (num, 1, *shape)."""
    images, labels = [], []
    scale = ScaleBrainIntensity()
    for i in range(num):
        size = (args.size2d, args.size2d) if dims == 2 else tuple(args.phantom3d)
        p = anatomy_phantom(size, (contrast,) if contrast else (), seed=[seed, i], family=family)
        label = torch.as_tensor(p["label"][None].astype(np.float32))
        image = torch.as_tensor(p["image"]) if contrast else None
        if dims == 3:  # as the bundle: 1 mm -> the training spacing, the brain's box, a fixed shape
            affine = torch.as_tensor(p["affine"], dtype=torch.float64)
            label = Spacing(args.pixdim, mode="nearest")(MetaTensor(label, affine=affine))
            box = CropForeground(margin=2, allow_smaller=True)
            crop = ResizeWithPadOrCrop(args.shape3d)
            if image is not None:
                image = Spacing(args.pixdim, mode="bilinear")(MetaTensor(image, affine=affine))
                start, end = box.compute_bounding_box(image)
                image = crop(box.crop_pad(image, start, end)).as_tensor()
            else:
                start, end = box.compute_bounding_box(label)
            label = crop(box.crop_pad(label, start, end)).as_tensor()
        labels.append(label.round().to(torch.uint8))
        if image is not None:
            images.append(scale(image).as_tensor() if isinstance(image, MetaTensor) else scale(image))
    out = {"label": torch.stack(labels)}
    if images:
        out["image"] = torch.stack([torch.as_tensor(im) for im in images]).float()
    return out


def batches(n: int, batch: int, iters: int, rng: np.random.Generator):
    for _ in range(iters):
        yield torch.as_tensor(rng.choice(n, size=min(batch, n), replace=False))


def flip(x: torch.Tensor, dims: int, rng: np.random.Generator) -> torch.Tensor:
    """A random left-right flip per batch (axis 0 of the RAS phantoms): the anatomy stays plausible."""
    return x.flip(2) if rng.random() < 0.5 else x


# ----------------------------------------------------------------------------------------------------------- models
def build_prior(dims: int, args) -> AnatomicalPriorVAE:
    channels, strides = (args.channels2d, args.strides2d) if dims == 2 else (args.channels3d, args.strides3d)
    return AnatomicalPriorVAE(
        dims, 4, latent_channels=args.latent, channels=channels, strides=strides, return_loss_inputs=True
    )


def train_prior(prior, labels, dims, args, rng) -> float:
    loss_fn = AnatomicalPriorVAELoss(beta=args.beta, reconstruction="mean")
    opt = torch.optim.Adam(prior.parameters(), lr=args.lr)
    prior.train()
    start = time.perf_counter()
    for it, idx in enumerate(batches(len(labels), args.batch2d if dims == 2 else args.batch3d, args.prior_iters, rng)):
        y = flip(labels[idx].long(), dims, rng)
        terms = loss_fn(**prior(y), target=y)
        opt.zero_grad()
        terms["loss"].backward()
        opt.step()
        if it % 100 == 0:
            logger.info("%dD prior it %d: loss %.4f kl %.1f", dims, it, terms["loss"], terms["kl"])
    return time.perf_counter() - start


def train_unsupervised(net, images, dims, args, rng) -> float:
    loss_fn = AnatomicalPriorELBOLoss(beta=args.beta, reconstruction="mean")
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=args.lr)
    net.train()
    start = time.perf_counter()
    for it, idx in enumerate(batches(len(images), args.batch2d if dims == 2 else args.batch3d, args.unsup_iters, rng)):
        terms = loss_fn(**net(flip(images[idx], dims, rng)))
        opt.zero_grad()
        terms["loss"].backward()
        opt.step()
        if it % 100 == 0:
            logger.info("%dD unsupervised it %d: loss %.4f kl %.1f", dims, it, terms["loss"], terms["kl"])
    return time.perf_counter() - start


def build_unet(dims: int) -> UNet:
    return UNet(dims, 1, 4, channels=(16, 32, 64, 128), strides=(2, 2, 2), num_res_units=1)


def train_unet(net, images, labels, dims, args, rng) -> float:
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    net.train()
    start = time.perf_counter()
    iters = args.unet_iters if dims == 2 else args.unet_iters3d
    for it, idx in enumerate(batches(len(images), args.batch2d if dims == 2 else args.batch3d, iters, rng)):
        both = flip(torch.cat([images[idx], labels[idx].float()], 1), dims, rng)
        loss = loss_fn(net(both[:, :1]), both[:, 1:].round().long())
        opt.zero_grad()
        loss.backward()
        opt.step()
        if it % 100 == 0:
            logger.info("%dD UNet it %d: loss %.4f", dims, it, loss)
    return time.perf_counter() - start


def load_bundle_model(path: str, bias_order: int | None = None) -> AnatomicalPriorSegmentation:
    parser = ConfigParser()
    parser.read_config(os.path.join(BUNDLE, "configs", "inference.json"))
    parser["device"] = "$torch.device('cpu')"
    if bias_order is not None:  # weights trained with another bias field than the bundle's
        parser["network_def"]["bias_field_order"] = bias_order
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return net


# ----------------------------------------------------------------------------------------------------------- scoring
def dice_per_tissue(pred: torch.Tensor, label: torch.Tensor) -> np.ndarray:
    """(num, 3) Dice of labels 1, 2, 3 per case (``pred`` and ``label`` (num, *spatial) integers)."""
    out = np.zeros((pred.shape[0], 3))
    for t in range(1, 4):
        p, g = pred == t, label == t
        inter = (p & g).flatten(1).sum(1).double()
        denom = (p.flatten(1).sum(1) + g.flatten(1).sum(1)).double()
        out[:, t - 1] = (2 * inter / denom.clamp_min(1)).numpy()
    return out


@torch.no_grad()
def predict(net, images: torch.Tensor, chunk: int = 8) -> torch.Tensor:
    net.eval()
    return torch.cat([net(images[i : i + chunk]).argmax(1) for i in range(0, len(images), chunk)])


def summarise(name: str, dice: np.ndarray, extra: dict | None = None) -> dict:
    row = {"method": name}
    row.update({t: float(dice[:, i].mean()) for i, t in enumerate(TISSUES)})
    row["mean"] = float(dice.mean())
    row.update({f"{t}_std": float(dice[:, i].std()) for i, t in enumerate(TISSUES)})
    row.update(extra or {})
    return row


def run_dims(dims: int, args, rng) -> tuple[list[dict], dict, dict]:
    torch.manual_seed(args.seed + dims)
    t0 = time.perf_counter()
    n_prior, n_unsup, n_test = (
        (args.prior2d, args.unsup2d, args.test2d) if dims == 2 else (args.prior3d, args.unsup3d, args.test3d)
    )
    use_bundle = dims == 3 and not args.train3d
    prior_data = None if use_bundle else make_cases(args, dims, n_prior, 0, None, args.seed)
    train = make_cases(args, dims, n_unsup, 1, "t1", args.seed)
    test = make_cases(args, dims, n_test, 2, "t1", args.seed + 1)
    gen_s = time.perf_counter() - t0
    logger.info(
        "%dD data: %d label maps, %d + %d T1 images of shape %s (%.0f s)",
        dims,
        0 if use_bundle else n_prior,
        n_unsup,
        n_test,
        tuple(test["image"].shape[2:]),
        gen_s,
    )
    times = {"data_s": gen_s}
    label = test["label"][:, 0].long()
    rows = []

    gmm = IntensityMixtureSegmentation(4, (1, 2, 3))
    t = time.perf_counter()
    rows.append(summarise("intensity mixture (EM, per image)", dice_per_tissue(predict(gmm, test["image"], 1), label)))
    times["mixture_s"] = time.perf_counter() - t

    if use_bundle:
        path = args.model3d or os.path.join(BUNDLE, "models", "model.pt")
        unsup = load_bundle_model(path, args.bias_order if args.model3d else None)
        unsup.intensity_fit_iterations = args.intensity_fit
        source = f"bundle weights {os.path.relpath(path, ROOT)}"
        times["prior_train_s"] = times["unsup_train_s"] = float("nan")
    else:
        prior = build_prior(dims, args)
        times["prior_train_s"] = train_prior(prior, prior_data["label"], dims, args, rng)
        unsup = AnatomicalPriorSegmentation(
            dims,
            1,
            4,
            prior,
            intensity_posterior=True,
            bias_field_order=args.bias_order,
            intensity_fit_iterations=args.intensity_fit,
        )
        times["unsup_train_s"] = train_unsupervised(unsup, train["image"], dims, args, rng)
        source = f"trained here ({args.prior_iters} prior + {args.unsup_iters} unsupervised iterations)"
    rows.append(
        summarise(
            "unsupervised anatomical prior p(s|z,x)",
            dice_per_tissue(predict(unsup, test["image"]), label),
            {"source": source},
        )
    )
    unsup.intensity_fit_iterations = 0
    rows.append(
        summarise(
            "  ablation: the learnt tissue Gaussians for every image",
            dice_per_tissue(predict(unsup, test["image"]), label),
        )
    )
    unsup.intensity_fit_iterations = args.intensity_fit
    unsup.intensity_posterior = False
    rows.append(
        summarise("  ablation: prior decoder alone p(s|z)", dice_per_tissue(predict(unsup, test["image"]), label))
    )
    unsup.intensity_posterior = True
    if not use_bundle and args.bias_order > 0:  # the paper's likelihood, one Gaussian per tissue and no bias field
        plain = AnatomicalPriorSegmentation(dims, 1, 4, prior, intensity_posterior=True)
        times["unsup_plain_train_s"] = train_unsupervised(plain, train["image"], dims, args, rng)
        rows.append(
            summarise(
                "  ablation: no bias field (the paper's p(x|s))", dice_per_tissue(predict(plain, test["image"]), label)
            )
        )

    if not use_bundle:  # how detailed the prior itself is: its reconstruction of the true test label maps
        prior.eval()
        with torch.no_grad():
            recon = torch.cat(
                [
                    prior.reconstruct(test["label"][i : i + 8].long(), sample=False)["logits"].argmax(1)
                    for i in range(0, len(label), 8)
                ]
            )
        rows.append(summarise("  ceiling: prior's reconstruction of the true label", dice_per_tissue(recon, label)))

    unet = build_unet(dims)
    times["unet_train_s"] = train_unet(unet, train["image"], train["label"], dims, args, rng)
    rows.append(summarise("supervised UNet (paired labels)", dice_per_tissue(predict(unet, test["image"]), label)))
    example = {"image": test["image"][0, 0], "label": label[0], "unsup": unsup, "gmm": gmm, "unet": unet}
    return rows, times, example


def figure(example: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = example["image"][None, None]
    with torch.no_grad():
        net = example["unsup"].eval()
        maps = net.distribution(x)
        probs = torch.softmax(net.sample(maps, 16, torch.Generator().manual_seed(0)).float(), 2).mean(1)[0]
        entropy = -(probs * probs.clamp_min(1e-8).log()).sum(0)
        panels = [
            ("T1 (test, unseen contrast)", example["image"], "gray"),
            ("truth", example["label"], "viridis"),
            ("intensity mixture", example["gmm"](x).argmax(1)[0], "viridis"),
            ("unsupervised (prior)", probs.argmax(0), "viridis"),
            ("entropy of 16 samples", entropy, "magma"),
            ("supervised UNet", example["unet"].eval()(x).argmax(1)[0], "viridis"),
        ]
    fig, axes = plt.subplots(1, len(panels), figsize=(3 * len(panels), 3.2))
    for ax, (title, img, cmap) in zip(axes, panels):
        ax.imshow(
            np.asarray(img).T,
            origin="lower",
            cmap=cmap,
            vmin=0 if cmap == "viridis" else None,
            vmax=3 if cmap == "viridis" else None,
        )
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--seed", type=int, default=100)
    parser.add_argument("--size2d", type=int, default=128)
    parser.add_argument("--prior2d", type=int, default=400)
    parser.add_argument("--unsup2d", type=int, default=200)
    parser.add_argument("--test2d", type=int, default=50)
    parser.add_argument("--phantom3d", type=int, nargs=3, default=[144, 176, 128])
    parser.add_argument("--pixdim", type=float, nargs=3, default=[3.0, 3.0, 3.0])
    parser.add_argument("--shape3d", type=int, nargs=3, default=[48, 64, 48])
    parser.add_argument("--prior3d", type=int, default=40)
    parser.add_argument("--unsup3d", type=int, default=24)
    parser.add_argument("--test3d", type=int, default=8)
    parser.add_argument("--channels2d", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--strides2d", type=int, nargs="+", default=[2, 2])
    parser.add_argument("--channels3d", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--strides3d", type=int, nargs="+", default=[2, 2, 1])
    parser.add_argument("--latent", type=int, default=4)
    parser.add_argument("--beta", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch2d", type=int, default=8)
    parser.add_argument("--batch3d", type=int, default=2)
    parser.add_argument("--prior-iters", type=int, default=1000)
    parser.add_argument("--unsup-iters", type=int, default=600)
    parser.add_argument("--unet-iters", type=int, default=400, help="2D UNet iterations")
    parser.add_argument(
        "--unet-iters3d", type=int, default=2000, help="3D UNet iterations (400 left its thin CSF at Dice 0.62)"
    )
    parser.add_argument(
        "--bias-order",
        type=int,
        default=3,
        help="bias field DCT order of the unsupervised model trained here or loaded by --model3d (0: none)",
    )
    parser.add_argument(
        "--intensity-fit",
        type=int,
        default=10,
        help="EM steps of each test image's own tissue Gaussians at inference (0: the learnt ones; the bundle's 10)",
    )
    parser.add_argument("--train3d", action="store_true", help="train the 3D models here, not the bundle's")
    parser.add_argument("--model3d", default="", help="3D unsupervised weights (default: the bundle's model.pt)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--name", default="anatomical_prior")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    command = "python benchmarks/bench_anatomical_prior.py" + (" " + " ".join(argv) if argv else "")
    if argv is None and len(sys.argv) > 1:
        command = "python benchmarks/bench_anatomical_prior.py " + " ".join(sys.argv[1:])
    start = time.perf_counter()
    results = {"command": command, "machine": machine_info(), "settings": vars(args), "dims": {}}
    lines = [
        "# Anatomical prior (Dalca et al., CVPR 2018): unsupervised vs supervised vs intensity mixture",
        "",
        f"Command: `{command}`",
        "",
        "Held-out brain anatomy phantoms (family 2, T1, a contrast the prior never saw); Dice per tissue of the",
        "arg-max segmentation against the true label map (mean over cases). The prior was trained on family-0 label",
        "maps only; the unsupervised model on family-1 T1 images without labels (prior decoder frozen); the UNet on",
        "the same family-1 images with their labels. Setup: benchmarks/bench_anatomical_prior.py docstring.",
    ]
    example = None
    for dims in args.dims:
        rows, times, ex = run_dims(dims, args, rng)
        if dims == 2:
            example = ex
        by = {r["method"].strip(): r for r in rows}
        unsup = by["unsupervised anatomical prior p(s|z,x)"]
        sup, mix = by["supervised UNet (paired labels)"], by["intensity mixture (EM, per image)"]
        checks = {
            t: {
                "gap_to_supervised": sup[t] - unsup[t],
                "gain_over_mixture": unsup[t] - mix[t],
                "within_0.08_of_supervised": bool(sup[t] - unsup[t] <= 0.08),
                "at_least_0.05_above_mixture": bool(unsup[t] - mix[t] >= 0.05),
            }
            for t in TISSUES
        }
        results["dims"][str(dims)] = {"rows": rows, "seconds": times, "targets": checks}
        shape = (
            f"{args.size2d}x{args.size2d} at 1 mm"
            if dims == 2
            else (
                f"{'x'.join(map(str, args.phantom3d))} at 1 mm resampled to {args.pixdim[0]:g} mm, "
                f"{'x'.join(map(str, args.shape3d))}"
            )
        )
        n_test = args.test2d if dims == 2 else args.test3d
        lines += [
            "",
            f"## {dims}D ({shape}; {n_test} test cases)",
            "",
            md_table(rows, ["method", *TISSUES, "mean"], fmt="{:.3f}"),
            "",
        ]
        lines.append("| target | " + " | ".join(TISSUES) + " |")
        lines.append("|---|" + "---|" * len(TISSUES))
        lines.append(
            "| supervised - unsupervised (<= 0.08) | "
            + " | ".join(
                f"{checks[t]['gap_to_supervised']:.3f} {'ok' if checks[t]['within_0.08_of_supervised'] else 'MISSED'}"
                for t in TISSUES
            )
            + " |"
        )
        lines.append(
            "| unsupervised - mixture (>= 0.05) | "
            + " | ".join(
                f"{checks[t]['gain_over_mixture']:.3f} {'ok' if checks[t]['at_least_0.05_above_mixture'] else 'MISSED'}"
                for t in TISSUES
            )
            + " |"
        )
        lines += ["", "Seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in times.items() if v == v)]
        src = unsup.get("source")
        if src:
            lines.append(f"Unsupervised model: {src}.")
    total = time.perf_counter() - start
    results["total_seconds"] = total
    lines += [
        "",
        f"Total wall time {total / 60:.1f} min on {results['machine'].get('cpu', 'this CPU')}, "
        f"{args.threads} thread(s).",
    ]
    if example is not None:
        png = os.path.join(results_dir(), f"{args.name}.png")
        figure(example, png)
        lines += ["", f"Example 2D test slice: `{args.name}.png`.", "", f"![example]({args.name}.png)"]
    json_path, md_path = write_results(args.name, results, "\n".join(lines))
    logger.info("wrote %s and %s", json_path, md_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
