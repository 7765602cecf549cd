"""Which labels differ in depth rather than in composition? (issue 20, docs/embedding.md)

scvae's likelihood takes each cell's library size as observed, and its encoder reads the
counts scaled to one library size, so its latent space holds composition, not depth. PCA of
log-normalised counts keeps part of the depth (normalising does not remove it from the
zeros and the log). A label two types differ by only in depth is then one PCA can recover
and scvae cannot. For pairs of labels of one dataset, this script fits scvae's default on
the protocol's split (as ``embedding.py`` does) and reports the balanced accuracy of a
logistic regression (5-fold) telling the two labels apart from: the log library size alone,
PCA (50 PCs), PCA after every cell was thinned (binomially) to at most the smaller of the two
labels' median depths, scvae's posterior means, and those with the log library size beside
them. Then, for every label, kNN balanced accuracy and Leiden ARI (as ``embedding.py``
scores them) of two depth-free PCAs, beside scvae and PCA: log depth regressed out of the
log-normalised counts (``sc.pp.regress_out``), and cells above the median depth thinned to
it. First, per label, its median depth and kNN recall (k = 15, 5-fold) in scvae's embedding
and in PCA's, and the kNN accuracy of each quarter of the cells by depth::

    python benchmarks/depth_labels.py --dataset mouse_bladder_scdcc --pairs 4-9 4-6 4-3
    python benchmarks/depth_labels.py --dataset pbmc4k_scdcc --pairs 2-6 2-8 4-5 1-5

Writes ``benchmarks/results/depth_labels_DATASET.json`` and prints four tables.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import scanpy as sc
import scipy.sparse as sp
from _common import markdown_table, prepare, restore_torch_threads, write_json
from anndata import AnnData
from embedding import scores
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score

import scvae
from scvae import metrics

PAIR_COLUMNS = [
    ("pair", "labels", ""),
    ("median_depths", "median depths", ""),
    ("depth", "log depth alone", ".3f"),
    ("pca", "PCA", ".3f"),
    ("pca_thinned", "PCA, thinned", ".3f"),
    ("scvae", "scvae z", ".3f"),
    ("scvae_depth", "scvae z + log depth", ".3f"),
]
LABEL_COLUMNS = [
    ("label", "label", ""),
    ("cells", "cells", ""),
    ("median_depth", "median depth", ".0f"),
    ("scvae", "kNN recall, scvae", ".3f"),
    ("pca", "kNN recall, PCA", ".3f"),
]
QUARTER_COLUMNS = [
    ("quarter", "depth quarter", ""),
    ("scvae", "kNN accuracy, scvae", ".3f"),
    ("pca", "kNN accuracy, PCA", ".3f"),
]
EMBEDDING_COLUMNS = [
    ("embedding", "embedding", ""),
    ("knn_balanced_accuracy", "kNN bal. acc.", ".3f"),
    ("leiden_ari", "Leiden ARI", ".3f"),
    ("recall_smallest3", "recall, 3 smallest", ".3f"),
]


def thinned(counts: sp.csr_matrix, target: float, seed: int) -> sp.csr_matrix:
    """Each cell's counts binomially thinned to at most ``target`` in expectation."""
    library = np.asarray(counts.sum(axis=1)).ravel()
    keep = np.minimum(1.0, target / np.maximum(library, 1.0))
    rows = np.repeat(np.arange(counts.shape[0]), np.diff(counts.indptr))
    out = counts.copy()
    rng = np.random.default_rng(seed)
    out.data = rng.binomial(counts.data.astype(np.int64), keep[rows]).astype(np.float32)
    return out


def pca(adata: AnnData, counts: sp.csr_matrix, regress_depth: bool = False) -> np.ndarray:
    """50 PCs of log-normalised ``counts`` (optionally with log depth regressed out)."""
    lognorm = AnnData(X=counts.astype(np.float32), obs=adata.obs[[]].copy())
    sc.pp.normalize_total(lognorm, target_sum=1e4)
    sc.pp.log1p(lognorm)
    if regress_depth:
        lognorm.obs["log_depth"] = np.log(np.asarray(counts.sum(axis=1)).ravel() + 1.0)
        sc.pp.regress_out(lognorm, ["log_depth"])
    sc.pp.pca(lognorm, n_comps=50, random_state=0)
    return lognorm.obsm["X_pca"]


def recall_tables(
    z: np.ndarray, pcs: np.ndarray, labels: np.ndarray, depth: np.ndarray, seed: int
) -> tuple[list[dict], list[dict]]:
    """Per label, and per quarter of the cells by depth, how often the kNN vote of each
    embedding is right."""
    right = {
        name: metrics.knn_predictions(e, labels, folds=5, seed=seed) == labels
        for name, e in (("scvae", z), ("pca", pcs))
    }
    per_label = [
        {
            "label": name,
            "cells": int((labels == name).sum()),
            "median_depth": float(np.median(depth[labels == name])),
            **{k: float(v[labels == name].mean()) for k, v in right.items()},
        }
        for name in sorted(set(labels), key=lambda n: -(labels == n).sum())
    ]
    quarter = np.digitize(depth, np.quantile(depth, [0.25, 0.5, 0.75]))
    per_quarter = [
        {"quarter": str(q + 1), **{k: float(v[quarter == q].mean()) for k, v in right.items()}}
        for q in range(4)
    ]
    return per_label, per_quarter


def separability(x: np.ndarray, is_second: np.ndarray) -> float:
    """Balanced accuracy of a 5-fold logistic regression on ``x``."""
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    model = LogisticRegression(max_iter=3000)
    return float(
        cross_val_score(model, x, is_second, cv=folds, scoring="balanced_accuracy").mean()
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mouse_bladder_scdcc")
    parser.add_argument("--pairs", nargs="+", default=["4-9", "4-6", "4-3"], metavar="A-B")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    out = args.out or Path(f"benchmarks/results/depth_labels_{args.dataset}.json")
    adata, train_idx, _ = prepare(args.dataset, seed=0)
    labels = adata.obs["cell_type"].astype(str).to_numpy()
    counts = sp.csr_matrix(adata.X).astype(np.float32)
    depth = np.asarray(counts.sum(axis=1)).ravel()
    restore_torch_threads()
    z = scvae.fit(adata[train_idx].copy(), seed=args.seed, progress=False).embed(adata)
    pcs = pca(adata, counts)
    label_rows, quarter_rows = recall_tables(z, pcs, labels, depth, args.seed)
    pair_rows = []
    for pair in args.pairs:
        first, second = pair.split("-")
        rows = np.isin(labels, [first, second])
        is_second = labels[rows] == second
        medians = [float(np.median(depth[labels == name])) for name in (first, second)]
        thin_pcs = pca(adata, thinned(counts, min(medians), args.seed))
        log_depth = np.log(depth)[:, None]
        pair_rows.append(
            {
                "pair": f"{first} vs {second}",
                "median_depths": f"{medians[0]:.0f} / {medians[1]:.0f}",
                "depth": separability(log_depth[rows], is_second),
                "pca": separability(pcs[rows], is_second),
                "pca_thinned": separability(thin_pcs[rows], is_second),
                "scvae": separability(z[rows], is_second),
                "scvae_depth": separability(np.c_[z, log_depth][rows], is_second),
            }
        )
    embeddings = {
        "scvae": z,
        "PCA": pcs,
        "PCA, log depth regressed out": pca(adata, counts, regress_depth=True),
        "PCA, cells above the median depth thinned to it": pca(
            adata, thinned(counts, float(np.median(depth)), args.seed)
        ),
    }
    embedding_rows = [
        {"embedding": name} | scores(np.asarray(e, dtype=np.float32), labels, args.seed)
        for name, e in embeddings.items()
    ]
    tables = [
        markdown_table(label_rows, LABEL_COLUMNS),
        markdown_table(quarter_rows, QUARTER_COLUMNS),
        markdown_table(pair_rows, PAIR_COLUMNS),
        markdown_table(embedding_rows, EMBEDDING_COLUMNS),
    ]
    print("\n\n".join(tables))
    payload = {"dataset": args.dataset, "seed": args.seed, "labels": label_rows}
    payload |= {"depth_quarters": quarter_rows, "pairs": pair_rows, "embeddings": embedding_rows}
    write_json(out, payload | {"tables": tables})


if __name__ == "__main__":
    main()
