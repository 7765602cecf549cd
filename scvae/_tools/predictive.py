"""The posterior predictive at missing entries: draws, intervals and the proper score.

:func:`predictive_draws` is the one place that encodes cells from their observed entries and
decodes the count distribution at the missing ones; imputation, its intervals and
:func:`predictive_log_likelihood` all read from it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import scipy.sparse as sp
import torch
from anndata import AnnData

from .._batches.minibatch import Minibatch
from .._batches.rows import MinibatchSource
from .._data.checks import align_genes
from .._data.counts import CountData
from .._model.encode import encoded
from .._model.scvae import SCVAE, check_model
from .._utils.device import seeded
from .._utils.options import check_int, check_seed
from .._vae.distributions import CountDistribution

__all__ = [
    "count_interval",
    "posterior_predictive",
    "predictive_draws",
    "predictive_log_likelihood",
]


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


def posterior_predictive(
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
