"""Simulated counts with known differentially expressed genes, for testing DE calls.

Two conditions (``obs["condition"]``: ``"A"``, ``"B"``) in two batches, unequally spread over
them and measured at unequal depth, so that a method that ignores batch or depth makes calls
the truth does not hold. The truth is in ``var``: ``true_lfc`` (log2 fold change of the mean
expression share of B over A, exact, after the shares are renormalised), ``is_de`` (the genes
given a fold change) and ``true_mean_A`` / ``true_mean_B`` (mean counts per cell at the
median depth).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

__all__ = ["simulate_differential"]


def simulate_differential(
    n_cells: int = 2000,
    n_genes: int = 1000,
    *,
    de_fraction: float = 0.1,
    log2_folds: tuple[float, ...] = (0.75, 1.0, 1.5, 2.0),
    n_states: int = 3,
    batch_log_fold: float = 0.3,
    share_b_by_batch: tuple[float, float] = (0.3, 0.7),
    median_library: float = 2000.0,
    depth_ratio: float = 1.5,
    seed: int = 0,
) -> AnnData:
    """NB counts of two conditions with known DE genes, batches and unequal depth.

    Every gene has a baseline share (log-normal, sd 1.5: from a few hundredths of a count
    per cell to tens); cells also fall into ``n_states`` states shared by both conditions
    (each shifting a tenth of the genes by a log fold change of about 1), the structure a
    latent space has to hold beside the condition. ``de_fraction`` of the genes change in B
    by ``±log2_folds`` (sizes drawn equally often, signs at random); each batch multiplies
    every gene by a random factor (sd ``batch_log_fold`` on the log scale); B's cells make
    up ``share_b_by_batch[k]`` of batch k, and have ``depth_ratio`` times A's depth.

    Parameters
    ----------
    n_cells, n_genes
        Size.
    de_fraction
        Share of genes that differ between A and B.
    log2_folds
        Absolute log2 fold changes of the DE genes.
    n_states
        Cell states shared by both conditions.
    batch_log_fold
        Standard deviation of the per-gene, per-batch log factor.
    share_b_by_batch
        Share of condition B among the cells of batch 0 and of batch 1.
    median_library, depth_ratio
        Median library size of A's cells, and B's over A's.
    seed
        The same seed gives the same data.

    Returns
    -------
    AnnData with sparse counts in ``X``, ``obs`` columns ``condition``, ``batch``, ``state``;
    the truth in ``var`` as the module docstring says.

    Examples
    --------
    >>> adata = simulate_differential(n_cells=200, n_genes=100, seed=1)
    >>> int(adata.var["is_de"].sum()), adata.obs["condition"].nunique()
    (10, 2)
    """
    rng = np.random.default_rng(seed)
    batch = rng.integers(2, size=n_cells)
    in_b = rng.random(n_cells) < np.asarray(share_b_by_batch)[batch]
    state = rng.integers(n_states, size=n_cells)

    base = rng.normal(0.0, 1.5, size=n_genes)
    state_effect = np.zeros((n_states, n_genes))
    for s in range(n_states):
        genes = rng.choice(n_genes, size=max(1, n_genes // 10), replace=False)
        signs = rng.choice([-1.0, 1.0], genes.size)
        state_effect[s, genes] = signs * rng.normal(1.0, 0.2, genes.size)
    n_de = round(de_fraction * n_genes)
    de_genes = rng.choice(n_genes, size=n_de, replace=False)
    log2_fold = np.zeros(n_genes)
    log2_fold[de_genes] = rng.choice(log2_folds, n_de) * rng.choice([-1.0, 1.0], n_de)
    batch_effect = rng.normal(0.0, batch_log_fold, size=(2, n_genes))

    def shares(logits: np.ndarray) -> np.ndarray:
        e = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    condition_logits = base + np.log(2.0) * log2_fold * in_b[:, None]
    share = shares(condition_logits + state_effect[state] + batch_effect[batch])
    library = np.exp(rng.normal(np.log(median_library), 0.3, size=n_cells))
    library *= np.where(in_b, depth_ratio, 1.0)
    mean = share * library[:, None]
    theta = np.exp(rng.uniform(np.log(2.0), np.log(20.0), size=n_genes))
    counts = rng.poisson(rng.gamma(theta, mean / theta)).astype(np.float32)

    # The truth: each condition's mean share over the states and batches, renormalised.
    mean_share = {}
    for name, fold in (("A", 0.0), ("B", 1.0)):
        logits = base + np.log(2.0) * log2_fold * fold
        grid = logits + state_effect[:, None, :] + batch_effect[None, :, :]
        mean_share[name] = shares(grid).mean(axis=(0, 1))
    var = pd.DataFrame(
        {
            "true_lfc": np.log2(mean_share["B"] / mean_share["A"]),
            "is_de": log2_fold != 0,
            "true_mean_A": mean_share["A"] * median_library,
            "true_mean_B": mean_share["B"] * median_library,
        },
        index=[f"gene_{j}" for j in range(n_genes)],
    )
    obs = pd.DataFrame(
        {
            "condition": pd.Categorical(np.where(in_b, "B", "A")),
            "batch": pd.Categorical([f"batch_{b}" for b in batch]),
            "state": pd.Categorical([f"state_{s}" for s in state]),
        },
        index=[f"cell_{i}" for i in range(n_cells)],
    )
    return AnnData(X=sp.csr_matrix(counts), obs=obs, var=var)
