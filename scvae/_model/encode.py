"""The one encode pass: each minibatch of a source with its posterior ``q(z | x)``.

Embedding, the latent reference of :func:`scvae.generate`, imputation, denoising and the
posterior predictive check all read cells through :func:`encoded`; :func:`posterior_means`
is the embedding of every cell of the data, in memory or streamed from a file (each process
encoding its share of a file's blocks, the parts gathered).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch

from .._batches.minibatch import Minibatch, Source
from .._batches.split import ordered_source
from .._data.counts import CountData
from .._utils import distributed as ddp
from .._vae.module import SCVAEModule

__all__ = ["encoded", "posterior_means"]


def encoded(
    module: SCVAEModule, source: Source, *, only: Callable[[Minibatch], bool] | None = None
) -> Iterator[tuple[Minibatch, torch.Tensor | None, torch.Tensor | None]]:
    """Each minibatch of ``source`` with the location and scale of ``q(z | x)``.

    ``only``: encode just the minibatches it accepts; the others come with ``None``.
    """
    for batch in source:
        if only is not None and not only(batch):
            yield batch, None, None
            continue
        loc, scale = module.encode(
            batch.x,
            batch.library,
            batch.batch_index,
            batch.observed,
            covariates=batch.covariates,
        )
        yield batch, loc, scale


@torch.no_grad()
def posterior_means(module: SCVAEModule, data: CountData, *, batch_size: int = 1024) -> np.ndarray:
    """``(cells, n_latent)`` float32 posterior means of z for every cell of ``data``."""
    module.eval()
    device = next(module.parameters()).device
    source = ordered_source(data, batch_size=batch_size, device=device, share=True)
    rows = source.own_rows() if data.backed else np.arange(data.n_cells)
    # Filled in place: keeping each minibatch's output tensor alive instead would pin small
    # blocks all over the heap and keep the freed buffers around them from being returned.
    means = np.empty((len(rows), module.n_latent), dtype=np.float32)
    filled = 0
    for _, loc, _ in encoded(module, source):
        means[filled : filled + len(loc)] = loc.cpu().numpy()
        filled += len(loc)
    if data.backed:  # each process encoded its share of the blocks
        return ddp.all_gather_rows(means, rows, data.n_cells)
    return means
