"""What the networks see: the encoder's transform of the counts, and the covariate inputs.

The encoder reads ``log1p`` of the counts scaled to one library size (composition, not depth;
depth enters the model through the observed library size), with the observation mask beside
it for data with missing values. Both networks read the batch one-hot and the other covariates
in every layer; a query mapping's batches get a one-hot of their own, with weights of their own
(``scvae._vae.networks.MLP.add_query_batches``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["covariate_inputs", "encoder_input"]


def encoder_input(
    x: torch.Tensor,
    library: torch.Tensor,
    library_scale: float,
    observed: torch.Tensor | None = None,
    nonzeros: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    encode_mask: bool = False,
) -> torch.Tensor:
    """``log1p(x * library_scale / library)``, then (with ``encode_mask``) the observed
    entries of it beside the mask.

    With ``nonzeros`` (the stored entries of ``x``, as minibatches carry them), ``log1p`` runs
    on those only (it is 0 elsewhere); the input is the same.

    Examples
    --------
    >>> x = torch.tensor([[0.0, 2.0, 8.0]])
    >>> encoder_input(x, x.sum(1), 10.0)
    tensor([[0.0000, 1.0986, 2.1972]])
    """
    factor = library_scale / library.clamp(min=1.0)
    if nonzeros is None:
        h = torch.log1p(x * factor.unsqueeze(-1))
    else:
        rows, cols, values = nonzeros
        h = torch.zeros_like(x)
        scaled = torch.log1p(values.to(x.dtype) * factor[rows])
        h.view(-1).index_put_((rows * x.shape[1] + cols,), scaled)
    if encode_mask:
        known = torch.ones_like(x) if observed is None else observed.to(x.dtype)
        h = torch.cat([h * known, known], dim=-1)
    return h


def covariate_inputs(
    batch_index: torch.Tensor,
    covariates: torch.Tensor | None,
    n_batches: int,
    first_query_batch: int,
    n_query_batches: int,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The reference's covariate inputs (batch one-hot, then the other covariates; ``None``
    without either) and the one-hot of a query's batches (``None`` without a query mapping).

    A query's cells (codes ``first_query_batch`` and up) have zeros in the reference's batch
    columns, and the reference's cells zeros in the query's.

    Examples
    --------
    >>> reference, query = covariate_inputs(torch.tensor([0, 1, 2]), None, 2, 2, 1)
    >>> reference.tolist(), query.tolist()
    ([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]], [[0.0], [0.0], [1.0]])
    """
    dtype = torch.get_default_dtype()
    if not n_query_batches:
        one_hot = F.one_hot(batch_index, n_batches).to(dtype) if n_batches else None
        return _joined(one_hot, covariates), None
    is_new = (batch_index >= first_query_batch).unsqueeze(-1)
    one_hot = None
    if n_batches:
        one_hot = F.one_hot(batch_index.clamp(max=first_query_batch - 1), n_batches).to(dtype)
        one_hot = one_hot * ~is_new
    new = F.one_hot((batch_index - first_query_batch).clamp(min=0), n_query_batches).to(dtype)
    return _joined(one_hot, covariates), new * is_new


def _joined(one_hot: torch.Tensor | None, covariates: torch.Tensor | None) -> torch.Tensor | None:
    if one_hot is None or covariates is None:
        return one_hot if covariates is None else covariates
    return torch.cat([one_hot, covariates.to(one_hot.dtype)], dim=-1)
