"""scvae: a Pyro variational autoencoder for single-cell RNA-seq counts, for AnnData.

>>> import scvae
>>> model = scvae.fit(adata, layer="counts", batch_key="batch")  # doctest: +SKIP
>>> model.save("model"); model = scvae.load("model")  # doctest: +SKIP
"""

from . import datasets, metrics, pl
from ._api import fit
from ._generate import generate
from ._impute import denoise, impute, predictive_log_likelihood
from ._model import SCVAE, load
from ._panels import concat_panels
from ._ppc import PosteriorPredictiveCheck, gene_statistics, posterior_predictive_check
from ._train import NonFiniteLossError
from ._version import __version__

__all__ = [
    "SCVAE",
    "NonFiniteLossError",
    "PosteriorPredictiveCheck",
    "__version__",
    "concat_panels",
    "datasets",
    "denoise",
    "fit",
    "gene_statistics",
    "generate",
    "impute",
    "load",
    "metrics",
    "pl",
    "posterior_predictive_check",
    "predictive_log_likelihood",
]
