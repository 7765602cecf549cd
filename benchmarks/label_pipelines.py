"""Are a dataset's labels one PCA pipeline's clusters (issue 20, docs/embedding.md)?

If the labels of the scDCC datasets were the clusters of some PCA of log-normalised counts,
Leiden ARI against them would favour PCA by construction. For each of twelve PCA pipelines
(counts per cell normalised to 10,000 or to the median; genes scaled to unit variance or not;
10, 20 or 50 components: Cell Ranger's and Seurat's defaults among them), on every cell of the
protocol's genes: the best Leiden ARI over ``scvae.metrics.LEIDEN_RESOLUTIONS`` and the best
k-means ARI (k = the number of labels, 3 starts). With ``--scvae-seeds``, scvae's default fit
(protocol split, as ``embedding.py`` makes it) scored the same way, for comparison::

    python benchmarks/label_pipelines.py --datasets pbmc4k_scdcc mouse_bladder_scdcc \\
        --scvae-seeds 0 1 2

Needs the bench extra (scanpy, leidenalg).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import scanpy as sc
from _common import prepare, report
from embedding import embed
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

from scvae import metrics

COLUMNS = [
    ("dataset", "dataset", ""),
    ("embedding", "embedding", ""),
    ("leiden_ari", "best Leiden ARI", ".3f"),
    ("leiden_resolution", "resolution", ""),
    ("kmeans_ari", "best k-means ARI", ".3f"),
]


def pca_pipelines(adata: sc.AnnData, seed: int):
    """(name, embedding) for each of the twelve PCA pipelines."""
    for target in (1e4, None):
        lognorm = adata.copy()
        sc.pp.normalize_total(lognorm, target_sum=target)
        sc.pp.log1p(lognorm)
        for scaled in (False, True):
            data = lognorm.copy()
            if scaled:
                sc.pp.scale(data, max_value=10)
            for n_comps in (10, 20, 50):
                sc.pp.pca(data, n_comps=n_comps, random_state=seed)
                name = (
                    f"PCA {n_comps}, {'1e4' if target else 'median'}{', scaled' if scaled else ''}"
                )
                yield name, data.obsm["X_pca"]


def clustering_scores(z: np.ndarray, labels: np.ndarray, seed: int) -> dict:
    leiden = metrics.best_leiden_scores(z, labels, seed=seed)
    n_types = len(np.unique(labels))
    kmeans = max(
        adjusted_rand_score(labels, KMeans(n_types, n_init=1, random_state=start).fit_predict(z))
        for start in range(3)
    )
    return {
        "leiden_ari": leiden["ari"],
        "leiden_resolution": leiden["resolution"],
        "kmeans_ari": kmeans,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["pbmc4k_scdcc", "mouse_bladder_scdcc"])
    parser.add_argument("--scvae-seeds", nargs="*", type=int, default=[])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rows = []
    for dataset in args.datasets:
        adata, train_idx, test_idx = prepare(dataset, seed=0)
        labels = adata.obs["cell_type"].astype(str).to_numpy()
        for name, z in pca_pipelines(adata, seed=0):
            rows.append({"dataset": dataset, "embedding": name, **clustering_scores(z, labels, 0)})
        for seed in args.scvae_seeds:
            z = embed("scvae", adata, train_idx, test_idx, seed, {})["z"]
            scores = clustering_scores(z, labels, seed)
            rows.append({"dataset": dataset, "embedding": f"scvae, seed {seed}", **scores})
    report(rows, COLUMNS, args.out / "label_pipelines.json", args)


if __name__ == "__main__":
    main()
