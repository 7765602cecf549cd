"""Missing values: imputation from the posterior predictive, and the baselines.

``impute`` fills only the missing entries (NaN, or False in a mask layer) and copies every
observed value unchanged; ``denoise`` (``denoise.py``) is a different thing (the model's
normalised expression for every entry) and lives in its own function so that the two are not
confused. The draws behind the imputed values and intervals are in ``predictive.py``.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .._data.checks import align_genes
from .._data.counts import CountData
from .._data.memory import counts_matrix, prepare_counts
from .._model.scvae import SCVAE, check_model
from .._utils.options import check_int, check_key, check_number, check_seed
from .outputs import check_outputs_not_read, check_writable, log_written
from .predictive import posterior_predictive

logger = logging.getLogger(__name__)

__all__ = ["impute"]

METHODS = ("model", "mean", "random")
POINTS = ("mean", "median")


def impute(
    adata: AnnData,
    model: SCVAE | None = None,
    *,
    method: str = "model",
    layer: str | type | None = ...,
    mask_layer: str | type | None = ...,
    interval: float | None = None,
    point: str = "mean",
    n_samples: int = 200,
    key_added: str = "scvae",
    seed: int = 0,
    batch_size: int = 256,
    genes: str = "adata",
) -> AnnData | None:
    """Fill the missing entries of the counts; keep every observed value as it is.

    Writes ``adata.layers[f"{key_added}_imputed"]``: the counts with each missing entry
    replaced by its posterior predictive mean ``E[x | observed entries of the cell]`` (or
    median, or a baseline's guess), observed entries copied bitwise. With ``interval``, also
    ``layers[f"{key_added}_lower"]`` and ``layers[f"{key_added}_upper"]``: an integer range
    holding about ``interval`` of the posterior predictive draws (z from the encoder, then
    counts) at missing entries (the equal-tailed interval, or one a count shorter at an end,
    whichever holds closest to ``interval`` of the draws); at observed entries both equal
    the observed value. The layers have the
    format of the input (sparse stays sparse) and adata's genes; missing entries of genes the
    model does not know stay NaN. A call without ``interval`` removes interval layers of an
    earlier call with the same ``key_added`` (they would not match the new imputation).
    Nothing else changes.

    Parameters
    ----------
    adata
        Cells with missing entries: NaN in the counts, or False in a boolean mask layer.
    model
        A fitted model (``method="model"``); new cells work too, genes are matched by name.
    method
        ``"model"``: posterior predictive mean. ``"mean"``: the gene's mean over the cells
        where it is observed. ``"random"``: a value drawn from the gene's observed values.
        The two baselines use no model.
    layer, mask_layer
        Where the counts and the observation mask are; default: as for the fit (baselines:
        ``X``, no mask layer).
    interval
        Probability of the predictive interval, e.g. 0.9 (model only).
    point
        Which summary of the posterior predictive fills a missing entry (model only):
        ``"mean"`` (default; unbiased, best for squared error and for sums over cells) or
        ``"median"`` (an integer count; best for absolute error, e.g. on the log1p scale,
        because most missing entries of a sparse gene are most likely zero).
    n_samples
        Posterior draws of z (and counts) per cell.
    key_added
        Prefix of the layers written.
    seed
        Seed of the draws; the caller's random state is restored.
    batch_size
        Cells per forward pass.
    genes
        ``"adata"`` (default): write the layers into ``adata``, over its genes.
        ``"model"``: return a new AnnData over all of the model's genes (``adata`` is not
        modified), with the counts of ``adata`` in ``X``, NaN for the model's genes
        ``adata`` lacks (``var["measured"]`` says which were measured), and the layers
        above: the genes a query's panel never measured, imputed from the posterior
        (model only).

    Returns
    -------
    ``None``, or with ``genes="model"`` the new AnnData.

    Examples
    --------
    >>> adata.X[0, :5] = np.nan  # doctest: +SKIP
    >>> model = scvae.fit(adata)  # doctest: +SKIP
    >>> scvae.impute(adata, model, interval=0.9)  # doctest: +SKIP
    >>> adata.layers["scvae_imputed"][0, :5]  # doctest: +SKIP
    >>> qmodel = scvae.fit(panel_query, reference=model)  # doctest: +SKIP
    >>> full = scvae.impute(panel_query, qmodel, genes="model")  # doctest: +SKIP
    """
    _check_impute_options(
        adata, model, method, interval, point, n_samples, key_added, seed, batch_size, genes
    )
    if genes == "model":
        if method != "model" or model is None:
            raise ValueError("genes='model' needs method='model' and a fitted model")
        full = _over_model_genes(adata, model, layer, mask_layer)
        impute(
            full,
            model,
            layer=None,
            mask_layer=None,
            interval=interval,
            point=point,
            n_samples=n_samples,
            key_added=key_added,
            seed=seed,
            batch_size=batch_size,
        )
        return full
    check_writable(adata, "impute")
    check_outputs_not_read(
        [f"{key_added}_{name}" for name in ("imputed", "lower", "upper")],
        layer=(model.layer if method == "model" else None) if layer is ... else layer,
        mask_layer=(model.mask_layer if method == "model" else None)
        if mask_layer is ...
        else mask_layer,
    )
    if method == "model":
        data = model.prepare(adata, layer=layer, mask_layer=mask_layer)
        columns = align_genes(adata.var_names, model.gene_names)
        layer = model.layer if layer is ... else layer
    else:
        layer = None if layer is ... else layer
        mask_layer = None if mask_layer is ... else mask_layer
        data = prepare_counts(adata, layer=layer, mask_layer=mask_layer)
        columns = np.arange(adata.n_vars)
    if data.missing is None:
        elsewhere = _layers_with_nan(adata, exclude=layer)
        if elsewhere:
            raise ValueError(
                f"{_where(layer)} has no missing entries, but {', '.join(elsewhere)} "
                "has NaN: pass layer= to impute the matrix that has them"
            )
        logger.warning("no missing entries in %s: the imputed layer is a copy", _where(layer))
        rows = cols = np.zeros(0, dtype=np.int64)
        fills = {"imputed": np.zeros(0, dtype=np.float32)}
    elif method == "model":
        rows, cols, fills = posterior_predictive(
            model, data, interval, point, n_samples, seed, batch_size
        )
    else:
        rows, cols = data.missing.nonzero()
        fills = {"imputed": _baseline(data, rows, cols, method, seed)}

    original = adata.X if layer is None else adata.layers[layer]
    for name, values in fills.items():
        key = f"{key_added}_{name}"
        log_written(adata, key)
        adata.layers[key] = _fill(original, rows, columns[cols], values)
    if interval is None:
        for name in ("lower", "upper"):
            adata.layers.pop(f"{key_added}_{name}", None)
    return None


def _check_impute_options(
    adata, model, method, interval, point, n_samples, key_added, seed, batch_size, genes
) -> None:
    """Every option of :func:`impute`, before anything is read."""
    if genes not in ("adata", "model"):
        raise ValueError(f"genes must be 'adata' or 'model', got {genes!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "model" and model is None:
        raise ValueError("method='model' needs a fitted model: impute(adata, model)")
    if model is not None:
        check_model(model)
    if interval is not None:
        check_number("interval", interval)
        if method != "model" or not 0 < interval < 1:
            raise ValueError("interval must be in (0, 1) and needs method='model'")
    if point not in POINTS or (point != "mean" and method != "model"):
        raise ValueError(f"point must be one of {POINTS} (median needs method='model')")
    check_int("n_samples", n_samples)
    check_int("batch_size", batch_size)
    check_seed(seed)
    check_key("key_added", key_added)


def _over_model_genes(
    adata: AnnData, model: SCVAE, layer: str | type | None, mask_layer: str | type | None
) -> AnnData:
    """A new AnnData of ``adata``'s cells over the model's genes: dense counts, NaN where a
    gene was not measured or an entry is missing (NaN, or False in the mask layer)."""
    if not isinstance(adata, AnnData):
        raise TypeError(f"expected an AnnData, got {type(adata).__name__}")
    layer = model.layer if layer is ... else layer
    if mask_layer is ...:
        mask_layer = model.mask_layer if model.mask_layer in adata.layers else None
    columns = align_genes(adata.var_names, model.gene_names, allow_absent=True)
    present = np.flatnonzero(columns >= 0)
    values = counts_matrix(adata, layer)[:, columns[present]]
    values = values.toarray() if sp.issparse(values) else np.array(values, dtype=np.float32)
    counts = np.full((adata.n_obs, len(model.gene_names)), np.nan, dtype=np.float32)
    counts[:, present] = values
    if mask_layer is not None:
        observed = adata.layers[mask_layer][:, columns[present]]
        observed = observed.toarray() if sp.issparse(observed) else np.asarray(observed)
        counts[:, present] = np.where(observed.astype(bool), values, np.nan)
    measured = np.zeros(len(model.gene_names), dtype=bool)
    measured[present] = True
    var = pd.DataFrame({"measured": measured}, index=pd.Index(model.gene_names))
    return AnnData(counts, obs=adata.obs.copy(), var=var)


def _baseline(
    data: CountData, rows: np.ndarray, cols: np.ndarray, method: str, seed: int
) -> np.ndarray:
    """Per-gene mean of the observed entries, or a random observed value of the gene."""
    counts = data.counts.tocsc()
    missing = data.missing.tocsc()
    if method == "mean":
        n_observed = data.n_cells - np.asarray(missing.sum(axis=0)).ravel()
        means = np.asarray(counts.sum(axis=0)).ravel() / np.maximum(n_observed, 1)
        return means[cols].astype(np.float32)
    rng = np.random.default_rng(seed)
    out = np.empty(len(rows), dtype=np.float32)
    order = np.argsort(cols, kind="stable")
    for gene in np.unique(cols):
        where = order[
            np.searchsorted(cols[order], gene) : np.searchsorted(cols[order], gene, "right")
        ]
        observed = np.ones(data.n_cells, dtype=bool)
        observed[missing.indices[missing.indptr[gene] : missing.indptr[gene + 1]]] = False
        values = counts[:, gene].toarray().ravel()[observed]
        out[where] = rng.choice(values, size=where.size) if values.size else np.nan
    return out


def _fill(original, rows: np.ndarray, cols: np.ndarray, values: np.ndarray):
    """A copy of ``original`` with ``values`` at (rows, cols), in the same format."""
    dtype = original.dtype if np.issubdtype(original.dtype, np.floating) else np.float32
    if not sp.issparse(original):
        out = np.array(original, dtype=dtype, copy=True)
        out[rows, cols] = values
        return out
    out = sp.csr_matrix(original, dtype=dtype, copy=True)
    out.sort_indices()
    n_cols = out.shape[1]
    stored_rows = np.repeat(np.arange(out.shape[0]), np.diff(out.indptr))
    replaced = np.isin(stored_rows * n_cols + out.indices, rows.astype(np.int64) * n_cols + cols)
    out.data[replaced] = 0.0  # stored NaN (or masked values) at the filled positions
    filled = sp.csr_matrix((values.astype(dtype), (rows, cols)), shape=out.shape)
    # x + 0 == x exactly: observed entries stay bitwise identical.
    return (out + filled).tocsr()


def _layers_with_nan(adata: AnnData, exclude: str | None) -> list[str]:
    found = []
    for name in [None, *adata.layers]:
        if name == exclude:
            continue
        values = adata.X if name is None else adata.layers[name]
        if values is None or not np.issubdtype(values.dtype, np.floating):
            continue
        data = values.data if sp.issparse(values) else np.asarray(values)
        if np.isnan(data).any():
            found.append(_where(name))
    return found


def _where(layer: str | None) -> str:
    return "adata.X" if layer is None else f"adata.layers[{layer!r}]"
