"""Adaptive shrinkage of per-gene effects: a prior learnt from all genes of a comparison.

Each gene's estimate comes with a standard error; taken alone, ``P(|effect| > delta)`` from
that likelihood would ignore that most genes do not change, and a comparison of thousands of
genes would then select too many null genes near the threshold. Here, as in ashr (Stephens
2017, "False discovery rates: a new deal"), the effects share a prior, a mixture of
zero-centred normals on a fixed grid of scales whose weights are fitted to all genes by
maximum likelihood (EM), with extra weight on the first component, a point mass at zero ("no
change"), so that the fit leans towards it when the data cannot tell. Each gene's posterior is
then, in closed form, that point mass and a mixture of normals: ``P(|effect| > 0)`` is the
posterior probability of any change at all (one minus ashr's local false discovery rate), not
1 as it would be under normals alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import ndtr

__all__ = ["ShrunkEffects", "shrink"]

#: Prior scales (log2 fold change): the point mass of "no change" first, then doublings up to
#: large effects.
SCALES = np.array([0.0, 0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4])
#: Extra pseudo-observations on the point mass (ashr's "nullbiased" penalty).
NULL_WEIGHT = 10.0


@dataclass(frozen=True)
class ShrunkEffects:
    """Posterior of each gene's effect: mixture weights, means and sds per component (an sd
    of 0: a point mass at the mean)."""

    weights: np.ndarray  # (genes, components)
    means: np.ndarray
    sds: np.ndarray

    def mean(self) -> np.ndarray:
        return (self.weights * self.means).sum(axis=1)

    def sd(self) -> np.ndarray:
        second = (self.weights * (self.sds**2 + self.means**2)).sum(axis=1)
        return np.sqrt(np.maximum(second - self.mean() ** 2, 0.0))

    def cdf(self, value: np.ndarray | float) -> np.ndarray:
        """``P(effect <= value)`` per gene."""
        return self._below(value, strict=False)

    def proba_beyond(self, delta: float) -> np.ndarray:
        """``P(|effect| > delta)`` per gene (``delta`` >= 0; 0: any change).

        Examples
        --------
        900 genes without a change and 100 changed by 2 (log2), each estimated with an error
        of 0.2: the chance of any change at all, then of one beyond 0.5, on each set.

        >>> rng = np.random.default_rng(0)
        >>> truth = np.r_[np.zeros(900), rng.choice([-2.0, 2.0], 100)]
        >>> posterior = shrink(truth + rng.normal(0, 0.2, 1000), np.full(1000, 0.2))
        >>> for delta in (0.0, 0.5):
        ...     proba = posterior.proba_beyond(delta)
        ...     print(f"{proba[:900].mean():.3f} {proba[900:].mean():.3f}")
        0.089 1.000
        0.010 1.000
        """
        return 1.0 - self.cdf(delta) + self._below(-delta, strict=True)

    def _below(self, value: np.ndarray | float, *, strict: bool) -> np.ndarray:
        """``P(effect < value)`` (``strict``) or ``P(effect <= value)`` per gene."""
        value = np.asarray(value, dtype=float).reshape(-1, 1)
        point = self.sds == 0
        spread = ndtr((value - self.means) / np.where(point, 1.0, self.sds))
        mass = (self.means < value) if strict else (self.means <= value)
        return (self.weights * np.where(point, mass, spread)).sum(axis=1)

    def quantile(self, q: float, iterations: int = 60) -> np.ndarray:
        """The ``q`` quantile per gene (bisection on the mixture's distribution function)."""
        low = (self.means - 8 * self.sds).min(axis=1)
        high = (self.means + 8 * self.sds).max(axis=1)
        for _ in range(iterations):
            middle = (low + high) / 2
            below = self.cdf(middle) < q
            low, high = np.where(below, middle, low), np.where(below, high, middle)
        return (low + high) / 2


def shrink(estimate: np.ndarray, se: np.ndarray, *, iterations: int = 200) -> ShrunkEffects:
    """Posterior of each effect under a prior fitted to all of ``estimate`` (see the module).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> truth = np.r_[np.zeros(900), rng.choice([-2.0, 2.0], 100)]
    >>> posterior = shrink(truth + rng.normal(0, 0.2, 1000), np.full(1000, 0.2))
    >>> proba = posterior.proba_beyond(0.5)
    >>> print(f"{proba[:900].mean():.3f} {proba[900:].mean():.3f}")
    0.010 1.000
    """
    estimate = np.asarray(estimate, dtype=float)
    se = np.maximum(np.asarray(se, dtype=float), 1e-6)
    prior_var = SCALES**2
    total_var = prior_var[None, :] + se[:, None] ** 2
    log_density = -0.5 * (np.log(2 * np.pi * total_var) + estimate[:, None] ** 2 / total_var)
    pi = np.full(len(SCALES), 1.0 / len(SCALES))
    penalty = np.zeros(len(SCALES))
    penalty[0] = NULL_WEIGHT - 1.0
    for _ in range(iterations):
        log_post = np.log(pi)[None, :] + log_density
        log_post -= log_post.max(axis=1, keepdims=True)
        resp = np.exp(log_post)
        resp /= resp.sum(axis=1, keepdims=True)
        updated = (resp.sum(axis=0) + penalty) / (len(estimate) + penalty.sum())
        converged = np.abs(updated - pi).max() < 1e-6
        pi = updated
        if converged:
            break
    log_post = np.log(np.maximum(pi, 1e-300))[None, :] + log_density
    log_post -= log_post.max(axis=1, keepdims=True)
    weights = np.exp(log_post)
    weights /= weights.sum(axis=1, keepdims=True)
    shrinkage = prior_var[None, :] / total_var
    means = shrinkage * estimate[:, None]
    sds = np.sqrt(shrinkage * se[:, None] ** 2)
    return ShrunkEffects(weights, means, sds)
