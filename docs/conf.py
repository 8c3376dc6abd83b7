"""Sphinx configuration: ``sphinx-build -W --keep-going -b html docs docs/_build/html``.

Sphinx with numpydoc because that is the Dask ecosystem's tooling: Dask and distributed build
their documentation this way and write their docstrings in numpydoc's format, as this project
does, so the API reference is generated from the docstrings users already see in ``help()``.
The guide pages are Markdown (MyST), so they read the same on the repository's web view as on
the built site, and the test suite runs their code blocks (tests/test_readme.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # document this checkout, not an installed copy

import pypiper_dask  # noqa: E402

project = "pypiper_dask"
author = "pypiper_dask developers"
copyright = "pypiper_dask developers"
release = pypiper_dask.__version__

extensions = [
    "sphinx.ext.autodoc",
    "numpydoc",
    "myst_parser",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

# Offline and quick: no intersphinx, nothing fetched while building.
autodoc_member_order = "bysource"
autodoc_typehints = "none"  # numpydoc's Parameters sections say the types in words
numpydoc_show_class_members = False  # each class lists its members itself (api.rst)
numpydoc_class_members_toctree = False
myst_heading_anchors = 3  # links such as recovery.md#surviving-failures

html_theme = "pydata_sphinx_theme"
html_title = "pypiper_dask"
html_theme_options = {
    "navigation_with_keys": False,
    "icon_links": [],
}
html_static_path: list[str] = []
