"""The batch-alignment term of the training objective: a maximum mean discrepancy on z.

With several batches and ``alignment_weight > 0`` the objective also asks the batches' latent
distributions to match, as in trVAE: minus ``alignment_weight`` times the MMD between the latent
samples of each batch's cells and of the other cells of the minibatch, per cell. The decoder
given the batch could explain a batch effect, but nothing in the ELBO alone makes cells of one
type in two batches share a latent region; with a strong batch effect they keep apart. A query
mapping (``scvae.fit(query, reference=...)``) also aligns its cells with points drawn from the
reference's aggregate posterior (the module's ``anchors``). The reported ELBO leaves this term out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["MMD_KERNEL_WIDTHS", "alignment_mmd", "batch_mmd"]


#: Widths of the Gaussian kernels of :func:`batch_mmd`: each kernel is ``exp(-d^2 / (w m))``
#: with ``m`` the median squared distance between the minibatch's latent points, so that the
#: kernels follow the latent space's own scale (a mixture prior in 50 dimensions spreads the
#: points further than a standard normal in 10; fixed bandwidths then see no pair as close).
MMD_KERNEL_WIDTHS = (0.0625, 0.125, 0.25, 0.5, 1.0, 2.0, 4.0)


def batch_mmd(
    z: torch.Tensor, batch_index: torch.Tensor, n_batches: int | None = None
) -> torch.Tensor:
    """Mean over the batches of a minibatch of the squared MMD between the latent points of
    the batch's cells and those of the other cells (Gaussian kernels of widths
    :data:`MMD_KERNEL_WIDTHS` times the median squared distance of the minibatch's points,
    which is held constant in the gradient; batches with fewer than 2 cells, or 2 other cells,
    left out).

    Computed for all batches at once from one kernel matrix, without a loop over batches.

    Examples
    --------
    >>> z = torch.randn(200, 3)
    >>> same = batch_mmd(z, torch.arange(200) % 2)
    >>> apart = batch_mmd(z + 3 * (torch.arange(200) % 2)[:, None], torch.arange(200) % 2)
    >>> bool(apart > 10 * same)
    True
    """
    squared = torch.cdist(z, z).square()
    scale = squared.detach().median().clamp(min=1e-6)
    kernel = sum(torch.exp(-squared / (w * scale)) for w in MMD_KERNEL_WIDTHS)
    one_hot = F.one_hot(batch_index, n_batches or -1).to(z.dtype)  # (cells, batches)
    n = one_hot.sum(0)
    rest = z.shape[0] - n
    within = (one_hot * (kernel @ one_hot)).sum(0)  # sum over pairs inside each batch
    touching = one_hot.T @ kernel.sum(1)  # pairs with one cell in the batch
    across = touching - within
    outside = kernel.sum() - within - 2.0 * across
    usable = (n >= 2) & (rest >= 2)
    n, rest = n.clamp(min=1), rest.clamp(min=1)
    mmd = within / n.square() + outside / rest.square() - 2.0 * across / (n * rest)
    return (mmd * usable).sum() / usable.sum().clamp(min=1)


def alignment_mmd(
    z: torch.Tensor, batch_index: torch.Tensor, n_codes: int, anchors: torch.Tensor | None = None
) -> torch.Tensor:
    """The MMD the objective penalises for one minibatch: :func:`batch_mmd` over its batches
    (``n_codes`` batch codes, the reference's and a query's), plus, with ``anchors`` (a query
    mapping), the MMD between the minibatch and as many anchors drawn at random.

    Examples
    --------
    >>> z = torch.randn(100, 4)
    >>> batches = torch.arange(100) % 2
    >>> bool(alignment_mmd(z, batches, 2, anchors=z + 5) > alignment_mmd(z, batches, 2))
    True
    """
    mmd = batch_mmd(z, batch_index, n_codes)
    if anchors is None:
        return mmd
    n_cells = z.shape[0]
    picked = anchors[torch.randint(len(anchors), (n_cells,), device=z.device)]
    sides = (torch.arange(2 * n_cells, device=z.device) >= n_cells).long()
    return mmd + batch_mmd(torch.cat([z, picked]), sides, 2)
