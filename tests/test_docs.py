# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""Checks of the Sphinx docs: page structure, and a full build (``-W``, as ``make docs``) whose HTML is inspected."""

from __future__ import annotations

import html
import importlib
import inspect
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

import monai_probseg

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _automodules(page: Path) -> list[str]:
    return re.findall(r"^\.\. automodule:: (\S+)", page.read_text(encoding="utf-8"), flags=re.MULTILINE)


def test_every_subpackage_has_an_api_page_in_the_toctree():
    subpackages = {m.name for m in pkgutil.iter_modules(monai_probseg.__path__) if m.ispkg}
    pages = {p.stem for p in (DOCS / "api").glob("*.rst")}
    assert subpackages <= pages, f"subpackages without docs/api/<name>.rst: {sorted(subpackages - pages)}"
    index = (DOCS / "index.rst").read_text(encoding="utf-8")
    assert all(f"api/{p}" in index for p in pages), "every API page must be in the index toctree"
    for name in subpackages:
        targets = _automodules(DOCS / "api" / f"{name}.rst")
        assert targets and all(t.startswith(f"monai_probseg.{name}") for t in targets), (name, targets)


def test_automodule_targets_import_and_pick_up_reexports():
    for page in (DOCS / "api").glob("*.rst"):
        text = page.read_text(encoding="utf-8")
        for target in _automodules(page):
            importlib.import_module(target)
        # names exported later from a subpackage __init__ are documented without editing the page
        assert text.count(":imported-members:") == len(_automodules(page)), page.name


def _class_signatures(page: Path) -> dict[str, str]:
    """``{qualified class name: rendered signature line as text}`` of the classes on one built HTML page."""
    found = {}
    for ident, body in re.findall(
        r'<dt class="sig sig-object py" id="([^"]+)">(.*?)</dt>', page.read_text(encoding="utf-8"), re.S
    ):
        text = " ".join(html.unescape(re.sub(r"<[^>]+>", "", body)).split()).rstrip("¶")
        if text.startswith("class "):
            found[ident] = text
    return found


def test_html_build_shows_constructor_signatures_with_defaults(tmp_path):
    pytest.importorskip("sphinx")
    out = tmp_path / "html"
    cmd = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-E", "-b", "html", str(DOCS), str(out)]
    build = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=300)
    assert build.returncode == 0, f"sphinx build failed:\n{build.stdout}\n{build.stderr}"

    nets = _class_signatures(out / "api" / "networks.html")
    ssn = nets["monai_probseg.networks.nets.StochasticSegmentationNetwork"]
    expected = "StochasticSegmentationNetwork(spatial_dims: int, in_channels: int, out_channels: int, rank: int = 10,"
    assert expected in ssn, ssn
    # a dictionary transform shows its own __init__, not MapTransform.__new__(*args, **kwargs)
    transforms = _class_signatures(out / "api" / "transforms.html")
    assert "(keys: " in transforms["monai_probseg.transforms.UncertaintyMapsd"]

    # every documented class with constructor arguments shows them (first argument and at least one default)
    checked = 0
    for page in (out / "api").glob("*.html"):
        for ident, text in _class_signatures(page).items():
            module, _, name = ident.rpartition(".")
            init = getattr(importlib.import_module(module), name).__init__
            if not inspect.isfunction(init) or not init.__module__.startswith("monai_probseg"):
                continue
            params = [p for p in inspect.signature(init).parameters.values() if p.name != "self"]
            if not params:
                continue
            assert f"{name}({params[0].name}" in text, (ident, text)
            if any(p.default is not inspect.Parameter.empty for p in params):
                assert " = " in text, (ident, text)
            checked += 1
    assert checked >= 20, checked
