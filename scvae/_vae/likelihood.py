"""The model's evidence per cell, log p(x), estimated by importance sampling."""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch

from .module import SCVAEModule
from .objective import CountRows

__all__ = ["importance_log_likelihood"]


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
    """
    loc, scale = module.encode(x, library, batch_index, observed, covariates=covariates)
    q = dist.Normal(loc, scale).to_event(1)
    prior = module.prior(x.shape[0], loc)
    log_w = []
    for _ in range(n_samples):
        z = q.sample()
        counts = module.decode(z, library, batch_index, observed, covariates=covariates)
        log_px = CountRows(counts, observed).log_prob(x)
        log_w.append(log_px + prior.log_prob(z) - q.log_prob(z))
    return torch.logsumexp(torch.stack(log_w), dim=0) - math.log(n_samples)
