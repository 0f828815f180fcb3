# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""Structure checks of the Sphinx docs; the build itself (``-W``) runs in ``make docs`` / ``make test``."""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

import monai_probseg

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _automodules(page: Path) -> list[str]:
    return re.findall(r"^\.\. automodule:: (\S+)", page.read_text(), flags=re.MULTILINE)


def test_every_subpackage_has_an_api_page_in_the_toctree():
    subpackages = {m.name for m in pkgutil.iter_modules(monai_probseg.__path__) if m.ispkg}
    pages = {p.stem for p in (DOCS / "api").glob("*.rst")}
    assert subpackages <= pages, f"subpackages without docs/api/<name>.rst: {sorted(subpackages - pages)}"
    index = (DOCS / "index.rst").read_text()
    assert all(f"api/{p}" in index for p in pages), "every API page must be in the index toctree"
    for name in subpackages:
        targets = _automodules(DOCS / "api" / f"{name}.rst")
        assert targets and all(t.startswith(f"monai_probseg.{name}") for t in targets), (name, targets)


def test_automodule_targets_import_and_pick_up_reexports():
    for page in (DOCS / "api").glob("*.rst"):
        text = page.read_text()
        for target in _automodules(page):
            importlib.import_module(target)
        # names exported later from a subpackage __init__ are documented without editing the page
        assert text.count(":imported-members:") == len(_automodules(page)), page.name
