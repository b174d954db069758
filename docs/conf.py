"""Sphinx configuration of the remote_kernel site: MyST Markdown, the PyData theme.

Build: ``pip install -e ".[docs]"`` then ``sphinx-build -W --keep-going docs docs/_build/html``
(what ``.ci/run`` does). The build needs no network: no intersphinx, nothing fetched from a CDN.
The settings references (server and kernel) are generated from the traits before Sphinx reads
the pages (:func:`gen_settings.write_all`).
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import gen_settings  # noqa: E402

from remote_kernel._version import __version__  # noqa: E402

project = "remote_kernel"
author = "the remote_kernel authors"
copyright = "the remote_kernel authors"
release = __version__
version = ".".join(__version__.split(".")[:2])

extensions = ["myst_parser"]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "qa", "README.md", "Thumbs.db", ".DS_Store"]
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3
suppress_warnings: list[str] = []

html_theme = "pydata_sphinx_theme"
html_title = "remote_kernel"
html_static_path: list[str] = []
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "footer_start": ["copyright"],
    "footer_end": [],
}
html_show_sourcelink = False


def setup(app: object) -> None:
    """Regenerate the settings references from the traits before the pages are read."""
    gen_settings.write_all()
