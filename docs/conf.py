# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""Sphinx configuration of the monai_probseg documentation (offline: no intersphinx, bundled theme)."""

from __future__ import annotations

import inspect
import os
import sys

sys.path.insert(0, os.path.abspath(".."))

import monai_probseg  # noqa: E402

project = "monai_probseg"
author = "monai_probseg contributors"
copyright = "monai_probseg contributors, Apache License 2.0"
version = release = monai_probseg.__version__

extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon"]
exclude_patterns = ["_build"]
templates_path: list[str] = []

# Google-style docstrings, as in MONAI
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

# The api/*.rst pages document each subpackage's namespace with ``:members:`` and ``:imported-members:``, so a
# name exported from a subpackage ``__init__.py`` appears without editing the docs. ``_skip_foreign_members``
# keeps that to objects defined in monai_probseg (not ``torch``, ``annotations`` or MONAI names).
autodoc_member_order = "groupwise"
autodoc_inherit_docstrings = False  # do not pull torch / MONAI docstrings into overridden methods
autodoc_class_signature = "separated"
autodoc_typehints = "signature"

html_theme = "alabaster"
html_theme_options = {"description": "Probabilistic segmentation for MONAI", "fixed_sidebar": True}
html_static_path: list[str] = []


def _skip_foreign_members(app, what, name, obj, skip, options):
    """Document a module's members only if they are defined in monai_probseg (or are its upper-case constants)."""
    if what != "module":
        return None
    if inspect.ismodule(obj):
        return True
    if inspect.isclass(obj) or inspect.isroutine(obj):
        return True if not getattr(obj, "__module__", "").startswith("monai_probseg") else None
    # module-level data: keep public constants, skip things like loggers and ``from __future__ import annotations``
    return None if name.isupper() else True


def setup(app):
    app.connect("autodoc-skip-member", _skip_foreign_members)
