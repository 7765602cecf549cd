"""Where each cell type lives in latent space and how deep its cells are: what generate draws.

The prior of the model is N(0, I) over all cells; the cells of one type occupy a small region
of it. To generate cells of a type we need that region: we summarise the *aggregate
posterior* of the type's cells (the mixture of their q(z | x)) by a Gaussian mixture fitted
to their posterior means, with the mean posterior variance added to every component's
covariance (moment matching of the mixture of Gaussians). Library sizes are drawn from the
observed library sizes of the same type and batch (stored as quantiles).

The latent space is batch-corrected, so a type's region is estimated from its cells in all
batches; the batch enters through the decoder, the library sizes and the type proportions.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .._batches.split import ordered_source
from .._data.counts import CountData
from .encode import encoded

logger = logging.getLogger(__name__)

__all__ = ["LatentReference", "build_reference"]

ANY = "*"
_N_QUANTILES = 101
_CELLS_PER_COMPONENT = 200
_MAX_COMPONENTS = 5
_MAX_FIT_CELLS = 20_000


@dataclass
class GaussianMixture:
    """A mixture of full-covariance Gaussians in latent space (plain arrays, JSON-friendly)."""

    weights: np.ndarray  # (k,)
    means: np.ndarray  # (k, d)
    covariances: np.ndarray  # (k, d, d)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        component = rng.choice(len(self.weights), size=n, p=self.weights)
        chol = np.linalg.cholesky(self.covariances)
        noise = rng.standard_normal((n, self.means.shape[1]))
        return self.means[component] + np.einsum("nij,nj->ni", chol[component], noise)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k).tolist() for k in ("weights", "means", "covariances")}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GaussianMixture:
        return cls(
            *(np.asarray(d[k], dtype=np.float64) for k in ("weights", "means", "covariances"))
        )


@dataclass
class LatentReference:
    """Latent regions, library sizes and composition of the training cells, per type and batch.

    Attributes
    ----------
    labels_key
        The obs column the types came from (``None``: no types, one region for all cells).
    label_categories, batch_categories
        Known types and batches.
    regions
        Type (or ``"*"`` for all cells) -> Gaussian mixture of the aggregate posterior.
    log_library_quantiles
        ``"type|batch"`` (either may be ``"*"``) -> quantiles of log library size.
    counts
        ``(types, batches)`` number of training cells of each type in each batch.
    """

    labels_key: str | None
    label_categories: list[str]
    batch_categories: list[str]
    regions: dict[str, GaussianMixture]
    log_library_quantiles: dict[str, np.ndarray]
    counts: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))

    # -- sampling ---------------------------------------------------------------------------
    def type_probabilities(self, batch: str | None) -> np.ndarray:
        """Share of each type among the cells of ``batch`` (all cells if ``None``)."""
        counts = self.counts.sum(1) if batch is None else self.counts[:, self._batch(batch)]
        return counts / counts.sum()

    def sample_z(self, cell_type: str | None, n: int, rng: np.random.Generator) -> np.ndarray:
        return self.regions[ANY if cell_type is None else cell_type].sample(n, rng)

    def sample_log_library(
        self, cell_type: str | None, batch: str | None, n: int, rng: np.random.Generator
    ) -> np.ndarray:
        """Log library sizes from the cells of the type and batch (broader if too few)."""
        for key in (
            _key(cell_type, batch),
            _key(cell_type, None),
            _key(None, batch),
            _key(None, None),
        ):
            if key in self.log_library_quantiles:
                q = self.log_library_quantiles[key]
                return np.interp(rng.random(n), np.linspace(0, 1, len(q)), q)
        raise KeyError(f"no library sizes stored for {cell_type!r} in batch {batch!r}")

    def _batch(self, batch: str) -> int:
        return self.batch_categories.index(batch)

    # -- storage ----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "labels_key": self.labels_key,
            "label_categories": self.label_categories,
            "batch_categories": self.batch_categories,
            "regions": {k: v.to_dict() for k, v in self.regions.items()},
            "log_library_quantiles": {
                k: v.tolist() for k, v in self.log_library_quantiles.items()
            },
            "counts": self.counts.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LatentReference:
        return cls(
            labels_key=d["labels_key"],
            label_categories=list(d["label_categories"]),
            batch_categories=list(d["batch_categories"]),
            regions={k: GaussianMixture.from_dict(v) for k, v in d["regions"].items()},
            log_library_quantiles={
                k: np.asarray(v, dtype=np.float64) for k, v in d["log_library_quantiles"].items()
            },
            counts=np.asarray(d["counts"], dtype=np.int64),
        )


def _key(cell_type: str | None, batch: str | None) -> str:
    return f"{ANY if cell_type is None else cell_type}|{ANY if batch is None else batch}"


@torch.no_grad()
def build_reference(
    module,
    data: CountData,
    *,
    labels_key: str | None,
    device: torch.device,
    seed: int = 0,
) -> LatentReference:
    """Summarise the aggregate posterior and library sizes of ``data`` per type and batch.

    ``data.labels`` (codes, -1 for unlabelled) define the types; unlabelled cells count
    towards the all-cells region only. Cells with missing entries contribute their library
    size scaled up by the model's expected share of their observed genes.
    """
    module.eval()
    source = ordered_source(data, batch_size=1024, device=device)
    # Filled in place rather than collected per minibatch: small arrays kept alive between
    # the minibatches' large freed buffers keep the heap from shrinking (~2 kB per cell).
    loc = np.empty((data.n_cells, module.n_latent))
    var = np.empty((data.n_cells, module.n_latent))
    log_library = np.empty(data.n_cells)
    filled = 0
    for b, z_loc, scale in encoded(module, source):
        lib = b.library
        if b.observed is not None:
            ones = torch.ones_like(lib)
            share = module.decode(z_loc, ones, b.batch_index, covariates=b.covariates).mean
            lib = lib / (share * b.observed).sum(-1).clamp(min=1e-3)
        rows = slice(filled, filled + len(lib))
        loc[rows] = z_loc.cpu().numpy()
        var[rows] = scale.square().cpu().numpy()
        log_library[rows] = lib.cpu().numpy()
        filled += len(lib)
    log_library = np.log(np.maximum(log_library, 1.0))

    rng = np.random.default_rng(seed)
    labels = data.labels if data.labels is not None else np.full(data.n_cells, -1)
    label_names = list(data.label_categories) if data.labels is not None else []
    batches = list(data.batch_categories)
    n_batches = max(1, len(batches))

    regions = {ANY: _fit_region(loc, var, rng)}
    quantiles = {_key(None, None): _quantiles(log_library)}
    for j, batch in enumerate(batches):
        in_batch = data.batch_index == j
        if in_batch.any():
            quantiles[_key(None, batch)] = _quantiles(log_library[in_batch])
    counts = np.zeros((len(label_names), n_batches), dtype=np.int64)
    for i, name in enumerate(label_names):
        of_type = labels == i
        if not of_type.any():
            continue
        regions[name] = _fit_region(loc[of_type], var[of_type], rng)
        quantiles[_key(name, None)] = _quantiles(log_library[of_type])
        counts[i] = np.bincount(data.batch_index[of_type], minlength=n_batches)
        for j, batch in enumerate(batches):
            both = of_type & (data.batch_index == j)
            if both.sum() >= 5:
                quantiles[_key(name, batch)] = _quantiles(log_library[both])
    return LatentReference(
        labels_key=labels_key,
        label_categories=label_names,
        batch_categories=batches,
        regions=regions,
        log_library_quantiles=quantiles,
        counts=counts,
    )


def _fit_region(loc: np.ndarray, var: np.ndarray, rng: np.random.Generator) -> GaussianMixture:
    """Gaussian mixture of the aggregate posterior of these cells."""
    from sklearn.mixture import GaussianMixture as SkGaussianMixture

    n, d = loc.shape
    mean_posterior_var = np.diag(var.mean(0))
    k = int(np.clip(n // _CELLS_PER_COMPONENT, 1, _MAX_COMPONENTS))
    if k == 1:
        centred = loc - loc.mean(0)
        cov = centred.T @ centred / max(n - 1, 1) + mean_posterior_var + 1e-6 * np.eye(d)
        return GaussianMixture(np.ones(1), loc.mean(0, keepdims=True), cov[None])
    fit_on = loc if n <= _MAX_FIT_CELLS else loc[rng.choice(n, _MAX_FIT_CELLS, replace=False)]
    gmm = SkGaussianMixture(
        k, covariance_type="full", reg_covar=1e-6, random_state=int(rng.integers(2**31))
    ).fit(fit_on)
    return GaussianMixture(
        gmm.weights_ / gmm.weights_.sum(),
        gmm.means_,
        gmm.covariances_ + mean_posterior_var[None],
    )


def _quantiles(values: np.ndarray) -> np.ndarray:
    return np.quantile(values, np.linspace(0, 1, _N_QUANTILES))
