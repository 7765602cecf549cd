"""The model's evidence per cell, log p(x), estimated by importance sampling."""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch

from .library import log_library
from .module import SCVAEModule
from .objective import CountRows

__all__ = ["importance_log_likelihood"]

#: Draws of z from the prior behind the estimate of p(l) of a ``library_from_latent`` model
#: with complete data (one decoding each with missing entries: ``n_samples`` there).
LIBRARY_PRIOR_DRAWS = 1000


@torch.no_grad()
def importance_log_likelihood(
    module: SCVAEModule,
    x: torch.Tensor,
    library: torch.Tensor,
    batch_index: torch.Tensor,
    observed: torch.Tensor | None = None,
    *,
    covariates: torch.Tensor | None = None,
    n_samples: int = 100,
) -> torch.Tensor:
    """Per-cell estimate of log p(x) by importance sampling with the guide as proposal.

    ``log p(x) ~= logsumexp_s [log p(x | z_s) + log p(z_s) - log q(z_s | x)] - log S`` with
    ``z_s ~ q(z | x)``; exact likelihood (constants included), observed entries only.

    Every model takes the library size ``l`` as given, so this is ``log p(x | l)``. A
    ``library_from_latent`` model also generates ``l``: its estimate is
    ``log p(x, l) - log p(l)``, the first with ``p(l | z_s)`` in the weights, the second
    ``log mean_s p(l | z_s)`` over draws of z from the prior.
    """
    loc, scale = module.encode(x, library, batch_index, observed, covariates=covariates)
    q = dist.Normal(loc, scale).to_event(1)
    prior = module.prior(x.shape[0], loc)
    log_l = log_library(library)
    log_w = []
    for _ in range(n_samples):
        z = q.sample()
        counts = module.decode(z, library, batch_index, observed, covariates=covariates)
        log_px = CountRows(counts, observed).log_prob(x)
        if module.library_head is not None:
            given_z = module.library_distribution(
                z, batch_index, covariates, counts.log_observed_share
            )
            log_px = log_px + given_z.log_prob(log_l)
        log_w.append(log_px + prior.log_prob(z) - q.log_prob(z))
    estimate = torch.logsumexp(torch.stack(log_w), dim=0) - math.log(n_samples)
    if module.library_head is not None:
        estimate = estimate - _log_library_evidence(
            module, prior, library, batch_index, observed, covariates, n_samples
        )
    return estimate


def _log_library_evidence(
    module: SCVAEModule,
    prior: dist.Distribution,
    library: torch.Tensor,
    batch_index: torch.Tensor,
    observed: torch.Tensor | None,
    covariates: torch.Tensor | None,
    n_samples: int,
) -> torch.Tensor:
    """``log p(l)`` per cell, ``log mean_s p(l | z_s)`` with ``z_s`` drawn from the prior."""
    log_l = log_library(library)
    draws = LIBRARY_PRIOR_DRAWS if observed is None else n_samples
    log_p = []
    for _ in range(draws):
        z = prior.sample()
        share = None
        if observed is not None:
            counts = module.decode(z, library, batch_index, observed, covariates=covariates)
            share = counts.log_observed_share
        given_z = module.library_distribution(z, batch_index, covariates, share)
        log_p.append(given_z.log_prob(log_l))
    return torch.logsumexp(torch.stack(log_p), dim=0) - math.log(draws)
