"""scvae's embedding of the subtle simulated types of ``tests/test_embedding.py``, under other
fit options (issue 20, docs/embedding.md): kNN balanced accuracy (k = 15, 5-fold, as in the
test) against the simulated types, the latent directions the fit reports, and PCA's score
beside it.

Each argument is one fit, its keywords as JSON (``seed`` among them, default 0)::

    python benchmarks/subtle_types.py '{"max_epochs": 200}' '{"max_epochs": 200, "n_latent": 50}'
"""

from __future__ import annotations

import argparse
import json
import logging
import time

import numpy as np
import scanpy as sc
from _common import restore_torch_threads
from anndata import AnnData

import scvae
from scvae import metrics

logger = logging.getLogger("benchmark")


def subtle_types() -> AnnData:
    """The test's data: five types marked by 5 % of 300 genes at a log fold of 0.8, the fifth
    1 % of the 1000 cells."""
    return scvae.datasets.simulate(
        1000,
        300,
        n_groups=5,
        n_batches=1,
        group_sizes=[1.0, 1.0, 1.0, 1.0, 0.04],
        de_fraction=0.05,
        de_log_fold=0.8,
        median_library=1000,
        seed=0,
    )


def pca(adata: AnnData) -> np.ndarray:
    lognorm = adata.copy()
    sc.pp.normalize_total(lognorm, target_sum=1e4)
    sc.pp.log1p(lognorm)
    x = lognorm.X.toarray() if hasattr(lognorm.X, "toarray") else np.asarray(lognorm.X)
    return sc.pp.pca(x, n_comps=50, random_state=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fits", nargs="+", help="keywords of scvae.fit as JSON")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logger.setLevel(logging.INFO)
    data = subtle_types()
    labels = data.obs["cell_type"].to_numpy()
    logger.info(
        "PCA: kNN balanced accuracy %.3f",
        metrics.knn_scores(pca(data), labels, folds=5)["balanced_accuracy"],
    )
    for text in args.fits:
        options = json.loads(text)
        seed = options.pop("seed", 0)
        adata = data.copy()
        restore_torch_threads()
        started = time.perf_counter()
        model = scvae.fit(adata, progress=False, seed=seed, **options)
        score = metrics.knn_scores(adata.obsm["X_scvae"], labels, folds=5)["balanced_accuracy"]
        logger.info(
            "%s seed %d: kNN balanced accuracy %.3f, %d latent directions, %d epochs, %.0f s",
            json.dumps(options),
            seed,
            score,
            adata.uns["scvae"]["n_latent_directions"],
            len(model.history["train_loss"]),
            time.perf_counter() - started,
        )


if __name__ == "__main__":
    main()
