"""The record of counts read from an AnnData (:class:`CountData`): held in memory, or left in
the file of a backed AnnData and read in blocks of rows (:class:`BackedMatrix`).

Plain numpy, scipy and h5py: the minibatch stage builds on these records without ever seeing
an AnnData. The readers that make them are :mod:`scvae._data.memory` and
:mod:`scvae._data.backed`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np
import scipy.sparse as sp

if TYPE_CHECKING:  # covariates.py reads obs through checks.py, which needs this module
    from .covariates import CovariateLayout

__all__ = ["BackedMatrix", "CountData", "chunk_rows_for"]


@dataclass
class CountData:
    """Counts and per-cell covariates of one AnnData, ready for minibatching.

    One record for both kinds of AnnData: in memory, :attr:`counts` is a CSR matrix; for a
    disk-backed AnnData it is a :class:`BackedMatrix` that reads blocks of rows from the file
    (and the per-cell arrays here take a few bytes per cell).

    Attributes
    ----------
    counts
        ``(cells, genes)`` float32 counts (missing entries stored as 0): a CSR matrix, or
        the :class:`BackedMatrix` of a backed file.
    missing
        ``(cells, genes)`` CSR bool, True where an entry is missing; ``None`` if none are.
    library
        Observed library size per cell (sum over observed entries).
    batch_index
        Integer batch code per cell (all 0 without a batch covariate).
    labels
        Integer label code per cell, -1 where unlabelled; ``None`` without ``labels_key``.
    gene_totals
        Counts of each gene summed over cells.
    log_factorial
        Per cell, sum over genes of ``lgamma(x + 1)``, from a backed file's checking pass
        (in memory the sources compute it from the stored values); else ``None``.
    covariates, covariate_layout
        ``(cells, width)`` float32 design matrix of the categorical (one-hot) and continuous
        (standardised) covariates beyond the batch, and how it was made; ``None`` without
        them (see :mod:`scvae._data.covariates`).
    """

    counts: sp.csr_matrix | BackedMatrix
    missing: sp.csr_matrix | None
    library: np.ndarray
    batch_index: np.ndarray
    gene_names: list[str]
    cell_names: list[str]
    batch_categories: list[str] = field(default_factory=list)
    labels: np.ndarray | None = None
    label_categories: list[str] = field(default_factory=list)
    gene_totals: np.ndarray | None = None
    log_factorial: np.ndarray | None = None
    covariates: np.ndarray | None = None
    covariate_layout: CovariateLayout | None = None
    #: Copies of the counts on training devices (see ``_batches.resident_counts``).
    device_copies: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def n_cells(self) -> int:
        return self.counts.shape[0]

    @property
    def n_genes(self) -> int:
        return self.counts.shape[1]

    @property
    def backed(self) -> bool:
        """Whether the counts stay in the file of a backed AnnData."""
        return isinstance(self.counts, BackedMatrix)

    def close(self) -> None:
        """Close the file of backed counts (nothing to do in memory)."""
        if self.backed:
            self.counts.close()


class BackedMatrix:
    """Row blocks of the CSR counts ``X`` (or ``layers[layer]``) of a backed AnnData's file.

    Parameters
    ----------
    path
        The h5ad file of a backed AnnData (``adata.filename``).
    layer
        Layer with the raw counts; ``None`` reads ``X``.
    columns
        Column positions to keep, in this order (the genes of a trained model).

    Examples
    --------
    >>> adata = anndata.read_h5ad("atlas.h5ad", backed="r")  # doctest: +SKIP
    >>> BackedMatrix(adata.filename).rows(0, 1000).shape  # doctest: +SKIP
    (1000, 2000)
    """

    def __init__(
        self,
        path: str | Path,
        layer: str | None = None,
        columns: np.ndarray | None = None,
        *,
        chunk_rows: int | None = None,
    ) -> None:
        self.path = Path(path)
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
        #: Rows per block: the unit of reading, shuffling and holding out (default
        #: :func:`chunk_rows_for`).
        self.chunk_rows = chunk_rows_for(self.n_cells) if chunk_rows is None else int(chunk_rows)
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

    @property
    def shape(self) -> tuple[int, int]:
        """``(cells, genes)`` as read: the selected columns only."""
        return self.n_cells, self.n_genes if self.columns is None else len(self.columns)

    @property
    def n_chunks(self) -> int:
        return -(-self.n_cells // self.chunk_rows)

    def chunk_bounds(self, chunk: int) -> tuple[int, int]:
        start = chunk * self.chunk_rows
        return start, min(start + self.chunk_rows, self.n_cells)

    def read_chunks(self, chunks) -> tuple[sp.csr_matrix, np.ndarray]:
        """Counts of several blocks stacked in the given order, and their row numbers."""
        bounds = [self.chunk_bounds(int(c)) for c in chunks]
        rows = np.concatenate([np.arange(a, b) for a, b in bounds])
        return self.row_ranges(bounds), rows

    def read_chunk(self, chunk: int) -> tuple[sp.csr_matrix, np.ndarray]:
        """Counts of one block of rows and the row numbers of its cells."""
        start, stop = self.chunk_bounds(chunk)
        return self.rows(start, stop), np.arange(start, stop)

    def close(self) -> None:
        self._file.close()


def chunk_rows_for(n_cells: int) -> int:
    """Rows per read: 1024 for large files; smaller ones get at least ~200 blocks so that the
    shuffled block order and the validation blocks still mix the cells."""
    return int(np.clip(n_cells // 200, 32, 1024))
