"""Posterior predictive checks: do counts drawn from the model look like the data?"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from anndata import AnnData

from .._batches.rows import MinibatchSource
from .._model.encode import encoded
from .._model.scvae import check_model
from .._utils.device import seeded
from .._utils.options import check_flag, check_int, check_seed
from ..metrics import two_sample_auc
from .generate import generate

if TYPE_CHECKING:
    from .._model.scvae import SCVAE

logger = logging.getLogger(__name__)

__all__ = [
    "PosteriorPredictiveCheck",
    "compare_counts",
    "gene_statistics",
    "posterior_predictive_check",
]

KINDS = ("posterior", "generate")
#: Fewest cells per side the two-sample classifier (:func:`scvae.metrics.two_sample_auc`) takes.
MIN_CLASSIFIER_CELLS = 10


@dataclass
class PosteriorPredictiveCheck:
    """Per-gene statistics of observed and model-drawn cells, and how well they agree.

    Attributes
    ----------
    genes
        One row per gene: ``mean``, ``variance`` and ``zero_fraction``, each ``_observed``
        and ``_generated``.
    summary
        ``r_mean`` and ``r_variance`` (Pearson r on the log1p scale), ``r_zero_fraction``
        (Pearson r), and ``auc``: the cross-validated ROC AUC of a classifier telling drawn
        from observed cells (0.5: indistinguishable; ``nan`` when not computed).
    kind
        ``"posterior"`` (each observed cell redrawn through its own posterior) or
        ``"generate"`` (new cells of the same batch and type composition).
    """

    genes: pd.DataFrame
    summary: dict[str, float] = field(default_factory=dict)
    kind: str = "posterior"

    def __repr__(self) -> str:
        stats = ", ".join(f"{k}={v:.3f}" for k, v in self.summary.items())
        return f"PosteriorPredictiveCheck({self.kind}, {len(self.genes)} genes: {stats})"


def gene_statistics(counts, missing=None) -> pd.DataFrame:
    """Per-gene mean, variance (ddof=1) and fraction of zeros over the observed entries.

    Parameters
    ----------
    counts
        ``(cells, genes)`` dense or sparse counts.
    missing
        Optional boolean ``(cells, genes)`` array or sparse matrix, True where unobserved;
        those entries are left out of every statistic.

    Examples
    --------
    >>> stats = gene_statistics(np.array([[0, 2], [2, 0], [1, 0]]))
    >>> stats["zero_fraction"].tolist()  # doctest: +ELLIPSIS
    [0.333..., 0.666...]
    """
    counts = sp.csr_matrix(counts, dtype=np.float64)
    n = np.full(counts.shape[1], float(counts.shape[0]))
    if missing is not None:
        missing = sp.csr_matrix(missing, dtype=bool)
        if missing.shape != counts.shape:
            raise ValueError(f"missing has shape {missing.shape}, counts {counts.shape}")
        counts = (counts - counts.multiply(missing)).tocsr()
        n -= np.asarray(missing.sum(0), dtype=np.float64).ravel()
    counts.eliminate_zeros()
    total = np.asarray(counts.sum(0)).ravel()
    squares = np.asarray(counts.multiply(counts).sum(0)).ravel()
    nonzero = np.bincount(counts.indices, minlength=counts.shape[1]).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total / n
        variance = (squares - n * mean**2) / (n - 1)
        zero_fraction = 1.0 - nonzero / n
    return pd.DataFrame(
        {"mean": mean, "variance": np.maximum(variance, 0.0), "zero_fraction": zero_fraction}
    )


def posterior_predictive_check(
    model: SCVAE,
    adata: AnnData,
    *,
    kind: str = "posterior",
    layer: str | type | None = ...,
    labels_key: str | None = None,
    classifier: bool = True,
    max_cells: int = 5000,
    seed: int = 0,
) -> PosteriorPredictiveCheck:
    """Compare ``adata``'s counts with counts drawn from the model.

    Parameters
    ----------
    model
        A fitted model.
    adata
        Observed cells (e.g. held-out cells), raw counts as at fit time. Not modified.
    kind
        ``"posterior"``: each cell of ``adata`` is redrawn from its own posterior
        (z ~ q(z | x), counts ~ p(x | z) at the cell's library size and batch), the classic
        posterior predictive check. ``"generate"``: as many *new* cells from
        :func:`scvae.generate`, with the batch composition of ``adata`` (and its cell-type
        composition, per batch, when ``labels_key`` names its types column).
    layer
        Where the counts are (default: as at fit time).
    labels_key
        For ``kind="generate"``: column of ``adata.obs`` with the model's cell types.
    classifier
        Also compute the classifier two-sample AUC (:func:`scvae.metrics.two_sample_auc`).
    max_cells
        Cells per side used by the classifier.
    seed
        Same seed, same draws.

    Returns
    -------
    :class:`PosteriorPredictiveCheck`; plot it with :func:`scvae.pl.ppc`.

    Examples
    --------
    >>> ppc = scvae.posterior_predictive_check(model, test_adata)  # doctest: +SKIP
    >>> ppc.summary["r_mean"], ppc.summary["auc"]  # doctest: +SKIP
    >>> scvae.pl.ppc(ppc)  # doctest: +SKIP
    """
    _check_ppc_options(model, adata, kind, labels_key, classifier, max_cells, seed)
    data = model.prepare(adata, layer=layer)
    if kind == "posterior":
        drawn = _redraw(model, data, seed)
    else:
        drawn = _generate_like(model, adata, data, labels_key, seed)
    if classifier and data.missing is not None:
        logger.warning("the two-sample classifier reads missing entries as zeros")
    return compare_counts(
        data.counts,
        drawn,
        missing=data.missing,
        drawn_missing=data.missing if kind == "posterior" else None,
        gene_names=model.gene_names,
        classifier=classifier,
        max_cells=max_cells,
        seed=seed,
        kind=kind,
    )


def _check_ppc_options(model, adata, kind, labels_key, classifier, max_cells, seed) -> None:
    """Every option of :func:`posterior_predictive_check`, before any cell is drawn."""
    check_model(model)
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if labels_key is not None and kind != "generate":
        raise ValueError(
            f"labels_key={labels_key!r} is used by kind='generate' only (kind='posterior' "
            "redraws each cell as it is): drop it, or pass kind='generate'"
        )
    if labels_key is not None and not isinstance(labels_key, str):
        raise TypeError(f"labels_key must be an obs column name, got {labels_key!r}")
    check_flag("classifier", classifier)
    check_int("max_cells", max_cells, minimum=MIN_CLASSIFIER_CELLS)
    check_seed(seed)
    if classifier and isinstance(adata, AnnData) and adata.n_obs < MIN_CLASSIFIER_CELLS:
        raise ValueError(
            f"adata has {adata.n_obs} cells: the two-sample classifier needs at least "
            f"{MIN_CLASSIFIER_CELLS}; pass classifier=False for the per-gene statistics only"
        )


def compare_counts(
    observed,
    drawn,
    *,
    missing=None,
    drawn_missing=None,
    gene_names: list[str] | None = None,
    classifier: bool = True,
    max_cells: int = 5000,
    seed: int = 0,
    kind: str = "posterior",
) -> PosteriorPredictiveCheck:
    """Per-gene statistics and two-sample AUC of any two count matrices with the same genes.

    What :func:`posterior_predictive_check` reports, for counts drawn by other means (e.g.
    another model's posterior predictive samples, in a benchmark). ``missing`` and
    ``drawn_missing`` mark entries left out of each side's statistics.
    """

    observed_stats = gene_statistics(observed, missing)
    drawn_stats = gene_statistics(drawn, drawn_missing)
    index = None if gene_names is None else pd.Index(gene_names, name="gene")
    genes = pd.DataFrame(index=index)
    for name in ("mean", "variance", "zero_fraction"):
        genes[f"{name}_observed"] = observed_stats[name].to_numpy()
        genes[f"{name}_generated"] = drawn_stats[name].to_numpy()
    summary = {
        "r_mean": _pearson(np.log1p(genes.mean_observed), np.log1p(genes.mean_generated)),
        "r_variance": _pearson(
            np.log1p(genes.variance_observed), np.log1p(genes.variance_generated)
        ),
        "r_zero_fraction": _pearson(genes.zero_fraction_observed, genes.zero_fraction_generated),
        "auc": two_sample_auc(observed, drawn, max_cells=max_cells, seed=seed)
        if classifier
        else np.nan,
    }
    return PosteriorPredictiveCheck(genes=genes, summary=summary, kind=kind)


@torch.no_grad()
def _redraw(model: SCVAE, data, seed: int) -> sp.csr_matrix:
    module = model.module.eval()
    parts = []
    with seeded(seed, model.device):
        source = MinibatchSource(data, batch_size=1024, device=model.device)
        for b, loc, scale in encoded(module, source):
            z = loc + scale * torch.randn_like(loc)
            # The library of a cell with missing entries is that of its observed genes.
            counts = module.decode(
                z, b.library, b.batch_index, b.observed, covariates=b.covariates
            ).sample()
            parts.append(sp.csr_matrix(counts.cpu().numpy()))
    return sp.vstack(parts, format="csr")


def _generate_like(model: SCVAE, adata: AnnData, data, labels_key: str | None, seed: int):
    """New cells with the batch (and type) composition of ``adata``, in its order."""

    if labels_key is not None and labels_key not in adata.obs:
        raise KeyError(f"labels_key {labels_key!r} is not a column of adata.obs")
    batches = (
        np.asarray(data.batch_categories, dtype=object)[data.batch_index]
        if data.batch_categories
        else np.full(data.n_cells, None, dtype=object)
    )
    types = np.full(data.n_cells, None, dtype=object)
    if labels_key is not None:
        column = adata.obs[labels_key]
        known = column.notna().to_numpy()
        types[known] = column[known].astype(str).to_numpy()
    parts, order = [], []
    for i, (b, t) in enumerate(dict.fromkeys(zip(batches, types, strict=True))):
        rows = np.flatnonzero((batches == b) & (types == t))
        new = generate(model, len(rows), batch=b, cell_type=t, seed=seed + i)
        parts.append(new.X)
        order.append(rows)
    out = sp.vstack(parts, format="csr")
    return out[np.argsort(np.concatenate(order))]


def _pearson(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    keep = np.isfinite(a) & np.isfinite(b)
    return float(np.corrcoef(a[keep], b[keep])[0, 1])
