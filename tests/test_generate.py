"""Generation of new cells and posterior predictive checks."""

import matplotlib
import numpy as np
import pytest
import scipy.sparse as sp

import scvae
from scvae.metrics import knn_predictions, two_sample_auc

from .conftest import quick_fit

matplotlib.use("Agg")


def _log_means(x) -> np.ndarray:
    return np.log1p(np.asarray(sp.csr_matrix(x).mean(0)).ravel())


def test_generated_cells_of_a_type_lie_near_real_cells_of_that_type(fitted):
    model, adata = fitted
    real_z = model.embed(adata)
    parts, wanted = [], []
    for cell_type in model.label_categories:
        synth = scvae.generate(model, 100, cell_type=cell_type, seed=3)
        assert (synth.obs["cell_type"] == cell_type).all()
        parts.append(model.embed(synth, layer=None))
        wanted += [cell_type] * 100
    # Leave-one-out kNN over real + generated cells, scored on the generated ones: each
    # generated cell must sit among real cells of its own type.
    z = np.concatenate([real_z, *parts])
    labels = np.concatenate([adata.obs["cell_type"].astype(str).to_numpy(), wanted])
    predicted = knn_predictions(z, labels)[len(real_z) :]
    assert np.mean(predicted == np.asarray(wanted)) > 0.95


def test_generated_gene_means_match_each_type_and_batch(fitted):
    model, adata = fitted
    for cell_type in model.label_categories:
        for batch in model.batch_categories:
            real = adata[(adata.obs["cell_type"] == cell_type) & (adata.obs["batch"] == batch)].X
            synth = scvae.generate(model, 2000, batch=batch, cell_type=cell_type, seed=1)
            assert (synth.obs["batch"] == batch).all()
            r = np.corrcoef(_log_means(real), _log_means(synth.X))[0, 1]
            assert r > 0.98, (cell_type, batch, r)
            depth_ratio = synth.X.sum(1).mean() / real.sum(1).mean()
            assert 0.85 < depth_ratio < 1.15, (cell_type, batch, depth_ratio)


def test_batch_conditioning_moves_the_counts_like_the_batch_effect(fitted):
    """Same type, other batch: the generated log fold changes follow the real ones."""
    model, adata = fitted
    cell_type, (b0, b1) = model.label_categories[0], model.batch_categories

    def real(batch):
        return adata[(adata.obs["cell_type"] == cell_type) & (adata.obs["batch"] == batch)].X

    def synth(batch):
        return scvae.generate(model, 3000, batch=batch, cell_type=cell_type, seed=2).X

    def normalised_log_means(x):
        x = sp.csr_matrix(x)
        return np.log(np.asarray((sp.diags(1 / x.sum(1).A1) @ x).mean(0)).ravel() + 1e-4)

    real_shift = normalised_log_means(real(b1)) - normalised_log_means(real(b0))
    synth_shift = normalised_log_means(synth(b1)) - normalised_log_means(synth(b0))
    assert np.corrcoef(real_shift, synth_shift)[0, 1] > 0.8


def test_unconditional_generation_follows_the_training_composition(fitted):
    model, adata = fitted
    synth = scvae.generate(model, 4000, seed=0)
    real_share = adata.obs["cell_type"].value_counts(normalize=True).sort_index()
    synth_share = synth.obs["cell_type"].value_counts(normalize=True).sort_index()
    np.testing.assert_allclose(synth_share.to_numpy(), real_share.to_numpy(), atol=0.04)
    r = np.corrcoef(_log_means(adata.X), _log_means(synth.X))[0, 1]
    assert r > 0.99


def test_same_seed_same_cells_other_seed_other_cells(fitted):
    model, _ = fitted
    a = scvae.generate(model, 300, seed=5, chunk_size=128)
    b = scvae.generate(model, 300, seed=5, chunk_size=128)
    c = scvae.generate(model, 300, seed=6, chunk_size=128)
    assert (a.X != b.X).nnz == 0
    assert a.obs.equals(b.obs)
    assert (a.X != c.X).nnz > 0


def test_generated_anndata_is_counts_with_model_genes(fitted):
    model, _ = fitted
    synth = scvae.generate(model, 50, seed=0)
    assert synth.var_names.tolist() == model.gene_names
    assert sp.issparse(synth.X) and synth.X.dtype == np.float32
    assert np.all(synth.X.data == np.round(synth.X.data)) and synth.X.data.min() >= 0
    assert set(synth.obs.columns) == {"batch", "cell_type", "library_size"}


def test_saved_model_generates_the_same_cells(fitted, tmp_path):
    model, _ = fitted
    model.save(tmp_path / "m")
    loaded = scvae.load(tmp_path / "m")
    a = scvae.generate(model, 200, seed=4)
    b = scvae.generate(loaded, 200, seed=4)
    assert (a.X != b.X).nnz == 0


def test_types_from_annotated_cells_for_a_model_fitted_without_labels(small_adata):
    model = quick_fit(small_adata, batch_key="batch", max_epochs=80)
    with pytest.raises(ValueError, match="adata= and labels_key="):
        scvae.generate(model, 10, cell_type="group_0")
    real_z = model.embed(small_adata)
    synth = scvae.generate(
        model, 200, cell_type="group_2", adata=small_adata, labels_key="cell_type", seed=0
    )
    assert (synth.obs["cell_type"] == "group_2").all()
    z = np.concatenate([real_z, model.embed(synth, layer=None)])
    labels = np.concatenate([small_adata.obs["cell_type"].astype(str), ["group_2"] * 200])
    assert np.mean(knn_predictions(z, labels)[len(real_z) :] == "group_2") > 0.95


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_cells": 0}, "positive integer"),
        ({"n_cells": -5}, "positive integer"),
        ({"batch": "batch_9"}, "unknown batch 'batch_9'; known: 'batch_0', 'batch_1'"),
        ({"cell_type": "T cells"}, "unknown cell_type 'T cells'; known: 'group_0'"),
        ({"labels_key": "cell_type"}, "labels_key needs adata"),
    ],
)
def test_generate_bad_input(fitted, kwargs, message):
    model, _ = fitted
    kwargs = {"n_cells": 10, **kwargs}
    with pytest.raises(ValueError, match=message):
        scvae.generate(model, **kwargs)


def test_generate_refuses_a_fractional_number_of_cells(fitted):
    model, _ = fitted
    with pytest.raises(TypeError, match=r"n_cells must be an integer, got float 2\.5"):
        scvae.generate(model, n_cells=2.5)


def test_generate_batch_for_a_model_without_batches(small_adata):
    model = quick_fit(small_adata, max_epochs=5)
    with pytest.raises(ValueError, match="without batch_key"):
        scvae.generate(model, 10, batch="batch_0")


def test_gene_statistics_hand_checked():
    counts = np.array([[0, 2, 5], [2, 0, 5], [1, 0, 5], [7, 7, 0]])
    missing = np.array([[0, 0, 0], [0, 0, 0], [0, 0, 0], [1, 1, 0]], dtype=bool)
    stats = scvae.gene_statistics(sp.csr_matrix(counts), missing)
    # Gene 0 observed [0, 2, 1]: mean 1, sample variance 1, one zero in three.
    # Gene 1 observed [2, 0, 0]: mean 2/3, variance ((4/3)^2 + 2 (2/3)^2) / 2 = 4/3.
    # Gene 2 all observed [5, 5, 5, 0]: mean 3.75, variance 6.25, one zero in four.
    np.testing.assert_allclose(stats["mean"], [1.0, 2 / 3, 3.75])
    np.testing.assert_allclose(stats["variance"], [1.0, 4 / 3, 6.25])
    np.testing.assert_allclose(stats["zero_fraction"], [1 / 3, 2 / 3, 1 / 4])
    dense = scvae.gene_statistics(counts[:3])
    np.testing.assert_allclose(dense["mean"], [1.0, 2 / 3, 5.0])


def test_two_sample_auc_separates_only_different_cells():
    adata = scvae.datasets.simulate(800, 100, n_groups=2, n_batches=1, seed=0)
    x = adata.X
    same = two_sample_auc(x[:400], x[400:], n_pcs=20)
    rng = np.random.default_rng(0)
    shuffled = x[400:].toarray()[:, rng.permutation(100)]
    different = two_sample_auc(x[:400], shuffled, n_pcs=20)
    assert 0.35 < same < 0.62
    assert different > 0.95


def test_posterior_predictive_check_reproduces_the_data(fitted, tmp_path):
    model, adata = fitted
    check = scvae.posterior_predictive_check(model, adata)
    assert check.summary["r_mean"] > 0.995
    assert check.summary["r_zero_fraction"] > 0.98
    assert check.summary["auc"] < 0.75
    observed = scvae.gene_statistics(adata.X)
    np.testing.assert_allclose(check.genes["mean_observed"], observed["mean"])
    axes = scvae.pl.ppc(check, save=tmp_path / "ppc.png")
    assert len(axes) == 4 and (tmp_path / "ppc.png").stat().st_size > 10_000


def test_generated_check_matches_composition(fitted):
    model, adata = fitted
    check = scvae.posterior_predictive_check(model, adata, kind="generate", labels_key="cell_type")
    assert check.kind == "generate"
    assert check.summary["r_mean"] > 0.995
    with pytest.raises(ValueError, match="kind must be one of"):
        scvae.posterior_predictive_check(model, adata, kind="prior")


def test_posterior_predictive_check_leaves_missing_entries_out(fitted):
    model, adata = fitted
    holes = adata.copy()
    x = holes.X.toarray()
    x[:300, :20] = np.nan
    holes.X = x
    check = scvae.posterior_predictive_check(model, holes, classifier=False)
    np.testing.assert_allclose(
        check.genes["mean_observed"].to_numpy()[:20],
        adata.X[300:, :20].toarray().astype(np.float64).mean(0),
        rtol=1e-6,
    )
    assert np.isnan(check.summary["auc"])
    assert check.summary["r_mean"] > 0.99
