# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""Command line for the synthetic data: ``python -m monai_probseg.data.synthetic {anatomy,brats,lesions2d} ...``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from monai_probseg.data.synthetic._common import MIN_SIZE
from monai_probseg.data.synthetic.anatomy import ANATOMY_CONTRASTS, write_anatomy_phantoms
from monai_probseg.data.synthetic.brats import write_brats_phantoms
from monai_probseg.data.synthetic.lesions import write_ambiguous_lesions_2d

__all__ = ["OneLineErrorParser", "int_at_least", "main"]


class OneLineErrorParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line on stderr (``prog: error: ...``) and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse ``type`` accepting integers >= ``minimum`` with a clear message otherwise."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value

    return parse


def _parser() -> OneLineErrorParser:
    parser = OneLineErrorParser(
        prog="python -m monai_probseg.data.synthetic",
        description="Write synthetic data with a known ground truth: brain anatomy phantoms (CSF, GM, WM) in "
        "T1/T2/FLAIR contrasts, BraTS 2023-style multimodal brain-tumour phantoms with several raters, or 2D "
        "ambiguous lesions with their exact mask distribution.",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", help="only print the summary (no progress log)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{anatomy,brats,lesions2d}")

    anatomy = sub.add_parser(
        "anatomy",
        parents=[common],
        help="2D/3D brain anatomy phantoms (0 background, 1 CSF, 2 GM, 3 WM) with a MONAI datalist.json",
        description="Write skull-stripped brain anatomy phantoms: <out>/<case>/<case>-{<contrast>,seg}.nii.gz and "
        "<out>/datalist.json (decathlon style). Use different --family values for the label maps that train a "
        "prior and the unlabelled images that train a segmenter.",
    )
    anatomy.add_argument("--out", required=True, help="output folder (created if missing)")
    anatomy.add_argument("--cases", type=int_at_least(1), default=4, help="number of cases (default: 4)")
    anatomy.add_argument(
        "--size",
        type=int_at_least(MIN_SIZE),
        nargs="+",
        default=[96, 96, 96],
        metavar="N",
        help=f"2 (axial slice) or 3 (volume) sizes in voxels (1 mm), each >= {MIN_SIZE} (default: 96 96 96)",
    )
    anatomy.add_argument(
        "--contrasts",
        nargs="*",
        choices=tuple(ANATOMY_CONTRASTS),
        default=["t1"],
        help="contrasts to write; none for label maps only (default: t1)",
    )
    anatomy.add_argument("--family", type=int_at_least(0), default=0, help="shape family (default: 0)")
    anatomy.add_argument("--seed", type=int_at_least(0), default=0, help="random seed (default: 0)")

    brats = sub.add_parser(
        "brats",
        parents=[common],
        help="3D phantoms in the BraTS 2023 layout with a MONAI datalist.json",
        description="Write BraTS 2023-style phantoms: <out>/<case>/<case>-{t1n,t1c,t2w,t2f,seg,seg-rater<k>}.nii.gz "
        "and <out>/datalist.json (decathlon style).",
    )
    brats.add_argument("--out", required=True, help="output folder (created if missing)")
    brats.add_argument("--cases", type=int_at_least(1), default=2, help="number of cases (default: 2)")
    brats.add_argument(
        "--size",
        type=int_at_least(MIN_SIZE),
        nargs=3,
        default=[96, 96, 96],
        metavar=("X", "Y", "Z"),
        help=f"volume size in voxels (1 mm), each >= {MIN_SIZE} (default: 96 96 96; BraTS: 240 240 155)",
    )
    brats.add_argument("--raters", type=int_at_least(1), default=3, help="rater segmentations per case (default: 3)")
    brats.add_argument("--seed", type=int_at_least(0), default=0, help="random seed (default: 0)")

    lesions = sub.add_parser(
        "lesions2d",
        parents=[common],
        help="2D ambiguous lesions (NIfTI) with K annotators, the true mask distribution (.npz) and a datalist",
        description="Write 2D ambiguous lesions: <out>/<case>/<case>-image.nii.gz, <case>-annot<k>.nii.gz, "
        "<case>-modes.npz (the exact distribution of masks) and <out>/datalist.json.",
    )
    lesions.add_argument("--out", required=True, help="output folder (created if missing)")
    lesions.add_argument("--cases", type=int_at_least(1), default=8, help="number of cases (default: 8)")
    lesions.add_argument(
        "--size",
        type=int_at_least(MIN_SIZE),
        nargs=2,
        default=[128, 128],
        metavar=("H", "W"),
        help=f"image size, each >= {MIN_SIZE} (default: 128 128)",
    )
    lesions.add_argument("--annotators", type=int_at_least(1), default=4, help="annotator masks per case (default: 4)")
    lesions.add_argument(
        "--classes", type=int, choices=(2, 3), default=2, help="2: lesion; 3: lesion core (1) and rim (2) (default: 2)"
    )
    lesions.add_argument("--seed", type=int_at_least(0), default=0, help="random seed (default: 0)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``) and return the exit code.

    Bad arguments exit with code 2 and a one-line message on stderr; a failure while writing exits with 1.

    Args:
        argv: the arguments, e.g. ``["brats", "--out", "/tmp/p", "--cases", "2", "--size", "64", "64", "48"]``.

    Example::

        main(["lesions2d", "--out", "/tmp/lesions", "--cases", "8"])
    """
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(message)s")
    if args.command == "anatomy" and len(args.size) not in (2, 3):
        parser.error(f"argument --size: expected 2 or 3 sizes, got {len(args.size)}")
    try:
        if args.command == "anatomy":
            path = write_anatomy_phantoms(
                args.out, args.cases, tuple(args.size), tuple(args.contrasts), args.seed, family=args.family
            )
            what = (
                f"{args.cases} anatomy phantom(s) of {'x'.join(map(str, args.size))} voxels "
                f"({', '.join(args.contrasts) or 'labels only'}; family {args.family})"
            )
        elif args.command == "brats":
            path = write_brats_phantoms(args.out, args.cases, tuple(args.size), args.raters, args.seed)
            what = f"{args.cases} BraTS phantom(s) of {'x'.join(map(str, args.size))} voxels with {args.raters} raters"
        else:
            path = write_ambiguous_lesions_2d(
                args.out, args.cases, tuple(args.size), args.annotators, args.seed, num_classes=args.classes
            )
            what = (
                f"{args.cases} 2D lesion case(s) of {'x'.join(map(str, args.size))} pixels "
                f"with {args.annotators} annotators"
            )
    except ValueError as e:
        parser.error(str(e))
    except OSError as e:
        print(f"{parser.prog}: error: writing to {args.out!r} failed: {e}", file=sys.stderr)
        return 1
    print(f"wrote {what} (seed {args.seed}) under {args.out}; datalist: {path}")
    return 0
