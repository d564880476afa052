"""Sphinx configuration of odeplug's documentation site.

Build it from the repository root with

    python -m sphinx -W --keep-going -b html docs docs/_build/html

The gallery (``examples/``) runs during the build at small settings: every example that
takes ``--quick`` gets it (``_sphinx_helpers.quick_argv``); run by hand, the examples use
their full settings.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))  # _sphinx_helpers
sys.path.insert(0, str(ROOT))  # odeplug from the checkout, as the tests use it

# Figures on a non-interactive canvas; one engine thread, as in the benchmarks, so that
# the build's time does not depend on the machine's other work being spread over cores.
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("OMP_NUM_THREADS", "1")
# The examples' small settings, for those that read it rather than take --quick
# (examples/spirals.py on the latent ODE's branch).
os.environ.setdefault("ODEPLUG_EXAMPLES_QUICK", "1")

from _sphinx_helpers import (  # noqa: E402
    escape_shape_names,
    optional_pages,
    public_names_missing_from_api,
)

import odeplug  # noqa: E402

project = "odeplug"
author = "odeplug developers"
copyright = "2026, odeplug developers"
version = release = odeplug.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "numpydoc",
    "myst_parser",
    "sphinx_gallery.gen_gallery",
    "sphinx_design",
]

# files_and_scaleout.md shows a model file's JSON header with elisions (…), on purpose.
suppress_warnings = ["misc.highlighting_failure"]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "screenshots", "README.md"]
templates_path = ["_templates"]
html_static_path = ["_static"]

# --- API reference: autosummary pages, numpydoc sections
autosummary_generate = True
autosummary_imported_members = True
autodoc_default_options = {"members": True, "inherited-members": False}
autodoc_typehints = "none"  # numpydoc's Parameters section says the types
numpydoc_show_class_members = False  # the class template lists the methods
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

# --- Markdown pages of docs/ (user_guide.md, benchmarks.md, ...) as they are
myst_enable_extensions = ["colon_fence", "dollarmath"]
myst_heading_anchors = 3

# --- Gallery: examples/ runs at small settings inside the build
sphinx_gallery_conf = {
    "examples_dirs": str(ROOT / "examples"),
    "gallery_dirs": "auto_examples",
    "filename_pattern": r".*\.py$",  # every example runs, not only plot_*.py
    "ignore_pattern": r"(__init__|_common)\.py$",
    "reset_argv": "_sphinx_helpers.quick_argv",
    "within_subsection_order": "_sphinx_helpers.GalleryOrder",
    "doc_module": ("odeplug",),
    "backreferences_dir": "gen_modules/backreferences",
    "download_all_examples": False,
    "remove_config_comments": True,
    "min_reported_time": 1,
    "image_srcset": ["2x"],  # sharp figures on high-density screens
    "abort_on_example_error": False,
}

# --- Theme
html_theme = "pydata_sphinx_theme"
html_title = f"odeplug {release}"
html_theme_options = {
    "navbar_align": "left",
    "show_toc_level": 2,
    "navigation_with_keys": False,
    # Gallery pages: no right-hand sidebar, so that their figures get the width.
    # (exact names: pydata warns when a page matches two wildcard patterns).
    "secondary_sidebar_items": {
        "**": ["page-toc"],
        **{f"auto_examples/{example.stem}": [] for example in (ROOT / "examples").glob("*.py")},
    },
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version"],
}
html_context = {"default_mode": "light"}
html_show_sourcelink = False
html_css_files = ["odeplug.css"]
# Pages without sub-pages: no left sidebar (it would be an empty "Section Navigation").
html_sidebars = {page: [] for page in
                 ("index", "benchmarks", "paper_figures", "architecture")}
# "fit()", not "ODEClassifier.fit()", in a page's table of contents: the long form
# overflows the sidebar.
toc_object_entries_show_parents = "hide"


def _add_optional_pages(app, docname, source):
    """Pages the other estimators' authors add (docs/density.md, docs/latent.md) join
    the user guide's table of contents once they exist."""
    if docname == "guide":
        source[0] = optional_pages(source[0], HERE)


def _check_api_lists_every_public_name(app, config):
    missing = public_names_missing_from_api(HERE / "api.rst")
    if missing:
        from sphinx.util import logging

        logging.getLogger("odeplug.docs").warning(
            "public names of odeplug.__all__ without an API page (add them to "
            "docs/api.rst): %s", ", ".join(missing))


def _skip_inherited_machinery(app, what, name, obj, skip, options):
    """scikit-learn's metadata-routing setters (``set_fit_request``...) are generated
    on every estimator and documented by scikit-learn, with links into its own site."""
    if re.fullmatch(r"set_\w+_request", name):
        return True
    return None


def setup(app):
    app.connect("autodoc-skip-member", _skip_inherited_machinery)
    # After numpydoc (priority 500) has turned the sections into reStructuredText.
    app.connect("autodoc-process-docstring", escape_shape_names, priority=600)
    app.connect("source-read", _add_optional_pages)
    app.connect("config-inited", _check_api_lists_every_public_name)
