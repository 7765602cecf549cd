"""Is an embedding's Leiden ARI limited by the measurement? (issue 20, docs/embedding.md)

For each seed, scvae's default fit on the protocol's split (as ``embedding.py`` makes it) and
PCA (50 PCs, seed 0): the best Leiden ARI over ``embedding.py``'s resolutions and over a wider
grid, for the posterior means, the same rows scaled to unit length (a cosine graph) and the
whitened posterior means, with the kNN balanced accuracy beside each::

    python benchmarks/leiden_check.py --dataset pbmc4k_scdcc --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import logging

import numpy as np
from _common import prepare
from embedding import embed

from scvae import metrics

WIDE_RESOLUTIONS = (0.02, 0.05, *metrics.LEIDEN_RESOLUTIONS, 3.0)
logger = logging.getLogger("benchmark")


def variants(z: np.ndarray) -> dict[str, np.ndarray]:
    """The posterior means, rows at unit length, and whitened (principal directions at unit
    variance)."""
    centred = z - z.mean(0)
    u, _, _ = np.linalg.svd(centred, full_matrices=False)
    return {
        "posterior means": z,
        "cosine": z / np.linalg.norm(z, axis=1, keepdims=True),
        "whitened": u * np.sqrt(len(z)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="pbmc4k_scdcc")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logger.setLevel(logging.INFO)
    adata, train_idx, test_idx = prepare(args.dataset, seed=0)
    labels = adata.obs["cell_type"].astype(str).to_numpy()
    runs = [("scvae", seed) for seed in args.seeds] + [("PCA", args.seeds[0])]
    for method, seed in runs:
        z = embed(method, adata, train_idx, test_idx, seed, {})["z"]
        for name, e in (variants(z) if method == "scvae" else {"PCs": z}).items():
            grid = metrics.best_leiden_scores(e, labels, seed=seed)
            wide = metrics.best_leiden_scores(e, labels, seed=seed, resolutions=WIDE_RESOLUTIONS)
            knn = metrics.knn_scores(e, labels, k=15, folds=5, seed=seed)
            logger.info(
                "%s seed %d %s %s: Leiden ARI %.3f (resolution %g), wider grid %.3f (%g), "
                "kNN balanced accuracy %.3f",
                args.dataset,
                seed,
                method,
                name,
                grid["ari"],
                grid["resolution"],
                wide["ari"],
                wide["resolution"],
                knn["balanced_accuracy"],
            )


if __name__ == "__main__":
    main()
