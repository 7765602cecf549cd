"""scvae: a Pyro variational autoencoder for single-cell RNA-seq counts, for AnnData.

>>> import scvae
>>> model = scvae.fit(adata, layer="counts", batch_key="batch")  # doctest: +SKIP
>>> model.save("model"); model = scvae.load("model")  # doctest: +SKIP
"""

from . import datasets, metrics, pl
from ._data.panels import concat_panels
from ._fit.fit import fit
from ._model.scvae import SCVAE, load
from ._tools.denoise import denoise
from ._tools.differential import differential_expression
from ._tools.generate import generate
from ._tools.impute import impute
from ._tools.ppc import PosteriorPredictiveCheck, gene_statistics, posterior_predictive_check
from ._tools.predictive import predictive_log_likelihood
from ._tools.rank_genes import rank_genes_groups
from ._train.guards import NonFiniteLossError
from ._version import __version__

__all__ = [
    "SCVAE",
    "NonFiniteLossError",
    "PosteriorPredictiveCheck",
    "__version__",
    "concat_panels",
    "datasets",
    "denoise",
    "differential_expression",
    "fit",
    "gene_statistics",
    "generate",
    "impute",
    "load",
    "metrics",
    "pl",
    "posterior_predictive_check",
    "predictive_log_likelihood",
    "rank_genes_groups",
]
