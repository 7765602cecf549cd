"""A minibatch of cells as the model reads it, the protocol of the sources that yield them,
and the one host builder that turns CSR rows into a minibatch.

A :class:`Minibatch` holds the dense counts of its cells, their library sizes, batch codes and
other covariates, the ``observed`` mask (True = observed; ``None`` when every entry is) and the
positions and values of their stored entries (for the NB training objective,
``scvae._vae.objective``). Random rows of counts in memory
(:class:`~scvae._batches.rows.MinibatchSource`) and shuffled blocks of a backed file
(:class:`~scvae._batches.blocks.ChunkSource`) are two :class:`Source` s of them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple, Protocol

import numpy as np
import scipy.sparse as sp
import torch

from .._data.counts import CountData

__all__ = [
    "Minibatch",
    "Source",
    "csr_minibatch",
    "minibatches_per_epoch",
    "stored_entries",
    "summed_duplicates",
]


class Minibatch(NamedTuple):
    """Keyword arguments of the model and guide for one minibatch."""

    x: torch.Tensor
    library: torch.Tensor
    batch_index: torch.Tensor
    #: True where an entry was observed; ``None`` when every entry was.
    observed: torch.Tensor | None
    labels: torch.Tensor | None = None
    #: ``(rows, cols, values)`` of the stored entries of ``x`` (see ``CountRows``).
    nonzeros: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    #: ``(cells, width)`` covariates beyond the batch (``CountData.covariates``), or ``None``.
    covariates: torch.Tensor | None = None


class Source(Protocol):
    """What the training loop, the reference builder and the encoders need of minibatches:
    random rows in memory (:class:`MinibatchSource`) and shuffled blocks of a backed file
    (:class:`~scvae._batches.blocks.ChunkSource`) are two sources behind this one protocol."""

    device: torch.device
    batch_size: int

    @property
    def n_cells(self) -> int: ...

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[Minibatch]: ...

    def median_library(self) -> float:
        """Median observed library size of the source's cells."""
        ...

    def log_factorial_per_cell(self) -> float:
        """Mean over the source's cells of sum_g lgamma(x_g + 1): the constant the training
        objective leaves out, added back so that reported losses are exact."""
        ...

    def cells_of_step(self, step: int) -> np.ndarray:
        """Rows of the cells of minibatch ``step`` of the last epoch (empty if not kept)."""
        ...

    def random_state(self) -> dict:
        """What decides the next epochs' minibatches, for a checkpoint."""
        ...

    def set_random_state(self, state: dict) -> None: ...


def csr_minibatch(
    data: CountData,
    counts: sp.csr_matrix,
    missing: sp.csr_matrix | None,
    rows: np.ndarray,
    device: torch.device,
    *,
    with_labels: bool = False,
    library: np.ndarray | None = None,
) -> Minibatch:
    """The one CSR -> minibatch builder on the host: the rows ``rows`` of ``data``, whose
    counts (and missing entries) are the CSR blocks ``counts`` (``missing``), densified and
    sent to ``device`` with their covariates and the list of their stored entries. Used for
    rows picked from counts in memory and for rows read from a backed file; on a GPU with
    resident counts the gather (``ResidentCSR.dense_rows``) builds the same minibatch there.
    ``library``: the rows' library sizes, where ``data`` holds none yet (a file being embedded).
    """
    x = torch.from_numpy(counts.toarray()).to(device, non_blocking=True)
    observed = None
    if missing is not None:
        observed = ~torch.from_numpy(missing.toarray()).to(device, non_blocking=True)

    def move(array: np.ndarray | None) -> torch.Tensor | None:
        return None if array is None else torch.from_numpy(array[rows]).to(device)

    return Minibatch(
        x,
        move(data.library) if library is None else torch.from_numpy(library).to(device),
        move(data.batch_index),
        observed,
        labels=move(data.labels) if with_labels else None,
        nonzeros=stored_entries(counts, device),
        covariates=move(data.covariates),
    )


def minibatches_per_epoch(n_cells: int, batch_size: int, drop_last: bool) -> int:
    """Minibatches in one pass over ``n_cells``: the full ones, and the last partial one
    unless ``drop_last`` and it holds fewer than half of ``batch_size`` cells."""
    full, rest = divmod(n_cells, batch_size)
    return full + int(rest > 0 and (not drop_last or 2 * rest >= batch_size))


def stored_entries(
    counts: sp.csr_matrix, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(rows, cols, values)`` of the stored entries of a CSR block, as tensors on ``device``
    (duplicates summed first, as ``toarray()`` does)."""
    counts = summed_duplicates(counts)
    rows = np.repeat(np.arange(counts.shape[0]), np.diff(counts.indptr))

    def move(array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(array).to(device, non_blocking=True)

    return move(rows), move(counts.indices.astype(np.int64)), move(counts.data)


def summed_duplicates(matrix: sp.csr_matrix) -> sp.csr_matrix:
    """``matrix``, or a copy with its duplicate entries summed (as ``toarray()`` sums them)."""
    if matrix.has_canonical_format:
        return matrix
    matrix = matrix.copy()
    matrix.sum_duplicates()
    return matrix
