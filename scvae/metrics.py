"""Embedding quality against known labels (kNN accuracy, Leiden ARI/NMI, per-class recall),
the classifier two-sample test of generated cells and the calibration of count predictions
(randomised PIT).

Used by the demo, the benchmarks and the tests, so that every reported number is computed
one way.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from anndata import AnnData
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from sklearn.neighbors import NearestNeighbors

__all__ = [
    "knn_predictions",
    "knn_scores",
    "leiden_clusters",
    "leiden_scores",
    "randomized_pit",
    "two_sample_auc",
]


def knn_predictions(embedding: np.ndarray, labels: np.ndarray, *, k: int = 15) -> np.ndarray:
    """Leave-one-out majority vote of each cell's ``k`` nearest neighbours (Euclidean)."""
    labels = np.asarray(labels)
    codes, uniques = _encode(labels)
    k = min(k, len(labels) - 1)
    _, neighbours = NearestNeighbors(n_neighbors=k + 1).fit(embedding).kneighbors(embedding)
    votes = codes[neighbours[:, 1:]]  # drop the cell itself
    counts = np.zeros((len(labels), len(uniques)), dtype=np.int64)
    np.add.at(counts, (np.repeat(np.arange(len(labels)), k), votes.ravel()), 1)
    return uniques[counts.argmax(axis=1)]


def knn_scores(embedding: np.ndarray, labels: np.ndarray, *, k: int = 15) -> dict[str, float]:
    """kNN accuracy, balanced accuracy and per-class recall of the leave-one-out vote.

    Examples
    --------
    >>> noise = np.random.default_rng(0).normal(0, 0.1, (40, 2))
    >>> emb = np.r_[np.zeros((20, 2)), np.ones((20, 2))] + noise
    >>> knn_scores(emb, np.repeat(["a", "b"], 20), k=5)["accuracy"]
    1.0
    """
    labels = np.asarray(labels).astype(str)
    predicted = knn_predictions(embedding, labels, k=k)
    classes, sizes = np.unique(labels, return_counts=True)
    recall = {c: float(np.mean(predicted[labels == c] == c)) for c in classes}
    smallest = [str(c) for c in classes[np.argsort(sizes, kind="stable")[:3]]]
    return {
        "accuracy": float(np.mean(predicted == labels)),
        "balanced_accuracy": float(np.mean(list(recall.values()))),
        "recall_smallest3": float(np.mean([recall[c] for c in smallest])),
        "recall": recall,
    }


def leiden_scores(
    embedding: np.ndarray, labels: np.ndarray, *, resolution: float = 1.0, seed: int = 0
) -> dict[str, float]:
    """ARI and NMI of Leiden clusters on the 15-NN graph of ``embedding`` against ``labels``."""
    clusters = leiden_clusters(embedding, resolution=resolution, seed=seed)
    labels = np.asarray(labels).astype(str)
    return {
        "ari": float(adjusted_rand_score(labels, clusters)),
        "nmi": float(normalized_mutual_info_score(labels, clusters)),
        "n_clusters": len(set(clusters)),
    }


def leiden_clusters(
    embedding: np.ndarray, *, resolution: float = 1.0, seed: int = 0
) -> np.ndarray:
    """Leiden clusters (strings) on the 15-NN graph of ``embedding``, as scanpy computes them."""
    import scanpy as sc

    tmp = AnnData(np.zeros((len(embedding), 0), dtype=np.float32))
    tmp.obsm["rep"] = np.asarray(embedding)
    sc.pp.neighbors(tmp, use_rep="rep", n_neighbors=15, random_state=seed)
    sc.tl.leiden(
        tmp,
        resolution=resolution,
        flavor="igraph",
        n_iterations=2,
        directed=False,
        random_state=seed,
    )
    return tmp.obs["leiden"].to_numpy().astype(str)


def _encode(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    uniques, codes = np.unique(labels, return_inverse=True)
    return codes, uniques


def two_sample_auc(
    real, generated, *, n_pcs: int = 50, max_cells: int = 5000, seed: int = 0
) -> float:
    """ROC AUC of a classifier that tells generated cells from real ones (0.5 is ideal).

    Both count matrices are normalised to 10,000 counts per cell and log1p-transformed, then
    projected on the first ``n_pcs`` principal components of the pooled cells; a logistic
    regression is scored by 5-fold cross-validated AUC. Each side is subsampled to the size
    of the smaller one (at most ``max_cells``) so that chance is exactly 0.5.

    Examples
    --------
    >>> two_sample_auc(adata.X, scvae.generate(model, adata.n_obs).X)  # doctest: +SKIP
    0.55
    """
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(seed)
    real, generated = sp.csr_matrix(real), sp.csr_matrix(generated)
    if real.shape[1] != generated.shape[1]:
        raise ValueError(f"real has {real.shape[1]} genes, generated {generated.shape[1]}")
    n = min(real.shape[0], generated.shape[0], max_cells)
    if n < 10:
        raise ValueError(f"need at least 10 cells on each side, got {n}")
    pooled = sp.vstack(
        [
            real[np.sort(rng.choice(real.shape[0], n, replace=False))],
            generated[np.sort(rng.choice(generated.shape[0], n, replace=False))],
        ],
        format="csr",
    ).astype(np.float64)
    totals = np.maximum(np.asarray(pooled.sum(1)).ravel(), 1.0)
    logged = sp.diags(1e4 / totals) @ pooled
    logged = logged.log1p().toarray()
    n_pcs = min(n_pcs, logged.shape[1] - 1, 2 * n - 1)
    pcs = PCA(n_pcs, random_state=seed).fit_transform(logged)
    y = np.repeat([0, 1], n)
    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    folds = StratifiedKFold(5, shuffle=True, random_state=seed)
    return float(np.mean(cross_val_score(classifier, pcs, y, cv=folds, scoring="roc_auc")))


def randomized_pit(draws, truth, *, seed: int = 0) -> np.ndarray:
    """Randomised probability integral transform of counts under predictive draws.

    For each entry with predictive CDF ``F`` (estimated from ``draws``, samples x entries)
    and true count ``x``: ``u = F(x - 1) + v * (F(x) - F(x - 1))`` with ``v ~ Uniform(0, 1)``.
    A calibrated predictive gives ``u ~ Uniform(0, 1)`` even for discrete counts (Czado,
    Gneiting and Held 2009), so the share of ``u`` in ``[0.05, 0.95]`` is the coverage a
    90 % interval would have if intervals could hold exactly 90 % of the mass; integer
    intervals of mostly-zero genes cannot (``[0, 0]`` already holds more), so their plain
    coverage is above the level even for a perfect model.

    Examples
    --------
    >>> draws = np.random.default_rng(0).poisson(3.0, size=(500, 2000))
    >>> u = randomized_pit(draws, np.random.default_rng(1).poisson(3.0, size=2000))
    >>> bool(abs(np.mean((u >= 0.05) & (u <= 0.95)) - 0.9) < 0.03)
    True
    """
    draws, truth = np.asarray(draws), np.asarray(truth)
    if draws.ndim != 2 or truth.shape != draws.shape[1:]:
        raise ValueError(
            f"draws must be samples x entries and truth one value per entry; got "
            f"{draws.shape} and {truth.shape}"
        )
    below = np.mean(draws < truth, axis=0)
    at_or_below = np.mean(draws <= truth, axis=0)
    v = np.random.default_rng(seed).random(truth.shape)
    return below + v * (at_or_below - below)
