"""Helpers of docs/conf.py, importable by name (sphinx-gallery takes its ``reset_argv``
as a dotted name, so that the configuration stays picklable)."""

from __future__ import annotations

import re
from pathlib import Path

OPTIONAL_PAGE = re.compile(r"^([ \t]*)\?([\w/-]+)[ \t]*$", re.MULTILINE)


# Models fitted at full settings by docs/gallery_models/make_gallery_models.py, which the
# gallery's examples load (``--model``) rather than fit small ones in the build.
GALLERY_MODELS_DIR = Path(__file__).resolve().parent / "gallery_models"
GALLERY_MODELS = {"digits.py": "digits_odeclassifier.odeplug",
                  "cnf_density.py": "moons_cnfdensity.odeplug",
                  "spirals.py": "spirals_latentode.odeplug",
                  "plot_conv_digits.py": "digits_conv_odeclassifier.odeplug"}


def quick_argv(gallery_conf, script_vars) -> list[str]:
    """Arguments of an example run by the docs build: ``--quick`` to the examples that
    take it (small settings, so the whole build stays within CI's budget), nothing to
    the others; and ``--model FILE`` to those whose model is fitted ahead
    (:data:`GALLERY_MODELS`), so that their figures show a converged model."""
    src_file = Path(script_vars["src_file"])
    source = src_file.read_text(encoding="utf-8")
    argv = ["--quick"] if '"--quick"' in source else []
    if src_file.name in GALLERY_MODELS and '"--model"' in source:
        argv += ["--model", str(GALLERY_MODELS_DIR / GALLERY_MODELS[src_file.name])]
    return argv


def optional_pages(text: str, docs_dir: Path) -> str:
    """In a toctree, a line ``?page`` names a page kept only where ``page.md`` or
    ``page.rst`` exists in docs/ (the pages other branches bring); the line is dropped
    otherwise."""

    def keep(match):
        indent, name = match.groups()
        exists = any((docs_dir / f"{name}{suffix}").exists() for suffix in (".md", ".rst"))
        return f"{indent}{name}" if exists else ""

    return OPTIONAL_PAGE.sub(keep, text)


def api_names(api_page: Path) -> set[str]:
    """Every name the API page documents: autosummary entries and ``.. data::``."""
    text = api_page.read_text(encoding="utf-8")
    entries = set(re.findall(r"^\s{3}(?:odeplug\.)?([A-Za-z_][\w.]*)\s*$", text, re.MULTILINE))
    entries |= set(re.findall(r"^\.\. data:: (?:odeplug\.)?(\w+)", text, re.MULTILINE))
    return entries


def public_names_missing_from_api(api_page: Path) -> list[str]:
    import odeplug
    import odeplug.datasets
    import odeplug.plot

    documented = api_names(api_page)
    public = (list(odeplug.__all__) + [f"plot.{name}" for name in odeplug.plot.__all__]
              + [f"datasets.{name}" for name in odeplug.datasets.__all__])
    return [name for name in public if name not in documented]


# The paper's figures first, in the paper's order; examples not listed follow by name.
GALLERY_ORDER = ("plot_nfe_fig3.py", "plot_table1_digits.py", "cnf_density.py",
                 "spirals.py", "digits.py", "plot_conv_digits.py",
                 "plot_change_of_variables.py")


class GalleryOrder:
    """sphinx-gallery's ``within_subsection_order``: a sort key of example file names."""

    def __init__(self, src_dir):
        self.src_dir = src_dir

    def __call__(self, filename: str):
        rank = GALLERY_ORDER.index(filename) if filename in GALLERY_ORDER else len(
            GALLERY_ORDER)
        return (rank, filename)

    def __repr__(self) -> str:
        return "GalleryOrder"


# In a numpydoc type such as "ndarray of shape (n_features_in_,)", reStructuredText reads
# "n_features_in_" as a link to a target of that name and fails the build; an escaped
# underscore keeps the text as written. Only names in parentheses on a line that gives a
# shape are touched.
PARENTHESES = re.compile(r"\(([^()]*)\)")
TRAILING_UNDERSCORE = re.compile(r"(?<=\w)_(?=[,\s]|$)")


def escape_shape_names(app, what, name, obj, options, lines) -> None:
    """``autodoc-process-docstring``: escape trailing underscores in ``shape (...)``."""
    for i, line in enumerate(lines):
        if "shape (" in line:
            lines[i] = PARENTHESES.sub(
                lambda m: "(" + TRAILING_UNDERSCORE.sub(r"\\_", m.group(1)) + ")", line)
