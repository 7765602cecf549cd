"""New cells from a fitted model: ``scvae.generate``."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from anndata import AnnData
from tqdm.auto import tqdm

from .._model.reference import LatentReference, build_reference
from .._model.scvae import check_model
from .._utils.device import seeded
from .._utils.options import check_flag, check_int, check_seed

if TYPE_CHECKING:
    from .._model.scvae import SCVAE

logger = logging.getLogger(__name__)

__all__ = ["generate"]


def generate(
    model: SCVAE,
    n_cells: int = 1000,
    *,
    batch: str | None = None,
    cell_type: str | None = None,
    adata: AnnData | None = None,
    labels_key: str | None = None,
    seed: int = 0,
    chunk_size: int = 10_000,
    progress: bool = False,
) -> AnnData:
    """Generate new cells (raw counts) of a chosen batch and cell type.

    Each cell is drawn in three steps: a latent position z from the region the cells of the
    type occupy (a Gaussian mixture fitted to their posterior, the *aggregate posterior*;
    all cells when no type is asked), a library size from the observed library sizes of the
    cells of that type in that batch, then counts from the model's likelihood
    (negative binomial, ZINB or Poisson) given z, the batch and the library size. The
    latent space is batch-corrected, so a type's region comes from its cells in every batch
    and the batch acts through the decoder: ``batch="stim", cell_type="B cells"`` gives
    stimulated B cells even if few were observed. Covariates beyond the batch
    (``categorical_covariate_keys``, ``continuous_covariate_keys``) are those of a typical
    training cell: each category weighted by its frequency, each continuous one at its mean.

    Parameters
    ----------
    model
        A fitted model. Cell types are those of its ``labels_key`` at fit time.
    n_cells
        How many cells (generated in chunks of ``chunk_size``; any number fits in memory as
        a sparse matrix).
    batch
        Batch (category of the fit's ``batch_key``) of the new cells. ``None``: each cell's
        batch is drawn in proportion to the training cells (of ``cell_type`` if given).
    cell_type
        Cell type of the new cells. ``None``: types drawn in proportion to the training
        cells (of ``batch`` if given), or, for a model fitted without labels, from the
        region of all cells.
    adata, labels_key
        Define the cell types (and library sizes) from these cells instead of the training
        cells: the route for a model fitted without ``labels_key``, or for types annotated
        after the fit. ``adata`` is read, never modified.
    seed
        Same seed, same cells.
    chunk_size
        Cells per forward pass.
    progress
        Show a progress bar.

    Returns
    -------
    AnnData
        Raw counts in ``X`` (CSR, float32), the model's genes as ``var_names`` and
        ``obs`` columns named like the training data's: the fit's ``batch_key`` (if the model
        has batches), its ``labels_key`` (or the one given with ``adata``) and
        ``library_size`` (the drawn library size; the total of a generated cell differs from
        it by sampling noise). ``uns["scvae_generate"]`` records
        the arguments. Embed generated cells with ``model.embed(synth, layer=None)``.

    Examples
    --------
    >>> synth = scvae.generate(model, n_cells=5000, batch="STIM", cell_type="B")  # doctest: +SKIP
    >>> sc.pp.normalize_total(synth); sc.pp.log1p(synth)  # doctest: +SKIP
    """
    check_model(model)
    check_int("n_cells", n_cells)
    check_int("chunk_size", chunk_size)
    check_seed(seed)
    check_flag("progress", progress)
    if adata is not None and not isinstance(adata, AnnData):
        raise TypeError(f"adata must be an AnnData, got {type(adata).__name__}")
    if labels_key is not None and not isinstance(labels_key, str):
        raise TypeError(f"labels_key must be an obs column name, got {labels_key!r}")
    reference = _reference_for(model, adata, labels_key)
    batch = _check_choice("batch", batch, reference.batch_categories, "batch_key")
    cell_type = _check_choice("cell_type", cell_type, reference.label_categories, "labels_key")

    rng = np.random.default_rng(seed)
    types, batches = _assign_groups(reference, int(n_cells), batch, cell_type, rng)
    z = np.empty((n_cells, model.module.n_latent))
    log_library = np.empty(n_cells)
    for t in dict.fromkeys(types):
        for b in dict.fromkeys(batches):
            rows = np.flatnonzero((types == t) & (batches == b))
            if len(rows) == 0:
                continue
            z[rows] = reference.sample_z(t, len(rows), rng)
            log_library[rows] = reference.sample_log_library(t, b, len(rows), rng)
    counts = _sample_counts(model, z, log_library, batches, reference, seed, chunk_size, progress)

    obs = pd.DataFrame(index=[f"generated_{i}" for i in range(n_cells)])
    if reference.batch_categories:
        batch_column = model.batch_key or "batch"
        obs[batch_column] = pd.Categorical(
            batches, categories=reference.batch_categories
        ).remove_unused_categories()
    if reference.label_categories:
        label_column = reference.labels_key or "cell_type"
        obs[label_column] = pd.Categorical(
            types, categories=reference.label_categories
        ).remove_unused_categories()
    obs["library_size"] = np.exp(log_library).astype(np.float32)
    out = AnnData(X=counts, obs=obs, var=pd.DataFrame(index=list(model.gene_names)))
    out.uns["scvae_generate"] = {
        "n_cells": int(n_cells),
        "batch": "None" if batch is None else batch,
        "cell_type": "None" if cell_type is None else cell_type,
        "seed": int(seed),
        "labels_key": str(reference.labels_key),
    }
    return out


def _reference_for(model: SCVAE, adata: AnnData | None, labels_key: str | None) -> LatentReference:
    if adata is not None:
        if labels_key is not None and labels_key not in adata.obs:
            raise KeyError(f"labels_key {labels_key!r} is not a column of adata.obs")
        data = model.prepare(adata)
        if labels_key is not None:
            codes, categories = _label_codes(adata.obs[labels_key])
            data.labels, data.label_categories = codes, categories
        return build_reference(model.module, data, labels_key=labels_key, device=model.device)
    if labels_key is not None:
        raise ValueError("labels_key needs adata: the cells whose labels define the types")
    if model.reference is None:
        raise ValueError(
            "this model holds no latent reference (it was saved by an older scvae); pass "
            "adata= (the training cells) to generate from"
        )
    return model.reference


def _label_codes(column: pd.Series) -> tuple[np.ndarray, list[str]]:
    values = column.astype("category")
    categories = [str(c) for c in values.cat.categories]
    return values.cat.codes.to_numpy().astype(np.int64), categories


def _check_choice(name: str, value: str | None, known: list[str], key: str) -> str | None:
    """``value`` as one of the ``known`` names (categories are kept as strings, so an
    integer-like batch ``1`` names the category ``'1'``), or an error listing them."""
    if value is None:
        return None
    if isinstance(value, bool | np.bool_) or not isinstance(value, str | int | np.integer):
        raise TypeError(f"{name} must be a name (a string), got {type(value).__name__} {value!r}")
    if not known:
        hint = (
            "pass adata= and labels_key= to define cell types from annotated cells"
            if name == "cell_type"
            else "it was fitted without batch_key"
        )
        raise ValueError(f"{name}={value!r} given, but the model knows no {key} groups: {hint}")
    if str(value) not in known:
        raise ValueError(f"unknown {name} {value!r}; known: {', '.join(map(repr, known))}")
    return str(value)


def _assign_groups(
    reference: LatentReference,
    n_cells: int,
    batch: str | None,
    cell_type: str | None,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Type and batch of each new cell (``None`` where the model has no types / batches)."""
    labels, batches = reference.label_categories, reference.batch_categories
    types = np.full(n_cells, cell_type, dtype=object)
    if cell_type is None and labels:
        p = reference.type_probabilities(batch)
        if not np.isfinite(p).all():
            raise ValueError(f"no labelled training cells in batch {batch!r}")
        types = np.asarray(labels, dtype=object)[rng.choice(len(labels), n_cells, p=p)]
    chosen = np.full(n_cells, batch, dtype=object)
    if batch is None and batches:
        if labels:
            # Each type's own batch composition (types absent from a batch stay absent).
            counts = reference.counts
            for t in dict.fromkeys(types):
                rows = np.flatnonzero(types == t)
                row = counts[labels.index(t)].astype(np.float64)
                picks = rng.choice(len(batches), len(rows), p=row / row.sum())
                chosen[rows] = np.asarray(batches, dtype=object)[picks]
        else:
            q = reference.log_library_quantiles
            sizes = np.array([1.0 if f"*|{b}" in q else 0.0 for b in batches])
            chosen = np.asarray(batches, dtype=object)[
                rng.choice(len(batches), n_cells, p=sizes / sizes.sum())
            ]
    return types, chosen


@torch.no_grad()
def _sample_counts(
    model: SCVAE,
    z: np.ndarray,
    log_library: np.ndarray,
    batches: np.ndarray,
    reference: LatentReference,
    seed: int,
    chunk_size: int,
    progress: bool,
) -> sp.csr_matrix:
    module = model.module.eval()
    device = model.device
    if reference.batch_categories:
        codes = np.array([reference.batch_categories.index(b) for b in batches])
    else:
        codes = np.zeros(len(z), dtype=np.int64)
    # Generated cells have the training cells' typical covariates (see CovariateLayout).
    layout = model.covariate_layout
    typical = None if layout is None else torch.tensor(layout.typical, device=device)
    parts = []
    with seeded(seed, device):
        starts = range(0, len(z), chunk_size)
        for start in tqdm(starts, desc="generating", disable=not progress, unit="chunk"):
            rows = slice(start, start + chunk_size)
            counts = module.decode(
                torch.as_tensor(z[rows], dtype=torch.float32, device=device),
                torch.as_tensor(np.exp(log_library[rows]), dtype=torch.float32, device=device),
                torch.as_tensor(codes[rows], dtype=torch.long, device=device),
                covariates=None if typical is None else typical.expand(len(z[rows]), -1),
            ).sample()
            parts.append(sp.csr_matrix(counts.cpu().numpy()))
    return sp.vstack(parts, format="csr").astype(np.float32)
