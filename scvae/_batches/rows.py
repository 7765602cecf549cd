"""Random rows of the counts in memory: the minibatch source of a fit on an in-memory AnnData.

No per-row DataLoader. On a GPU the CSR matrix is *resident* on the device: its three arrays
become tensors there once, and each minibatch gathers its rows' nonzeros and scatters them
into a dense block on the device, with sizes computed on the host, so that a step never
waits for the device. The order of the cells is drawn on the host each epoch (the same random
stream on every device, so a seed gives the same minibatches on CPU and GPU) and sent to the
device once per epoch. Only one minibatch is ever dense at a time.

When the matrix does not fit in the GPU's free memory, it is *streamed in chunks*: the rows of
many minibatches (~256 MB of CSR) are gathered on the host and sent as one CSR block, and the
minibatches are densified from it on the device. On the CPU each minibatch's rows are picked
from the matrix and densified by scipy (faster there than the gather). All three ways give the
same minibatches, each with the list of its stored entries (``Minibatch.nonzeros``) beside the
dense block, for the NB training objective (``scvae._vae.objective``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp
import torch
from scipy.special import gammaln

from .._data.counts import CountData
from .minibatch import (
    Minibatch,
    csr_minibatch,
    minibatches_per_epoch,
    summed_duplicates,
)

logger = logging.getLogger(__name__)

__all__ = ["MinibatchSource", "ResidentCSR", "resident_counts"]

# Share of the GPU's free memory the resident counts may take.
_RESIDENT_SHARE = 0.5
# CSR bytes sent to the device per chunk when the counts are streamed.
_CHUNK_BYTES = 256e6
PLACEMENTS = ("resident", "chunks", "host")


class ResidentCSR(NamedTuple):
    """A CSR matrix as tensors on a device, with its row lengths also on the host."""

    indptr: torch.Tensor
    indices: torch.Tensor
    values: torch.Tensor
    lengths: torch.Tensor
    host_lengths: np.ndarray
    n_cols: int

    @classmethod
    def from_scipy(cls, matrix: sp.csr_matrix, device: torch.device) -> ResidentCSR:
        matrix = summed_duplicates(matrix)
        lengths = np.diff(matrix.indptr).astype(np.int64)

        def move(array: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(array)).to(device)

        return cls(
            move(matrix.indptr.astype(np.int64, copy=False)),
            move(matrix.indices),
            move(matrix.data),
            move(lengths),
            lengths,
            matrix.shape[1],
        )

    def dense_rows(
        self, rows: torch.Tensor, host_rows: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rows ``rows`` (device) as a dense block, and the (row, column) positions and values
        of their stored entries. ``host_rows`` are the same rows on the host, for the sizes."""
        nnz = int(self.host_lengths[host_rows].sum())
        lengths = self.lengths[rows]
        row_of = torch.repeat_interleave(
            torch.arange(len(host_rows), device=rows.device), lengths, output_size=nnz
        )
        first = torch.cumsum(lengths, 0) - lengths  # where each row starts in the block
        offset = torch.arange(nnz, device=rows.device) - first[row_of]
        source = self.indptr[rows][row_of] + offset
        cols = self.indices[source].long()
        shape = (len(host_rows), self.n_cols)
        dense = torch.zeros(shape, dtype=self.values.dtype, device=rows.device)
        values = self.values[source]
        dense[row_of, cols] = values
        return dense, row_of, cols, values


def _fits_on_device(data: CountData, device: torch.device) -> bool:
    if device.type != "cuda":
        return True
    need = sum(
        m.data.nbytes + m.indices.nbytes + 2 * m.indptr.nbytes
        for m in (data.counts, data.missing)
        if m is not None
    )
    free, _ = torch.cuda.mem_get_info(device)
    if need > _RESIDENT_SHARE * free:
        logger.info(
            "the counts (%.0f MB) do not fit in half the GPU's free memory (%.0f MB): "
            "they are streamed to it in chunks",
            need / 1e6,
            free / 1e6,
        )
        return False
    return True


def resident_counts(
    data: CountData, device: torch.device
) -> tuple[ResidentCSR, ResidentCSR | None] | None:
    """The counts and missing mask of ``data`` on ``device``, made once per data and device;
    ``None`` when they do not fit (GPU)."""
    key = str(device)
    if key not in data.device_copies:
        fits = _fits_on_device(data, device)
        data.device_copies[key] = (
            (
                ResidentCSR.from_scipy(data.counts, device),
                None if data.missing is None else ResidentCSR.from_scipy(data.missing, device),
            )
            if fits
            else None
        )
    return data.device_copies[key]


class MinibatchSource:
    """Iterate over minibatches of the cells ``indices`` of ``data``.

    Parameters
    ----------
    data
        The prepared counts.
    indices
        Which cells (rows) this source covers, e.g. the training split.
    batch_size
        Cells per minibatch.
    shuffle
        Draw a new random order each epoch from ``rng``.
    device
        Where the tensors go.
    rng
        Random generator for the shuffling.
    drop_last
        Skip a last minibatch smaller than half of ``batch_size`` (training only: a tiny
        batch would give a noisy step; a larger one is kept, so that large batches on small
        data still see every cell each epoch). Never drops when the source holds fewer cells
        than one batch.
    sample_weights
        One weight per cell of ``indices``: each epoch then draws ``len(indices)`` cells with
        replacement, with probability proportional to the weight (class balancing).
    with_labels
        Attach ``data.labels`` (codes, -1 unlabelled) to each minibatch, for a label head.
    placement
        ``"resident"``: the counts live on ``device`` and minibatches are built there;
        ``"chunks"``: blocks of many minibatches' rows are sent as CSR and densified on the
        device; ``"host"``: each minibatch is densified on the host and sent. Default:
        resident on a GPU when the counts take at most half its free memory, else chunks;
        host on the CPU. All give the same minibatches.
    """

    def __init__(
        self,
        data: CountData,
        indices: np.ndarray | None = None,
        *,
        batch_size: int = 128,
        shuffle: bool = False,
        device: torch.device | str = "cpu",
        rng: np.random.Generator | None = None,
        drop_last: bool = False,
        sample_weights: np.ndarray | None = None,
        with_labels: bool = False,
        placement: str | None = None,
    ) -> None:
        self.data = data
        self.with_labels = with_labels and data.labels is not None
        self.indices = np.arange(data.n_cells) if indices is None else np.asarray(indices)
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.device = torch.device(device)
        self.rng = rng if rng is not None else np.random.default_rng(0)
        self.drop_last = drop_last and len(self.indices) > self.batch_size
        self.sample_p = None
        #: The cells of the current (or last) epoch, in the order the minibatches take them.
        self.order = self.indices
        if sample_weights is not None:
            sample_weights = np.asarray(sample_weights, dtype=np.float64)
            if sample_weights.shape != self.indices.shape or (sample_weights < 0).any():
                raise ValueError("sample_weights needs one non-negative weight per cell")
            self.sample_p = sample_weights / sample_weights.sum()
        if placement is not None and placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
        if placement is None:
            # On the CPU, scipy slices and densifies a minibatch faster than the gather of the
            # other two ways (docs/speed.md, measured building blocks).
            placement = "resident" if self.device.type == "cuda" else "host"
        self.resident = resident_counts(data, self.device) if placement == "resident" else None
        if placement == "resident" and self.resident is None:
            placement = "chunks"
        self.placement = placement
        stored_per_cell = max(data.counts.nnz / max(data.n_cells, 1), 1.0)
        bytes_per_batch = 8 * stored_per_cell * self.batch_size  # value + column index
        #: Minibatches per chunk when streaming (``placement="chunks"``).
        self.chunk_batches = max(1, int(_CHUNK_BYTES / bytes_per_batch))
        if self.resident is not None:
            self._covariates = self._covariates_on_device(slice(None))

    def _covariates_on_device(self, cells: slice | np.ndarray) -> dict:
        def move(array: np.ndarray | None) -> torch.Tensor | None:
            return None if array is None else torch.from_numpy(array[cells]).to(self.device)

        data = self.data
        return {
            "library": move(data.library),
            "batch_index": move(data.batch_index),
            "covariates": move(data.covariates),
            "labels": move(data.labels) if self.with_labels else None,
        }

    def __len__(self) -> int:
        return minibatches_per_epoch(len(self.indices), self.batch_size, self.drop_last)

    def median_library(self) -> float:
        return float(np.median(self.data.library[self.indices]))

    def log_factorial_per_cell(self) -> float:
        # Zeros contribute lgamma(1) = 0: the stored values of the rows are all that is needed.
        values = self.data.counts[self.indices].data
        return float(gammaln(values + 1.0).sum() / max(self.n_cells, 1))

    def cells_of_step(self, step: int) -> np.ndarray:
        return self.order[step * self.batch_size : (step + 1) * self.batch_size]

    def random_state(self) -> dict:
        return {"numpy": self.rng.bit_generator.state}

    def set_random_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state["numpy"]

    @property
    def n_cells(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[Minibatch]:
        order = self.indices
        if self.sample_p is not None:
            order = self.rng.choice(order, size=len(order), replace=True, p=self.sample_p)
        elif self.shuffle:
            order = order[self.rng.permutation(len(order))]
        self.order = order
        if self.placement == "resident":
            yield from self._resident_batches(order)
            return
        if self.placement == "chunks":
            yield from self._chunked_batches(order)
            return
        # Each minibatch picks its rows from the CSR matrix (cheaper than permuting the whole
        # matrix each epoch; docs/speed.md, measured building blocks).
        counts, missing = self.data.counts, self.data.missing
        for k in range(len(self)):
            cells = order[k * self.batch_size : (k + 1) * self.batch_size]
            yield self._minibatch(
                counts[cells], None if missing is None else missing[cells], cells
            )

    def _resident_batches(self, order: np.ndarray) -> Iterator[Minibatch]:
        counts, missing = self.resident
        on_device = torch.from_numpy(order).to(self.device, non_blocking=True)
        for k in range(len(self)):
            window = slice(k * self.batch_size, (k + 1) * self.batch_size)
            yield _gathered(counts, missing, self._covariates, on_device[window], order[window])

    def _chunked_batches(self, order: np.ndarray) -> Iterator[Minibatch]:
        size = self.batch_size
        for first in range(0, len(self), self.chunk_batches):
            n_batches = min(self.chunk_batches, len(self) - first)
            cells = order[first * size : (first + n_batches) * size]
            counts = ResidentCSR.from_scipy(self.data.counts[cells], self.device)
            missing = None
            if self.data.missing is not None:
                missing = ResidentCSR.from_scipy(self.data.missing[cells], self.device)
            covariates = self._covariates_on_device(cells)
            local = np.arange(len(cells))
            on_device = torch.from_numpy(local).to(self.device)
            for k in range(n_batches):
                window = slice(k * size, (k + 1) * size)
                yield _gathered(counts, missing, covariates, on_device[window], local[window])

    def _minibatch(
        self, counts: sp.csr_matrix, missing: sp.csr_matrix | None, cells: np.ndarray
    ) -> Minibatch:
        return csr_minibatch(
            self.data, counts, missing, cells, self.device, with_labels=self.with_labels
        )


def _gathered(
    counts: ResidentCSR,
    missing: ResidentCSR | None,
    covariates: dict,
    rows: torch.Tensor,
    host_rows: np.ndarray,
) -> Minibatch:
    """The minibatch of ``rows`` of device-side counts, mask and covariates."""
    x, row_of, cols, values = counts.dense_rows(rows, host_rows)
    observed = None if missing is None else ~missing.dense_rows(rows, host_rows)[0]
    picked = {k: None if v is None else v[rows] for k, v in covariates.items()}
    return Minibatch(x, observed=observed, nonzeros=(row_of, cols, values), **picked)
