# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""The committed tutorials follow MONAI's conventions and carry the outputs of a full run (no execution here).

``make test`` executes them in fast mode with nbmake (``MONAI_PROBSEG_FAST=1 pytest --nbmake tutorials``); this
file only reads the notebooks' JSON.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

TUTORIALS = Path(__file__).resolve().parents[1] / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("[0-9][0-9]_*.ipynb"))


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _text(output: dict) -> str:
    if output["output_type"] == "stream":
        return "".join(output["text"])
    return "".join(output.get("data", {}).get("text/plain", ""))


def test_numbered_notebooks_are_listed_in_the_readmes():
    assert len(NOTEBOOKS) >= 7
    numbers = [p.name[:2] for p in NOTEBOOKS]
    assert len(set(numbers)) == len(numbers), numbers
    readme = (TUTORIALS.parent / "README.md").read_text(encoding="utf-8")
    local = (TUTORIALS / "README.md").read_text(encoding="utf-8")
    index = (TUTORIALS.parent / "docs" / "index.rst").read_text(encoding="utf-8")
    for path in NOTEBOOKS:
        assert f"tutorials/{path.name}" in readme and path.name in local and path.name in index, path.name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_conventions_and_outputs(path):
    nb = _load(path)
    cells = nb["cells"]
    first = "".join(cells[0]["source"])
    assert cells[0]["cell_type"] == "markdown" and "Apache License, Version 2.0" in first and "\n# " in "\n" + first
    code = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
    assert "pip install" in code[0] and "import monai_probseg" in code[0], "the first code cell installs the package"
    imports = next(c for c in code if "print_config()" in c)
    assert imports.rstrip().endswith("monai.config.print_config()")
    assert any('os.environ.get("MONAI_PROBSEG_FAST", "0") == "1"' in c for c in code)
    assert any("tempfile.mkdtemp()" in c for c in code)
    assert not any(re.search(r"monai_probseg(\.\w+)*\._\w+", c) for c in code), "private API used"
    images = 0
    for cell in cells:
        if cell["cell_type"] != "code":
            continue
        assert cell.get("execution_count") is not None, "the committed notebook is executed"
        lines = 0
        for output in cell.get("outputs", []):
            assert output["output_type"] != "error", f"error output in {path.name}: {output.get('ename')}"
            assert "Traceback" not in _text(output)
            images += "image/png" in output.get("data", {})
            lines += _text(output).count("\n")
        assert lines < 100, f"a cell of {path.name} prints {lines} lines"
    assert images >= 1, f"{path.name} has no figure output"
