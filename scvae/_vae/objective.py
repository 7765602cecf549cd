"""The NB training objective per cell, from the stored entries of the minibatch.

A minibatch carries the positions and values of its stored (nonzero) counts beside the dense
block (``Minibatch.nonzeros``). The training objective of the NB likelihood, summed over each
cell's observed genes, needs ``lgamma`` (and ``digamma`` in the backward pass) only at those
entries, and no search for them: :func:`nb_rows_log_prob`, or, for one dispersion per gene
and no missing values, :func:`nb_logits_rows_log_prob`, which starts from the decoder's
logits and writes its gradient out. :class:`CountRows` is the model's ``counts`` site: one
event per cell, which takes these routes when it can and the elementwise log-probability of
:class:`~scvae._vae.distributions.CountDistribution` otherwise.
Reported likelihoods never take it (they need the exact float64 route).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from pyro.distributions import TorchDistribution
from torch.distributions import constraints

from .distributions import CountDistribution

__all__ = [
    "CountRows",
    "digamma",
    "lgamma",
    "nb_logits_rows_log_prob",
    "nb_rows_log_prob",
]


def digamma(y: torch.Tensor) -> torch.Tensor:
    """``digamma(y)`` for ``y > 0`` in plain tensor arithmetic.

    Six steps of the recurrence ``psi(y) = psi(y + 1) - 1 / y`` bring the argument to
    ``z = y + 6``, where the asymptotic series is exact to ~1e-11 in float64 (to ``z**-10``)
    and below float32's rounding (to ``z**-6``). The six reciprocals are summed in pairs that
    share ``a = y (y + 5)``: ``(2y + 5) (1/a + 1/(a + 4) + 1/(a + 6))``. In float32 as accurate
    as ``torch.digamma``, and faster on the CPU (``docs/speed.md``, measured building blocks).

    Examples
    --------
    >>> y = torch.tensor([0.5, 1.0, 30.0], dtype=torch.float64)
    >>> torch.allclose(digamma(y), torch.digamma(y))
    True
    """
    a = y * (y + 5.0)  # (y + k)(y + 5 - k) = a + k (5 - k) for k = 0, 1, 2
    shift = (a.reciprocal() + (a + 4.0).reciprocal() + (a + 6.0).reciprocal()) * (2.0 * y + 5.0)
    z = y + 6.0
    r = z.reciprocal()
    r2 = r * r
    if y.dtype == torch.float64:
        series = r2 * (1 / 12 - r2 * (1 / 120 - r2 * (1 / 252 - r2 * (1 / 240 - r2 / 132))))
    else:
        series = r2 * (1 / 12 - r2 * (1 / 120 - r2 / 252))
    return torch.log(z) - 0.5 * r - series - shift


class _Lgamma(torch.autograd.Function):
    """``torch.lgamma`` whose backward uses :func:`digamma`."""

    @staticmethod
    def forward(ctx, y: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(y)
        return torch.lgamma(y)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (y,) = ctx.saved_tensors
        return grad * digamma(y)


def lgamma(y: torch.Tensor) -> torch.Tensor:
    """``torch.lgamma(y)`` (``y > 0``), differentiated with :func:`digamma`."""
    return _Lgamma.apply(y)


def nb_rows_log_prob(
    x: torch.Tensor,
    log_mu: torch.Tensor,
    log_theta: torch.Tensor,
    nonzeros: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    observed: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-cell sum of the NB log-probability without ``lgamma(x + 1)`` (training objective).

    The minibatch supplies the positions and values of its stored entries, so no
    ``nonzero()`` search is needed (on a GPU it would wait for the device). With
    ``d = log(mu / theta)``, the log-probability of one entry is::

        x * d - (theta + x) * softplus(d) + [lgamma(x + theta) - lgamma(theta)]

    The first two terms are computed densely; the bracket is 0 at ``x = 0`` and is computed
    on the stored entries only, with ``lgamma(theta)`` once per gene, then added at their
    positions before each cell's sum. The result is the same bit for bit from run to run.

    Parameters
    ----------
    x
        Counts, ``(cells, genes)``; missing entries hold 0.
    log_mu, log_theta
        As in :func:`scvae._vae.distributions.nb_log_prob`; ``log_theta`` is ``(genes,)`` or
        ``(cells, genes)``.
    nonzeros
        ``(rows, cols, values)`` of the stored entries of ``x``: every nonzero listed once
        (stored zeros may be, they add exactly 0).
    observed
        ``(cells, genes)`` bool, True where observed; other entries are left out.

    Returns
    -------
    ``(cells,)`` tensor, equal to ``nb_log_prob(x, ..., include_constant=False)`` masked and
    summed over genes.

    Examples
    --------
    >>> x = torch.tensor([[0.0, 3.0], [1.0, 0.0]])
    >>> rows, cols = x.nonzero(as_tuple=True)
    >>> log_mu, log_theta = torch.zeros(2, 2), torch.zeros(2)
    >>> nb_rows_log_prob(x, log_mu, log_theta, (rows, cols, x[rows, cols])).shape
    torch.Size([2])
    """
    rows, cols, values = nonzeros
    theta = log_theta.exp()
    d = log_mu - log_theta
    dense = x * d - (theta + x) * F.softplus(d)
    if observed is not None:
        dense = dense.masked_fill(~observed, 0.0)
    # Gathers from (cells, genes)-shaped views, and the stored terms added back at their
    # (unique) positions: every sum runs in a fixed order (a scatter-add into cells or genes
    # would collide, and the threads' order of atomic additions would change the last bits
    # from run to run).
    theta_nz = theta.expand_as(x)[rows, cols]
    if log_theta.dim() == 1:  # lgamma(theta) once per gene (torch's own is cheaper there)
        lgamma_theta_nz = torch.lgamma(theta).expand_as(x)[rows, cols]
    else:
        lgamma_theta_nz = lgamma(theta_nz)
    stored = lgamma(values.to(theta.dtype) + theta_nz) - lgamma_theta_nz
    return dense.index_put((rows, cols), stored, accumulate=True).sum(-1)


class _LogitsNB(torch.autograd.Function):
    """:func:`nb_logits_rows_log_prob` with an analytic backward pass (see there)."""

    @staticmethod
    def forward(ctx, logits, log_theta, log_library, flat, cols, values):
        d = torch.log_softmax(logits, dim=-1).add_(log_library.unsqueeze(-1)).sub_(log_theta)
        softplus_d = F.softplus(d)  # d = log(mu / theta)
        theta = log_theta.exp()
        d_nz = d.view(-1).index_select(0, flat)
        theta_nz = theta.index_select(0, cols)
        stored = (
            values * (d_nz - softplus_d.view(-1).index_select(0, flat))
            + torch.lgamma(values + theta_nz)
            - torch.lgamma(theta).index_select(0, cols)
        )
        ctx.save_for_backward(logits, d, softplus_d, theta, flat, cols, values, theta_nz)
        # The stored terms go in at their (unique) positions before each cell's sum over
        # genes: the sums run in a fixed order on every device.
        terms = softplus_d * theta.neg()
        terms.view(-1).index_add_(0, flat, stored)
        return terms.sum(-1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        logits, d, softplus_d, theta, flat, cols, values, theta_nz = ctx.saved_tensors
        # r = d objective / d d = x - (theta + x) sigmoid(d): -theta sigmoid(d) densely, plus
        # x (1 - sigmoid(d)) at the stored entries (unique positions: a fixed-order sum).
        r = torch.sigmoid(d)
        r_nz = values * (1.0 - r.view(-1).index_select(0, flat))
        r.mul_(theta.neg())
        r.view(-1).index_add_(0, flat, r_nz)
        grad_logits = grad_log_theta = grad_log_library = None
        if ctx.needs_input_grad[1]:
            # d objective / d log(theta) = -r - theta softplus(d)
            #                              + theta (digamma(x + theta) - digamma(theta)) [x > 0]
            m = torch.addcmul(r, softplus_d, theta)
            psi_theta = torch.digamma(theta).index_select(0, cols)
            psi = theta_nz * (psi_theta - digamma(values + theta_nz))
            m.view(-1).index_add_(0, flat, psi)
            grad_log_theta = torch.mv(m.t(), grad).neg_()
        row_sums = r.sum(-1, keepdim=True)
        if ctx.needs_input_grad[2]:
            grad_log_library = row_sums.squeeze(-1) * grad
        if ctx.needs_input_grad[0]:
            # Through the softmax: r - share * (sum of r over the cell's genes).
            grad_logits = r.addcmul_(torch.softmax(logits, -1), row_sums, value=-1.0)
            grad_logits.mul_(grad.unsqueeze(-1))
        return grad_logits, grad_log_theta, grad_log_library, None, None, None


def nb_logits_rows_log_prob(
    logits: torch.Tensor,
    log_library: torch.Tensor,
    log_theta: torch.Tensor,
    nonzeros: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
) -> torch.Tensor:
    """:func:`nb_rows_log_prob` from the decoder's gene logits, in one fused step.

    With ``log_mu = log_softmax(logits) + log_library`` and one inverse dispersion per gene,
    the forward pass keeps only what the gradient needs, and the backward pass is written out
    (``d`` objective ``/ d logits = r - softmax * sum(r)``, ``r = x - (theta + x)
    sigmoid(d)``): about half the passes over the ``(cells, genes)`` block of the
    elementwise route, and the same value and gradients (a test checks both).

    Parameters
    ----------
    logits
        Gene logits of the decoder, ``(cells, genes)``.
    log_library
        Log library size of each cell, ``(cells,)``.
    log_theta
        Log inverse dispersion, ``(genes,)``.
    nonzeros
        ``(rows, cols, values)`` of the stored entries of the counts, each position once.

    Returns
    -------
    ``(cells,)`` tensor: each cell's NB log-probability without ``lgamma(x + 1)``.

    Examples
    --------
    >>> x = torch.tensor([[0.0, 3.0], [1.0, 0.0]])
    >>> rows, cols = x.nonzero(as_tuple=True)
    >>> nonzeros = (rows, cols, x[rows, cols])
    >>> logits, log_library, log_theta = torch.zeros(2, 2), x.sum(-1).log(), torch.zeros(2)
    >>> out = nb_logits_rows_log_prob(logits, log_library, log_theta, nonzeros)
    >>> log_mu = torch.log_softmax(logits, -1) + log_library.unsqueeze(-1)
    >>> torch.allclose(out, nb_rows_log_prob(x, log_mu, log_theta, nonzeros))
    True
    """
    rows, cols, values = nonzeros
    return _LogitsNB.apply(
        logits.contiguous(),
        log_theta,
        log_library.to(logits.dtype),
        rows * logits.shape[1] + cols,
        cols,
        values.to(logits.dtype),
    )


class CountRows(TorchDistribution):
    """The counts of each cell as one event: ``(cells,)`` batch of ``(genes,)`` events.

    Wraps a 2-d :class:`CountDistribution` with the observation mask and, optionally, the
    stored entries of the observed minibatch. :meth:`log_prob` returns each cell's masked sum:
    for the NB training objective with ``nonzeros`` it uses :func:`nb_logits_rows_log_prob`
    (logits given, per-gene dispersion, no missing entries) or :func:`nb_rows_log_prob`;
    otherwise the elementwise log-probability, masked and summed.
    Sampling draws from the base distribution (missing entries too).
    """

    arg_constraints: ClassVar[dict] = {}
    support = constraints.independent(constraints.nonnegative_integer, 1)
    has_rsample = False

    def __init__(
        self,
        counts: CountDistribution,
        observed: torch.Tensor | None = None,
        nonzeros: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        self.counts, self.observed, self.nonzeros = counts, observed, nonzeros
        shape = counts.batch_shape
        super().__init__(shape[:-1], shape[-1:], validate_args=False)

    def expand(self, batch_shape, _instance=None) -> CountRows:
        if torch.Size(batch_shape) == self.batch_shape:
            return self
        counts = self.counts.expand(torch.Size(batch_shape) + self.event_shape)
        return CountRows(counts, self.observed)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        counts = self.counts
        fast = (
            self.nonzeros is not None
            and not counts.include_constant
            and counts.log_theta is not None
            and counts.zi_logits is None
            and value.dim() == 2
        )
        if not fast:
            log_p = counts.log_prob(value)
            if self.observed is not None:
                log_p = log_p.masked_fill(~self.observed, 0.0)
            return log_p.sum(-1)
        if counts.logits is not None and self.observed is None and counts.log_theta.dim() == 1:
            return nb_logits_rows_log_prob(
                counts.logits, counts.log_library, counts.log_theta, self.nonzeros
            )
        return nb_rows_log_prob(
            value, counts.log_mu, counts.log_theta, self.nonzeros, self.observed
        )

    @property
    def mean(self) -> torch.Tensor:
        return self.counts.mean

    @property
    def variance(self) -> torch.Tensor:
        return self.counts.variance

    def sample(self, sample_shape: torch.Size | tuple = ()) -> torch.Tensor:
        return self.counts.sample(sample_shape)
