"""The records of counts read from an AnnData: in memory (:class:`CountData`) or left in the
file of a backed AnnData (:class:`StreamingData`, read through :class:`BackedMatrix`).

Plain numpy, scipy and h5py: the minibatch stage builds on these records without ever seeing
an AnnData. The readers that make them are :mod:`scvae._data.memory` and
:mod:`scvae._data.backed`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import scipy.sparse as sp

__all__ = ["BackedMatrix", "CountData", "StreamingData", "chunk_rows_for"]


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
        self, path: str | Path, layer: str | None = None, columns: np.ndarray | None = None
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
