"""p(z): the standard normal, or a learned mixture of diagonal normals (the default).

The mixture's weights, means and scales are ordinary parameters of the module
(``prior_logits``, ``prior_locs``, ``prior_raw_scales``), trained with the rest by the ELBO;
its KL term is estimated from the guide's sample, as Pyro does for any prior without a closed
form. Cells of one type gather around a component instead of being pulled towards one origin
(``docs/embedding.md`` measures what that does to neighbourhoods).
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["latent_prior", "mixture_parameters"]


def mixture_parameters(
    n_components: int, n_latent: int
) -> tuple[nn.Parameter, nn.Parameter, nn.Parameter]:
    """Starting weights (logits, all equal), means (near 0) and scales (before softplus: 1) of
    a mixture prior of ``n_components`` normals in ``n_latent`` dimensions."""
    logits = nn.Parameter(torch.zeros(n_components))
    locs = nn.Parameter(0.1 * torch.randn(n_components, n_latent))
    raw_scales = nn.Parameter(torch.full((n_components, n_latent), math.log(math.e - 1.0)))
    return logits, locs, raw_scales


def latent_prior(
    n_cells: int,
    n_latent: int,
    like: torch.Tensor,
    mixture: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> dist.Distribution:
    """p(z) for ``n_cells`` cells, event shape ``(n_latent,)``, on ``like``'s device and dtype:
    the standard normal, or the mixture ``(logits, locs, raw_scales)``.

    Examples
    --------
    >>> logits, locs, raw_scales = mixture_parameters(3, 2)
    >>> prior = latent_prior(5, 2, torch.zeros(1), (logits, locs, raw_scales))
    >>> prior.batch_shape, prior.event_shape
    (torch.Size([5]), torch.Size([2]))
    """
    if mixture is None:
        zero, one = like.new_zeros(()), like.new_ones(())
        return dist.Normal(zero, one).expand([n_cells, n_latent]).to_event(1)
    logits, locs, raw_scales = mixture
    components = dist.Normal(locs, F.softplus(raw_scales) + 1e-3)
    weights = dist.Categorical(logits=logits)
    return dist.MixtureSameFamily(weights, components.to_event(1)).expand([n_cells])
