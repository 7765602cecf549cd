"""Sphinx configuration of the scvae documentation.

Build (warnings are errors, as in CI)::

    sphinx-build -W --keep-going -b html docs docs/_build/html

The tutorials live in ``../tutorials`` (the README links them there); Sphinx reads only files
under ``docs/``, so ``_copy_tutorials`` copies them into ``docs/tutorials/`` (gitignored) when
the build starts. They have no stored outputs: myst-nb executes each one in quick mode
(``SCVAE_QUICK=1``), and a cell that fails, or a dataset that is missing, fails the build.
``-D nb_execution_mode=off`` builds in seconds, the tutorials without outputs (to check
docstrings; CI always executes them).
"""

from __future__ import annotations

import filecmp
import json
import os
import re
import shutil
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent

# -- Tutorials: environment of their kernels, copies under docs/ ---------------------------------
# The kernels inherit this process's environment. Quick mode is the default (the build must stay
# within CI's time); SCVAE_QUICK=0 builds the full versions. Data: SCVAE_DATA_DIR, else
# ../shared/data beside the repository, as for the tests; made absolute because the notebooks
# run in temporary directories. No MPLBACKEND: with Agg (what the tests set) the kernels would
# draw no inline figures, and the pages would have none (_check_tutorial_figures).
os.environ.setdefault("SCVAE_QUICK", "1")
os.environ.pop("MPLBACKEND", None)
# tqdm.auto warns in every kernel that ipywidgets is missing: noise on each page (the tutorials
# draw no progress bars). By message: a category from a package cannot be named here.
os.environ["PYTHONWARNINGS"] = ",".join(
    filter(None, [os.environ.get("PYTHONWARNINGS"), "ignore:IProgress not found"])
)
os.environ["SCVAE_DATA_DIR"] = str(
    Path(os.environ.get("SCVAE_DATA_DIR", ROOT.parent / "shared" / "data")).resolve()
)


def _copy_tutorials(app, config) -> None:
    """Mirror ../tutorials/*.ipynb into docs/tutorials/ before Sphinx looks for sources.

    A copy is rewritten only when its source changed (so unchanged notebooks are not read and
    executed again by an incremental build), and copies whose source is gone are removed.
    A notebook whose ``metadata.scvae.needs_data`` names a dataset that is not in
    ``SCVAE_DATA_DIR`` stops the build here, with the path to fix, instead of rendering without
    its outputs (unless nothing is executed: ``-D nb_execution_mode=off``).
    """
    from sphinx.errors import ConfigError

    source, target = ROOT / "tutorials", DOCS / "tutorials"
    target.mkdir(exist_ok=True)
    notebooks = sorted(source.glob("*.ipynb"))
    data_dir = Path(os.environ["SCVAE_DATA_DIR"])
    missing = [
        f"{path.name} needs {data_dir / name}.h5ad"
        for path in notebooks
        for name in json.loads(path.read_text())["metadata"].get("scvae", {}).get("needs_data", [])
        if not (data_dir / f"{name}.h5ad").is_file()
    ]
    if missing and config.nb_execution_mode != "off":
        raise ConfigError(
            "tutorial data not found (set SCVAE_DATA_DIR to the folder of the .h5ad files): "
            + "; ".join(missing)
        )
    names = {path.name for path in notebooks}
    for stale in target.glob("*.ipynb"):
        if stale.name not in names:
            stale.unlink()
    for path in notebooks:
        copy = target / path.name
        if not copy.exists() or not filecmp.cmp(path, copy, shallow=False):
            shutil.copy2(path, copy)


# -- Project -------------------------------------------------------------------------------------
import scvae  # noqa: E402

project = "scvae"
author = "the scvae developers"
copyright = "the scvae developers"
release = version = scvae.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "numpydoc",
    "myst_nb",
]
# No intersphinx: the build must not need the network. References to other packages' objects
# (numpy, AnnData, torch ...) are therefore left unlinked; see nitpick_ignore_regex.

source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "**.ipynb_checkpoints"]
templates_path = ["_templates"]
root_doc = "index"

# Every cross-reference must resolve (a broken :func:`...` fails the build), except those to
# other packages, which cannot resolve without intersphinx.
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(anndata|numpy|np|pandas|pd|scipy|sp|torch|matplotlib|pyro)(\..*)?"),
    (r"py:.*", r"(pathlib|os|collections|typing)(\..*)?"),
    (r"py:.*", r"(AnnData|Path|Tensor|Axes|Figure|DataFrame|Series|ndarray|PathLike|Any)"),
]
# Internal types that public signatures name in their annotations (SCVAE's constructor, the
# return value of SCVAE.prepare): not documented, so left unlinked. Only these: a reference to
# any other private name still fails the build.
nitpick_ignore = [
    ("py:class", "scvae._data.counts.CountData"),
    ("py:class", "scvae._vae.module.SCVAEModule"),
    ("py:class", "scvae._model.reference.LatentReference"),
    ("py:class", "scvae._data.covariates.CovariateLayout"),
]

# -- API reference -------------------------------------------------------------------------------
autosummary_generate = True
autosummary_imported_members = False
autodoc_default_options = {"members": True, "member-order": "bysource"}
autodoc_typehints = "signature"
autodoc_preserve_defaults = True  # show ``layer=...`` as written, not ``Ellipsis``
numpydoc_show_class_members = True
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False
# Docstring mistakes that render wrongly without any Sphinx warning: text after a Parameters
# list read as more parameters (PR02, PR10), a public member without a docstring (GL08).
numpydoc_validation_checks = {"PR02", "PR10", "GL08"}

# -- Notebooks (myst-nb) -------------------------------------------------------------------------
nb_execution_mode = "force"  # no stored outputs: run every notebook when it is (re)read
nb_execution_timeout = 600  # seconds per cell
nb_execution_raise_on_error = True  # an error in a cell fails the build
nb_execution_in_temp = True  # files a notebook writes (models, figures) go to a temp dir
nb_execution_show_tb = True
nb_merge_streams = True
myst_enable_extensions = ["colon_fence"]
myst_heading_anchors = 3

# -- HTML ----------------------------------------------------------------------------------------
html_theme = "furo"
html_title = f"scvae {version}"
html_static_path: list[str] = []


# -- Checks and docstring fix-ups ---------------------------------------------------------------
def _check_api_lists_everything(app, config) -> None:
    """docs/api.rst names every public name, so a new one cannot go undocumented."""
    from sphinx.errors import ConfigError

    listed, module, in_autosummary = set(), "", False
    for line in (DOCS / "api.rst").read_text().splitlines():
        if found := re.match(r"\.\. (?:module|currentmodule|automodule):: ([\w.]+)", line):
            module, in_autosummary = found[1], False
        elif line.startswith(".. autosummary::"):
            in_autosummary = True
        elif in_autosummary and (item := re.fullmatch(r"\s+~?([\w.]+)", line)):
            listed.add(f"{module}.{item[1]}")
        elif line and not line.startswith(" "):
            in_autosummary = False
    public = {f"scvae.{name}" for name in scvae.__all__ if name != "__version__"}
    for submodule in (scvae.datasets, scvae.metrics, scvae.pl):
        public.discard(submodule.__name__)  # a section of its own, its functions listed
        public |= {f"{submodule.__name__}.{name}" for name in submodule.__all__}
    if missing := sorted(public - listed):
        raise ConfigError(f"docs/api.rst does not list: {', '.join(missing)}")


_DOCS_PAGE = re.compile(r"(?:``)?\bdocs/([\w-]+)\.md(?:``)?")


def _link_docs_pages(app, what, name, obj, options, lines) -> None:
    """``docs/speed.md`` in a docstring (plain text for ``help()``) links to that page here.

    A page that does not exist is a broken reference, so it fails the build.
    """
    for i, line in enumerate(lines):
        lines[i] = _DOCS_PAGE.sub(lambda m: f":doc:`docs/{m[1]}.md </{m[1]}>`", line)


def _dataclass_defaults(app, what, name, obj, options, signature, return_annotation):
    """Dataclass fields with a ``default_factory`` show ``<factory>``, which breaks the parsing
    of the signature; show the factory call instead (``summary: dict = dict()``)."""
    import dataclasses

    if signature and "<factory>" in signature and dataclasses.is_dataclass(obj):
        for field in dataclasses.fields(obj):
            if field.default_factory is not dataclasses.MISSING:
                call = f"{getattr(field.default_factory, '__name__', 'factory')}()"
                pattern = rf"({field.name}: [^=]*= ?)<factory>"
                signature = re.sub(pattern, rf"\g<1>{call}", signature)
        return signature, return_annotation
    return None


def _check_tutorial_figures(app, doctree) -> None:
    """An executed tutorial without a single figure means its plots were lost: fail."""
    from docutils import nodes
    from sphinx.util import logging

    docname = app.env.docname
    if (
        docname.startswith("tutorials/")
        and app.config.nb_execution_mode != "off"
        and not any(doctree.findall(nodes.image))
    ):
        logging.getLogger(__name__).warning(
            "tutorial %s was executed but shows no figure", docname, location=docname
        )


def setup(app):
    app.connect("config-inited", _copy_tutorials)
    app.connect("doctree-read", _check_tutorial_figures)
    app.connect("config-inited", _check_api_lists_everything)
    app.connect("autodoc-process-docstring", _link_docs_pages)
    app.connect("autodoc-process-signature", _dataclass_defaults)
