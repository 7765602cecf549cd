"""Denoised expression: the model's normalised expression of every entry, optionally as if
every cell had been measured in one batch of the model (counterfactual expression)."""

from __future__ import annotations

import numpy as np
import torch
from anndata import AnnData

from .._batches.rows import MinibatchSource
from .._model.encode import encoded
from .._model.scvae import SCVAE, check_model
from .._utils.options import check_int, check_key, check_number
from .outputs import check_outputs_not_read, check_writable, log_written

__all__ = ["denoise"]


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
    check_writable(adata, "denoise")
    check_model(model)
    check_number("library_size", library_size, low=0, open_low=True)
    check_int("batch_size", batch_size)
    check_key("key_added", key_added)
    key = f"{key_added}_denoised"
    check_outputs_not_read([key], layer=model.layer if layer is ... else layer, mask_layer=None)
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
    log_written(adata, key)
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
