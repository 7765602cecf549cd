"""Minibatches of tensors sliced from the in-memory CSR counts.

No per-row DataLoader: each epoch permutes the rows of the CSR matrix once (one vectorised
gather), then every minibatch is a contiguous row slice, densified on its own. Only one
minibatch is ever dense at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp
import torch

from ._data import CountData

__all__ = ["Minibatch", "MinibatchSource"]


class Minibatch(NamedTuple):
    """Keyword arguments of the model and guide for one minibatch."""

    x: torch.Tensor
    library: torch.Tensor
    batch_index: torch.Tensor
    mask: torch.Tensor | None
    weight: torch.Tensor | None
    labels: torch.Tensor | None = None


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
        Skip a last minibatch smaller than ``batch_size`` (training only; a size-1 batch
        would give a noisy step). Never drops when the source holds fewer cells than one batch.
    sample_weights
        One weight per cell of ``indices``: each epoch then draws ``len(indices)`` cells with
        replacement, with probability proportional to the weight (class balancing).
    with_labels
        Attach ``data.labels`` (codes, -1 unlabelled) to each minibatch, for a label head.
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
        self._uniform_weight = bool(np.all(data.weight == 1.0))
        self.sample_p = None
        #: The cells of the current (or last) epoch, in the order the minibatches take them.
        self.order = self.indices
        if sample_weights is not None:
            sample_weights = np.asarray(sample_weights, dtype=np.float64)
            if sample_weights.shape != self.indices.shape or (sample_weights < 0).any():
                raise ValueError("sample_weights needs one non-negative weight per cell")
            self.sample_p = sample_weights / sample_weights.sum()

    def __len__(self) -> int:
        n = len(self.indices)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

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
        counts = self.data.counts[order]
        missing = None if self.data.missing is None else self.data.missing[order]
        for k in range(len(self)):
            rows = slice(k * self.batch_size, (k + 1) * self.batch_size)
            yield self._minibatch(
                counts[rows], None if missing is None else missing[rows], order[rows]
            )

    def _minibatch(
        self, counts: sp.csr_matrix, missing: sp.csr_matrix | None, cells: np.ndarray
    ) -> Minibatch:
        device = self.device
        x = torch.from_numpy(counts.toarray()).to(device, non_blocking=True)
        mask = None
        if missing is not None:
            mask = ~torch.from_numpy(missing.toarray()).to(device, non_blocking=True)
        library = torch.from_numpy(self.data.library[cells]).to(device)
        batch_index = torch.from_numpy(self.data.batch_index[cells]).to(device)
        weight = None
        if not self._uniform_weight:
            weight = torch.from_numpy(self.data.weight[cells]).to(device)
        labels = None
        if self.with_labels:
            labels = torch.from_numpy(self.data.labels[cells]).to(device)
        return Minibatch(x, library, batch_index, mask, weight, labels)
