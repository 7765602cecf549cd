"""Which genes draw the boundary where an embedding splits a labelled type (issue 20)? Fits
scvae (default options) on the protocol's training cells of DATASET with SEED, embeds every
cell and takes its best-matching Leiden clustering (``scvae.metrics.best_leiden_scores``);
PCA (50 PCs of log-normalised counts) the same. For every type a clustering splits (as in
``split_reproducibility.py``), it prints the genes that differ most between the two largest
clusters (log2 fold change of the mean counts per 10,000, share of cells with a count on each
side, and the label in which the gene is highest), the two sides' median depths, and how well a
logistic regression on the log-normalised genes predicts the side each cell fell on: with every
gene, and with the 10, 25 or 100 genes that differ most left out. A split that the remaining
genes still predict is a broad difference of expression; one that falls to chance without a
handful of genes is drawn by those genes alone::

    python benchmarks/split_genes.py pbmc4k_scdcc 0

Needs the bench extra (scanpy, leidenalg).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scanpy as sc
from _common import markdown_table, restore_torch_threads
from split_reproducibility import (
    best_clusters,
    dataset_and_seed,
    lognorm,
    predictability,
    split_sides,
)

import scvae

#: Counts per 10,000 added to both means of a fold change.
PSEUDOCOUNT = 0.1
#: How many of the most different genes each row of the second table leaves out.
LEFT_OUT = (0, 10, 25, 100)


def per_10k(adata: sc.AnnData) -> np.ndarray:
    """Counts scaled to 10,000 per cell, dense."""
    data = adata.copy()
    sc.pp.normalize_total(data, target_sum=1e4)
    x = data.X
    return np.asarray(x.toarray() if hasattr(x, "toarray") else x)


def describe(
    name: str,
    label: str,
    first: np.ndarray,
    second: np.ndarray,
    scaled: np.ndarray,
    logged: np.ndarray,
    depth: np.ndarray,
    labels: np.ndarray,
    genes: np.ndarray,
    seed: int,
) -> tuple[list[dict], list[dict]]:
    """The top genes of one split, and the split's predictability without them."""
    mean_first = scaled[first].mean(axis=0)
    mean_second = scaled[second].mean(axis=0)
    lfc = np.log2((mean_second + PSEUDOCOUNT) / (mean_first + PSEUDOCOUNT))
    order = np.argsort(-np.abs(lfc))
    label_means = pd.DataFrame(scaled[:, order[:5]], columns=genes[order[:5]])
    label_means = label_means.groupby(labels).mean()
    top = [
        {
            "embedding": name,
            "label": label,
            "gene": genes[g],
            "lfc": lfc[g],
            "nonzero first": float((scaled[first, g] > 0).mean()),
            "nonzero second": float((scaled[second, g] > 0).mean()),
            "highest in": f"{label_means[genes[g]].idxmax()} "
            f"({label_means[genes[g]].max():.1f} vs {label_means[genes[g]][label]:.1f})",
        }
        for g in order[:5]
    ]
    cells = np.concatenate([first, second])
    target = np.r_[np.zeros(first.size, int), np.ones(second.size, int)]
    rng = np.random.default_rng(seed)
    row = {
        "embedding": name,
        "label": label,
        "split": f"{first.size} / {second.size}",
        "depth": f"{np.median(depth[first]):.0f} / {np.median(depth[second]):.0f}",
    }
    for n in LEFT_OUT:
        kept = np.setdiff1d(np.arange(genes.size), order[:n])
        row[f"without {n}"] = predictability(logged[np.ix_(cells, kept)], target)
    row["random split"] = predictability(logged[cells], rng.permutation(target))
    return top, [row]


def main() -> None:
    args, adata, train_idx, labels = dataset_and_seed(__doc__.splitlines()[0])
    genes = adata.var_names.to_numpy()
    restore_torch_threads()
    model = scvae.fit(adata[train_idx].copy(), seed=args.seed, progress=False)
    logged = lognorm(adata)
    scaled = per_10k(adata)
    depth = np.asarray(adata.X.sum(axis=1)).ravel()
    pca = sc.pp.pca(logged, n_comps=50, random_state=0)
    tops, rows = [], []
    for name, embedding in [("scvae", model.embed(adata)), ("PCA", pca)]:
        clusters = best_clusters(name, embedding, labels, args.seed)
        for label, first, second in split_sides(clusters, labels):
            top, row = describe(
                name, label, first, second, scaled, logged, depth, labels, genes, args.seed
            )
            tops += top
            rows += row
    print(
        markdown_table(
            tops,
            [
                ("embedding", "embedding", ""),
                ("label", "type", ""),
                ("gene", "gene", ""),
                ("lfc", "log2 FC, second / first", ".2f"),
                ("nonzero first", "with a count, first", ".2f"),
                ("nonzero second", "second", ".2f"),
                ("highest in", "highest in label (per 10k, vs this type)", ""),
            ],
        )
    )
    columns = [("embedding", "embedding", ""), ("label", "type", ""), ("split", "split", "")]
    columns.append(("depth", "median counts per cell", ""))
    columns += [(f"without {n}", f"bal. acc., {n} genes left out", ".3f") for n in LEFT_OUT]
    columns.append(("random split", "random split", ".3f"))
    print(markdown_table(rows, columns))


if __name__ == "__main__":
    main()
