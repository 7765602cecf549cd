"""Minibatches streamed from a backed file: shuffled block order, shuffling inside a buffer.

:class:`ChunkSource` yields the same :class:`~scvae._batches.minibatch.Minibatch` objects as
the in-memory :class:`~scvae._batches.rows.MinibatchSource`, so the training loop does not
know where the counts come from. Each epoch visits the source's blocks of consecutive rows in a
new random order; ``buffer_chunks`` blocks at a time are read (each block is one sequential
read), their cells shuffled together and cut into minibatches. Memory holds one buffer,
whatever the number of cells.

Under ``torch.distributed`` every rank takes its own share of the blocks and yields exactly
the same number of minibatches (DDP needs every rank at every step): a rank whose share is
short starts over its share; cells beyond the common count are left for a later epoch.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
import scipy.sparse as sp
import torch

from .._data.checks import check_block
from .._data.counts import CountData
from .._utils import distributed as ddp
from .minibatch import Minibatch, csr_minibatch

logger = logging.getLogger(__name__)

__all__ = ["ChunkSource"]


class ChunkSource:
    """Iterate over minibatches of the blocks ``chunks`` of a backed file.

    Parameters
    ----------
    data
        The streaming data (file reader plus per-cell statistics).
    chunks
        Block numbers this source covers (all ranks together).
    batch_size
        Cells per minibatch (per rank).
    shuffle
        Training: new block order and buffer shuffle each epoch, a fixed number of full
        minibatches per epoch (the same on every rank). Otherwise every cell of this rank's
        blocks once, in file order.
    buffer_chunks
        Blocks shuffled together.
    seed
        Seeds the block order (shared by all ranks) and the buffer shuffles (per rank).
    device
        Where the tensors go.

    Examples
    --------
    >>> source = ChunkSource(data, np.arange(data.counts.n_chunks), shuffle=True)  # doctest: +SKIP
    >>> batch = next(iter(source))  # doctest: +SKIP
    """

    def __init__(
        self,
        data: CountData,
        chunks: np.ndarray,
        *,
        batch_size: int = 128,
        shuffle: bool = False,
        buffer_chunks: int = 16,
        seed: int = 0,
        device: torch.device | str = "cpu",
        check: bool = False,
    ) -> None:
        self.data = data
        self.check = check
        self.chunks = np.sort(np.asarray(chunks, dtype=np.int64))
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.buffer_chunks = max(1, int(buffer_chunks))
        self.seed = seed
        self.device = torch.device(device)
        self.rank, self.world = ddp.rank_world()
        self.epoch = 0
        sizes = np.array([np.subtract(*data.counts.chunk_bounds(c)[::-1]) for c in self.chunks])
        self._n_cells = int(sizes.sum())
        self.rows = np.concatenate([np.arange(*data.counts.chunk_bounds(c)) for c in self.chunks])

    @property
    def n_cells(self) -> int:
        """Cells of all ranks' blocks together."""
        return self._n_cells

    def __len__(self) -> int:
        if self.shuffle:
            return max(1, self._n_cells // (self.world * self.batch_size))
        mine = self.chunks[self.rank :: self.world]
        cells = sum(np.subtract(*self.data.counts.chunk_bounds(c)[::-1]) for c in mine)
        return -(-int(cells) // self.batch_size)

    def log_factorial_per_cell(self) -> float:
        """Mean over the source's cells of sum_g lgamma(x_g + 1) (see :mod:`scvae._train.loop`)."""
        return float(self.data.log_factorial[self.rows].astype(np.float64).mean())

    def median_library(self) -> float:
        return float(np.median(self.data.library[self.rows]))

    def cells_of_step(self, step: int) -> np.ndarray:
        """Not kept: a stream does not remember the order of its cells."""
        return np.zeros(0, dtype=np.int64)

    def random_state(self) -> dict:
        # Each epoch's block order and buffer shuffles derive from (seed, epoch, rank).
        return {"epoch": self.epoch}

    def set_random_state(self, state: dict) -> None:
        self.epoch = int(state["epoch"])

    def own_rows(self) -> np.ndarray:
        """The rows of this process's blocks, in the order an unshuffled pass yields them."""
        mine = self.chunks[self.rank :: self.world]
        parts = [np.arange(*self.data.counts.chunk_bounds(c)) for c in mine]
        return np.concatenate(parts or [np.zeros(0, dtype=np.int64)])

    def __iter__(self) -> Iterator[Minibatch]:
        if not self.shuffle:
            for chunk in self.chunks[self.rank :: self.world]:
                block, rows = self.data.counts.read_chunk(int(chunk))
                library = self._checked_library(block, rows) if self.check else None
                for k in range(0, len(rows), self.batch_size):
                    part = slice(k, k + self.batch_size)
                    lib = None if library is None else library[part]
                    yield csr_minibatch(
                        self.data, block[part], None, rows[part], self.device, library=lib
                    )
            return
        self.epoch += 1
        shared = np.random.default_rng([self.seed, self.epoch])
        mine = shared.permutation(self.chunks)[self.rank :: self.world]
        if len(self.chunks) < self.world:  # the same on every rank: all raise, none hangs
            raise ValueError(
                f"{self.world} ranks share {len(self.chunks)} training blocks: use fewer "
                "processes or more cells"
            )
        rng = np.random.default_rng([self.seed, self.epoch, self.rank])
        batches = self._shuffled_minibatches(mine, rng)
        for _ in range(len(self)):
            yield next(batches)

    def _shuffled_minibatches(
        self, chunks: np.ndarray, rng: np.random.Generator
    ) -> Iterator[Minibatch]:
        """Endless full minibatches from buffers of ``buffer_chunks`` blocks, each buffer's
        rows in a random order; the cells left over are carried into the next buffer. After
        the last block the share starts over in a new order: a rank whose share holds fewer
        full minibatches than the common count goes round again rather than fall out of step
        with the others."""
        carry_block, carry_rows = None, np.empty(0, dtype=np.int64)
        size = self.batch_size
        while True:
            for start in range(0, len(chunks), self.buffer_chunks):
                block, rows = self.data.counts.read_chunks(
                    chunks[start : start + self.buffer_chunks]
                )
                # Minibatches gather their rows from the buffer: no shuffled copy of it.
                order = rng.permutation(len(rows))
                if len(carry_rows):
                    need = min(size - len(carry_rows), len(order))
                    head, order = order[:need], order[need:]
                    carry_block = sp.vstack([carry_block, block[head]], format="csr")
                    carry_rows = np.concatenate([carry_rows, rows[head]])
                    if len(carry_rows) == size:
                        yield self._minibatch(carry_block, carry_rows)
                        carry_rows = carry_rows[:0]
                n_used = len(order) // size * size
                for k in range(0, n_used, size):
                    part = order[k : k + size]
                    yield self._minibatch(block[part], rows[part])
                left = order[n_used:]
                if len(left):
                    carry_block, carry_rows = block[left], rows[left]
                del block  # free this buffer before the next one is read
            chunks = rng.permutation(chunks)

    def _checked_library(self, block: sp.csr_matrix, rows: np.ndarray) -> np.ndarray:
        """Library sizes of a block of counts that no checking pass has read (a file opened
        to embed its cells): its values are checked and its libraries computed as it is read."""
        data = self.data
        check_block(block, rows[0], data.counts.where, data.cell_names, data.gene_names)
        library = np.asarray(block.sum(axis=1), dtype=np.float32).ravel()
        if (library <= 0).any():
            cell = data.cell_names[rows[np.flatnonzero(library <= 0)[0]]]
            raise ValueError(
                f"cell {cell!r} has zero total counts over the model's genes in "
                f"{data.counts.where}; remove such cells first"
            )
        return library

    def _minibatch(self, counts: sp.csr_matrix, rows: np.ndarray) -> Minibatch:
        return csr_minibatch(self.data, counts, None, rows, self.device)
