"""Does the space the neighbours are found in matter? (issue 20, docs/embedding.md)

For each seed, scvae's default fit on the protocol's split (as ``embedding.py`` makes it),
then four embeddings of every cell, each scored as ``embedding.py`` scores them: the
posterior means of z (what ``fit`` writes to ``obsm["X_scvae"]``), and the principal
components of the model's denoised expression (``scvae.denoise`` at 10,000 counts, then
``log1p``), 50 and 30 of them, and 50 of the same values scaled per gene. The denoised
values are z seen through the decoder: the same information in gene-expression
coordinates, which is where PCA of log-normalised counts finds its neighbours::

    python benchmarks/embedding_spaces.py --datasets pbmc4k_scdcc mouse_bladder_scdcc

Writes ``benchmarks/results/embedding_spaces.json`` (every row and the medians) and prints
the table of medians.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import scanpy as sc
from _common import markdown_table, prepare, restore_torch_threads, write_json
from embedding import medians, scores

import scvae

COLUMNS = [
    ("dataset", "dataset", ""),
    ("method", "embedding", ""),
    ("n_seeds", "seeds", ""),
    ("knn_balanced_accuracy", "kNN bal. acc.", ".3f"),
    ("recall_smallest3", "recall, 3 smallest", ".3f"),
    ("leiden_ari", "Leiden ARI", ".3f"),
    ("leiden_nmi", "Leiden NMI", ".3f"),
]


def spaces(adata, model, seed: int) -> dict[str, np.ndarray]:
    """The posterior means and the principal components of the denoised expression."""
    denoised = adata.copy()
    scvae.denoise(denoised, model)
    logged = np.log1p(denoised.layers["scvae_denoised"].astype(np.float64))
    scaled = (logged - logged.mean(0)) / (logged.std(0) + 1e-6)
    return {
        "posterior means": model.embed(adata),
        "denoised, 50 PCs": sc.pp.pca(logged, n_comps=50, random_state=seed),
        "denoised, 30 PCs": sc.pp.pca(logged, n_comps=30, random_state=seed),
        "denoised, scaled, 50 PCs": sc.pp.pca(scaled, n_comps=50, random_state=seed),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["pbmc4k_scdcc", "mouse_bladder_scdcc"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/embedding_spaces.json")
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rows = []
    for dataset in args.datasets:
        adata, train_idx, _ = prepare(dataset, seed=0)
        labels = adata.obs["cell_type"].astype(str).to_numpy()
        for seed in args.seeds:
            restore_torch_threads()
            model = scvae.fit(adata[train_idx].copy(), seed=seed, progress=False)
            for name, z in spaces(adata, model, seed).items():
                z = np.asarray(z, dtype=np.float32)
                rows.append(
                    {"dataset": dataset, "method": name, "seed": seed} | scores(z, labels, seed)
                )
                write_json(args.out, {"rows": rows})
    summary = medians(rows)
    table = markdown_table(summary, COLUMNS)
    print(table)
    write_json(args.out, {"table": table, "medians": summary, "rows": rows})


if __name__ == "__main__":
    main()
