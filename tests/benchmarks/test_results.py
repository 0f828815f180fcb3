# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""``benchmarks/results`` is a suite: one result per benchmark with the command that regenerates it, cited docs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
SWEEPS = "experiments.md"  # the one file that summarises the experiment sweeps (no JSON, several commands)
CANONICAL = sorted(p.stem for p in RESULTS.glob("*.md") if p.name != SWEEPS)


def test_results_folder_is_small():
    files = [p.name for p in RESULTS.iterdir() if not p.name.startswith(".")]
    assert len(files) <= 28, f"benchmarks/results holds {len(files)} files; sweeps belong in {SWEEPS}: {sorted(files)}"
    assert (RESULTS / SWEEPS).is_file()
    assert {"metrics", "lesions2d", "inferer", "diffusion", "ssn3d"} <= set(CANONICAL), CANONICAL


@pytest.mark.parametrize("name", CANONICAL)
def test_result_has_json_and_its_command(name):
    with open(RESULTS / f"{name}.json") as f:
        json.load(f)
    md = (RESULTS / f"{name}.md").read_text(encoding="utf-8")
    command = re.search(r"`python (benchmarks/\w+\.py)([^`]*)`", md)
    assert command, f"{name}.md must say the command that regenerates it"
    assert (ROOT / command.group(1)).is_file(), command.group(0)
    # the command writes this file: the script's default --name, or --name given as this file's stem
    given = re.search(r"--name (\S+)", command.group(2))
    assert given is None or given.group(1) == name, command.group(0)


def _cited(text: str) -> set[str]:
    return set(re.findall(r"benchmarks/results/([\w.]+\.(?:md|json))", text))


def test_docs_cite_existing_results():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Benchmarks") :]
    section = section[: section.index("\n## ", 1)]
    cited = set(re.findall(r"`([\w*]+\.md)`", section))
    assert cited, "README's Benchmarks section cites no result"
    assert all((RESULTS / c).is_file() for c in cited), sorted(c for c in cited if not (RESULTS / c).is_file())
    for page in [ROOT / "README.md", *ROOT.glob("bundles/*/docs/README.md"), *ROOT.glob("docs/**/*.rst")]:
        missing = [c for c in _cited(page.read_text(encoding="utf-8")) if not (RESULTS / c).is_file()]
        assert not missing, f"{page.relative_to(ROOT)} cites missing results {missing}"
