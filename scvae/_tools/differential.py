"""Differential expression from the generative model: a posterior over each group's mean.

The quantity tested is, per gene, the log2 fold change between the *population* mean
expression of two groups of cells, each cell's expression being the decoder's expected share
of its counts (library size 1) at its latent position, in its own batch, corrected by the
group's observed over expected counts. With batch correction the means are taken within
each batch both groups have cells in and then averaged over those batches (a stratified
comparison: the groups are compared batch by batch, each batch weighted by ``n1 n2 / (n1 +
n2)`` for the groups' cells there). Its posterior combines the two uncertainties a
comparison of groups has: where each cell lies (draws of z from the encoder, which reads
missing entries as missing) and which cells the groups happened to contain (a Bayesian
bootstrap over the cells: each draw weighs the cells with Dirichlet(1, ..., 1) weights,
Rubin 1981), with a Gamma(1/3) pseudo-count beside each group's counts of a gene (the
neutral prior of a Poisson rate, Kerman 2011). A draw of the group means gives one draw of
the fold change; ``proba_de`` is the share of draws with ``|lfc| > delta``, and genes are
selected at a posterior expected false discovery rate (Newton et al. 2004): the largest set
whose mean ``1 - proba_de`` is at most ``fdr``.

Means are reported as expected counts per cell at the median depth of the compared cells,
and the fold change is of ``mean + pseudocount`` in those units, so that a gene at a tiny
fraction of a count per cell in both groups has a fold change near zero whatever the ratio
of its means (a ratio of two near-zero numbers is not a difference a biologist can use).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from anndata import AnnData

from .._batches.rows import MinibatchSource
from .._data.counts import CountData
from .._model.encode import encoded
from .._model.scvae import SCVAE
from .._utils.device import seeded
from .groups import (
    MIN_CELLS,
    as_list,
    check_options,
    group_labels,
    group_rows,
    group_seed,
    shared_batches,
)
from .shrinkage import ShrunkEffects, shrink

logger = logging.getLogger(__name__)

#: Rows x genes of one forward pass over several posterior draws (memory: 4 bytes each).
DRAW_ROWS = 4_000_000
#: Shape of the Gamma pseudo-count added to a group's counts of a gene (Kerman 2011).
NEUTRAL_SHAPE = 1.0 / 3.0
#: Expected counts per cell (at the median depth) added to both means before their ratio:
#: below about 0.01 counts per cell in both groups a gene's |lfc| stays under 0.25.
DEFAULT_PSEUDOCOUNT = 0.05

__all__ = [
    "DEFAULT_PSEUDOCOUNT",
    "GroupPosterior",
    "compare_groups",
    "differential_expression",
    "group_posterior",
]


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


def compare_groups(
    first: GroupPosterior,
    second: GroupPosterior,
    *,
    depth: float,
    delta: float,
    fdr: float,
    pseudocount: float,
    gene_names: list[str],
) -> pd.DataFrame:
    """The table of :func:`differential_expression` from two groups' posteriors."""
    posterior, mean1, mean2 = lfc_posterior(first, second, depth=depth, pseudocount=pseudocount)
    proba_de = np.clip(posterior.proba_beyond(delta), 0.0, 1.0)
    lfdr = 1.0 - proba_de
    table = pd.DataFrame(
        {
            "lfc_mean": posterior.mean(),
            "lfc_median": posterior.quantile(0.5),
            "lfc_std": posterior.sd(),
            "proba_de": proba_de,
            "proba_not_de": lfdr,
            "proba_up": np.clip(1.0 - posterior.cdf(0.0), 0.0, 1.0),
            "bayes_factor": bayes_factor(proba_de),
            "expected_fdr": expected_fdr(lfdr),
            "mean1": mean1,
            "mean2": mean2,
            "raw_mean1": first.raw_mean,
            "raw_mean2": second.raw_mean,
            "frac_nonzero1": first.frac_nonzero,
            "frac_nonzero2": second.frac_nonzero,
        },
        index=pd.Index(gene_names, name="gene"),
    )
    table.insert(table.columns.get_loc("expected_fdr") + 1, "is_de", table["expected_fdr"] <= fdr)
    order = np.lexsort((-table["lfc_mean"].abs().to_numpy(), lfdr))
    return table.iloc[order]


def lfc_posterior(
    first: GroupPosterior, second: GroupPosterior, *, depth: float, pseudocount: float
) -> tuple[ShrunkEffects, np.ndarray, np.ndarray]:
    """The shrunk posterior of each gene's log2 fold change of ``first`` over ``second``,
    and the two groups' posterior mean expression (counts per cell at ``depth``)."""
    weights = batch_weights(first.batch_cells, second.batch_cells)
    mean1, mean2 = first.draws(weights) * depth, second.draws(weights) * depth
    lfc = np.log2(mean1 + pseudocount) - np.log2(mean2 + pseudocount)
    # The draws give each gene's estimate and its uncertainty; the prior shared by all genes
    # (most of which do not change) turns them into posterior probabilities.
    posterior = shrink(lfc.mean(axis=0), lfc.std(axis=0))
    return posterior, mean1.mean(axis=0), mean2.mean(axis=0)


def bayes_factor(proba: np.ndarray) -> np.ndarray:
    """Natural log of ``proba / (1 - proba)``, kept within ``[1e-12, 1 - 1e-12]``.

    With prior odds 1 this is the log Bayes factor of the event against its complement.

    Examples
    --------
    >>> bayes_factor(np.array([0.5, 0.9])).round(2)
    array([0. , 2.2])
    """
    p = np.clip(proba, 1e-12, 1.0 - 1e-12)
    return np.log(p) - np.log1p(-p)


def expected_fdr(lfdr: np.ndarray) -> np.ndarray:
    """Per gene, the posterior expected false discovery rate of selecting every gene whose
    local false discovery rate (``1 - proba_de``) is at most its own.

    Selecting the genes with ``expected_fdr <= fdr`` is the largest selection whose
    expected share of false discoveries is at most ``fdr``.

    Examples
    --------
    >>> expected_fdr(np.array([0.0, 0.2, 0.1, 0.9]))
    array([0.  , 0.1 , 0.05, 0.3 ])
    """
    order = np.argsort(lfdr, kind="stable")
    sorted_lfdr = lfdr[order]
    running = np.cumsum(sorted_lfdr) / np.arange(1, len(lfdr) + 1)
    # Ties share the rate of the whole tie (a selection takes all of them or none).
    last_of_tie = np.searchsorted(sorted_lfdr, sorted_lfdr, side="right") - 1
    out = np.empty_like(running)
    out[order] = running[last_of_tie]
    return out


def differential_expression(
    adata: AnnData,
    model: SCVAE,
    groupby: str,
    group1: str | list[str],
    group2: str | list[str] | None = None,
    *,
    delta: float = 0.25,
    fdr: float = 0.05,
    batch_correction: bool = True,
    pseudocount: float = DEFAULT_PSEUDOCOUNT,
    n_samples: int = 100,
    max_cells: int = 2000,
    layer: str | type | None = ...,
    seed: int = 0,
    batch_size: int = 256,
) -> pd.DataFrame:
    """Genes whose mean expression differs between two groups of cells, from the model.

    For each gene, the posterior of the log2 fold change between the two groups' population
    mean expression (the module docstring of ``scvae._tools.differential`` and
    ``docs/differential_expression.md`` say how it is computed), and the genes selected at
    a posterior expected false discovery rate. ``adata`` is not modified.

    Parameters
    ----------
    adata
        Cells with the model's genes (matched by name) and the ``groupby`` column.
    model
        A fitted model.
    groupby
        Column of ``adata.obs`` that holds the groups.
    group1, group2
        One value (or a list of values) of ``groupby`` each; ``group2=None``: every other
        cell with a value ("the rest"). Cells with no value (NaN) are in neither group.
        Each group needs at least 10 cells.
    delta
        Smallest absolute log2 fold change that counts as a difference (0.25: 19 %; 0: any).
    fdr
        Expected false discovery rate of the genes flagged ``is_de``.
    batch_correction
        Compare the groups within each batch they both have cells in and average over
        those batches, so that a difference in how the groups spread over batches is not
        reported as a difference between the groups (cells of a batch the other group
        lacks are left out). ``False``: all cells of each group as one, as measured.
    pseudocount
        Added to both means (expected counts per cell at the median depth) before the ratio.
    n_samples
        Posterior draws (at least 10).
    max_cells
        At most this many cells per group (a random subset) enter the draws.
    layer
        Where the counts are; default: as for the fit.
    seed
        Seed of the draws and the subset; the caller's random state is restored.
    batch_size
        Cells per forward pass.

    Returns
    -------
    One row per gene, the most certain first: ``lfc_mean``, ``lfc_median``, ``lfc_std``
    (log2 fold change of group1 over group2), ``proba_de`` (posterior probability that
    ``|lfc| > delta``), ``proba_not_de``, ``proba_up`` (that ``lfc > 0``), ``bayes_factor``
    (natural log), ``expected_fdr``, ``is_de``, ``mean1``/``mean2`` (expected counts per
    cell at the median depth, batch-corrected), ``raw_mean1``/``raw_mean2`` (observed mean
    counts), ``frac_nonzero1``/``frac_nonzero2``.

    Examples
    --------
    >>> de = scvae.differential_expression(  # doctest: +SKIP
    ...     adata, model, groupby="cell_type", group1="CD19+ B", group2="CD14+ Monocyte"
    ... )
    >>> de[de.is_de & (de.lfc_mean > 0)].head()  # doctest: +SKIP
    """
    check_options(
        delta=delta,
        fdr=fdr,
        pseudocount=pseudocount,
        n_samples=n_samples,
        max_cells=max_cells,
        batch_correction=batch_correction,
        seed=seed,
        batch_size=batch_size,
    )
    labels = group_labels(adata, groupby)
    rows1 = group_rows(labels, group1, groupby, "group1")
    if group2 is None:
        rest = labels.notna().to_numpy() & ~labels.isin(labels.iloc[rows1].unique()).to_numpy()
        rows2 = np.flatnonzero(rest)
        if len(rows2) < MIN_CELLS:
            raise ValueError(
                f"the rest of the cells (not in group1) are {len(rows2)}: at least "
                f"{MIN_CELLS} are needed"
            )
    else:
        rows2 = group_rows(labels, group2, groupby, "group2")
        if {str(g) for g in as_list(group1)} & {str(g) for g in as_list(group2)}:
            raise ValueError(
                f"group1 ({group1!r}) and group2 ({group2!r}) share values of {groupby!r}: "
                "the groups must be different cells"
            )
    data = model.prepare(adata, layer=layer)
    codes = shared_batches(model, data, rows1, rows2, batch_correction)
    depth = float(np.median(data.library[np.concatenate([rows1, rows2])]))
    options = {"n_samples": n_samples, "max_cells": max_cells, "batch_size": batch_size}
    first = group_posterior(
        model, data, rows1, batch_codes=codes, seed=group_seed(seed, rows1), **options
    )
    second = group_posterior(
        model, data, rows2, batch_codes=codes, seed=group_seed(seed, rows2), **options
    )
    return compare_groups(
        first,
        second,
        depth=depth,
        delta=delta,
        fdr=fdr,
        pseudocount=pseudocount,
        gene_names=data.gene_names,
    )
