"""The library size generated from z (``library_from_latent``).

Such a model also generates each cell's log library size, ``log l ~ Normal(w'[z, b, c] + a,
s)``, and its encoder reads the standardised log library beside the counts: depth that differs
between cell states is then held in z, as far as it pays for its KL (``docs/embedding.md``).
The counts' likelihood still takes ``l`` as observed.
"""

from __future__ import annotations

import math

import numpy as np
import pyro.distributions as dist
import torch
from torch import nn

__all__ = ["LibraryHead", "library_standardisation", "log_library"]


def log_library(library: torch.Tensor) -> torch.Tensor:
    """``log l`` per cell, libraries below one count read as one."""
    return torch.log(library.clamp(min=1.0))


def library_standardisation(library: np.ndarray) -> dict[str, float]:
    """Mean and standard deviation of the cells' log library sizes (``library_center``,
    ``library_spread`` of the module; the spread at least 0.05).

    Examples
    --------
    >>> {k: round(v, 3) for k, v in library_standardisation(np.array([100.0, 1000.0])).items()}
    {'library_center': 5.756, 'library_spread': 1.151}
    """
    log_l = np.log(np.maximum(np.asarray(library, dtype=np.float64), 1.0))
    return {"library_center": float(log_l.mean()), "library_spread": float(max(log_l.std(), 0.05))}


class LibraryHead(nn.Module):
    """``p(log l | z, b, c)``: a linear map of z and the covariate inputs, and one spread,
    started at the training cells' mean and spread of log library sizes (Adam moves a
    parameter by about its learning rate per step: an offset started at 0 would take
    thousands of steps to reach a mean log library near 7, and z would make up for it).

    Parameters
    ----------
    n_inputs
        Width of ``[z, covariate inputs]``.
    center, spread
        Mean and standard deviation of the training cells' log library sizes.
    """

    def __init__(self, n_inputs: int, center: float, spread: float) -> None:
        super().__init__()
        if not (math.isfinite(spread) and spread > 0):
            raise ValueError(f"library_spread must be positive, got {spread!r}")
        self.center, self.spread = float(center), float(spread)
        self.linear = nn.Linear(n_inputs, 1)
        nn.init.constant_(self.linear.bias, self.center)
        self.log_sd = nn.Parameter(torch.tensor(math.log(self.spread)))

    def encoder_column(self, library: torch.Tensor) -> torch.Tensor:
        """The standardised log library, ``(cells, 1)``: the encoder's extra input."""
        return ((log_library(library) - self.center) / self.spread).unsqueeze(-1)

    def forward(
        self,
        z: torch.Tensor,
        inputs: torch.Tensor | None = None,
        log_observed_share: torch.Tensor | None = None,
    ) -> dist.Normal:
        """``p(log l | z, inputs)``, ``(cells,)``. ``log_observed_share``: the log of the
        decoder's expression share on each cell's observed genes
        (``CountDistribution.log_observed_share``); the observed library of a cell with
        missing entries is that share of its whole library."""
        h = z if inputs is None else torch.cat([z, inputs.to(z.dtype)], dim=-1)
        mean = self.linear(h).squeeze(-1)
        if log_observed_share is not None:
            mean = mean + log_observed_share
        return dist.Normal(mean, self.log_sd.exp())
