"""Counts read from a disk-backed AnnData, one contiguous block of CSR rows at a time.

A backed AnnData (``anndata.read_h5ad(path, backed="r")``) keeps ``X`` in the file. scvae reads
the CSR arrays (``indptr``, ``indices``, ``data``) of ``X`` or of a layer straight from the
HDF5 file with h5py, a block of consecutive rows per read, so reading is sequential and memory
is bounded by the block size, not by the number of cells. A first pass over the file
(:func:`prepare_streaming`) checks the values and computes what training needs per cell
(library size, the log-factorial constant) without keeping the counts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import scipy.sparse as sp
from anndata import AnnData
from scipy.special import gammaln

from .checks import _check_cells, align_genes, check_block, covariate_codes
from .counts import BackedMatrix, CountData
from .covariates import CovariateLayout, covariate_matrix

logger = logging.getLogger(__name__)

__all__ = ["prepare_streaming"]


def prepare_streaming(
    adata: AnnData,
    *,
    layer: str | None = None,
    batch_key: str | None = None,
    labels_key: str | None = None,
    mask_layer: str | None = None,
    batch_categories: list[str] | None = None,
    gene_names: list[str] | None = None,
    categorical_covariate_keys: tuple[str, ...] = (),
    continuous_covariate_keys: tuple[str, ...] = (),
    covariate_layout: CovariateLayout | None = None,
    absent_genes_missing: bool = False,
    chunk_rows: int | None = None,
    check: bool = True,
    share: tuple[int, int] = (0, 1),
    reduce: Callable[..., list[np.ndarray]] | None = None,
) -> CountData:
    """Validate a backed ``adata`` in one streaming pass and collect per-cell statistics.

    With ``share=(rank, world_size)`` and ``reduce`` (an all-reduce sum of arrays, as
    ``scvae.fit`` passes under ``torch.distributed``) each process reads its share of the
    blocks and the sums are reduced, so the whole file is read once across the job.

    Parameters
    ----------
    adata
        Backed AnnData with raw counts as CSR in ``X`` or ``layers[layer]``. Not modified.
    layer, batch_key, labels_key, batch_categories, gene_names
        As in :func:`~scvae._data.memory.prepare_counts`.
    categorical_covariate_keys, continuous_covariate_keys, covariate_layout
        As in :func:`~scvae._data.memory.prepare_counts`.
    absent_genes_missing
        Not supported for backed data (an error says what to do).
    mask_layer
        Not supported for backed data (an error says what to do).
    chunk_rows
        Rows per read; default :func:`chunk_rows_for`.
    check
        Read the file to check values and compute library sizes (``False``: skip the pass;
        for embedding, which computes them block by block).
    share, reduce
        This process's ``(rank, world_size)`` and the sum over processes, for the pass.

    Examples
    --------
    >>> data = prepare_streaming(anndata.read_h5ad("atlas.h5ad", backed="r"))  # doctest: +SKIP
    """
    if mask_layer is not None:
        raise NotImplementedError(
            "mask_layer is not supported for a disk-backed AnnData: load it with "
            "adata.to_memory(), or encode missing entries as NaN only after loading"
        )
    if absent_genes_missing:
        raise NotImplementedError(
            "mapping a disk-backed query onto a reference is not supported yet: load it "
            "with adata.to_memory()"
        )
    if adata.is_view:
        raise ValueError(
            f"adata is a view of the backed file {adata.filename} (e.g. backed[:100] or "
            "backed[:, genes]): scvae streams whole files. Load the subset with "
            "backed[cells].to_memory(), or write it to a file of its own "
            "(backed[cells].write_h5ad('subset.h5ad')) and open that backed"
        )
    if not adata.var_names.is_unique:
        raise ValueError("adata.var_names are not unique: call adata.var_names_make_unique()")
    columns = None
    if gene_names is not None:
        columns = align_genes(adata.var_names, gene_names)
        genes = list(gene_names)
    else:
        genes = [str(g) for g in adata.var_names]
    matrix = BackedMatrix(adata.filename, layer, columns, chunk_rows=chunk_rows)
    if matrix.n_cells != adata.n_obs:
        raise ValueError(f"{matrix.where} has {matrix.n_cells} rows for {adata.n_obs} cells")
    batch_index, batch_cats, labels, label_cats = covariate_codes(
        adata.obs, batch_key, batch_categories, labels_key
    )
    covariates, covariate_layout = covariate_matrix(
        adata.obs, categorical_covariate_keys, continuous_covariate_keys, covariate_layout
    )
    data = CountData(
        counts=matrix,
        missing=None,
        library=np.zeros(adata.n_obs, dtype=np.float32),
        batch_index=batch_index,
        gene_names=genes,
        cell_names=[str(c) for c in adata.obs_names],
        batch_categories=batch_cats,
        labels=labels,
        label_categories=label_cats,
        covariates=covariates,
        covariate_layout=covariate_layout,
        gene_totals=np.zeros(len(genes), dtype=np.float64),
        log_factorial=np.zeros(adata.n_obs, dtype=np.float32),
    )
    if check:
        _statistics_pass(data, share, reduce)
    return data


def _statistics_pass(
    data: CountData, share: tuple[int, int], reduce: Callable[..., list[np.ndarray]] | None
) -> None:
    """Check every value and fill library sizes, log-factorials and gene totals."""
    rank, world = share
    cells, genes = data.cell_names, data.gene_names
    library = np.zeros(data.n_cells, dtype=np.float64)
    log_factorial = np.zeros(data.n_cells, dtype=np.float64)
    totals = np.zeros(data.n_genes, dtype=np.float64)
    for chunk in range(rank, data.counts.n_chunks, world):
        block, rows = data.counts.read_chunk(chunk)
        check_block(block, rows[0], data.counts.where, cells, genes)
        library[rows] = np.asarray(block.sum(axis=1)).ravel()
        per_entry = sp.csr_matrix((gammaln(block.data + 1.0), block.indices, block.indptr))
        log_factorial[rows] = np.asarray(per_entry.sum(axis=1)).ravel()
        totals += np.asarray(block.sum(axis=0)).ravel()
    if reduce is not None:
        library, log_factorial, totals = reduce(library, log_factorial, totals)
    _check_cells(library, None, cells, data.n_genes, data.counts.where)
    data.library = library.astype(np.float32)
    data.log_factorial = log_factorial.astype(np.float32)
    data.gene_totals = totals
