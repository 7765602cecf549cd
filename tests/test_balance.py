"""Imbalance: rare cell types are not drowned out, depth does not move a cell."""

import numpy as np
import pytest

import scvae
from scvae import metrics
from scvae._balance import balance_weights

from .conftest import quick_fit


def test_weights_give_each_class_the_same_total_and_average_one():
    codes = np.array([0] * 90 + [1] * 9 + [2] * 1 + [-1] * 5)
    weights = balance_weights(codes, max_ratio=1000)
    assert weights.sum() == pytest.approx(len(codes), rel=1e-5)  # mean 1
    totals = [weights[codes == k].sum() for k in range(3)]
    np.testing.assert_allclose(totals, totals[0], rtol=1e-5)
    # Labelled cells keep their total (100 of 105), so unlabelled cells keep weight 1.
    np.testing.assert_allclose(weights[codes == -1], 1.0, rtol=1e-5)


def test_weights_are_capped():
    codes = np.array([0] * 999 + [1])
    weights = balance_weights(codes, max_ratio=20)
    assert weights.max() == pytest.approx(20, rel=1e-4)
    assert weights.mean() == pytest.approx(1, rel=1e-5)


@pytest.fixture(scope="module")
def rare_data():
    """3000 cells; group_2 is 1 % of them and differs only moderately."""
    return scvae.datasets.simulate(
        3000,
        300,
        n_groups=3,
        n_batches=1,
        group_sizes=[0.6, 0.39, 0.01],
        de_log_fold=0.7,
        seed=11,
    )


def _rare_recall(adata):
    labels = adata.obs["cell_type"].to_numpy()
    return metrics.knn_scores(adata.obsm["X_scvae"], labels)["recall"]["group_2"]


def test_balancing_raises_the_recall_of_a_rare_group(rare_data):
    plain, balanced = rare_data.copy(), rare_data.copy()
    quick_fit(plain, labels_key="cell_type", max_epochs=40)
    quick_fit(balanced, labels_key="cell_type", balance="labels", max_epochs=40)
    assert _rare_recall(balanced) > _rare_recall(plain) + 0.1
    info = balanced.uns["scvae"]["settings"]["balance_classes"]
    assert info["class_size"]["group_2"] == (rare_data.obs["cell_type"] == "group_2").sum()


def test_a_downsampled_cell_stays_near_its_original(fitted):
    model, adata = fitted
    rng = np.random.default_rng(0)
    shallow = adata.copy()
    counts = shallow.X.copy()
    counts.data = rng.binomial(counts.data.astype(np.int64), 0.3).astype(np.float32)
    shallow.X = counts
    keep = np.asarray(counts.sum(axis=1)).ravel() > 0
    z, z_shallow = adata.obsm["X_scvae"][keep], model.embed(shallow[keep])
    labels = adata.obs["cell_type"].to_numpy()[keep]
    # Each shallow cell is classified by its neighbours among the full-depth cells...
    from sklearn.neighbors import KNeighborsClassifier

    knn = KNeighborsClassifier(15).fit(z, labels)
    assert np.mean(knn.predict(z_shallow) == labels) > 0.95
    # ... and stays closer to where it was than to the centre of any other cell type.
    types = np.unique(labels)
    centroids = {g: z[labels == g].mean(0) for g in types}
    moved = np.linalg.norm(z - z_shallow, axis=1)
    to_other = np.array(
        [
            min(np.linalg.norm(zs - centroids[g]) for g in types if g != own)
            for zs, own in zip(z_shallow, labels, strict=True)
        ]
    )
    assert np.mean(moved < to_other) > 0.95


def test_balance_needs_its_key(small_adata):
    with pytest.raises(ValueError, match="needs labels_key"):
        quick_fit(small_adata, balance="labels")
    with pytest.raises(ValueError, match="needs batch_key"):
        quick_fit(small_adata, balance="batch")


def test_unknown_balance(small_adata):
    with pytest.raises(ValueError, match="balance must be None or one of"):
        quick_fit(small_adata, balance="classes")


def test_single_class_cannot_be_balanced(small_adata):
    small_adata.obs["one"] = "a"
    with pytest.raises(ValueError, match="at least 2 classes"):
        quick_fit(small_adata, labels_key="one", balance="labels")


def test_unlabelled_cells_are_allowed(small_adata):
    small_adata.obs["partial"] = small_adata.obs["cell_type"].astype(object)
    small_adata.obs.iloc[:100, small_adata.obs.columns.get_loc("partial")] = np.nan
    quick_fit(small_adata, labels_key="partial", balance="labels", max_epochs=2)
    sizes = small_adata.uns["scvae"]["settings"]["balance_classes"]["class_size"]
    assert sum(sizes.values()) == small_adata.n_obs - 100
