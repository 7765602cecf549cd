"""What :func:`scvae.fit` writes into the user's AnnData, and the log lines about the input."""

from __future__ import annotations

import logging
import platform
from collections.abc import Mapping
from importlib.metadata import version
from typing import Any

import numpy as np
import pyro
import torch
from anndata import AnnData

from .._data.counts import CountData
from .._model.scvae import SCVAE
from .._version import __version__
from ..metrics import (
    ACTIVE_UNIT_VARIANCE,
    LATENT_DIRECTION_VARIANCE,
    active_units,
    latent_directions,
)

logger = logging.getLogger(__name__)

__all__ = [
    "check_result_keys",
    "report_all_zero_genes",
    "versions",
    "write_results",
]


FILTER_HINT = " Filter them with sc.pp.filter_genes(adata, min_counts=1)."


def report_all_zero_genes(data: CountData) -> list[str]:
    """Names of the genes with no counts in any cell of ``data``, with a warning."""
    gene_names = data.gene_names
    # No filtering hint for a backed file: it cannot be filtered in place.
    hint = "" if data.backed else FILTER_HINT
    zero = [gene_names[i] for i in np.flatnonzero(data.gene_totals == 0)]
    if zero:
        logger.warning(
            "%d genes have zero counts in every cell (e.g. %s); they are kept and will be "
            "predicted near zero.%s",
            len(zero),
            ", ".join(zero[:5]),
            hint,
        )
    return zero


def versions() -> dict[str, str]:
    """Versions of scvae and the libraries a result depends on."""
    return {
        "scvae": __version__,
        "torch": str(torch.__version__),
        "pyro": str(pyro.__version__),
        "anndata": version("anndata"),
        "numpy": str(np.__version__),
        "python": platform.python_version(),
    }


def check_result_keys(adata: AnnData, key_added: str) -> None:
    """Before training: the keys ``fit`` writes must be free, or hold scvae's own results.

    ``adata.uns[key_added]`` that is not the record of an earlier fit (e.g. scanpy's
    ``uns["pca"]`` for ``key_added="pca"``) is refused: replacing it would destroy what
    another tool wrote. ``adata.obsm[f"X_{key_added}"]`` without that record (an embedding
    the user stored, e.g. ``adata.obsm["X_scvae"] = model.embed(adata)``) is replaced, with a
    warning.
    """
    if not isinstance(adata, AnnData):
        return  # the reader says what adata must be
    obsm_key = f"X_{key_added}"
    ours = is_fit_record(adata.uns.get(key_added))
    if key_added in adata.uns and not ours:
        raise ValueError(
            f"adata.uns[{key_added!r}] exists and is not the record of an scvae fit (another "
            f"tool's result?): fit writes adata.uns[{key_added!r}] and adata.obsm[{obsm_key!r}]; "
            f"choose another key_added (e.g. key_added='scvae'), or delete it first "
            f"(del adata.uns[{key_added!r}])"
        )
    if obsm_key in adata.obsm and not ours:
        logger.warning(
            "adata.obsm[%r] exists without the record of an scvae fit in adata.uns[%r]: it is "
            "replaced by the new embedding (pass another key_added to keep it)",
            obsm_key,
            key_added,
        )


def is_fit_record(record: Any) -> bool:
    """Whether ``record`` is what :func:`write_results` writes to ``adata.uns[key_added]``
    (also after an h5ad round trip)."""
    if not isinstance(record, Mapping):
        return False
    written_by = record.get("versions")
    return isinstance(written_by, Mapping) and "scvae" in written_by and "settings" in record


def write_results(
    adata: AnnData,
    model: SCVAE,
    data: CountData,
    zero_genes: list[str],
) -> None:
    """Write the embedding of ``data`` and the fit's record under ``model``'s ``key_added``."""
    key_added = model.settings["key_added"]
    obsm_key = f"X_{key_added}"
    embedding = model.embed_data(data)
    if not np.isfinite(embedding).all():
        bad = np.flatnonzero(~np.isfinite(embedding).all(axis=1))
        raise FloatingPointError(
            f"the embedding of {bad.size} cells is not finite (e.g. {data.cell_names[bad[0]]!r}); "
            "nothing was written to adata. Check those cells for extreme counts."
        )
    adata.obsm[obsm_key] = embedding
    latent_variance = np.var(embedding.astype(np.float64), axis=0)
    n_active = active_units(embedding)
    n_directions = latent_directions(embedding)
    adata.uns[key_added] = {
        "settings": _h5ad_safe(model.settings),
        "versions": versions(),
        "history": {k: np.asarray(v, dtype=np.float64) for k, v in model.history.items()},
        "n_all_zero_genes": len(zero_genes),
        "all_zero_genes": np.asarray(zero_genes, dtype=str),
        "latent_variance": latent_variance,
        "n_active_units": n_active,
        "n_latent_directions": n_directions,
    }
    logger.info(
        "the cells use %d directions of the %d-dimensional latent space (principal directions "
        "of the posterior means with variance above %g); %d axes are active (variance above %g)",
        n_directions,
        embedding.shape[1],
        LATENT_DIRECTION_VARIANCE,
        n_active,
        ACTIVE_UNIT_VARIANCE,
    )
    logger.info(
        "added %r, the posterior means of the latent space (adata.obsm), and %r, the "
        "settings and loss history (adata.uns)",
        obsm_key,
        key_added,
    )
    if data.backed:
        logger.info("%s is unchanged: the results are in this AnnData object only", adata.filename)


def _h5ad_safe(settings: dict[str, Any]) -> dict[str, Any]:
    """h5ad cannot store None: unset options are written as the string 'None'."""
    return {k: ("None" if v is None else v) for k, v in settings.items()}
