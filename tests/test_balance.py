"""Imbalance: rare cell types are not drowned out, depth does not move a cell."""

import numpy as np
import pytest

from scvae._balance import balance_weights


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


def test_single_class_cannot_be_balanced():
    with pytest.raises(ValueError, match="at least 2 classes"):
        balance_weights(np.zeros(10, dtype=int))


def test_balanced_sampling_draws_rare_cells_more_often(small_adata):
    from scvae._batches import MinibatchSource
    from scvae._data import prepare_counts

    data = prepare_counts(small_adata)
    codes = np.where(np.arange(data.n_cells) < 30, 1, 0)  # 30 "rare" cells among 600
    source = MinibatchSource(
        data, batch_size=600, sample_weights=balance_weights(codes, max_ratio=100)
    )
    drawn = source.data.library[:30]  # the rare cells' libraries identify them
    batch = next(iter(source))
    rare_share = np.isin(batch.library.numpy(), drawn).mean()
    assert 0.4 < rare_share < 0.6  # half of the draws, not 5 %
