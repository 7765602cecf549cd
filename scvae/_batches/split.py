"""Which cells train and which validate, per process: the minibatch sources of a fit.

:func:`make_sources` is the one place that picks the kind of source for the data: random
rows of counts in memory (:class:`~scvae._batches.rows.MinibatchSource`) or shuffled
blocks of a backed file (:class:`~scvae._batches.blocks.ChunkSource`). The training loop and
the reference builder see only the :class:`~scvae._batches.minibatch.Source` protocol both
follow.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import numpy as np
import torch

from .._data.counts import CountData
from .._utils import distributed as ddp
from .blocks import ChunkSource
from .minibatch import Source
from .rows import MinibatchSource
from .weights import balance_weights

logger = logging.getLogger(__name__)

__all__ = ["Sources", "make_sources", "memory_sources", "ordered_source", "split_units"]


class Sources(NamedTuple):
    """The minibatches a fit trains and validates on."""

    train: Source
    validation: Source | None
    #: Every process's training cells together (in memory; ``None`` for a backed file).
    train_cells: np.ndarray | None


def make_sources(
    data: CountData,
    *,
    validation_fraction: float,
    early_stopping: bool,
    batch_size: int,
    seed: int,
    device: torch.device | str,
    validation_indices: np.ndarray | None = None,
    sample_weights: np.ndarray | None = None,
    with_labels: bool = False,
    balance_batches: bool = False,
) -> Sources:
    """Training and validation sources of ``data``.

    In memory, ``validation_fraction`` of the cells (data of at least 100 cells), or
    ``validation_indices``, are held out; from a backed file, whole random blocks.
    ``sample_weights``, ``with_labels`` and ``balance_batches`` apply to cells in memory.
    """
    device = torch.device(device)
    if data.backed:
        # Held-out blocks rather than scattered cells keep validation reads sequential; with
        # ~200+ blocks per file the held-out blocks still sample the whole file.
        rng = np.random.default_rng(seed)
        train_blocks, val_blocks = split_units(
            data.counts.n_chunks, validation_fraction, rng, early_stopping, n_cells=data.n_cells
        )
        train = ChunkSource(
            data, train_blocks, batch_size=batch_size, shuffle=True, seed=seed, device=device
        )
        validation = None
        if len(val_blocks):
            validation = ChunkSource(data, val_blocks, batch_size=256, device=device)
        return Sources(train, validation, None)
    return Sources(
        *memory_sources(
            data,
            validation_indices,
            validation_fraction,
            early_stopping,
            batch_size,
            device,
            seed,
            sample_weights,
            with_labels=with_labels,
            balance_batches=balance_batches,
        )
    )


def ordered_source(
    data: CountData, *, batch_size: int, device: torch.device | str, share: bool = False
) -> Source:
    """The cells of ``data`` once each, in order: what the encoders read.

    In memory every process reads every cell. From a backed file every process reads all
    blocks too (the reference's summary of the training cells is made identically on every
    rank), or with ``share`` only its own share of them (embedding, whose parts are gathered
    afterwards), checking each block as it is read.
    """
    if data.backed:
        blocks = np.arange(data.counts.n_chunks)
        source = ChunkSource(data, blocks, batch_size=batch_size, device=device, check=share)
        if not share:
            source.rank, source.world = 0, 1
        return source
    return MinibatchSource(data, batch_size=batch_size, device=device)


def memory_sources(
    data: CountData,
    validation_indices: np.ndarray | None,
    validation_fraction: float,
    early_stopping: bool,
    batch_size: int,
    device: torch.device,
    seed: int,
    sample_weights: np.ndarray | None,
    *,
    with_labels: bool = False,
    balance_batches: bool = False,
) -> tuple[MinibatchSource, MinibatchSource | None, np.ndarray]:
    """Training and validation minibatches of in-memory counts, and all training cells.

    Inside a process group each rank takes an equal share of the training cells (the
    remainder of the division is left out, so that all ranks take the same number of steps)
    and its share of the validation cells. ``balance_batches``: each batch of the rank's
    training cells is drawn with the same total probability."""
    rng = np.random.default_rng(seed)
    if validation_indices is None:
        train_idx, val_idx = split_units(data.n_cells, validation_fraction, rng, early_stopping)
    else:
        val_idx = np.asarray(validation_indices)
        train_idx = np.setdiff1d(np.arange(data.n_cells), val_idx)
    all_train_idx = train_idx
    weights = None if sample_weights is None else sample_weights[train_idx]
    validating = len(val_idx) > 0
    rank, world = ddp.rank_world()
    if world > 1:
        share = len(train_idx) // world
        mine = rng.permutation(len(train_idx))[rank * share : (rank + 1) * share]
        train_idx = train_idx[np.sort(mine)]
        weights = None if weights is None else weights[np.sort(mine)]
        val_idx = val_idx[rank::world]
        rng = np.random.default_rng([seed, rank])
    if balance_batches:
        weights = balance_weights(data.batch_index[train_idx])
    train_source = MinibatchSource(
        data,
        train_idx,
        batch_size=batch_size,
        shuffle=True,
        device=device,
        rng=rng,
        drop_last=True,
        sample_weights=weights,
        with_labels=with_labels,
    )
    val_source = None
    if validating:
        val_source = MinibatchSource(data, val_idx, batch_size=256, device=device)
    return train_source, val_source, all_train_idx


def split_units(
    n_units: int,
    fraction: float,
    rng: np.random.Generator,
    early_stopping: bool,
    *,
    n_cells: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The one train/validation split rule: ``fraction`` of the units (cells in memory,
    blocks of rows of a backed file), drawn by ``rng``, are held out, and none when the data
    hold fewer than 100 cells (``n_cells``, default ``n_units``). Both parts sorted.

    Examples
    --------
    >>> train, val = split_units(200, 0.1, np.random.default_rng(0), True)
    >>> len(train), len(val)
    (180, 20)
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"validation_fraction must be in [0, 1), got {fraction}")
    n_cells = n_units if n_cells is None else n_cells
    n_val = round(n_units * fraction) if n_cells >= 100 else 0
    if n_val == 0 and early_stopping and fraction > 0:
        logger.info("fewer than 100 cells: no validation split, no early stopping")
    order = rng.permutation(n_units)
    return np.sort(order[n_val:]), np.sort(order[:n_val])
