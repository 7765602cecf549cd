"""Write a large simulated h5ad block by block, never holding the whole matrix.

The same generative story as :func:`scvae.datasets.simulate` (groups that up- or
down-regulate marker genes, per-batch gene factors, log-normal libraries, NB counts), drawn
for ``chunk_cells`` cells at a time and appended to the CSR arrays of ``X`` in the file.
"""

from __future__ import annotations

import logging
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
from anndata.io import write_elem

logger = logging.getLogger(__name__)

__all__ = ["simulate_h5ad"]


def simulate_h5ad(
    path: str | Path,
    n_cells: int,
    n_genes: int = 2000,
    *,
    n_groups: int = 8,
    n_batches: int = 4,
    de_fraction: float = 0.1,
    de_log_fold: float = 1.5,
    batch_log_fold: float = 0.4,
    median_library: float = 1500.0,
    library_log_sd: float = 0.4,
    chunk_cells: int = 8192,
    seed: int = 0,
) -> Path:
    """Write ``n_cells`` simulated cells to ``path`` (sparse CSR float32 counts in ``X``).

    Memory is bounded by ``chunk_cells`` x ``n_genes``, whatever ``n_cells``. ``obs`` holds
    ``cell_type`` and ``batch`` (categorical); cells are in random order of group and batch.

    Examples
    --------
    >>> simulate_h5ad("atlas.h5ad", 1_000_000, 2000)  # doctest: +SKIP
    >>> adata = anndata.read_h5ad("atlas.h5ad", backed="r")  # doctest: +SKIP
    """
    path = Path(path)
    rng = np.random.default_rng(seed)
    base = rng.normal(0.0, 1.2, size=n_genes)
    group_effect = np.zeros((n_groups, n_genes))
    for g in range(n_groups):
        markers = rng.choice(n_genes, size=max(1, int(de_fraction * n_genes)), replace=False)
        sign = rng.choice([-1.0, 1.0], size=markers.size, p=[0.3, 0.7])
        group_effect[g, markers] = sign * rng.normal(de_log_fold, 0.3 * de_log_fold, markers.size)
    batch_effect = rng.normal(0.0, batch_log_fold, size=(n_batches, n_genes))
    theta = np.exp(rng.uniform(0.0, np.log(20.0), size=n_genes))
    group = rng.integers(n_groups, size=n_cells)
    batch = rng.integers(n_batches, size=n_cells)

    with h5py.File(path, "w") as f:
        f.attrs.update({"encoding-type": "anndata", "encoding-version": "0.1.0"})
        x = f.create_group("X")
        x.attrs.update(
            {
                "encoding-type": "csr_matrix",
                "encoding-version": "0.1.0",
                "shape": (n_cells, n_genes),
            }
        )
        data = x.create_dataset("data", (0,), np.float32, maxshape=(None,), chunks=(1 << 18,))
        indices = x.create_dataset("indices", (0,), np.int32, maxshape=(None,), chunks=(1 << 18,))
        indptr = np.zeros(n_cells + 1, dtype=np.int64)
        for start in range(0, n_cells, chunk_cells):
            stop = min(start + chunk_cells, n_cells)
            block_rng = np.random.default_rng([seed, start])
            logits = base + group_effect[group[start:stop]] + batch_effect[batch[start:stop]]
            share = np.exp(logits - logits.max(axis=1, keepdims=True))
            share /= share.sum(axis=1, keepdims=True)
            library = np.exp(
                block_rng.normal(np.log(median_library), library_log_sd, size=stop - start)
            )
            mean = share * library[:, None]
            counts = block_rng.poisson(block_rng.gamma(theta, mean / theta)).astype(np.float32)
            rows, cols = np.nonzero(counts)
            n_old = data.shape[0]
            data.resize((n_old + rows.size,))
            indices.resize((n_old + rows.size,))
            data[n_old:] = counts[rows, cols]
            indices[n_old:] = cols.astype(np.int32)
            indptr[start + 1 : stop + 1] = n_old + np.cumsum(
                np.bincount(rows, minlength=stop - start)
            )
        x.create_dataset("indptr", data=indptr)
        obs = pd.DataFrame(
            {
                "cell_type": pd.Categorical.from_codes(
                    group, [f"group_{g}" for g in range(n_groups)]
                ),
                "batch": pd.Categorical.from_codes(
                    batch, [f"batch_{b}" for b in range(n_batches)]
                ),
            },
            index=[f"cell_{i}" for i in range(n_cells)],
        )
        write_elem(f, "obs", obs)
        write_elem(f, "var", pd.DataFrame(index=[f"gene_{j}" for j in range(n_genes)]))
        for key in ("obsm", "varm", "obsp", "varp", "layers", "uns"):
            write_elem(f, key, {})
    logger.info("wrote %d cells x %d genes to %s", n_cells, n_genes, path)
    return path
