"""Missing values: imputation from the posterior predictive, baselines, denoised expression.

``impute`` fills only the missing entries (NaN, or False in a mask layer) and copies every
observed value unchanged; ``denoise`` is a different thing (the model's normalised expression
for every entry) and lives in its own function so that the two are not confused.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from anndata import AnnData

from .._batches.minibatch import Minibatch
from .._batches.rows import MinibatchSource
from .._data.checks import align_genes
from .._data.counts import CountData
from .._data.memory import counts_matrix, prepare_counts
from .._model.encode import encoded
from .._model.scvae import SCVAE, check_model
from .._utils.device import seeded
from .._utils.options import check_int, check_key, check_number, check_seed
from .._vae.distributions import CountDistribution

logger = logging.getLogger(__name__)

__all__ = [
    "count_interval",
    "denoise",
    "impute",
    "predictive_draws",
    "predictive_log_likelihood",
]

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
    _check_writable(adata, "impute")
    _check_outputs_not_read(
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
        rows, cols, fills = _posterior_predictive(
            model, data, interval, point, n_samples, seed, batch_size
        )
    else:
        rows, cols = data.missing.nonzero()
        fills = {"imputed": _baseline(data, rows, cols, method, seed)}

    original = adata.X if layer is None else adata.layers[layer]
    for name, values in fills.items():
        key = f"{key_added}_{name}"
        _log_written(adata, key)
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


def denoise(
    adata: AnnData,
    model: SCVAE,
    *,
    library_size: float = 1e4,
    layer: str | type | None = ...,
    key_added: str = "scvae",
    batch_size: int = 1024,
    transform_batch: str | None = None,
) -> None:
    """The model's normalised expression of every gene in every cell.

    Writes ``adata.layers[f"{key_added}_denoised"]`` (dense, float32, the model's genes must
    be adata's genes): ``library_size`` times each gene's expected share of expression at the
    posterior mean of z. Unlike :func:`impute`, this replaces *every* entry, observed or not,
    with a smoothed value on a common scale: use it for visualisation or gene-gene relations,
    not as data. With ``transform_batch``, every cell's expression is decoded as if it had
    been measured in that batch of the model (counterfactual expression: the batch effect
    removed, the cell's latent state kept).

    Examples
    --------
    >>> scvae.denoise(adata, model, transform_batch="10x_v3")  # doctest: +SKIP
    >>> adata.layers["scvae_denoised"]  # doctest: +SKIP
    """
    _check_writable(adata, "denoise")
    check_model(model)
    check_number("library_size", library_size, low=0, open_low=True)
    check_int("batch_size", batch_size)
    check_key("key_added", key_added)
    key = f"{key_added}_denoised"
    _check_outputs_not_read([key], layer=model.layer if layer is ... else layer, mask_layer=None)
    if [str(g) for g in adata.var_names] != model.gene_names:
        raise ValueError("denoise needs adata to have exactly the model's genes, in order")
    code = _batch_code(model, transform_batch)
    data = model.prepare(adata, layer=layer)
    module, parts = model.module.eval(), []
    with torch.no_grad():
        source = MinibatchSource(data, batch_size=batch_size, device=model.device)
        for b, z, _ in encoded(module, source):
            ones = torch.full_like(b.library, float(library_size))
            batches = b.batch_index if code is None else torch.full_like(b.batch_index, code)
            mean = module.decode(z, ones, batches, covariates=b.covariates).mean
            parts.append(mean.cpu().numpy())
    _log_written(adata, key)
    adata.layers[key] = np.concatenate(parts).astype(np.float32)


def _batch_code(model: SCVAE, batch: str | None) -> int | None:
    """The code of one of the model's batches (``None``: each cell's own)."""
    if batch is None:
        return None
    if not model.batch_categories:
        raise ValueError("transform_batch needs a model fitted with batch_key")
    if str(batch) not in model.batch_categories:
        raise ValueError(
            f"transform_batch={batch!r} is not a batch of the model "
            f"(known: {model.batch_categories[:20]})"
        )
    return model.batch_categories.index(str(batch))


def _check_outputs_not_read(written: list[str], *, layer, mask_layer) -> None:
    """The layers a call writes must not be the layers it reads: ``key_added`` chosen so
    that the output lands on the counts (or the mask) would replace the user's data."""
    for role, read in (("layer", layer), ("mask_layer", mask_layer)):
        if read in written:
            raise ValueError(
                f"key_added would write adata.layers[{read!r}], the {role} this call reads: "
                "choose another key_added"
            )


def _log_written(adata: AnnData, key: str) -> None:
    """Layers named ``<key_added>_imputed`` (``_lower``, ``_upper``, ``_denoised``) are
    scvae's outputs: an existing one, an earlier result, is replaced; say so."""
    if key in adata.layers:
        logger.info("replaced %r (adata.layers), the result of an earlier call", key)
    else:
        logger.info("added %r (adata.layers)", key)


def _check_writable(adata: AnnData, function: str, writes: str = "layers") -> None:
    """Refuse anything but an AnnData, and a view: the layers would go into a copy anndata
    makes of it, and a call like ``impute(adata[cells], model)`` would lose them without a
    word."""
    if not isinstance(adata, AnnData):
        raise TypeError(f"expected an AnnData, got {type(adata).__name__}")
    if adata.is_view:
        raise ValueError(
            f"adata is a view (e.g. adata[cells]): {function} writes {writes}, which anndata "
            "would put into a copy of the view, and the result would be lost. Make the "
            f"subset an AnnData of its own first: sub = adata[cells].copy(); "
            f"scvae.{function}(sub, model)"
        )


def predictive_draws(
    model: SCVAE, data: CountData, *, n_samples: int, seed: int = 0, batch_size: int = 256
) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[CountDistribution]]]:
    """Posterior predictive at the missing entries, one minibatch of cells at a time.

    Yields ``(rows, cols, draws)``: positions of the minibatch's missing entries (rows
    counted over all of ``data``) and, for each of ``n_samples`` draws z ~ q(z | observed
    entries), the count distribution p(x | z) at those entries.
    """
    module = model.module.eval()
    source = MinibatchSource(data, batch_size=batch_size, device=model.device)
    with torch.no_grad(), seeded(seed, model.device):
        batches = encoded(module, source, only=_has_missing)
        for start, (b, loc, scale) in zip(
            range(0, data.n_cells, batch_size), batches, strict=True
        ):
            if loc is None:
                continue
            rows, cols = (~b.observed).nonzero(as_tuple=True)
            draws = []
            for _ in range(n_samples):
                z = loc + scale * torch.randn_like(loc)
                counts = module.decode(
                    z, b.library, b.batch_index, b.observed, covariates=b.covariates
                )
                draws.append(counts.at(rows, cols))
            yield rows + start, cols, draws


def _has_missing(batch: Minibatch) -> bool:
    return batch.observed is not None and not bool(batch.observed.all())


def predictive_log_likelihood(
    adata: AnnData,
    model: SCVAE,
    truth,
    *,
    n_samples: int = 100,
    layer: str | type | None = ...,
    mask_layer: str | type | None = ...,
    seed: int = 0,
) -> np.ndarray:
    """log p(true value | observed entries of the cell) at every missing entry (nats).

    For checking imputation where the hidden values are known (e.g. entries hidden on
    purpose): ``truth`` is a cells x genes array or sparse matrix aligned with ``adata``
    holding the true counts. Estimated as ``log mean_s p(x | z_s)`` with z_s drawn from the
    encoder; the proper score to compare models' imputations. Returns one value per missing
    entry of the model's genes, in row-major order.
    """
    check_model(model)
    check_int("n_samples", n_samples)
    check_seed(seed)
    if not hasattr(truth, "shape"):
        raise TypeError(f"truth must be an array or a sparse matrix, got {type(truth).__name__}")
    if tuple(truth.shape) != tuple(adata.shape):
        raise ValueError(
            f"truth has shape {tuple(truth.shape)}; it must be aligned with adata "
            f"{tuple(adata.shape)} (same cells and genes, same order)"
        )
    data = model.prepare(adata, layer=layer, mask_layer=mask_layer)
    columns = align_genes(adata.var_names, model.gene_names)
    truth = sp.csr_matrix(truth)[:, columns]
    if data.missing is not None:
        rows, cols = data.missing.nonzero()
        hidden = np.asarray(truth[rows, cols], dtype=np.float64).ravel()
        if not np.isfinite(hidden).all() or (hidden < 0).any() or (hidden % 1 != 0).any():
            raise ValueError(
                "truth must hold the true counts (finite non-negative integers) at every "
                "missing entry; it has NaN, infinite, negative or fractional values there"
            )
    out = []
    for rows, cols, draws in predictive_draws(model, data, n_samples=n_samples, seed=seed):
        r, c = np.array(rows.cpu()), np.array(cols.cpu())  # writeable copies for scipy
        values = np.asarray(truth[r, c]).ravel()
        x = torch.as_tensor(values, dtype=torch.float32, device=rows.device)
        log_p = torch.stack([d.log_prob(x) for d in draws])
        out.append((torch.logsumexp(log_p, 0) - math.log(n_samples)).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def _posterior_predictive(
    model: SCVAE,
    data: CountData,
    interval: float | None,
    point: str,
    n_samples: int,
    seed: int,
    batch_size: int,
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Predictive mean or median (and interval) at every missing entry."""
    all_rows, all_cols, points, lowers, uppers = [], [], [], [], []
    for rows, cols, draws in predictive_draws(
        model, data, n_samples=n_samples, seed=seed, batch_size=batch_size
    ):
        samples = None
        if interval is not None or point == "median":
            samples = torch.stack([d.sample() for d in draws])
        if point == "median":
            points.append(samples.median(0).values.cpu().numpy())
        else:  # Rao-Blackwellised: the mean of p(x | z) for each z, averaged over z.
            points.append(torch.stack([d.mean for d in draws]).mean(0).cpu().numpy())
        if interval is not None:
            lower, upper = count_interval(samples, interval)
            lowers.append(lower.cpu().numpy())
            uppers.append(upper.cpu().numpy())
        all_rows.append(rows.cpu().numpy())
        all_cols.append(cols.cpu().numpy())
    fills = {"imputed": np.concatenate(points).astype(np.float32)}
    if interval is not None:
        fills["lower"] = np.concatenate(lowers).astype(np.float32)
        fills["upper"] = np.concatenate(uppers).astype(np.float32)
    return np.concatenate(all_rows), np.concatenate(all_cols), fills


def count_interval(draws: torch.Tensor, level: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer interval per column of ``draws`` (samples x entries) holding about ``level``.

    For counts no interval holds exactly ``level`` of the predictive mass: the equal-tailed
    one with integer ends holds at least ``level`` and often much more (a gene that is 0 in
    95 % of draws gives [0, 0] whatever the level), so intervals built that way cover too
    often. We take the equal-tailed interval and the two intervals one count shorter at
    either end, and keep the one whose mass under the draws is closest to ``level``.
    """
    tail = (1 - level) / 2
    lower = torch.quantile(draws, tail, dim=0, interpolation="lower")
    upper = torch.quantile(draws, 1 - tail, dim=0, interpolation="higher")
    candidates = [
        (lower, upper),
        (torch.minimum(lower + 1, upper), upper),
        (lower, torch.maximum(upper - 1, lower)),
    ]
    masses = torch.stack([((a <= draws) & (draws <= b)).float().mean(0) for a, b in candidates])
    best = (masses - level).abs().argmin(dim=0)
    lows = torch.stack([a for a, _ in candidates]).gather(0, best[None]).squeeze(0)
    highs = torch.stack([b for _, b in candidates]).gather(0, best[None]).squeeze(0)
    return lows, highs


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
