# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""Sphinx configuration of the monai_probseg documentation (offline: no intersphinx, bundled theme)."""

from __future__ import annotations

import inspect
import os
import sys

sys.path.insert(0, os.path.abspath(".."))

from sphinx.ext.autodoc.preserve_defaults import update_defvalue  # noqa: E402
from sphinx.util.inspect import signature as sphinx_signature  # noqa: E402
from sphinx.util.inspect import stringify_signature  # noqa: E402

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
autodoc_class_signature = "mixed"  # constructor signature with defaults on the class line
autodoc_typehints = "signature"
autodoc_preserve_defaults = True  # defaults as written in the source (``np.float32``, not ``<class ...>``)

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


def _init_signature_of_map_transforms(app, what, name, obj, options, signature, return_annotation):
    """Show ``__init__``'s signature for classes whose ``__new__`` only forwards (MONAI's ``MapTransform``).

    autodoc reads a class signature from ``__new__`` before ``__init__``; ``MapTransform.__new__(cls, *args,
    **kwargs)`` would make every dictionary transform read ``(*args, **kwargs)``.
    """
    if what != "class" or signature != "(*args, **kwargs)" or not inspect.isfunction(getattr(obj, "__init__", None)):
        return None
    update_defvalue(app, obj.__init__, True)
    sig = sphinx_signature(obj.__init__, bound_method=True)
    return stringify_signature(sig, show_return_annotation=False, unqualified_typehints=True), return_annotation


def setup(app):
    app.connect("autodoc-skip-member", _skip_foreign_members)
    app.connect("autodoc-process-signature", _init_signature_of_map_transforms)
