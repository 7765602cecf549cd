"""Count likelihoods: negative binomial, zero-inflated NB and Poisson.

The log-probabilities are our own vectorised functions rather than Pyro's built-in
``NegativeBinomial``: they take the log-mean directly (the decoder produces it as
``log_softmax + log(library)``, so no ``log(mu + eps)`` is needed), compute the per-gene
terms once per gene instead of once per entry, and can skip ``lgamma(x + 1)``, which does
not depend on any parameter, while training. Reported likelihoods always include it.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from pyro.distributions import TorchDistribution
from torch.distributions import constraints

__all__ = [
    "CountDistribution",
    "counts_from_logits",
    "nb_log_prob",
    "poisson_log_prob",
    "zinb_log_prob",
]


def nb_log_prob(
    x: torch.Tensor,
    log_mu: torch.Tensor,
    log_theta: torch.Tensor,
    *,
    include_constant: bool = True,
) -> torch.Tensor:
    """Elementwise log-probability of counts under NB(mean=mu, inverse dispersion=theta).

    Parameters
    ----------
    x
        Counts, ``(cells, genes)``.
    log_mu
        Log of the mean, broadcastable to ``x``.
    log_theta
        Log of the inverse dispersion (``var = mu + mu**2 / theta``), usually ``(genes,)``.
    include_constant
        Include ``-lgamma(x + 1)``. Training may leave it out: it has no gradient.

    Returns
    -------
    Tensor of the broadcast shape of the inputs.

    Examples
    --------
    >>> x = torch.tensor([[0.0, 3.0]])
    >>> nb_log_prob(x, torch.log(torch.tensor([[1.0, 2.0]])), torch.zeros(2)).shape
    torch.Size([1, 2])
    """
    if x.dim() == 2 and (include_constant or x.device.type == "cpu"):
        # Sparse route (see _nb_on_nonzeros); on the GPU only for reporting, since
        # nonzero() waits for the device.
        rows, cols = x.nonzero(as_tuple=True)
        if rows.numel() < _SPARSE_BELOW * x.numel():
            return _nb_on_nonzeros(x, log_mu, log_theta, rows, cols, include_constant)
    if include_constant and x.dtype != torch.float64:
        # The exact likelihood is evaluated for reporting only. Its terms cancel badly in
        # float32 for large counts (lgamma(x + theta) against lgamma(x + 1)), so it is
        # computed in float64 and cast back.
        wide = nb_log_prob(x.double(), log_mu.double(), log_theta.double())
        return wide.to(x.dtype)
    return _nb_dense(x, log_mu, log_theta, include_constant)


def _nb_dense(
    x: torch.Tensor, log_mu: torch.Tensor, log_theta: torch.Tensor, include_constant: bool
) -> torch.Tensor:
    theta = log_theta.exp()
    # log(theta / (theta + mu)) = -softplus(d) and log(mu / (theta + mu)) = -softplus(-d)
    # with d = log(mu / theta): no cancellation between two large logs.
    d = log_mu - log_theta
    # lgamma(theta) is computed on log_theta's own (per-gene) shape, then broadcast.
    out = (
        torch.lgamma(x + theta) - torch.lgamma(theta) - theta * F.softplus(d) - x * F.softplus(-d)
    )
    if include_constant:
        out = out - torch.lgamma(x + 1.0)
    return out


# Below this fraction of nonzero entries the log-probability computes its x-dependent terms on
# the nonzeros only (typical scRNA-seq minibatches are 80-95 % zeros).
_SPARSE_BELOW = 0.5


def _nb_on_nonzeros(
    x: torch.Tensor,
    log_mu: torch.Tensor,
    log_theta: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    include_constant: bool,
) -> torch.Tensor:
    """NB log-probability with the full formula evaluated at the nonzero entries only.

    At x = 0 the log-probability is just ``-theta * softplus(d)``, one product with no
    cancellation; that is computed densely. At the nonzeros the full formula overwrites it:
    the expensive lgamma (and digamma in the backward pass) run on the nonzeros alone. For
    the exact likelihood (reporting), the nonzeros are computed in float64, where the large
    lgamma terms cancel without loss, with no dense float64 temporaries.
    """
    theta = log_theta.exp()
    zero_value = -theta * F.softplus(log_mu - log_theta)
    values = x[rows, cols]
    log_mu_nz = log_mu.expand_as(x)[rows, cols]
    log_theta_nz = log_theta.expand_as(x)[rows, cols]
    if include_constant:
        values, log_mu_nz, log_theta_nz = (
            values.double(),
            log_mu_nz.double(),
            log_theta_nz.double(),
        )
    nonzero = _nb_dense(values, log_mu_nz, log_theta_nz, include_constant)
    return zero_value.expand_as(x).index_put((rows, cols), nonzero.to(x.dtype))


def zinb_log_prob(
    x: torch.Tensor,
    log_mu: torch.Tensor,
    log_theta: torch.Tensor,
    zi_logits: torch.Tensor,
    *,
    include_constant: bool = True,
) -> torch.Tensor:
    """Elementwise log-probability under a zero-inflated NB.

    ``P(0) = pi + (1 - pi) NB(0)`` and ``P(x > 0) = (1 - pi) NB(x)`` with
    ``pi = sigmoid(zi_logits)``. Other arguments as in :func:`nb_log_prob`.
    """
    nb = nb_log_prob(x, log_mu, log_theta, include_constant=include_constant)
    log_one_minus_pi = -F.softplus(zi_logits)
    # For x == 0 the NB term equals theta * (log theta - log(theta + mu)).
    zero = torch.logaddexp(zi_logits, nb) + log_one_minus_pi
    return torch.where(x == 0, zero, nb + log_one_minus_pi)


def poisson_log_prob(
    x: torch.Tensor, log_mu: torch.Tensor, *, include_constant: bool = True
) -> torch.Tensor:
    """Elementwise Poisson log-probability with log-mean ``log_mu``."""
    out = x * log_mu - log_mu.exp()
    if include_constant:
        out = out - torch.lgamma(x + 1.0)
    return out


def _broadcast_shapes(shapes: list[torch.Size]) -> torch.Size:
    """``torch.broadcast_shapes`` for a few shapes, without its cost per call (a distribution
    is built at every training step)."""
    out = [1] * max(len(s) for s in shapes)
    for shape in shapes:
        for i, n in enumerate(shape, len(out) - len(shape)):
            if n != 1 and out[i] not in (1, n):
                raise ValueError(f"shapes {[tuple(s) for s in shapes]} do not broadcast")
            out[i] = n if n != 1 else out[i]
    return torch.Size(out)


class CountDistribution(TorchDistribution):
    """NB, ZINB or Poisson counts as one Pyro distribution, parametrised by the log-mean.

    Parameters
    ----------
    log_mu
        Log of the mean, ``(cells, genes)``.
    log_theta
        Log inverse dispersion, broadcastable to ``log_mu``; ``None`` for Poisson.
    zi_logits
        Zero-inflation logits, broadcastable to ``log_mu``; ``None`` for no zero inflation.
    include_constant
        Whether :meth:`log_prob` includes ``-lgamma(x + 1)`` (exact likelihood) or not
        (the training objective, which differs by a constant).
    logits, log_library
        Instead of ``log_mu``: the decoder's gene logits ``(cells, genes)`` and each cell's
        log library size ``(cells,)``, with ``log_mu = log_softmax(logits) + log_library``
        computed when first needed (the fused training objective of
        :class:`~scvae._vae.objective.CountRows` starts from the logits and never needs it).
    """

    arg_constraints: ClassVar[dict] = {}
    support = constraints.nonnegative_integer
    has_rsample = False
    #: With missing entries (``SCVAEModule.decode`` with a mask): the log of the expression
    #: share on each cell's observed genes, ``(cells,)``; ``None`` for complete data.
    log_observed_share: torch.Tensor | None = None

    def __init__(
        self,
        log_mu: torch.Tensor | None = None,
        log_theta: torch.Tensor | None = None,
        zi_logits: torch.Tensor | None = None,
        *,
        include_constant: bool = True,
        logits: torch.Tensor | None = None,
        log_library: torch.Tensor | None = None,
        validate_args: bool | None = None,
    ) -> None:
        if (log_mu is None) == (logits is None) or (logits is None) != (log_library is None):
            raise ValueError("give either log_mu, or logits and log_library")
        self._log_mu = log_mu
        self.logits, self.log_library = logits, log_library
        self.log_theta = log_theta
        self.zi_logits = zi_logits
        self.include_constant = include_constant
        first = log_mu if log_mu is not None else logits
        shapes = [first.shape] + [t.shape for t in (log_theta, zi_logits) if t is not None]
        super().__init__(_broadcast_shapes(shapes), validate_args=validate_args)

    @property
    def log_mu(self) -> torch.Tensor:
        """Log of the mean (from the logits on first use, when given those)."""
        if self._log_mu is None:
            log_share = torch.log_softmax(self.logits, dim=-1)
            self._log_mu = log_share + self.log_library.unsqueeze(-1)
        return self._log_mu

    def expand(self, batch_shape, _instance=None) -> CountDistribution:
        # Pyro's plates call expand on every sample site, usually with the shape the
        # distribution already has. Only the log-mean is expanded: per-gene parameters stay
        # per gene (they broadcast), so that their terms are not computed once per entry
        # (expanding them made the training step 10-40 % slower).
        batch_shape = torch.Size(batch_shape)
        if batch_shape == self.batch_shape:
            return self
        return CountDistribution(
            self.log_mu.expand(batch_shape),
            self.log_theta,
            self.zi_logits,
            include_constant=self.include_constant,
        )

    def at(self, rows: torch.Tensor, cols: torch.Tensor) -> CountDistribution:
        """The 1-d distribution of the entries ``(rows, cols)`` of a 2-d distribution."""

        def pick(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.expand(self.batch_shape)[rows, cols]

        return CountDistribution(
            pick(self.log_mu),
            pick(self.log_theta),
            pick(self.zi_logits),
            include_constant=self.include_constant,
        )

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        keep = self.include_constant
        if self.log_theta is None:
            return poisson_log_prob(value, self.log_mu, include_constant=keep)
        if self.zi_logits is None:
            return nb_log_prob(value, self.log_mu, self.log_theta, include_constant=keep)
        return zinb_log_prob(
            value, self.log_mu, self.log_theta, self.zi_logits, include_constant=keep
        )

    @property
    def mean(self) -> torch.Tensor:
        mu = self.log_mu.exp()
        if self.zi_logits is not None:
            mu = mu * torch.sigmoid(-self.zi_logits)
        return mu.expand(self.batch_shape)

    @property
    def variance(self) -> torch.Tensor:
        mu = self.log_mu.exp()
        var = mu if self.log_theta is None else mu + mu.square() / self.log_theta.exp()
        if self.zi_logits is None:
            return var.expand(self.batch_shape)
        keep = torch.sigmoid(-self.zi_logits)
        # Mixture of a point mass at 0 and the NB: E[x^2] scaled by keep, minus the mean^2.
        return (keep * (var + mu.square()) - (keep * mu).square()).expand(self.batch_shape)

    @torch.no_grad()
    def sample(self, sample_shape: torch.Size | tuple = ()) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)
        mu = self.log_mu.exp().expand(shape)
        if self.log_theta is not None:
            # Gamma-Poisson mixture; the rate is clamped so that torch.poisson stays finite.
            theta = self.log_theta.exp().expand(shape)
            rate = torch.distributions.Gamma(theta, theta / mu.clamp(min=1e-30)).sample()
            mu = rate.clamp(max=1e8)
        counts = torch.poisson(mu)
        if self.zi_logits is not None:
            dropped = torch.rand(shape, device=counts.device) < torch.sigmoid(
                self.zi_logits.expand(shape)
            )
            counts = counts.masked_fill(dropped, 0.0)
        return counts


def counts_from_logits(
    logits: torch.Tensor,
    log_library: torch.Tensor,
    log_theta: torch.Tensor | None,
    zi_logits: torch.Tensor | None,
    observed: torch.Tensor | None = None,
    *,
    include_constant: bool = True,
) -> CountDistribution:
    """The counts of cells whose decoder gave gene ``logits`` ``(cells, genes)`` and whose log
    library size is ``log_library`` ``(cells,)``.

    With ``observed`` (``(cells, genes)``, False where missing), the expression shares are
    renormalised over each cell's observed genes, since the observed library is a sum over
    those alone; the log of the share they held is kept as ``log_observed_share``.

    Examples
    --------
    >>> logits, log_l = torch.zeros(1, 4), torch.log(torch.tensor([8.0]))
    >>> observed = torch.tensor([[True, True, False, False]])
    >>> counts_from_logits(logits, log_l, None, None, observed).log_mu.exp().tolist()
    [[4.0, 4.0, 4.0, 4.0]]
    """
    if observed is None:
        return CountDistribution(
            None,
            log_theta,
            zi_logits,
            logits=logits,
            log_library=log_library,
            include_constant=include_constant,
        )
    log_share = torch.log_softmax(logits, dim=-1)
    observed_share = torch.logsumexp(log_share.masked_fill(~observed, float("-inf")), dim=-1)
    log_mu = log_share - observed_share.unsqueeze(-1) + log_library.unsqueeze(-1)
    counts = CountDistribution(log_mu, log_theta, zi_logits, include_constant=include_constant)
    counts.log_observed_share = observed_share
    return counts
