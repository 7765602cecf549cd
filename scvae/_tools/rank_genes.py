"""Marker genes of every group from the model, in scanpy's ``rank_genes_groups`` format.

Each group is compared with the rest of the cells (or with one reference group) as in
:func:`~scvae.differential_expression`; the result is written where and how
``sc.tl.rank_genes_groups`` writes its own, so that ``sc.pl.rank_genes_groups*`` and
``sc.get.rank_genes_groups_df`` read it unchanged. The rest's posterior is, in each compared
batch, the mixture of the other groups' posteriors there, each weighted by its number of
cells in that batch: every group is encoded once.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from anndata import AnnData

from .._model.scvae import SCVAE
from .differential import DEFAULT_PSEUDOCOUNT, expected_fdr, lfc_posterior
from .group_posterior import GroupPosterior, group_posterior
from .groups import (
    MIN_CELLS,
    as_list,
    check_options,
    group_labels,
    group_seed,
    shared_batches,
)
from .outputs import check_writable

logger = logging.getLogger(__name__)

__all__ = ["rank_genes_groups"]

#: The posterior quantile of the log2 fold change that ``scores`` holds.
SCORE_QUANTILE = 0.05


def rank_genes_groups(
    adata: AnnData,
    model: SCVAE,
    groupby: str,
    *,
    groups: list[str] | None = None,
    reference: str = "rest",
    n_genes: int | None = None,
    delta: float = 0.25,
    batch_correction: bool = True,
    pseudocount: float = DEFAULT_PSEUDOCOUNT,
    n_samples: int = 100,
    max_cells: int = 2000,
    layer: str | type | None = ...,
    key_added: str = "scvae_rank_genes_groups",
    seed: int = 0,
    batch_size: int = 256,
) -> None:
    """Rank the genes up in each group against the rest, for scanpy's plots and tables.

    Writes ``adata.uns[key_added]`` in the format of ``sc.tl.rank_genes_groups``, one column
    per group, genes ordered by ``scores``:

    - ``scores``: the 5 % posterior quantile of the log2 fold change of the group over the
      reference (with probability 0.95 the change is at least this: certain, large increases
      first);
    - ``logfoldchanges``: its posterior mean;
    - ``pvals``: *not a p-value*, the posterior probability that the gene is **not** up by
      more than ``delta`` in the group (its local false discovery rate);
    - ``pvals_adj``: the posterior expected false discovery rate of calling up every gene
      down to this one (select markers with ``pvals_adj <= 0.05``);
    - ``pts`` / ``pts_rest``: share of cells with a nonzero count in the group / reference.

    The posterior is that of :func:`~scvae.differential_expression` (same options). Nothing
    else in ``adata`` changes.

    Parameters
    ----------
    adata, model, groupby
        As for :func:`~scvae.differential_expression`.
    groups
        The groups to rank (default: every value of ``groupby``; each needs at least 10
        cells).
    reference
        ``"rest"`` (every other cell) or one value of ``groupby``.
    n_genes
        Genes kept per group (default: all).
    key_added
        Key of ``adata.uns`` written.

    Examples
    --------
    >>> scvae.rank_genes_groups(adata, model, "leiden")  # doctest: +SKIP
    >>> sc.pl.rank_genes_groups_dotplot(adata, key="scvae_rank_genes_groups")  # doctest: +SKIP
    >>> df = sc.get.rank_genes_groups_df(  # doctest: +SKIP
    ...     adata, group="3", key="scvae_rank_genes_groups"
    ... )
    """
    check_writable(adata, "rank_genes_groups", writes="adata.uns")
    check_options(
        delta=delta,
        fdr=0.05,
        pseudocount=pseudocount,
        n_samples=n_samples,
        max_cells=max_cells,
        batch_correction=batch_correction,
        seed=seed,
        batch_size=batch_size,
    )
    if not isinstance(key_added, str) or not key_added:
        raise ValueError(f"key_added must be a non-empty string, got {key_added!r}")
    labels = group_labels(adata, groupby)
    categories = _categories(adata, groupby, labels)
    groups = categories if groups is None else [str(g) for g in as_list(groups)]
    if not groups:
        raise ValueError("groups is empty: pass None (every group) or a list of groups")
    sizes = labels.value_counts()
    for group in [*groups, *([] if reference == "rest" else [str(reference)])]:
        if group not in sizes.index:
            raise ValueError(f"{group!r} is not a value of {groupby!r} (known: {categories[:20]})")
    small = [g for g in groups if sizes[g] < MIN_CELLS]
    if small:
        raise ValueError(
            f"groups {small} of {groupby!r} have fewer than {MIN_CELLS} cells: pass "
            "groups=[...] without them, or merge them"
        )
    if reference != "rest":
        reference = str(reference)
        if sizes[reference] < MIN_CELLS:
            raise ValueError(f"reference {reference!r} has fewer than {MIN_CELLS} cells")
        groups = [g for g in groups if g != reference]
        if not groups:
            raise ValueError(
                f"no group to rank against reference {reference!r}: groups holds only the "
                "reference"
            )
    if len(sizes) < 2:
        raise ValueError(
            f"{groupby!r} has a single value ({categories}): ranking needs at least two groups"
        )
    if n_genes is not None and (
        isinstance(n_genes, bool) or not isinstance(n_genes, int) or n_genes < 1
    ):
        raise ValueError(f"n_genes must be a positive integer or None, got {n_genes!r}")

    data = model.prepare(adata, layer=layer)
    rows = {g: np.flatnonzero((labels == g).to_numpy()) for g in sizes.index if pd.notna(g)}
    cache: dict[tuple[str, tuple | None], GroupPosterior] = {}

    def posterior(group: str, codes: list[int] | None) -> GroupPosterior:
        key = (group, None if codes is None else tuple(codes))
        if key not in cache:
            cache[key] = group_posterior(
                model,
                data,
                rows[group],
                batch_codes=codes,
                n_samples=n_samples,
                max_cells=max_cells,
                seed=group_seed(seed, rows[group]),
                batch_size=batch_size,
            )
        return cache[key]

    n_keep = data.n_genes if n_genes is None else min(n_genes, data.n_genes)
    columns: dict[str, dict[str, np.ndarray]] = {}
    pts, pts_rest = {}, {}
    for group in groups:
        others = [reference] if reference != "rest" else [g for g in rows if g != group]
        other_rows = np.concatenate([rows[g] for g in others])
        if len(other_rows) < MIN_CELLS:
            raise ValueError(f"the rest of the cells (not {group!r}) are fewer than {MIN_CELLS}")
        codes = shared_batches(model, data, rows[group], other_rows, batch_correction)
        first = posterior(group, codes)
        second = _pooled([posterior(g, codes) for g in others])
        depth = float(np.median(data.library[np.concatenate([rows[group], other_rows])]))
        effects, _, _ = lfc_posterior(first, second, depth=depth, pseudocount=pseudocount)
        not_up = np.clip(effects.cdf(delta), 0.0, 1.0)
        scores = effects.quantile(SCORE_QUANTILE)
        order = np.argsort(-scores, kind="stable")[:n_keep]
        columns[group] = {
            "names": np.asarray(data.gene_names, dtype=object)[order],
            "scores": scores[order].astype(np.float32),
            "logfoldchanges": effects.mean()[order].astype(np.float32),
            "pvals": not_up[order],
            "pvals_adj": expected_fdr(not_up)[order],
        }
        pts[group], pts_rest[group] = first.frac_nonzero, second.frac_nonzero
    adata.uns[key_added] = _scanpy_format(columns, groupby, reference, delta, pseudocount)
    index = pd.Index(data.gene_names)
    adata.uns[key_added]["pts"] = pd.DataFrame(pts, index=index)
    adata.uns[key_added]["pts_rest"] = pd.DataFrame(pts_rest, index=index)
    logger.info("added %r (adata.uns): %d groups against %s", key_added, len(groups), reference)


def _scanpy_format(
    columns: dict[str, dict[str, np.ndarray]], groupby: str, reference: str, delta, pseudocount
) -> dict:
    """The dict ``sc.tl.rank_genes_groups`` writes: params and one record array per field."""
    out = {
        "params": {
            "groupby": groupby,
            "reference": reference,
            "method": "scvae",
            "use_raw": False,
            "layer": None,
            "corr_method": "posterior expected FDR",
            "delta": float(delta),
            "pseudocount": float(pseudocount),
        }
    }
    names = list(columns)
    for field in ("names", "scores", "logfoldchanges", "pvals", "pvals_adj"):
        dtype = (
            "O"
            if field == "names"
            else ("float32" if field in ("scores", "logfoldchanges") else "float64")
        )
        out[field] = np.rec.fromarrays(
            [columns[g][field] for g in names], dtype=[(g, dtype) for g in names]
        )
    return out


def _pooled(parts: list[GroupPosterior]) -> GroupPosterior:
    """Several groups as one: in each batch, each part weighted by its cells there."""
    if len(parts) == 1:
        return parts[0]
    cells = np.stack([p.batch_cells for p in parts]).astype(float)  # (parts, batches)
    in_batch = cells / np.maximum(cells.sum(axis=0, keepdims=True), 1.0)
    batch_draws = sum(
        w[None, :, None] * p.batch_draws for w, p in zip(in_batch, parts, strict=True)
    )
    overall = np.array([p.n_cells for p in parts], dtype=float)
    overall /= overall.sum()

    def mix(field: str) -> np.ndarray:
        return sum(w * getattr(p, field) for w, p in zip(overall, parts, strict=True))

    n_cells = int(sum(p.n_cells for p in parts))
    return GroupPosterior(
        batch_draws, cells.sum(axis=0).astype(int), mix("raw_mean"), mix("frac_nonzero"), n_cells
    )


def _categories(adata: AnnData, groupby: str, labels: pd.Series) -> list[str]:
    """The groups in the column's own order (categories as ordered), as strings."""
    column = adata.obs[groupby]
    if isinstance(column.dtype, pd.CategoricalDtype):
        present = set(labels.dropna())
        return [str(c) for c in column.cat.categories if str(c) in present]
    return sorted(set(labels.dropna()))
