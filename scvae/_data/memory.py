"""AnnData -> the arrays the model trains on, with validation of the user's input.

Everything here reads the user's AnnData and never writes to it. The counts are kept as a
CSR matrix (sparse input stays sparse; dense input is converted once), missing entries
(NaN) are recorded in a separate sparse matrix, ``missing`` (True = missing).
"""

from __future__ import annotations

import logging
from functools import partial

import numpy as np
import scipy.sparse as sp
from anndata import AnnData

from .checks import (
    _check_cells,
    _check_unique_genes,
    _check_values,
    _dense_position,
    _sparse_position,
    align_genes,
    covariate_codes,
)
from .counts import CountData
from .covariates import CovariateLayout, covariate_matrix

logger = logging.getLogger(__name__)

__all__ = ["counts_matrix", "prepare_counts"]

_CHUNK_ROWS = 4096


def prepare_counts(
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
) -> CountData:
    """Validate ``adata`` and extract counts, missing-value mask and covariates.

    Parameters
    ----------
    adata
        Cells x genes, raw counts in ``X`` or ``layers[layer]``. Not modified.
    layer
        Layer holding the raw counts; ``None`` reads ``X``.
    batch_key
        ``obs`` column with the batch of each cell.
    labels_key
        ``obs`` column with cell-type labels (NaN allowed: unlabelled).
    mask_layer
        Boolean layer, True where an entry was observed. False entries are missing, like NaN.
    batch_categories
        Categories of a trained model: new data must use only these.
    gene_names
        Genes of a trained model: columns are reordered to them by name, and genes absent
        from ``adata`` raise an error that names them.
    categorical_covariate_keys, continuous_covariate_keys
        ``obs`` columns of covariates beyond the batch (see :mod:`scvae._data.covariates`).
    covariate_layout
        A trained model's covariates: new data is read into its columns.
    absent_genes_missing
        Genes of ``gene_names`` that ``adata`` lacks become missing values (every entry of
        their columns missing) instead of an error: a query measured on a smaller panel.
    """
    _check_adata(adata)
    matrix = counts_matrix(adata, layer)
    columns = None
    genes = [str(g) for g in adata.var_names]
    if gene_names is not None:
        columns = align_genes(adata.var_names, gene_names, allow_absent=absent_genes_missing)
        genes = list(gene_names)
    present = None if columns is None else np.flatnonzero(columns >= 0)
    if present is not None:
        matrix = matrix[:, columns[present]]
    measured = genes if present is None else [genes[i] for i in present]
    where = f"adata.layers[{layer!r}]" if layer is not None else "adata.X"
    counts, missing = _to_csr_counts(matrix, where, adata.obs_names, measured)
    if mask_layer is not None:
        picked = None if columns is None else columns[present]
        counts, missing = _apply_mask_layer(adata, mask_layer, picked, counts, missing)
    if present is not None and len(present) < len(genes):
        counts, missing = _with_absent_genes(counts, missing, present, len(genes))
    library = np.asarray(counts.sum(axis=1), dtype=np.float64).ravel()
    _check_cells(library, missing, adata.obs_names, len(genes), where)

    batch_index, batch_cats, labels, label_cats = covariate_codes(
        adata.obs, batch_key, batch_categories, labels_key
    )
    covariates, covariate_layout = covariate_matrix(
        adata.obs, categorical_covariate_keys, continuous_covariate_keys, covariate_layout
    )

    return CountData(
        counts=counts,
        missing=missing,
        library=library.astype(np.float32),
        batch_index=batch_index,
        gene_names=genes,
        cell_names=[str(c) for c in adata.obs_names],
        batch_categories=batch_cats,
        labels=labels,
        label_categories=label_cats,
        covariates=covariates,
        covariate_layout=covariate_layout,
        gene_totals=np.asarray(counts.sum(axis=0), dtype=np.float64).ravel(),
    )


def _with_absent_genes(
    counts: sp.csr_matrix, missing: sp.csr_matrix | None, present: np.ndarray, n_genes: int
) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Counts and missing entries of the measured columns ``present`` placed among
    ``n_genes`` columns; the other (absent) genes missing in every cell."""

    def placed(matrix: sp.csr_matrix) -> sp.csr_matrix:
        return sp.csr_matrix(
            (matrix.data, present[matrix.indices], matrix.indptr), shape=(matrix.shape[0], n_genes)
        )

    n_cells = counts.shape[0]
    absent = np.setdiff1d(np.arange(n_genes), present)
    unmeasured = sp.csr_matrix(
        (
            np.ones(n_cells * len(absent), dtype=bool),
            np.tile(absent, n_cells),
            np.arange(n_cells + 1, dtype=np.int64) * len(absent),
        ),
        shape=(n_cells, n_genes),
    )
    if missing is not None:
        unmeasured = (unmeasured + placed(missing)).astype(bool).tocsr()
        unmeasured.sort_indices()
    counts = placed(counts)
    counts.sort_indices()
    logger.info(
        "%d of the model's %d genes are not in adata: their entries are missing values",
        len(absent),
        n_genes,
    )
    return counts, unmeasured


def _apply_mask_layer(
    adata: AnnData,
    mask_layer: str,
    columns: np.ndarray | None,
    counts: sp.csr_matrix,
    missing: sp.csr_matrix | None,
) -> tuple[sp.csr_matrix, sp.csr_matrix | None]:
    """Add the False entries of a boolean 'observed' layer to the missing entries."""
    if mask_layer not in adata.layers:
        raise KeyError(
            f"mask_layer {mask_layer!r} not in adata.layers (available: {list(adata.layers)})"
        )
    observed = adata.layers[mask_layer]
    if observed.dtype != bool:
        raise TypeError(
            f"adata.layers[{mask_layer!r}] must be boolean (True = observed), got "
            f"{observed.dtype}; e.g. adata.layers[{mask_layer!r}] = ~np.isnan(values)"
        )
    if columns is not None:
        observed = observed[:, columns]
    if sp.issparse(observed):
        observed = observed.toarray()
    masked = sp.csr_matrix(~np.asarray(observed))
    if masked.nnz == 0:
        return counts, missing
    missing = masked if missing is None else (missing + masked).astype(bool).tocsr()
    # Counts under the mask are not data: drop them (x - x is exactly 0; others unchanged).
    counts = (counts - counts.multiply(missing)).tocsr()
    counts.eliminate_zeros()
    missing.sort_indices()
    logger.info("%d entries are missing and will be left out of the likelihood", missing.nnz)
    return counts, missing


def _check_adata(adata: AnnData) -> None:
    if not isinstance(adata, AnnData):
        raise TypeError(f"expected an AnnData, got {type(adata).__name__}")
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise ValueError(f"adata is empty ({adata.n_obs} cells x {adata.n_vars} genes)")
    if adata.isbacked:
        raise NotImplementedError(
            f"adata is backed by the file {adata.filename} (opened {adata.file._filemode!r}): "
            "scvae.fit and model.embed stream backed files, but this function needs the counts "
            "in memory, and results written to layers cannot go into a read-only file. Load "
            "the cells you need with adata.to_memory() (or adata[cells].to_memory()) and "
            "write the results to a new file with adata.write_h5ad('new.h5ad')"
        )
    _check_unique_genes(adata.var_names)
    if not adata.obs_names.is_unique:
        logger.warning(
            "adata.obs_names are not unique (e.g. %r): results are by position, but cell "
            "names in messages may be ambiguous; adata.obs_names_make_unique() fixes that",
            adata.obs_names[adata.obs_names.duplicated()][0],
        )


def counts_matrix(adata: AnnData, layer: str | None):
    """``adata.X`` or ``adata.layers[layer]``, checked to exist and to hold numbers."""
    if layer is None:
        if adata.X is None:
            raise ValueError("adata.X is empty: pass the layer that holds the raw counts")
        matrix = adata.X
    else:
        if layer not in adata.layers:
            raise KeyError(
                f"layer {layer!r} not in adata.layers (available: {list(adata.layers)})"
            )
        matrix = adata.layers[layer]
    if not (sp.issparse(matrix) or isinstance(matrix, np.ndarray)):
        matrix = np.asarray(matrix)
    if not np.issubdtype(matrix.dtype, np.number) or np.issubdtype(
        matrix.dtype, np.complexfloating
    ):
        raise TypeError(
            f"counts must be numeric, got dtype {matrix.dtype}: store the raw counts as "
            "numbers, e.g. adata.X = adata.X.astype(np.float32)"
        )
    return matrix


def _to_csr_counts(matrix, where: str, cells, genes) -> tuple[sp.csr_matrix, sp.csr_matrix | None]:
    """Float32 CSR counts (NaN -> 0) and a CSR mask of the NaN entries, checked chunk by chunk.

    Values are checked in their own dtype, before the conversion to float32 could round a
    non-integer (3.0000001) or a too large count to an integer that passes."""
    if sp.issparse(matrix):
        original = sp.csr_matrix(matrix)  # no copy if already CSR; never written to
        _check_values(original.data, where, cells, genes, partial(_sparse_position, original))
        counts = sp.csr_matrix(original, dtype=np.float32, copy=True)
    else:
        counts = None
    n_cells, n_genes = matrix.shape
    chunks, missing_chunks = [], []
    for start in range(0, n_cells if counts is None else 0, _CHUNK_ROWS):
        block = np.asarray(matrix[start : start + _CHUNK_ROWS])
        locate = partial(_dense_position, start=start, n_genes=n_genes)
        _check_values(block.ravel(), where, cells, genes, locate)
        block = block.astype(np.float32)
        nan = np.isnan(block)
        missing_chunks.append(sp.csr_matrix(nan))
        chunks.append(sp.csr_matrix(np.where(nan, 0.0, block)))
    if counts is None:
        counts = sp.vstack(chunks, format="csr")
        missing = sp.vstack(missing_chunks, format="csr")
    else:
        nan = np.isnan(counts.data)
        # csr_matrix keeps the arrays it is given and eliminate_zeros compacts them in
        # place: hand it copies, so that `nan` still indexes counts.data afterwards.
        missing = sp.csr_matrix(
            (nan.copy(), counts.indices.copy(), counts.indptr.copy()), shape=counts.shape
        )
        missing.eliminate_zeros()
        counts.data[nan] = 0.0
    counts.eliminate_zeros()
    counts.sort_indices()
    if missing.nnz == 0:
        return counts, None
    missing.sort_indices()
    logger.warning(
        "%d entries of %s are NaN: they are treated as missing values (left out of the "
        "likelihood; scvae.impute fills them)",
        missing.nnz,
        where,
    )
    return counts, missing
