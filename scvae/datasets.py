"""Built-in data: a simulated dataset with known groups, and readers for public datasets.

``simulate`` needs nothing but numpy: it is the default data of ``python -m scvae demo`` and
of the tests. Public datasets are read from the folder named by the environment variable
``SCVAE_DATA_DIR`` (default: ``../shared/data`` relative to the working directory).
"""

from __future__ import annotations

import os
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from ._simulate_de import simulate_differential
from ._simulate_file import simulate_h5ad

__all__ = [
    "data_dir",
    "pbmc68k_reduced_counts",
    "read",
    "simulate",
    "simulate_differential",
    "simulate_h5ad",
]

DATA_DIR_VARIABLE = "SCVAE_DATA_DIR"


def simulate(
    n_cells: int = 2000,
    n_genes: int = 1000,
    *,
    n_groups: int = 5,
    n_batches: int = 2,
    group_sizes: list[float] | None = None,
    de_fraction: float = 0.1,
    de_log_fold: float = 1.5,
    batch_log_fold: float = 0.4,
    median_library: float = 1500.0,
    library_log_sd: float = 0.4,
    seed: int = 0,
    return_truth: bool = False,
) -> AnnData:
    """Negative binomial counts with known cell groups, batches and means.

    Each gene has a baseline share of expression (log-normal); each group up- or
    down-regulates ``de_fraction`` of the genes by ``exp(±de_log_fold)`` on average; each batch
    multiplies every gene by a small random factor (``batch_log_fold`` sd on the log scale);
    library sizes are log-normal. Counts are NB with a per-gene inverse dispersion in [1, 20].

    Parameters
    ----------
    n_cells, n_genes
        Size of the dataset.
    n_groups, n_batches
        Number of cell groups (``obs["cell_type"]``) and batches (``obs["batch"]``).
    group_sizes
        Relative group sizes (default: equal). E.g. ``[0.99, 0.01]`` for a rare group.
    de_fraction, de_log_fold
        Fraction of genes that mark each group, and their mean absolute log fold change.
    batch_log_fold
        Standard deviation of the per-gene, per-batch log factor.
    median_library, library_log_sd
        Library size distribution (log-normal).
    seed
        Random seed: the same seed gives the same data.
    return_truth
        Also store the true NB mean in ``layers["true_mean"]`` (dense) and the inverse
        dispersions in ``var["true_theta"]``.

    Returns
    -------
    AnnData
        Sparse float32 counts in ``X`` (also in ``layers["counts"]``), ``obs`` columns
        ``cell_type``, ``batch`` and ``true_library``.

    Examples
    --------
    >>> adata = simulate(n_cells=300, n_genes=50, seed=1)
    >>> adata.shape
    (300, 50)
    """
    rng = np.random.default_rng(seed)
    sizes = np.ones(n_groups) if group_sizes is None else np.asarray(group_sizes, float)
    if len(sizes) != n_groups:
        raise ValueError(f"group_sizes has {len(sizes)} entries for {n_groups} groups")
    group = rng.choice(n_groups, size=n_cells, p=sizes / sizes.sum())
    batch = rng.integers(n_batches, size=n_cells)

    base = rng.normal(0.0, 1.2, size=n_genes)
    group_effect = np.zeros((n_groups, n_genes))
    for g in range(n_groups):
        markers = rng.choice(n_genes, size=max(1, int(de_fraction * n_genes)), replace=False)
        sign = rng.choice([-1.0, 1.0], size=markers.size, p=[0.3, 0.7])
        group_effect[g, markers] = sign * rng.normal(de_log_fold, 0.3 * de_log_fold, markers.size)
    batch_effect = rng.normal(0.0, batch_log_fold, size=(n_batches, n_genes))
    logits = base + group_effect[group] + batch_effect[batch]
    share = np.exp(logits - logits.max(axis=1, keepdims=True))
    share /= share.sum(axis=1, keepdims=True)
    library = np.exp(rng.normal(np.log(median_library), library_log_sd, size=n_cells))
    mean = share * library[:, None]
    theta = np.exp(rng.uniform(np.log(1.0), np.log(20.0), size=n_genes))
    counts = rng.poisson(rng.gamma(theta, mean / theta)).astype(np.float32)

    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical([f"group_{g}" for g in group]),
            "batch": pd.Categorical([f"batch_{b}" for b in batch]),
            "true_library": library.astype(np.float32),
        },
        index=[f"cell_{i}" for i in range(n_cells)],
    )
    var = pd.DataFrame(index=[f"gene_{j}" for j in range(n_genes)])
    X = sp.csr_matrix(counts)
    adata = AnnData(X=X, obs=obs, var=var, layers={"counts": X.copy()})
    if return_truth:
        adata.layers["true_mean"] = mean.astype(np.float32)
        adata.var["true_theta"] = theta.astype(np.float32)
    return adata


def data_dir() -> Path:
    """Folder of the public datasets: ``$SCVAE_DATA_DIR``, else ``../shared/data``."""
    return Path(os.environ.get(DATA_DIR_VARIABLE, "../shared/data"))


def read(name: str) -> AnnData:
    """Read ``name`` (e.g. ``"pbmc4k_scdcc"``) from :func:`data_dir`.

    Examples
    --------
    >>> adata = read("pbmc4k_scdcc")  # doctest: +SKIP
    """
    path = data_dir() / (name if name.endswith(".h5ad") else f"{name}.h5ad")
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found; set the environment variable {DATA_DIR_VARIABLE} to the "
            "folder that holds the public datasets"
        )
    return anndata.read_h5ad(path)


def pbmc68k_reduced_counts() -> AnnData:
    """Scanpy's bundled ``pbmc68k_reduced`` (700 PBMCs, 765 genes) as integer counts.

    Its ``.raw`` holds ``log1p(count / n_counts * 1e4)`` rounded to 3 decimals; the counts are
    recovered as ``round(expm1(raw) * n_counts / 1e4)``, which is exact for this file. No
    network is needed: the file ships with scanpy. ``obs["cell_type"]`` = ``bulk_labels``.
    """
    import scanpy as sc

    source = sc.datasets.pbmc68k_reduced()
    logged = source.raw.X
    logged = logged.toarray() if sp.issparse(logged) else np.asarray(logged)
    n_counts = source.obs["n_counts"].to_numpy()[:, None]
    counts = np.rint(np.expm1(logged) * n_counts / 1e4).astype(np.float32)
    obs = source.obs[["bulk_labels", "n_genes", "percent_mito", "n_counts"]].copy()
    obs = obs.rename(columns={"n_counts": "n_counts_all_genes", "n_genes": "n_genes_all_genes"})
    obs["cell_type"] = obs["bulk_labels"]
    adata = AnnData(X=sp.csr_matrix(counts), obs=obs, var=pd.DataFrame(index=source.raw.var_names))
    keep = np.asarray(adata.X.sum(axis=0)).ravel() > 0
    return adata[:, keep].copy()
