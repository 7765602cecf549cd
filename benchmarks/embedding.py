"""The embedding's neighbourhoods (issue 20): kNN, Leiden, silhouette, rare types and held-out
log p(x) of scvae, SCVI and PCA (50 PCs), medians over seeds (protocol: ../shared/BENCHMARK.md).

Per dataset and seed: the protocol's preparation and 90/10 split (split seed 0, the same for
every training seed); each model is trained on the training cells with its own defaults (scvae:
``scvae.fit``'s, early stopping on its own validation cells; SCVI: scvi-tools' ``train()``), then
every cell is embedded (posterior means) and scored against ``obs["cell_type"]``:

- kNN (k = 15) accuracy and balanced accuracy, stratified 5-fold, and the recall of the 3
  smallest types (``scvae.metrics.knn_scores(..., folds=5)``);
- Leiden ARI and NMI at the resolution that best matches the labels, for each method
  (``scvae.metrics.best_leiden_scores``);
- silhouette of the labels (Euclidean, at most 5000 cells);
- held-out log p(x), nats per cell (100 importance samples; not for PCA);
- active units: latent dimensions whose posterior means vary by more than 0.01.

A variant of scvae's training is a command line, as in ``integration.py``: each
``--scvae-option NAME=VALUE`` is one more keyword of ``scvae.fit``, and ``--methods scvae``
leaves the peers out (their rows come from an earlier run of the same seeds)::

    python benchmarks/embedding.py --seeds 0 1 2
    python benchmarks/embedding.py --datasets pbmc4k_scdcc --seeds 0 --methods scvae \\
        --scvae-option n_latent=20 --tag latent20

Writes ``benchmarks/results/embedding[_TAG].json`` (every row, the medians, the environment)
and prints the table of medians. Needs the bench extra: ``pip install -e ".[bench]"``.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import scanpy as sc
from _common import (
    environment,
    markdown_table,
    prepare,
    restore_torch_threads,
    scvae_options,
    write_json,
)
from anndata import AnnData
from sklearn.metrics import silhouette_score

import scvae
from scvae import metrics

DATASETS = (
    "pbmc4k_scdcc",
    "mouse_bladder_scdcc",
    "worm_neuron_scdcc",
    "cellbench_5cl_10x_subset",
    "pbmc68k_reduced_counts",
)
METHODS = ("scvae", "SCVI", "PCA")
#: Keywords of ``scvae.fit`` the script sets itself.
OWN_SCVAE_KEYWORDS = ("seed", "progress")
SILHOUETTE_CELLS = 5000
SCORES = (
    "knn_accuracy",
    "knn_balanced_accuracy",
    "recall_smallest3",
    "leiden_ari",
    "leiden_nmi",
    "silhouette",
    "heldout_log_px",
    "active_units",
    "fit_seconds",
)


def embed(
    method: str, adata: AnnData, train_idx: np.ndarray, test_idx: np.ndarray, seed: int, options
) -> dict:
    """The embedding of every cell by ``method`` trained on ``train_idx``, its held-out
    log p(x) (``None`` for PCA) and the training time."""
    train, test = adata[train_idx].copy(), adata[test_idx].copy()
    restore_torch_threads()
    started = time.perf_counter()
    if method == "scvae":
        model = scvae.fit(train, seed=seed, progress=False, **options)
        seconds = time.perf_counter() - started
        return {
            "z": model.embed(adata),
            "heldout_log_px": float(model.log_likelihood(test, n_samples=100).mean()),
            "fit_seconds": seconds,
            "epochs": len(model.history["train_loss"]),
        }
    if method == "SCVI":
        import scvi

        scvi.settings.seed = seed
        scvi.model.SCVI.setup_anndata(train)
        model = scvi.model.SCVI(train, n_hidden=128, n_latent=10, n_layers=1, gene_likelihood="nb")
        model.train(accelerator="cpu", enable_progress_bar=False)
        seconds = time.perf_counter() - started
        scvi.model.SCVI.setup_anndata(test)
        full = adata.copy()
        scvi.model.SCVI.setup_anndata(full)
        return {
            "z": model.get_latent_representation(full),
            "heldout_log_px": float(model.get_marginal_ll(test, n_mc_samples=100)),
            "fit_seconds": seconds,
            "epochs": int(model.history["elbo_train"].shape[0]),
        }
    if method == "PCA":
        lognorm = adata.copy()
        sc.pp.normalize_total(lognorm, target_sum=1e4)
        sc.pp.log1p(lognorm)
        sc.pp.pca(lognorm, n_comps=50, random_state=seed)
        return {
            "z": lognorm.obsm["X_pca"],
            "heldout_log_px": None,
            "fit_seconds": time.perf_counter() - started,
        }
    raise ValueError(f"unknown method {method!r}; choose from {METHODS}")


def scores(z: np.ndarray, labels: np.ndarray, seed: int) -> dict:
    knn = metrics.knn_scores(z, labels, k=15, folds=5, seed=seed)
    leiden = metrics.best_leiden_scores(z, labels, seed=seed)
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(z), min(len(z), SILHOUETTE_CELLS), replace=False))
    return {
        "knn_accuracy": knn["accuracy"],
        "knn_balanced_accuracy": knn["balanced_accuracy"],
        "recall_smallest3": knn["recall_smallest3"],
        "leiden_ari": leiden["ari"],
        "leiden_nmi": leiden["nmi"],
        "leiden_resolution": leiden["resolution"],
        "silhouette": float(silhouette_score(z[pick], labels[pick])),
        "active_units": metrics.active_units(z),
        "n_dims": int(z.shape[1]),
    }


def medians(rows: list[dict]) -> list[dict]:
    """One row per (dataset, method): the median of each score over the seeds."""
    out = []
    keys = list(dict.fromkeys((r["dataset"], r["method"]) for r in rows))
    for dataset, method in keys:
        group = [r for r in rows if r["dataset"] == dataset and r["method"] == method]
        row = {"dataset": dataset, "method": method, "n_seeds": len(group)}
        for score in SCORES:
            values = [r[score] for r in group if r.get(score) is not None]
            row[score] = float(np.median(values)) if values else None
        out.append(row)
    return out


COLUMNS = [
    ("dataset", "dataset", ""),
    ("method", "method", ""),
    ("n_seeds", "seeds", ""),
    ("knn_accuracy", "kNN acc.", ".3f"),
    ("knn_balanced_accuracy", "kNN bal. acc.", ".3f"),
    ("recall_smallest3", "recall, 3 smallest", ".3f"),
    ("leiden_ari", "Leiden ARI", ".3f"),
    ("leiden_nmi", "Leiden NMI", ".3f"),
    ("silhouette", "silhouette", ".3f"),
    ("heldout_log_px", "held-out log p(x)", ".1f"),
    ("active_units", "active units", ".0f"),
    ("fit_seconds", "fit s", ".0f"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--scvae-option", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--tag", default="", help="suffix of the JSON's name")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    options = scvae_options(args.scvae_option, OWN_SCVAE_KEYWORDS)
    logging.basicConfig(level=logging.WARNING)
    name = "embedding" + (f"_{args.tag}" if args.tag else "")
    path = args.out / f"{name}.json"
    rows = []
    for dataset in args.datasets:
        adata, train_idx, test_idx = prepare(dataset, seed=0)
        labels = adata.obs["cell_type"].astype(str).to_numpy()
        pca = None  # PCA does not depend on the seed: computed once, scored per seed
        for seed in args.seeds:
            for method in args.methods:
                if method == "PCA" and pca is not None:
                    result = dict(pca)
                else:
                    result = embed(method, adata, train_idx, test_idx, seed, options)
                    pca = dict(result) if method == "PCA" else pca
                row = {"dataset": dataset, "method": method, "seed": seed}
                row.update(scores(result.pop("z"), labels, seed))
                row.update(result)
                rows.append(row)
                print(markdown_table([row], COLUMNS), flush=True)
                write_json(path, {"rows": rows, "scvae_options": options})
    table = markdown_table(medians(rows), COLUMNS)
    print(table)
    write_json(
        path,
        {
            "table": table,
            "medians": medians(rows),
            "rows": rows,
            "scvae_options": options,
            "environment": environment(seed=args.seeds[0]),
            "arguments": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        },
    )


if __name__ == "__main__":
    main()
