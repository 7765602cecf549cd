"""Embedding quality against known labels (kNN accuracy, Leiden ARI/NMI, per-class recall),
the classifier two-sample test of generated cells and the calibration of count predictions
(randomised PIT).

Used by the demo, the benchmarks and the tests, so that every reported number is computed
one way.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
from anndata import AnnData
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from sklearn.neighbors import NearestNeighbors

__all__ = [
    "active_units",
    "best_leiden_scores",
    "knn_predictions",
    "knn_scores",
    "latent_directions",
    "leiden_clusters",
    "leiden_scores",
    "randomized_pit",
    "two_sample_auc",
]


#: A latent dimension is active when the variance of its posterior means across cells exceeds
#: this (Burda et al., 2016): a collapsed dimension's posterior is the prior for every cell.
ACTIVE_UNIT_VARIANCE = 0.01
#: A principal direction of the posterior means is in use when its variance exceeds this: the
#: count does not depend on the axes (:func:`latent_directions`).
LATENT_DIRECTION_VARIANCE = 0.1

#: Leiden resolutions :func:`best_leiden_scores` tries by default.
LEIDEN_RESOLUTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.2, 1.5, 2.0)


def knn_predictions(
    embedding: np.ndarray,
    labels: np.ndarray,
    *,
    k: int = 15,
    folds: int | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Majority vote of each cell's ``k`` nearest neighbours (Euclidean).

    ``folds=None``: leave-one-out (every other cell votes); ``folds=5``: stratified 5-fold
    cross-validation (the cells of the other four folds vote), shuffled with ``seed``.
    """
    labels = np.asarray(labels)
    codes, uniques = _encode(labels)
    embedding = np.asarray(embedding)
    if folds is None:
        k = min(k, len(labels) - 1)
        _, neighbours = NearestNeighbors(n_neighbors=k + 1).fit(embedding).kneighbors(embedding)
        return uniques[_vote(codes[neighbours[:, 1:]], len(uniques))]  # drop the cell itself
    from sklearn.model_selection import StratifiedKFold

    predicted = np.empty(len(labels), dtype=np.int64)
    splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
    # A class with fewer cells than folds is spread over fewer folds (sklearn warns).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        splits = list(splitter.split(embedding, codes))
    for train, test in splits:
        n_neighbours = min(k, len(train))
        index = NearestNeighbors(n_neighbors=n_neighbours).fit(embedding[train])
        _, neighbours = index.kneighbors(embedding[test])
        predicted[test] = _vote(codes[train][neighbours], len(uniques))
    return uniques[predicted]


def _vote(votes: np.ndarray, n_classes: int) -> np.ndarray:
    """The most frequent code of each row of ``votes`` (ties: the smallest code)."""
    counts = np.zeros((len(votes), n_classes), dtype=np.int64)
    np.add.at(counts, (np.repeat(np.arange(len(votes)), votes.shape[1]), votes.ravel()), 1)
    return counts.argmax(axis=1)


def knn_scores(
    embedding: np.ndarray,
    labels: np.ndarray,
    *,
    k: int = 15,
    folds: int | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """kNN accuracy, balanced accuracy and per-class recall of the vote of
    :func:`knn_predictions` (leave-one-out, or ``folds``-fold cross-validated).

    Examples
    --------
    >>> noise = np.random.default_rng(0).normal(0, 0.1, (40, 2))
    >>> emb = np.r_[np.zeros((20, 2)), np.ones((20, 2))] + noise
    >>> knn_scores(emb, np.repeat(["a", "b"], 20), k=5)["accuracy"]
    1.0
    """
    labels = np.asarray(labels).astype(str)
    predicted = knn_predictions(embedding, labels, k=k, folds=folds, seed=seed)
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


def best_leiden_scores(
    embedding: np.ndarray,
    labels: np.ndarray,
    *,
    resolutions: tuple[float, ...] = LEIDEN_RESOLUTIONS,
    seed: int = 0,
) -> dict[str, float]:
    """ARI and NMI of the Leiden clustering that best matches ``labels`` (highest ARI) over
    ``resolutions``, on one 15-NN graph, and the resolution that gave it.

    Each embedding is scored at its own best resolution, so that a method is not judged by
    how well one fixed resolution happens to suit the scale of its graph.
    """
    graph = _neighbour_graph(embedding, seed=seed)
    labels = np.asarray(labels).astype(str)
    best: dict[str, float] = {"ari": -np.inf}
    for resolution in resolutions:
        clusters = _leiden(graph, resolution, seed)
        ari = float(adjusted_rand_score(labels, clusters))
        if ari > best["ari"]:
            best = {
                "ari": ari,
                "nmi": float(normalized_mutual_info_score(labels, clusters)),
                "n_clusters": len(set(clusters)),
                "resolution": float(resolution),
            }
    return best


def active_units(embedding: np.ndarray, *, threshold: float = ACTIVE_UNIT_VARIANCE) -> int:
    """Number of latent dimensions whose posterior means vary across cells by more than
    ``threshold`` (variance): the active units of Burda et al. (2016). A collapsed dimension
    has a posterior equal to the prior for every cell, so its mean is the same everywhere.

    Examples
    --------
    >>> z = np.random.default_rng(0).normal(size=(500, 3)) * [1.0, 0.5, 0.01]
    >>> active_units(z)
    2
    """
    return int(np.sum(np.var(np.asarray(embedding, dtype=np.float64), axis=0) > threshold))


def latent_directions(
    embedding: np.ndarray, *, threshold: float = LATENT_DIRECTION_VARIANCE
) -> int:
    """Number of principal directions of ``embedding`` (eigenvectors of its covariance across
    cells) whose variance exceeds ``threshold``: the dimension of the subspace the cells use.

    Unlike :func:`active_units` it does not depend on the axes: with a mixture prior the
    subspace the data need is seldom aligned with them, and a few axes each carrying a
    little of it would all count as active.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> z = rng.normal(size=(500, 2)) @ rng.normal(size=(2, 6))  # a plane in 6 dimensions
    >>> latent_directions(z), active_units(z)
    (2, 6)
    """
    covariance = np.cov(np.asarray(embedding, dtype=np.float64), rowvar=False)
    return int(np.sum(np.linalg.eigvalsh(np.atleast_2d(covariance)) > threshold))


def leiden_clusters(
    embedding: np.ndarray, *, resolution: float = 1.0, seed: int = 0
) -> np.ndarray:
    """Leiden clusters (strings) on the 15-NN graph of ``embedding``, as scanpy computes them."""
    return _leiden(_neighbour_graph(embedding, seed=seed), resolution, seed)


def _neighbour_graph(embedding: np.ndarray, *, seed: int) -> AnnData:
    import scanpy as sc

    tmp = AnnData(np.zeros((len(embedding), 0), dtype=np.float32))
    tmp.obsm["rep"] = np.asarray(embedding)
    sc.pp.neighbors(tmp, use_rep="rep", n_neighbors=15, random_state=seed)
    return tmp


def _leiden(graph: AnnData, resolution: float, seed: int) -> np.ndarray:
    import scanpy as sc

    sc.tl.leiden(
        graph,
        resolution=resolution,
        flavor="igraph",
        n_iterations=2,
        directed=False,
        random_state=seed,
    )
    return graph.obs["leiden"].to_numpy().astype(str)


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
