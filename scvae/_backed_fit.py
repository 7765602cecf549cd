"""``fit`` and ``embed`` for a disk-backed AnnData: counts streamed, results in memory.

A backed AnnData opened read-only keeps ``X`` in its file; scvae never writes to that file.
``fit`` writes ``obsm``/``uns`` of the in-memory AnnData object only (as anndata allows in
backed mode); anything that would write ``X`` or ``layers`` needs the data in memory or a new
file (see :func:`scvae._data._check_adata` for the message).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from anndata import AnnData

from ._backed import prepare_streaming
from ._stream import embed_streaming

logger = logging.getLogger(__name__)

__all__ = ["embed_backed", "fit_backed"]


def fit_backed(adata: AnnData, *, key_added: str = "scvae", **options: Any):
    """:func:`scvae.fit` for ``adata.isbacked``: same arguments, same keys written.

    Examples
    --------
    >>> adata = anndata.read_h5ad("atlas.h5ad", backed="r")  # doctest: +SKIP
    >>> model = scvae.fit(adata, batch_key="donor")  # doctest: +SKIP
    """
    from ._api import fit_counts
    from ._results import report_all_zero_genes, write_results

    data = prepare_streaming(
        adata,
        layer=options.get("layer"),
        batch_key=options.get("batch_key"),
        labels_key=options.get("labels_key"),
        mask_layer=options.get("mask_layer"),
    )
    # No filtering hint: a backed file cannot be filtered in place.
    zero_genes = report_all_zero_genes(data.gene_names, data.gene_totals, hint="")
    model = fit_counts(data, **options)
    model.settings["key_added"] = key_added
    model.settings["backed"] = True
    embedding = embed_streaming(model.module, data)
    write_results(adata, model, data, key_added, zero_genes, embedding=embedding)
    data.matrix.close()
    logger.info("%s is unchanged: the results are in this AnnData object only", adata.filename)
    return model


def embed_backed(model, adata: AnnData, *, layer: Any = ..., batch_size: int = 1024) -> np.ndarray:
    """:meth:`SCVAE.embed` for ``adata.isbacked``: one streaming pass over the file."""
    data = prepare_streaming(
        adata,
        layer=model.layer if layer is ... else layer,
        batch_key=model.batch_key,
        batch_categories=model.batch_categories if model.batch_key else None,
        gene_names=model.gene_names,
        check=False,
    )
    try:
        return embed_streaming(model.module, data, batch_size=batch_size)
    finally:
        data.matrix.close()
