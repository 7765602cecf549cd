"""Datasets measured on different gene panels, joined so that unmeasured genes are missing."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

logger = logging.getLogger(__name__)

__all__ = ["concat_panels"]


def concat_panels(
    adatas: Mapping[str, AnnData], *, batch_key: str = "batch", layer: str | None = None
) -> AnnData:
    """Concatenate datasets over the union of their genes; unmeasured genes become NaN.

    ``anndata.concat(..., join="outer")`` fills genes a dataset did not measure with zeros
    (sparse) — which a count model would read as "measured, not expressed". Here those
    entries are NaN, so :func:`scvae.fit` leaves them out of the likelihood and
    :func:`scvae.impute` fills them. Sparse inputs give a sparse ``X`` with the NaN entries
    stored explicitly.

    Parameters
    ----------
    adatas
        ``{batch name: AnnData}``, raw counts in ``X`` (or ``layer``).
    batch_key
        ``obs`` column that records which dataset a cell came from.
    layer
        Take the counts from this layer of each dataset instead of ``X``.

    Returns
    -------
    AnnData
        A new AnnData (cells of all datasets, union of genes in first-seen order) with the
        counts in ``X``, ``obs[batch_key]`` and ``var["measured_in"]`` (comma-separated
        batches).

    Examples
    --------
    >>> joint = scvae.concat_panels({"panel_a": a, "panel_b": b})  # doctest: +SKIP
    >>> model = scvae.fit(joint, batch_key="batch")  # doctest: +SKIP
    >>> scvae.impute(joint, model)  # doctest: +SKIP
    """
    _check_panels(adatas, batch_key, layer)
    genes = pd.Index(pd.unique(np.concatenate([np.asarray(a.var_names) for a in adatas.values()])))
    blocks, obs, measured = [], [], {g: [] for g in genes}
    any_sparse = False
    for name, adata in adatas.items():
        if not adata.var_names.is_unique:
            raise ValueError(
                f"adatas[{name!r}].var_names are not unique: genes are matched by name; "
                "call var_names_make_unique() first"
            )
        if layer is not None and layer not in adata.layers:
            raise KeyError(f"layer {layer!r} not in adatas[{name!r}].layers")
        values = adata.X if layer is None else adata.layers[layer]
        any_sparse |= sp.issparse(values)
        position = genes.get_indexer(adata.var_names)
        absent = np.setdiff1d(np.arange(len(genes)), position)
        block = _place(values, position, absent, len(genes))
        blocks.append(block)
        obs.append(pd.DataFrame({batch_key: name}, index=adata.obs_names.astype(str)))
        for g in adata.var_names:
            measured[g].append(str(name))
        logger.info("%s: %d of %d genes not measured -> NaN", name, absent.size, len(genes))
    X = (
        sp.vstack(blocks, format="csr")
        if any_sparse
        else np.vstack([b.toarray() if sp.issparse(b) else b for b in blocks])
    )
    obs = pd.concat(obs)
    obs[batch_key] = pd.Categorical(obs[batch_key], categories=[str(k) for k in adatas])
    var = pd.DataFrame({"measured_in": [",".join(measured[g]) for g in genes]}, index=genes)
    out = AnnData(X=X, obs=obs, var=var)
    out.obs_names_make_unique()
    return out


def _check_panels(adatas, batch_key, layer) -> None:
    """The mapping of datasets and the options, before anything is joined."""
    if not isinstance(adatas, Mapping):
        raise TypeError(
            f"adatas must be a mapping {{batch name: AnnData}}, got {type(adatas).__name__}"
            + (" (e.g. dict(zip(names, adatas)))" if isinstance(adatas, list | tuple) else "")
        )
    if not adatas:
        raise ValueError("concat_panels needs at least one AnnData")
    if not isinstance(batch_key, str) or not batch_key:
        raise TypeError(f"batch_key must be a non-empty string (an obs column), got {batch_key!r}")
    if layer is not None and not isinstance(layer, str):
        raise TypeError(f"layer must be a layer name or None, got {layer!r}")
    names = [str(name) for name in adatas]
    if len(set(names)) < len(names):
        raise ValueError(
            f"the names of adatas {list(adatas)} are not distinct as strings: each names a "
            f"category of obs[{batch_key!r}]"
        )
    for name, adata in adatas.items():
        if not isinstance(adata, AnnData):
            raise TypeError(f"adatas[{name!r}] must be an AnnData, got {type(adata).__name__}")
        if layer is None and adata.X is None:
            raise ValueError(
                f"adatas[{name!r}].X is empty: pass layer= with the raw counts of every dataset"
            )


def _place(values, position: np.ndarray, absent: np.ndarray, n_genes: int):
    """``values`` in the columns ``position`` of an ``n_genes`` wide block; ``absent`` = NaN."""
    n_cells = values.shape[0]
    if sp.issparse(values):
        values = sp.csr_matrix(values, dtype=np.float32)
        present = sp.csr_matrix(
            (values.data, position[values.indices], values.indptr), shape=(n_cells, n_genes)
        )
        nan_rows = np.repeat(np.arange(n_cells), absent.size)
        nan_cols = np.tile(absent, n_cells)
        nans = sp.csr_matrix(
            (np.full(nan_rows.size, np.nan, dtype=np.float32), (nan_rows, nan_cols)),
            shape=(n_cells, n_genes),
        )
        return (present + nans).tocsr()
    block = np.full((n_cells, n_genes), np.nan, dtype=np.float32)
    block[:, position] = np.asarray(values, dtype=np.float32)
    return block
