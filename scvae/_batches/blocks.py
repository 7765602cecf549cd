"""Minibatches streamed from a backed file: shuffled block order, shuffling inside a buffer.

:class:`ChunkSource` yields the same :class:`~scvae._batches.minibatch.Minibatch` objects as
the in-memory :class:`~scvae._batches.minibatch.MinibatchSource`, so the training loop does not
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
from .._data.counts import StreamingData
from .._utils import distributed as ddp
from .minibatch import Minibatch, stored_entries

logger = logging.getLogger(__name__)

__all__ = ["ChunkSource", "embed_streaming", "streaming_sources"]


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
    >>> source = ChunkSource(data, np.arange(data.n_chunks), shuffle=True)  # doctest: +SKIP
    >>> batch = next(iter(source))  # doctest: +SKIP
    """

    def __init__(
        self,
        data: StreamingData,
        chunks: np.ndarray,
        *,
        batch_size: int = 128,
        shuffle: bool = False,
        buffer_chunks: int = 16,
        seed: int = 0,
        device: torch.device | str = "cpu",
    ) -> None:
        self.data = data
        self.chunks = np.sort(np.asarray(chunks, dtype=np.int64))
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.buffer_chunks = max(1, int(buffer_chunks))
        self.seed = seed
        self.device = torch.device(device)
        self.rank, self.world = ddp.rank_world()
        self.epoch = 0
        sizes = np.array([np.subtract(*data.chunk_bounds(c)[::-1]) for c in self.chunks])
        self._n_cells = int(sizes.sum())
        self.rows = np.concatenate([np.arange(*data.chunk_bounds(c)) for c in self.chunks])

    @property
    def n_cells(self) -> int:
        """Cells of all ranks' blocks together."""
        return self._n_cells

    def __len__(self) -> int:
        if self.shuffle:
            return max(1, self._n_cells // (self.world * self.batch_size))
        mine = self.chunks[self.rank :: self.world]
        cells = sum(np.subtract(*self.data.chunk_bounds(c)[::-1]) for c in mine)
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

    def __iter__(self) -> Iterator[Minibatch]:
        if not self.shuffle:
            for chunk in self.chunks[self.rank :: self.world]:
                block, rows = self.data.read_chunk(int(chunk))
                for k in range(0, len(rows), self.batch_size):
                    part = slice(k, k + self.batch_size)
                    yield self._minibatch(block[part], rows[part])
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
                block, rows = self.data.read_chunks(chunks[start : start + self.buffer_chunks])
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

    def _minibatch(self, counts: sp.csr_matrix, rows: np.ndarray) -> Minibatch:
        device = self.device
        x = torch.from_numpy(counts.toarray()).to(device, non_blocking=True)
        library = torch.from_numpy(self.data.library[rows]).to(device)
        batch_index = torch.from_numpy(self.data.batch_index[rows]).to(device)
        return Minibatch(x, library, batch_index, None, nonzeros=stored_entries(counts, device))


def streaming_sources(
    data: StreamingData,
    *,
    validation_fraction: float,
    early_stopping: bool,
    batch_size: int,
    seed: int,
    device: torch.device,
) -> tuple[ChunkSource, ChunkSource | None]:
    """Training and validation sources; the validation cells are whole random blocks.

    Held-out blocks rather than scattered cells keep validation reads sequential; with
    ~200+ blocks per file the held-out blocks still sample the whole file.
    """
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
    n_val = round(data.n_chunks * validation_fraction) if data.n_cells >= 100 else 0
    if n_val == 0 and early_stopping and validation_fraction > 0:
        logger.info("too few cells for a validation split: no early stopping")
    order = np.random.default_rng(seed).permutation(data.n_chunks)
    train = ChunkSource(
        data, order[n_val:], batch_size=batch_size, shuffle=True, seed=seed, device=device
    )
    val = None
    if n_val:
        val = ChunkSource(data, order[:n_val], batch_size=256, device=device)
    return train, val


@torch.no_grad()
def embed_streaming(module, data: StreamingData, *, batch_size: int = 1024) -> np.ndarray:
    """Posterior means of z for every cell of a backed file, block by block.

    Library sizes are computed from each block as it is read (no separate pass). Under
    ``torch.distributed`` each rank encodes its share of the blocks and the parts are summed
    into the full array on every rank.
    """
    module.eval()
    device = next(module.parameters()).device
    rank, world = ddp.rank_world()
    mine = range(rank, data.n_chunks, world)
    rows = np.concatenate([np.arange(*data.chunk_bounds(c)) for c in mine] or [np.zeros(0, int)])
    # Filled in place: keeping each minibatch's output tensor alive instead would pin small
    # blocks all over the heap and keep the freed buffers around them from being returned.
    local = np.empty((len(rows), module.n_latent), dtype=np.float32)
    filled = 0
    for chunk in mine:
        block, chunk_rows = data.read_chunk(chunk)
        check_block(block, chunk_rows[0], data.matrix.where, data.cell_names, data.gene_names)
        library = np.asarray(block.sum(axis=1), dtype=np.float32).ravel()
        if (library <= 0).any():
            cell = data.cell_names[chunk_rows[np.flatnonzero(library <= 0)[0]]]
            raise ValueError(
                f"cell {cell!r} has zero total counts over the model's genes in "
                f"{data.matrix.where}; remove such cells first"
            )
        for k in range(0, len(chunk_rows), batch_size):
            part = slice(k, k + batch_size)
            x = torch.from_numpy(block[part].toarray()).to(device)
            lib = torch.from_numpy(library[part]).to(device)
            b = torch.from_numpy(data.batch_index[chunk_rows[part]]).to(device)
            z = module.encode(x, lib, b, None)[0]
            local[filled : filled + len(z)] = z.cpu().numpy()
            filled += len(z)
    return ddp.all_gather_rows(local, rows, data.n_cells)
