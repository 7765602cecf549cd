"""Built-in data and the reader of the public datasets (SCVAE_DATA_DIR)."""

import numpy as np
import pytest

import scvae
from scvae import datasets, metrics


def test_simulation_is_reproducible_and_has_the_asked_shape():
    a = datasets.simulate(200, 40, n_groups=3, n_batches=2, seed=5)
    b = datasets.simulate(200, 40, n_groups=3, n_batches=2, seed=5)
    assert a.shape == (200, 40)
    assert (a.X != b.X).nnz == 0
    assert set(a.obs["cell_type"]) == {"group_0", "group_1", "group_2"}
    assert np.all(a.X.data == np.round(a.X.data))


def test_simulated_rare_group_has_the_asked_size():
    adata = datasets.simulate(5000, 20, n_groups=2, group_sizes=[0.99, 0.01], seed=0)
    assert 25 <= (adata.obs["cell_type"] == "group_1").sum() <= 80


def test_data_dir_follows_the_environment_variable(monkeypatch, tmp_path):
    monkeypatch.setenv("SCVAE_DATA_DIR", str(tmp_path))
    assert datasets.data_dir() == tmp_path
    with pytest.raises(FileNotFoundError, match="SCVAE_DATA_DIR"):
        datasets.read("no_such_dataset")


def test_pbmc68k_counts_are_recovered_exactly():
    adata = datasets.pbmc68k_reduced_counts()
    assert adata.shape[0] == 700
    assert np.all(adata.X.data == np.round(adata.X.data)) and adata.X.data.min() > 0
    # Round trip: normalising our counts with the original totals gives back .raw (3 decimals).
    import scanpy as sc

    raw = sc.datasets.pbmc68k_reduced().raw[:, adata.var_names].X
    raw = raw.toarray() if hasattr(raw, "toarray") else raw
    n_counts = adata.obs["n_counts_all_genes"].to_numpy()[:, None]
    again = np.log1p(adata.X.toarray() / n_counts * 1e4)
    assert np.abs(again - raw).max() < 6e-4


def _shared(name):
    path = datasets.data_dir() / f"{name}.h5ad"
    if not path.is_file():
        pytest.skip(f"{path} not available (set SCVAE_DATA_DIR)")
    return datasets.read(name)


def test_real_pbmc_embedding_separates_cell_types():
    """On real PBMCs (pbmc68k_reduced counts) scvae's kNN accuracy is at least PCA's."""
    import scanpy as sc

    adata = _shared("pbmc68k_reduced_counts")
    scvae.fit(adata, progress=False, max_epochs=150)
    baseline = adata.copy()
    sc.pp.normalize_total(baseline)
    sc.pp.log1p(baseline)
    sc.pp.pca(baseline, n_comps=10)
    labels = adata.obs["cell_type"].to_numpy()
    ours = metrics.knn_scores(adata.obsm["X_scvae"], labels)["accuracy"]
    pca = metrics.knn_scores(baseline.obsm["X_pca"], labels)["accuracy"]
    assert ours > 0.6
    assert ours >= pca - 0.03
