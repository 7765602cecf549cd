"""scvae: a Pyro variational autoencoder for single-cell RNA-seq counts, for AnnData.

>>> import scvae
>>> model = scvae.fit(adata, layer="counts", batch_key="batch")  # doctest: +SKIP
>>> model.save("model"); model = scvae.load("model")  # doctest: +SKIP
"""

from . import datasets, pl
from ._api import fit
from ._generate import generate
from ._impute import denoise, impute, predictive_log_likelihood
from ._io import load
from ._model import SCVAE
from ._panels import concat_panels
from ._ppc import PosteriorPredictiveCheck, gene_statistics, posterior_predictive_check
from ._version import __version__

__all__ = [
    "SCVAE",
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
    "pl",
    "posterior_predictive_check",
    "predictive_log_likelihood",
]
