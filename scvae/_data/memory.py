"""AnnData -> the arrays the model trains on, with validation of the user's input.

Everything here reads the user's AnnData and never writes to it. The counts are kept as a
CSR matrix (sparse input stays sparse; dense input is converted once), missing entries
(NaN) are recorded in a separate sparse matrix, ``missing`` (True = missing).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

logger = logging.getLogger(__name__)

__all__ = ["CountData", "align_genes", "prepare_counts"]

_CHUNK_ROWS = 4096
# The largest integer float32 holds exactly (counts are float32 tensors in training).
_MAX_COUNT = 2**24


@dataclass
class CountData:
    """Counts and per-cell covariates of one AnnData, ready for minibatching.

    Attributes
    ----------
    counts
        ``(cells, genes)`` CSR float32 counts; missing entries are stored as 0.
    missing
        ``(cells, genes)`` CSR bool, True where an entry is missing; ``None`` if none are.
    library
        Observed library size per cell (sum over observed entries).
    batch_index
        Integer batch code per cell (all 0 without a batch covariate).
    labels
        Integer label code per cell, -1 where unlabelled; ``None`` without ``labels_key``.
    """

    counts: sp.csr_matrix
    missing: sp.csr_matrix | None
    library: np.ndarray
    batch_index: np.ndarray
    gene_names: list[str]
    cell_names: list[str]
    batch_categories: list[str] = field(default_factory=list)
    labels: np.ndarray | None = None
    label_categories: list[str] = field(default_factory=list)
    #: Copies of the counts on training devices (see ``_batches.resident_counts``).
    device_copies: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def n_cells(self) -> int:
        return self.counts.shape[0]

    @property
    def n_genes(self) -> int:
        return self.counts.shape[1]

    #: The counts are in memory (a :class:`~scvae._data.backed.StreamingData` reads a file).
    backed = False

    def close(self) -> None:
        """Nothing to release: the counts are in memory."""

    @property
    def gene_totals(self) -> np.ndarray:
        """Counts of each gene summed over cells."""
        return np.asarray(self.counts.sum(axis=0), dtype=np.float64).ravel()


def prepare_counts(
    adata: AnnData,
    *,
    layer: str | None = None,
    batch_key: str | None = None,
    labels_key: str | None = None,
    mask_layer: str | None = None,
    batch_categories: list[str] | None = None,
    gene_names: list[str] | None = None,
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
    """
    _check_adata(adata)
    matrix = _get_matrix(adata, layer)
    columns = None
    if gene_names is not None:
        columns = align_genes(adata.var_names, gene_names)
        matrix = matrix[:, columns]
        genes = list(gene_names)
    else:
        genes = [str(g) for g in adata.var_names]
    where = f"adata.layers[{layer!r}]" if layer is not None else "adata.X"
    counts, missing = _to_csr_counts(matrix, where, adata.obs_names, genes)
    if mask_layer is not None:
        counts, missing = _apply_mask_layer(adata, mask_layer, columns, counts, missing)
    library = np.asarray(counts.sum(axis=1), dtype=np.float64).ravel()
    _check_cells(library, missing, adata.obs_names, len(genes), where)

    batch_index, batch_cats = _codes(adata, batch_key, batch_categories, "batch_key")
    labels, label_cats = (None, [])
    if labels_key is not None:
        labels, label_cats = _codes(adata, labels_key, None, "labels_key", allow_nan=True)

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
    )


def missing_genes(data: CountData) -> list[str]:
    """Genes with every entry missing: nothing can be learnt about them."""
    if data.missing is None:
        return []
    n_missing = np.asarray(data.missing.sum(axis=0)).ravel()
    return [data.gene_names[i] for i in np.flatnonzero(n_missing == data.n_cells)]


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


def align_genes(var_names: pd.Index, gene_names: list[str]) -> np.ndarray:
    """Column positions of ``gene_names`` in ``var_names``; error naming any absent gene."""
    _check_unique_genes(pd.Index(var_names))
    position = pd.Index(var_names).get_indexer(gene_names)
    absent = [g for g, p in zip(gene_names, position, strict=True) if p < 0]
    if absent:
        shown = ", ".join(map(repr, absent[:10])) + (" ..." if len(absent) > 10 else "")
        raise ValueError(
            f"{len(absent)} of the model's {len(gene_names)} genes are missing from "
            f"adata.var_names: {shown}. Subset or reorder is done for you, but every "
            "gene the model was trained on must be present."
        )
    extra = len(var_names) - len(gene_names)
    if extra > 0:
        logger.info("ignoring %d genes that the model was not trained on", extra)
    return position


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


def _check_unique_genes(var_names: pd.Index) -> None:
    if not var_names.is_unique:
        duplicated = list(dict.fromkeys(var_names[var_names.duplicated()]))
        raise ValueError(
            f"adata.var_names are not unique (e.g. {duplicated[:5]}): genes are matched by "
            "name; call adata.var_names_make_unique()"
        )


def _get_matrix(adata: AnnData, layer: str | None):
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


def _sparse_position(counts: sp.csr_matrix, flat: int) -> tuple[int, int]:
    row = int(np.searchsorted(counts.indptr, flat, side="right") - 1)
    return row, int(counts.indices[flat])


def _dense_position(flat: int, *, start: int, n_genes: int) -> tuple[int, int]:
    row, col = divmod(flat, n_genes)
    return start + row, col


def _check_values(
    values: np.ndarray, where: str, cells, genes, locate: Callable[[int], tuple[int, int]]
) -> None:
    """Raise on inf, negative or non-integer ``values``; ``locate`` maps a flat position
    to (cell, gene) for the message. NaN is allowed: it marks a missing entry."""
    problems = (
        (np.isinf(values), "infinite values", "remove or fix them"),
        (values < 0, "negative values", "scvae models raw counts"),
        (
            ~np.isnan(values) & (values != np.round(values)),
            "non-integer values",
            "scvae models raw counts (not normalised or log-transformed data): "
            "pass the raw counts layer, e.g. layer='counts'",
        ),
        (
            values > _MAX_COUNT,
            "counts above 2**24",
            "float32 cannot store them exactly; are these raw counts of one gene in one cell?",
        ),
    )
    for bad, what, advice in problems:
        hits = np.flatnonzero(bad)
        if hits.size:
            row, col = locate(int(hits[0]))
            raise ValueError(
                f"{where} holds {what} (e.g. {values[hits[0]]:g} at cell "
                f"{cells[row]!r}, gene {genes[col]!r}); {advice}"
            )


def _check_cells(library, missing, cells, n_genes: int, where: str) -> None:
    if missing is not None:
        n_missing = np.asarray(missing.sum(axis=1)).ravel()
        all_missing = np.flatnonzero(n_missing == n_genes)
        if all_missing.size:
            raise ValueError(
                f"{all_missing.size} cells have every entry missing in {where} (e.g. "
                f"{cells[all_missing[0]]!r}); remove them before fitting"
            )
    empty = np.flatnonzero(library <= 0)
    if empty.size:
        names = ", ".join(repr(cells[i]) for i in empty[:5])
        raise ValueError(
            f"{empty.size} cells have zero total counts in {where} (e.g. {names}); remove "
            "them first, e.g. sc.pp.filter_cells(adata, min_counts=1)"
        )


def _codes(
    adata: AnnData,
    key: str | None,
    categories: list[str] | None,
    argument: str,
    *,
    allow_nan: bool = False,
) -> tuple[np.ndarray, list[str]]:
    """Integer codes of an obs column (-1 for NaN where allowed) and its categories."""
    if key is None:
        return np.zeros(adata.n_obs, dtype=np.int64), []
    if key not in adata.obs.columns:
        raise KeyError(
            f"{argument}={key!r} is not a column of adata.obs "
            f"(available: {list(adata.obs.columns)})"
        )
    column = adata.obs[key]
    is_nan = column.isna().to_numpy()
    if is_nan.any() and not allow_nan:
        raise ValueError(f"adata.obs[{key!r}] has {int(is_nan.sum())} missing values")
    values = column.astype(str).to_numpy()
    if categories is None:
        if isinstance(column.dtype, pd.CategoricalDtype):
            categories = [str(c) for c in column.cat.categories if (values == str(c)).any()]
            unused = len(column.cat.categories) - len(categories)
            if unused:
                logger.info("adata.obs[%r]: ignoring %d unused categories", key, unused)
        else:
            categories = sorted(set(values[~is_nan]))
    codes = pd.Index(categories).get_indexer(values)
    unknown = (codes < 0) & ~is_nan
    if unknown.any():
        raise ValueError(
            f"adata.obs[{key!r}] has categories the model does not know: "
            f"{sorted(set(values[unknown]))[:10]} (known: {categories})"
        )
    codes[is_nan] = -1
    return codes.astype(np.int64), list(categories)
