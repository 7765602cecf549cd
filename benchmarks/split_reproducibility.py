"""Are the cell types an embedding's Leiden clustering splits split along real structure (issue
20)? A held-out-genes check: the genes are cut at random into two halves; scvae (default
options, the protocol's training cells, SEED) and PCA (50 PCs of log-normalised counts) see
only the first half; each one's best-matching Leiden clustering
(``scvae.metrics.best_leiden_scores``) is crossed with ``obs["cell_type"]``, and wherever a type
is split (its second-largest cluster holds at least 10 % of its cells and 20 cells), a logistic
regression on the *other* half of the genes (log-normalised) predicts which of the two largest
clusters each of the type's cells fell in (balanced accuracy, stratified 5-fold). Beside it:
the same for a random split of the same sizes (chance, about 0.5) and for the cells' log
library size alone (a split by depth)::

    python benchmarks/split_reproducibility.py pbmc4k_scdcc 1

A split that the unseen genes predict well is a difference in expression that the labels lump
together, not noise of the embedding. Needs the bench extra (scanpy, leidenalg).
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
import scanpy as sc
from _common import markdown_table, prepare, restore_torch_threads
from anndata import AnnData
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score

import scvae
from scvae import metrics

#: A type counts as split when its second-largest cluster holds this share of its cells...
MIN_SHARE = 0.1
#: ... and at least this many cells.
MIN_CELLS = 20


def lognorm(adata: AnnData) -> np.ndarray:
    """``log1p`` of the counts scaled to 10,000 per cell, dense."""
    data = adata.copy()
    sc.pp.normalize_total(data, target_sum=1e4)
    sc.pp.log1p(data)
    x = data.X
    return np.asarray(x.toarray() if hasattr(x, "toarray") else x)


def predictability(features: np.ndarray, target: np.ndarray) -> float:
    """Balanced accuracy (stratified 5-fold) of a logistic regression of ``target`` on
    ``features``."""
    model = LogisticRegression(max_iter=2000, C=0.1)
    return float(
        np.mean(cross_val_score(model, features, target, cv=5, scoring="balanced_accuracy"))
    )


def split_sides(
    clusters: np.ndarray, labels: np.ndarray
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``(label, cells in its largest cluster, cells in its second)`` for each type the
    clustering splits."""
    out = []
    for label in sorted(set(labels)):
        cells = np.flatnonzero(labels == label)
        sizes = pd.Series(clusters[cells]).value_counts()
        if len(sizes) < 2 or sizes.iloc[1] < max(MIN_CELLS, MIN_SHARE * len(cells)):
            continue
        first = cells[clusters[cells] == sizes.index[0]]
        second = cells[clusters[cells] == sizes.index[1]]
        out.append((label, first, second))
    return out


def best_clusters(name: str, embedding: np.ndarray, labels: np.ndarray, seed: int) -> np.ndarray:
    """The Leiden clustering of ``embedding`` that best matches ``labels`` (its ARI logged)."""
    best = metrics.best_leiden_scores(embedding, labels, seed=seed)
    print(f"{name}: Leiden ARI {best['ari']:.3f} at resolution {best['resolution']}")
    return metrics.leiden_clusters(embedding, resolution=best["resolution"], seed=seed)


def splits(
    clusters: np.ndarray, labels: np.ndarray, held_out: np.ndarray, depth: np.ndarray, seed: int
) -> list[dict]:
    """One row per type the clustering splits: sizes of its two largest clusters and how well
    the held-out genes, a random split and the depth predict them."""
    rng = np.random.default_rng(seed)
    rows = []
    for label, first, second in split_sides(clusters, labels):
        cells = np.concatenate([first, second])
        target = np.r_[np.ones(first.size, int), np.zeros(second.size, int)]
        rows.append(
            {
                "label": label,
                "cells": int((labels == label).sum()),
                "split": f"{first.size} / {second.size}",
                "held-out genes": predictability(held_out[cells], target),
                "random split": predictability(held_out[cells], rng.permutation(target)),
                "depth alone": predictability(depth[cells, None], target),
            }
        )
    return rows


COLUMNS = [
    ("embedding", "embedding", ""),
    ("label", "type", ""),
    ("cells", "cells", ".0f"),
    ("split", "two largest clusters", ""),
    ("held-out genes", "held-out genes: bal. acc.", ".3f"),
    ("random split", "random split", ".3f"),
    ("depth alone", "depth alone", ".3f"),
]


def dataset_and_seed(
    description: str,
) -> tuple[argparse.Namespace, AnnData, np.ndarray, np.ndarray]:
    """The command line's DATASET and SEED; the dataset's protocol split (training cells) and
    its labels."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("dataset")
    parser.add_argument("seed", type=int)
    args = parser.parse_args()
    adata, train_idx, _ = prepare(args.dataset, seed=0)
    return args, adata, train_idx, adata.obs["cell_type"].astype(str).to_numpy()


def main() -> None:
    args, adata, train_idx, labels = dataset_and_seed(__doc__.splitlines()[0])
    rng = np.random.default_rng(args.seed)
    half = np.zeros(adata.n_vars, dtype=bool)
    half[rng.choice(adata.n_vars, adata.n_vars // 2, replace=False)] = True
    # Cells with no count in either half (a few on sparse data) cannot be embedded or scored.
    counted = (np.asarray(adata[:, half].X.sum(axis=1)).ravel() > 0) & (
        np.asarray(adata[:, ~half].X.sum(axis=1)).ravel() > 0
    )
    if not counted.all():
        print(f"left out: {int((~counted).sum())} cells with no count in one half of the genes")
        train_idx = np.flatnonzero(np.isin(np.flatnonzero(counted), train_idx))
        adata, labels = adata[counted].copy(), labels[counted]
    seen, unseen = adata[:, half].copy(), adata[:, ~half].copy()
    restore_torch_threads()
    model = scvae.fit(seen[train_idx].copy(), seed=args.seed, progress=False)
    pca = sc.pp.pca(lognorm(seen), n_comps=50, random_state=0)
    held_out = lognorm(unseen)
    depth = np.log1p(np.asarray(adata.X.sum(axis=1)).ravel())
    rows = []
    for name, embedding in [("scvae", model.embed(seen)), ("PCA", pca)]:
        clusters = best_clusters(name, embedding, labels, args.seed)
        rows += [
            {"embedding": name, **row}
            for row in splits(clusters, labels, held_out, depth, args.seed)
        ]
    print(markdown_table(rows, COLUMNS))


if __name__ == "__main__":
    main()
