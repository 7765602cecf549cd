"""Where an embedding's best Leiden clustering disagrees with the labels (issue 20): fits scvae
(default options) on the protocol's training cells of DATASET with SEED, embeds every cell,
and prints, for scvae and for PCA (50 PCs of log-normalised counts), the best-matching Leiden
clustering (``scvae.metrics.best_leiden_scores``) crossed with ``obs["cell_type"]``::

    python benchmarks/leiden_confusion.py pbmc4k_scdcc 1

Needs the bench extra (scanpy, leidenalg).
"""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import scanpy as sc
from _common import prepare

import scvae
from scvae import metrics


def confusion(embedding: np.ndarray, labels: np.ndarray, seed: int) -> tuple[dict, pd.DataFrame]:
    """The best Leiden scores of ``embedding`` and its clusters crossed with ``labels``."""
    best = metrics.best_leiden_scores(embedding, labels, seed=seed)
    clusters = metrics.leiden_clusters(embedding, resolution=best["resolution"], seed=seed)
    table = pd.crosstab(pd.Series(labels, name="label"), pd.Series(clusters, name="cluster"))
    return best, table


def main() -> None:
    dataset, seed = sys.argv[1], int(sys.argv[2])
    adata, train_idx, _ = prepare(dataset, seed=0)
    labels = adata.obs["cell_type"].astype(str).to_numpy()
    print(pd.Series(labels).value_counts().to_string())
    model = scvae.fit(adata[train_idx].copy(), seed=seed, progress=False)
    lognorm = adata.copy()
    sc.pp.normalize_total(lognorm, target_sum=1e4)
    sc.pp.log1p(lognorm)
    sc.pp.pca(lognorm, n_comps=50, random_state=0)
    for name, embedding in [("scvae", model.embed(adata)), ("PCA", lognorm.obsm["X_pca"])]:
        best, table = confusion(embedding, labels, seed)
        print(name, best)
        print(table.to_string())


if __name__ == "__main__":
    main()
