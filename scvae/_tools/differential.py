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

import numpy as np
import pandas as pd
from anndata import AnnData

from .._model.scvae import SCVAE
from .group_posterior import GroupPosterior, batch_weights, group_posterior
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

#: Expected counts per cell (at the median depth) added to both means before their ratio:
#: below about 0.01 counts per cell in both groups a gene's |lfc| stays under 0.25.
DEFAULT_PSEUDOCOUNT = 0.05

__all__ = ["DEFAULT_PSEUDOCOUNT", "compare_groups", "differential_expression"]


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
