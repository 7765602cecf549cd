"""One way in: an AnnData, in memory or backed by its file, read into counts by a ``ReadSpec``.

:func:`read_counts` is the only place that asks which kind of AnnData it was handed. Both
kinds become one record, :class:`~scvae._data.counts.CountData`: in memory its counts are one
checked CSR matrix; for a backed file one streaming pass checks them and collects what
training needs per cell, and the counts stay in the file, read in blocks of rows through a
:class:`~scvae._data.counts.BackedMatrix`. Everything after reading works from that record.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from anndata import AnnData

from .backed import prepare_streaming
from .checks import missing_genes
from .counts import CountData
from .covariates import CovariateLayout
from .memory import prepare_counts

__all__ = ["ReadSpec", "read_counts"]


@dataclass(frozen=True)
class ReadSpec:
    """Where the counts and covariates of an AnnData are, and what a trained model expects.

    Attributes
    ----------
    layer, batch_key, labels_key, mask_layer
        As in :func:`scvae.fit`.
    batch_categories, gene_names
        A trained model's batches and genes (``None`` at fit time).
    categorical_covariate_keys, continuous_covariate_keys
        As in :func:`scvae.fit`.
    covariate_layout
        A trained model's covariates (``None`` at fit time).
    absent_genes_missing
        Read the model's genes that ``adata`` lacks as missing values (a query mapping).
    """

    layer: str | None = None
    batch_key: str | None = None
    labels_key: str | None = None
    mask_layer: str | None = None
    batch_categories: list[str] | None = None
    gene_names: list[str] | None = None
    categorical_covariate_keys: tuple[str, ...] = ()
    continuous_covariate_keys: tuple[str, ...] = ()
    covariate_layout: CovariateLayout | None = None
    absent_genes_missing: bool = False


def read_counts(
    adata: AnnData,
    spec: ReadSpec,
    *,
    for_fit: bool = True,
    share: tuple[int, int] = (0, 1),
    reduce: Callable[..., list[np.ndarray]] | None = None,
) -> CountData:
    """The counts of ``adata`` as ``spec`` says, checked; ``adata`` is not modified.

    ``for_fit``: also refuse genes with every entry missing (nothing can be learnt about
    them) and, for a backed file, make the checking pass over it; without it (embedding new
    cells), a backed file is checked block by block as it is encoded. ``share`` and
    ``reduce``: this process's ``(rank, world_size)`` and the sum over processes, so that
    processes of one job each read a share of a backed file (see
    :func:`~scvae._data.backed.prepare_streaming`).
    """
    options = vars(spec)  # the fields are the readers' keywords
    if isinstance(adata, AnnData) and adata.isbacked:
        return prepare_streaming(adata, check=for_fit, share=share, reduce=reduce, **options)
    data = prepare_counts(adata, **options)
    unmeasured = missing_genes(data) if for_fit else []
    if unmeasured:
        raise ValueError(
            f"{len(unmeasured)} genes have every entry missing (e.g. {unmeasured[:5]}); "
            "nothing can be learnt about them: remove them before fitting"
        )
    return data
