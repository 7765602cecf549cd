"""Rare cell types: kNN balanced accuracy, recall of the 3 smallest classes and Leiden ARI of
the embedding, for scvae with balance off / "labels" / "auto", SCVI and PCA, all cells embedded
(protocol: ../shared/BENCHMARK.md; models fitted on the 90 % training split). balance="labels"
sees the training cells' labels, so the balanced accuracy of the held-out cells alone (their
neighbours' labels vote) is reported beside the all-cells number.

    python benchmarks/imbalance.py --datasets mouse_bladder_scdcc pbmc4k_scdcc
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import scanpy as sc
from _common import prepare, report
from sklearn.metrics import balanced_accuracy_score

from scvae import metrics
from scvae._data.memory import prepare_counts
from scvae._fit.fit import fit_counts
from scvae._fit.settings import FitSettings


def embeddings(adata, train_idx, epochs: int | None) -> dict[str, np.ndarray]:
    import scvi

    train = adata[train_idx].copy()
    out = {}
    data = prepare_counts(train, labels_key="cell_type")
    for name, balance in (("scvae", None), ("scvae labels", "labels"), ("scvae auto", "auto")):
        model = fit_counts(
            data,
            FitSettings(
                balance=balance,
                labels_key="cell_type",
                max_epochs=epochs,
                progress=False,
                seed=0,
            ),
        )
        out[name] = model.embed(adata)
    scvi.settings.seed = 0
    scvi.model.SCVI.setup_anndata(train)
    reference = scvi.model.SCVI(train, n_hidden=128, n_latent=10, n_layers=1, gene_likelihood="nb")
    reference.train(
        max_epochs=epochs or 400, batch_size=128, accelerator="cpu", enable_progress_bar=False
    )
    out["SCVI"] = reference.get_latent_representation(adata)
    lognorm = adata.copy()
    sc.pp.normalize_total(lognorm, target_sum=1e4)
    sc.pp.log1p(lognorm)
    sc.pp.pca(lognorm, n_comps=50, random_state=0)
    out["PCA (50)"] = lognorm.obsm["X_pca"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["mouse_bladder_scdcc"])
    parser.add_argument("--epochs", type=int, default=None, help="default: each tool's own")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rows = []
    for name in args.datasets:
        adata, train_idx, test_idx = prepare(name, seed=0)
        labels = adata.obs["cell_type"].astype(str).to_numpy()
        for method, z in embeddings(adata, train_idx, args.epochs).items():
            knn = metrics.knn_scores(z, labels)
            predicted = metrics.knn_predictions(z, labels)[test_idx]
            leiden = metrics.leiden_scores(z, labels)
            rows.append(
                {
                    "dataset": name,
                    "method": method,
                    "knn_accuracy": knn["accuracy"],
                    "knn_balanced_accuracy": knn["balanced_accuracy"],
                    "heldout_balanced_accuracy": balanced_accuracy_score(
                        labels[test_idx], predicted
                    ),
                    "recall_smallest3": knn["recall_smallest3"],
                    "leiden_ari": leiden["ari"],
                }
            )
    columns = [
        ("dataset", "dataset", ""),
        ("method", "method", ""),
        ("knn_balanced_accuracy", "kNN bal. acc.", ".3f"),
        ("heldout_balanced_accuracy", "held-out bal. acc.", ".3f"),
        ("knn_accuracy", "kNN acc.", ".3f"),
        ("recall_smallest3", "recall, 3 smallest", ".3f"),
        ("leiden_ari", "Leiden ARI", ".3f"),
    ]
    report(rows, columns, args.out / "imbalance.json", args)


if __name__ == "__main__":
    main()
