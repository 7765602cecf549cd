"""One group's posterior mean expression per gene, batch by batch: the draws that
:func:`~scvae.differential_expression` and :func:`~scvae.rank_genes_groups` compare.

Each draw combines where each cell lies (a draw of z from the encoder, which reads missing
entries as missing), which cells the group happened to contain (a Bayesian bootstrap over
the cells, Rubin 1981) and what the counts say (the group's observed over expected counts,
with a Gamma(1/3) pseudo-count, Kerman 2011). ``docs/differential_expression.md`` says why.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .._batches.rows import MinibatchSource
from .._data.counts import CountData
from .._model.encode import encoded
from .._model.scvae import SCVAE
from .._utils.device import seeded

#: Rows x genes of one forward pass over several posterior draws (memory: 4 bytes each).
DRAW_ROWS = 4_000_000
#: Shape of the Gamma pseudo-count added to a group's counts of a gene (Kerman 2011).
NEUTRAL_SHAPE = 1.0 / 3.0

__all__ = ["GroupPosterior", "batch_weights", "group_posterior"]


@dataclass(frozen=True)
class GroupPosterior:
    """Posterior draws of one group's mean expression, and its observed summaries.

    Attributes
    ----------
    batch_draws
        ``(n_samples, batches, genes)`` draws of the group's mean expression share per gene
        among its cells of each compared batch (one "batch" of all cells without batch
        correction).
    batch_cells
        The group's cells in each compared batch (all of them, also when fewer were drawn).
    raw_mean
        Observed mean count per cell (over the cells where the gene is observed).
    frac_nonzero
        Share of the group's cells (where observed) with a nonzero count.
    n_cells
        Cells in the group (all of them, also when fewer were drawn for the posterior).
    """

    batch_draws: np.ndarray
    batch_cells: np.ndarray
    raw_mean: np.ndarray
    frac_nonzero: np.ndarray
    n_cells: int

    def draws(self, weights: np.ndarray) -> np.ndarray:
        """``(n_samples, genes)`` draws of the batch-corrected mean: the batches' means
        averaged with ``weights`` (one per compared batch, summing to 1)."""
        return np.einsum("s,dsg->dg", weights, self.batch_draws)


def batch_weights(cells1: np.ndarray, cells2: np.ndarray) -> np.ndarray:
    """How much each compared batch counts in a comparison of two groups with ``cells1`` and
    ``cells2`` cells in it: ``n1 n2 / (n1 + n2)``, normalised (as in the Mantel-Haenszel
    estimate of a stratified effect). A batch where one group has a cell or two counts about
    as much as that many cells, not as much as a batch where both groups are large.

    Examples
    --------
    >>> batch_weights(np.array([64, 1]), np.array([500, 500])).round(3)
    array([0.983, 0.017])
    """
    cells1, cells2 = np.asarray(cells1, float), np.asarray(cells2, float)
    both = cells1 + cells2
    weights = np.divide(cells1 * cells2, both, out=np.zeros_like(both), where=both > 0)
    return weights / weights.sum()


def group_posterior(
    model: SCVAE,
    data: CountData,
    rows: np.ndarray,
    *,
    batch_codes: list[int] | None,
    n_samples: int,
    max_cells: int,
    seed: int,
    batch_size: int = 256,
) -> GroupPosterior:
    """Posterior draws of the mean expression of the cells ``rows`` of ``data``, per batch.

    ``batch_codes``: the batches compared (those both groups have cells in); the group's
    cells in other batches are left out. ``None``: all the group's cells as one stratum (no
    correction). At most ``max_cells`` cells (a random subset, drawn in each batch in
    proportion to its cells) enter the draws; the observed summaries use all of them.
    """
    rows = np.asarray(rows)
    strata = _strata(data, rows, batch_codes)
    rng = np.random.default_rng(seed)
    drawn = _subset(strata, max_cells, rng)
    module = model.module.eval()
    shape = (n_samples, len(strata), data.n_genes)
    decoded, counts, expected = np.zeros(shape), np.zeros(shape), np.zeros(shape)
    totals = np.zeros((n_samples, len(strata), 1))
    raw_mean, frac_nonzero = _observed_summaries(data, rows)
    batch_cells = np.array([len(s) for s in strata])
    if len(drawn) == 0:  # a part of "the rest" with no cell in the compared batches
        return GroupPosterior(np.zeros(shape), batch_cells, raw_mean, frac_nonzero, len(rows))
    codes = None if batch_codes is None else torch.as_tensor(batch_codes)
    source = MinibatchSource(data, drawn, batch_size=batch_size, device=model.device)
    with torch.no_grad(), seeded(seed, model.device):
        for b, loc, scale in encoded(module, source):
            weights = torch.distributions.Exponential(torch.ones(n_samples, len(loc))).sample()
            weights = weights.to(loc)
            # (batches, cells): which compared batch each cell was measured in.
            if codes is None:
                member = torch.ones(1, len(loc), dtype=loc.dtype, device=loc.device)
            else:
                member = (b.batch_index[None, :] == codes.to(b.batch_index)[:, None]).to(loc)
            x = b.x if b.observed is None else b.x * b.observed
            n, genes = b.x.shape
            # Several draws in one forward pass: (draws x cells) rows.
            step = max(1, min(n_samples, DRAW_ROWS // max(n * genes, 1)))
            for first in range(0, n_samples, step):
                k_draws = min(step, n_samples - first)
                part = slice(first, first + k_draws)
                eps = torch.randn((k_draws, *loc.shape), dtype=loc.dtype, device=loc.device)
                z = (loc + scale * eps).reshape(k_draws * n, -1)
                covariates = None if b.covariates is None else b.covariates.repeat(k_draws, 1)
                ones = torch.ones(k_draws * n, dtype=loc.dtype, device=loc.device)
                batches = b.batch_index.repeat(k_draws)
                share = module.decode(z, ones, batches, covariates=covariates).mean
                share = share.reshape(k_draws, n, genes)
                fitted = share * b.library[:, None]
                if b.observed is not None:
                    # The observed library is a sum over the observed genes alone: their
                    # shares are renormalised over them, as in training.
                    observed = b.observed.to(share)
                    held = (share * observed).sum(-1, keepdim=True).clamp_min(1e-12)
                    fitted = fitted * observed / held
                here = weights[part, None, :] * member[None]  # (draws, batches, cells)
                decoded[part] += _weighted(here, share)
                counts[part] += torch.einsum("dsc,cg->dsg", here, x).double().cpu().numpy()
                expected[part] += _weighted(here, fitted)
                totals[part] += here.sum(dim=2, keepdim=True).double().cpu().numpy()
    # In each batch, the model's mean over the group's cells measured there, times their
    # observed over expected counts (same cells, same weights): where the decoder is off for
    # a gene the counts correct it, and their noise enters the posterior. Each cell is
    # decoded in its own batch: decoded in another one, the condition a batch is rich in
    # would partly be removed with the batch (the decoder learns it from both).
    # The bootstrap over cells holds the counts' noise, except where there are none to vary:
    # a gene with no count in a small group had a mean of exactly 0 in every draw, a certain
    # change. A Gamma(1/3) pseudo-count (the neutral prior of a Poisson rate, Kerman 2011)
    # gives such a gene the posterior of "no count in so many expected"; beside a few counts
    # or more it adds little.
    noisy = counts + rng.gamma(NEUTRAL_SHAPE, size=shape)
    ratio = np.divide(noisy, expected, out=np.ones(shape), where=expected > 0)
    batch_draws = np.divide(decoded, totals, out=np.zeros(shape), where=totals > 0) * ratio
    return GroupPosterior(batch_draws, batch_cells, raw_mean, frac_nonzero, len(rows))


def _strata(data: CountData, rows: np.ndarray, batch_codes: list[int] | None) -> list[np.ndarray]:
    """The rows of each compared batch (all rows as one without batch correction)."""
    if batch_codes is None:
        return [rows]
    batch = data.batch_index[rows]
    return [rows[batch == code] for code in batch_codes]


def _subset(strata: list[np.ndarray], max_cells: int, rng: np.random.Generator) -> np.ndarray:
    """At most about ``max_cells`` rows, each batch in proportion, each keeping a cell."""
    total = sum(len(s) for s in strata)
    if total > max_cells:
        strata = [
            rng.choice(s, max(1, round(max_cells * len(s) / total)), replace=False)
            for s in strata
            if len(s)
        ]
    return np.sort(np.concatenate(strata)).astype(np.int64)


def _weighted(weights: torch.Tensor, values: torch.Tensor) -> np.ndarray:
    """Per draw and batch, the weighted sum over cells: ``(draws, batches, cells) x (draws,
    cells, genes)``."""
    return torch.einsum("dsc,dcg->dsg", weights, values).double().cpu().numpy()


def _observed_summaries(data: CountData, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean count and share of nonzero counts per gene over the observed entries of ``rows``."""
    counts = data.counts[rows]
    n_observed = np.full(data.n_genes, float(len(rows)))
    if data.missing is not None:
        n_observed -= np.asarray(data.missing[rows].sum(axis=0)).ravel()
    n_observed = np.maximum(n_observed, 1.0)
    total = np.asarray(counts.sum(axis=0)).ravel()
    nonzero = np.asarray((counts > 0).sum(axis=0)).ravel()
    return total / n_observed, nonzero / n_observed
