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
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import h5py
import numpy as np
import scipy.sparse as sp
from anndata import AnnData
from scipy.special import gammaln

from .memory import _check_cells, _check_values, _codes, _sparse_position, align_genes

logger = logging.getLogger(__name__)

__all__ = ["BackedMatrix", "StreamingData", "chunk_rows_for", "prepare_streaming"]


class BackedMatrix:
    """Row blocks of the CSR counts ``X`` (or ``layers[layer]``) of a backed AnnData's file.

    Parameters
    ----------
    adata
        A backed AnnData (``adata.isbacked``).
    layer
        Layer with the raw counts; ``None`` reads ``X``.
    columns
        Column positions to keep, in this order (the genes of a trained model).

    Examples
    --------
    >>> adata = anndata.read_h5ad("atlas.h5ad", backed="r")  # doctest: +SKIP
    >>> BackedMatrix(adata).rows(0, 1000).shape  # doctest: +SKIP
    (1000, 2000)
    """

    def __init__(
        self, adata: AnnData, layer: str | None = None, columns: np.ndarray | None = None
    ) -> None:
        self.path = Path(adata.filename)
        self.key = "X" if layer is None else f"layers/{layer}"
        self.where = f"{self.key} of {self.path}"
        self.columns = columns
        self._file = h5py.File(self.path, "r")
        if self.key not in self._file:
            available = list(self._file["layers"]) if "layers" in self._file else []
            raise KeyError(f"layer {layer!r} not in {self.path} (available: {available})")
        node = self._file[self.key]
        encoding = node.attrs.get("encoding-type", "array")
        if isinstance(node, h5py.Dataset) or encoding != "csr_matrix":
            raise TypeError(
                f"{self.where} is stored as {encoding!r}; scvae streams CSR sparse counts from "
                "disk (a dense or CSC matrix cannot be read in bounded memory by rows). Load it "
                "with adata.to_memory() if it fits, or write it once as CSR, e.g. "
                "adata.X = scipy.sparse.csr_matrix(adata.X); adata.write_h5ad('counts.h5ad')"
            )
        self.n_cells, self.n_genes = (int(s) for s in node.attrs["shape"])
        self._indptr = node["indptr"][:].astype(np.int64)
        self._indices = node["indices"]
        self._data = node["data"]

    def rows(self, start: int, stop: int) -> sp.csr_matrix:
        """Rows ``start:stop`` as float32 CSR (columns as selected), read in one sweep."""
        lo, hi = self._indptr[start], self._indptr[stop]
        block = sp.csr_matrix(
            (
                self._data[lo:hi].astype(np.float32, copy=False),
                self._indices[lo:hi],
                self._indptr[start : stop + 1] - lo,
            ),
            shape=(stop - start, self.n_genes),
        )
        if self.columns is not None:
            block = block[:, self.columns]
        block.sort_indices()
        return block

    def row_ranges(self, ranges: list[tuple[int, int]]) -> sp.csr_matrix:
        """Rows of several ``(start, stop)`` ranges stacked, read straight into one CSR
        buffer (no intermediate copies): the buffer of a shuffled stream."""
        if self.columns is not None:
            return sp.vstack([self.rows(a, b) for a, b in ranges], format="csr")
        lengths = [self._indptr[b] - self._indptr[a] for a, b in ranges]
        nnz = int(sum(lengths))
        data = np.empty(nnz, dtype=np.float32)
        indices = np.empty(nnz, dtype=self._indices.dtype)
        indptr = [np.zeros(1, dtype=np.int64)]
        offset = 0
        for (a, b), n in zip(ranges, lengths, strict=True):
            lo = self._indptr[a]
            data[offset : offset + n] = self._data[lo : lo + n]
            indices[offset : offset + n] = self._indices[lo : lo + n]
            indptr.append(self._indptr[a + 1 : b + 1] - lo + offset)
            offset += n
        shape = (sum(b - a for a, b in ranges), self.n_genes)
        block = sp.csr_matrix((data, indices, np.concatenate(indptr)), shape=shape)
        block.sort_indices()
        return block

    def close(self) -> None:
        self._file.close()


def chunk_rows_for(n_cells: int) -> int:
    """Rows per read: 1024 for large files; smaller ones get at least ~200 blocks so that the
    shuffled block order and the validation blocks still mix the cells."""
    return int(np.clip(n_cells // 200, 32, 1024))


@dataclass
class StreamingData:
    """What training needs per cell of a backed AnnData, without its counts.

    The counts stay in the file (:attr:`matrix`); the per-cell arrays here take a few bytes
    per cell. Attributes mirror :class:`~scvae._data.memory.CountData`.
    """

    matrix: BackedMatrix
    chunk_rows: int
    library: np.ndarray
    log_factorial: np.ndarray
    gene_totals: np.ndarray
    batch_index: np.ndarray
    gene_names: list[str]
    cell_names: list[str]
    batch_categories: list[str] = field(default_factory=list)
    labels: np.ndarray | None = None
    label_categories: list[str] = field(default_factory=list)
    missing: None = None
    #: The counts stay in the file (:class:`~scvae._data.memory.CountData` holds them in memory).
    backed = True

    @property
    def n_cells(self) -> int:
        return self.matrix.n_cells

    @property
    def n_genes(self) -> int:
        return len(self.gene_names)

    @property
    def n_chunks(self) -> int:
        return -(-self.n_cells // self.chunk_rows)

    def close(self) -> None:
        """Close the file."""
        self.matrix.close()

    def chunk_bounds(self, chunk: int) -> tuple[int, int]:
        start = chunk * self.chunk_rows
        return start, min(start + self.chunk_rows, self.n_cells)

    def read_chunks(self, chunks) -> tuple[sp.csr_matrix, np.ndarray]:
        """Counts of several blocks stacked in the given order, and their row numbers."""
        bounds = [self.chunk_bounds(int(c)) for c in chunks]
        rows = np.concatenate([np.arange(a, b) for a, b in bounds])
        return self.matrix.row_ranges(bounds), rows

    def read_chunk(self, chunk: int) -> tuple[sp.csr_matrix, np.ndarray]:
        """Counts of one block of rows and the row numbers of its cells."""
        start, stop = self.chunk_bounds(chunk)
        return self.matrix.rows(start, stop), np.arange(start, stop)


def prepare_streaming(
    adata: AnnData,
    *,
    layer: str | None = None,
    batch_key: str | None = None,
    labels_key: str | None = None,
    mask_layer: str | None = None,
    batch_categories: list[str] | None = None,
    gene_names: list[str] | None = None,
    chunk_rows: int | None = None,
    check: bool = True,
    share: tuple[int, int] = (0, 1),
    reduce: Callable[..., list[np.ndarray]] | None = None,
) -> StreamingData:
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
    if not adata.var_names.is_unique:
        raise ValueError("adata.var_names are not unique: call adata.var_names_make_unique()")
    columns = None
    if gene_names is not None:
        columns = align_genes(adata.var_names, gene_names)
        genes = list(gene_names)
    else:
        genes = [str(g) for g in adata.var_names]
    matrix = BackedMatrix(adata, layer, columns)
    if matrix.n_cells != adata.n_obs:
        raise ValueError(f"{matrix.where} has {matrix.n_cells} rows for {adata.n_obs} cells")
    chunk_rows = chunk_rows_for(adata.n_obs) if chunk_rows is None else int(chunk_rows)
    batch_index, batch_cats = _codes(adata, batch_key, batch_categories, "batch_key")
    labels, label_cats = (None, [])
    if labels_key is not None:
        labels, label_cats = _codes(adata, labels_key, None, "labels_key", allow_nan=True)
    data = StreamingData(
        matrix=matrix,
        chunk_rows=chunk_rows,
        library=np.zeros(adata.n_obs, dtype=np.float32),
        log_factorial=np.zeros(adata.n_obs, dtype=np.float32),
        gene_totals=np.zeros(len(genes), dtype=np.float64),
        batch_index=batch_index,
        gene_names=genes,
        cell_names=[str(c) for c in adata.obs_names],
        batch_categories=batch_cats,
        labels=labels,
        label_categories=label_cats,
    )
    if check:
        _statistics_pass(data, share, reduce)
    return data


def _statistics_pass(
    data: StreamingData, share: tuple[int, int], reduce: Callable[..., list[np.ndarray]] | None
) -> None:
    """Check every value and fill library sizes, log-factorials and gene totals."""
    rank, world = share
    cells, genes = data.cell_names, data.gene_names
    library = np.zeros(data.n_cells, dtype=np.float64)
    log_factorial = np.zeros(data.n_cells, dtype=np.float64)
    totals = np.zeros(data.n_genes, dtype=np.float64)
    for chunk in range(rank, data.n_chunks, world):
        block, rows = data.read_chunk(chunk)
        check_block(block, rows[0], data.matrix.where, cells, genes)
        library[rows] = np.asarray(block.sum(axis=1)).ravel()
        per_entry = sp.csr_matrix((gammaln(block.data + 1.0), block.indices, block.indptr))
        log_factorial[rows] = np.asarray(per_entry.sum(axis=1)).ravel()
        totals += np.asarray(block.sum(axis=0)).ravel()
    if reduce is not None:
        library, log_factorial, totals = reduce(library, log_factorial, totals)
    _check_cells(library, None, cells, data.n_genes, data.matrix.where)
    data.library = library.astype(np.float32)
    data.log_factorial = log_factorial.astype(np.float32)
    data.gene_totals = totals


def check_block(block: sp.csr_matrix, start: int, where: str, cells, genes) -> None:
    """Raise on NaN, infinite, negative or non-integer counts in rows ``start:`` of ``where``."""
    locate = partial(_sparse_position, block)

    def shifted(flat: int) -> tuple[int, int]:
        row, col = locate(flat)
        return start + row, col

    nan = np.isnan(block.data)
    if nan.any():
        row, col = shifted(int(np.flatnonzero(nan)[0]))
        raise ValueError(
            f"{where} holds NaN (e.g. at cell {cells[row]!r}, gene {genes[col]!r}): missing "
            "values are supported for in-memory data only; load it with adata.to_memory()"
        )
    _check_values(block.data, where, cells, genes, shifted)
