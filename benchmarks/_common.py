# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""Helpers shared by the benchmark scripts: machine facts and atomic JSON + markdown output."""

from __future__ import annotations

import json
import os
import platform
import time
from typing import Any

import torch

import monai_probseg
from monai_probseg.utils import write_text_atomic

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def results_dir() -> str:
    """Where results go: ``$MONAI_PROBSEG_RESULTS_DIR`` if set (the smoke tests use a temporary folder), else
    ``benchmarks/results``."""
    return os.environ.get("MONAI_PROBSEG_RESULTS_DIR") or RESULTS_DIR


def machine_info() -> dict[str, Any]:
    """The facts a reader needs to compare timings: CPU/GPU, threads, versions, date."""
    import monai

    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "monai": monai.__version__,
        "monai_probseg": monai_probseg.__version__,
    }


def write_results(name: str, results: dict[str, Any], markdown: str, out_dir: str | None = None) -> tuple[str, str]:
    """Write ``<out_dir>/<name>.json`` and ``<out_dir>/<name>.md`` atomically (``out_dir`` defaults to
    :func:`results_dir`) and return both paths."""
    out_dir = results_dir() if out_dir is None else out_dir
    json_path = os.path.join(out_dir, f"{name}.json")
    md_path = os.path.join(out_dir, f"{name}.md")
    write_text_atomic(json.dumps(results, indent=2, default=float) + "\n", json_path)
    write_text_atomic(markdown.rstrip() + "\n", md_path)
    return json_path, md_path


def md_table(rows: list[dict[str, Any]], columns: list[str], fmt: str = "{:.4g}") -> str:
    """A markdown table of ``rows`` (dicts) with the given ``columns``."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = []
        for c in columns:
            v = row.get(c, "")
            cells.append(fmt.format(v) if isinstance(v, float) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
