"""What a user relies on from scvae.fit: groups recovered, reproducible, isolated, honest keys."""

import copy

import numpy as np
import pytest
import scipy.sparse as sp

import scvae
from scvae import metrics
from scvae._fit.settings import DEFAULT_N_LATENT_WITH_BATCHES

from .conftest import assert_close_embeddings, quick_fit


def test_embedding_recovers_simulated_groups_and_removes_batch(fitted):
    _, adata = fitted
    z = adata.obsm["X_scvae"]
    assert z.shape == (adata.n_obs, DEFAULT_N_LATENT_WITH_BATCHES)
    labels = adata.obs["cell_type"].to_numpy()
    assert metrics.leiden_scores(z, labels, resolution=0.5)["ari"] > 0.9
    assert metrics.knn_scores(z, labels)["accuracy"] > 0.95
    # Batches were simulated with a strong effect; in the latent space they should mix:
    # predicting a cell's batch from its neighbours is close to chance (0.5).
    assert metrics.knn_scores(z, adata.obs["batch"].to_numpy())["accuracy"] < 0.65


def test_loss_decreases(fitted):
    model, _ = fitted
    val = np.asarray(model.history["validation_elbo"])
    train = np.asarray(model.history["train_loss"])
    assert val[-5:].mean() > val[:3].mean() + 50  # the held-out ELBO rises (nats per cell)
    assert train[-5:].mean() < train[:3].mean() - 50


def test_same_seed_same_embedding_other_seed_differs(small_adata):
    a, b, c = small_adata.copy(), small_adata.copy(), small_adata.copy()
    quick_fit(a, max_epochs=5, seed=3)
    quick_fit(b, max_epochs=5, seed=3)
    quick_fit(c, max_epochs=5, seed=4)
    np.testing.assert_array_equal(a.obsm["X_scvae"], b.obsm["X_scvae"])
    assert not np.allclose(a.obsm["X_scvae"], c.obsm["X_scvae"])


def test_fit_restores_callers_random_state(small_adata):
    import torch

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    quick_fit(small_adata, max_epochs=2)
    np.testing.assert_array_equal(torch.rand(3).numpy(), expected.numpy())


def test_two_models_in_one_process_do_not_interfere(small_adata):
    alone = small_adata.copy()
    model_alone = quick_fit(alone, max_epochs=5, seed=0)

    first, other = small_adata.copy(), scvae.datasets.simulate(300, 150, seed=9)
    model_first = quick_fit(first, max_epochs=5, seed=0)
    before = model_first.embed(first)
    model_other = quick_fit(other, max_epochs=5, seed=0, n_latent=4, likelihood="zinb")
    # Training the second model changed nothing in the first, and each equals a lone fit.
    np.testing.assert_array_equal(model_first.embed(first), before)
    np.testing.assert_array_equal(first.obsm["X_scvae"], alone.obsm["X_scvae"])
    assert model_other.embed(other).shape == (300, 4)
    assert model_alone.module is not model_first.module


def test_embed_of_training_cells_equals_obsm(fitted):
    model, adata = fitted
    assert_close_embeddings(model.embed(adata), adata.obsm["X_scvae"])


def test_embed_matches_genes_by_name(fitted):
    model, adata = fitted
    order = np.random.default_rng(0).permutation(adata.n_vars)
    shuffled = adata[:, order].copy()
    assert_close_embeddings(model.embed(shuffled), adata.obsm["X_scvae"])


def test_embed_ignores_extra_genes(fitted):
    model, adata = fitted
    import anndata as ad
    import pandas as pd

    extra = ad.AnnData(
        sp.csr_matrix(np.ones((adata.n_obs, 2), dtype=np.float32)),
        obs=adata.obs,
        var=pd.DataFrame(index=["extra_1", "extra_2"]),
    )
    wider = ad.concat([adata, extra], axis=1, merge="same")
    assert_close_embeddings(model.embed(wider), adata.obsm["X_scvae"])


def test_dense_and_sparse_input_give_the_same_model(small_adata):
    dense = small_adata.copy()
    dense.X = dense.X.toarray()
    sparse = small_adata.copy()
    quick_fit(dense, max_epochs=3)
    quick_fit(sparse, max_epochs=3)
    np.testing.assert_array_equal(dense.obsm["X_scvae"], sparse.obsm["X_scvae"])


def test_adata_changes_only_in_documented_keys(small_adata):
    adata = small_adata
    before = copy.deepcopy(adata)
    quick_fit(adata, max_epochs=2, batch_key="batch", labels_key="cell_type", key_added="run1")
    assert set(adata.obsm) == set(before.obsm) | {"X_run1"}
    assert set(adata.uns) == set(before.uns) | {"run1"}
    assert (adata.X != before.X).nnz == 0
    assert set(adata.layers) == set(before.layers)
    assert (adata.layers["counts"] != before.layers["counts"]).nnz == 0
    assert adata.obs.equals(before.obs) and adata.var.equals(before.var)
    assert adata.obs["batch"].dtype == before.obs["batch"].dtype


def test_results_survive_h5ad_round_trip(fitted, tmp_path):
    import anndata as ad

    _, adata = fitted
    adata.write_h5ad(tmp_path / "fitted.h5ad")
    back = ad.read_h5ad(tmp_path / "fitted.h5ad")
    np.testing.assert_array_equal(back.obsm["X_scvae"], adata.obsm["X_scvae"])
    uns = back.uns["scvae"]
    assert uns["settings"]["batch_key"] == "batch"
    assert len(uns["history"]["train_loss"]) == len(adata.uns["scvae"]["history"]["train_loss"])
    assert "torch" in uns["versions"]


def test_all_zero_genes_are_reported(small_adata, caplog):
    adata = small_adata
    counts = adata.X.toarray()
    counts[:, 5] = 0
    adata.X = sp.csr_matrix(counts)
    quick_fit(adata, max_epochs=1)
    assert adata.uns["scvae"]["n_all_zero_genes"] == 1
    assert list(adata.uns["scvae"]["all_zero_genes"]) == ["gene_5"]
    assert "zero counts in every cell" in caplog.text


@pytest.mark.parametrize("likelihood", ["zinb", "poisson"])
def test_other_likelihoods_also_recover_groups(small_adata, likelihood):
    model = quick_fit(small_adata, likelihood=likelihood, batch_key="batch")
    labels = small_adata.obs["cell_type"].to_numpy()
    assert metrics.knn_scores(small_adata.obsm["X_scvae"], labels)["accuracy"] > 0.9
    assert np.isfinite(model.history["validation_elbo"]).all()


def test_gene_batch_dispersion_learns_one_per_batch(small_adata):
    model = quick_fit(small_adata, batch_key="batch", dispersion="gene-batch", max_epochs=3)
    assert tuple(model.module.log_theta.shape) == (2, small_adata.n_vars)


def test_importance_sampled_likelihood_is_tighter_than_elbo(fitted):
    model, adata = fitted
    log_px = model.log_likelihood(adata[:200], n_samples=50)
    elbo = model.elbo(adata[:200])
    assert log_px.shape == (200,)
    # log p(x) >= ELBO in expectation; importance sampling closes part of the gap.
    assert log_px.mean() > elbo
    assert log_px.mean() < elbo + 50


def test_learned_dispersion_tracks_the_truth():
    adata = scvae.datasets.simulate(1500, 100, seed=2, return_truth=True)
    model = quick_fit(adata, max_epochs=60)
    learned = model.module.log_theta.detach().numpy()[0]
    truth = np.log(adata.var["true_theta"].to_numpy())
    assert np.corrcoef(learned, truth)[0, 1] > 0.6


def test_default_learning_rate_grows_with_cells_per_step(small_adata):
    """1e-3 per 128 cells per step (4e-3 at 512), capped at 1.6e-2; an explicit lr wins; the
    rule's lr is what the model records (and so what a resumed fit reuses)."""
    options = {"max_epochs": 1, "progress": False}
    assert quick_fit(small_adata.copy(), **options).settings["lr"] == 1e-3
    assert quick_fit(small_adata.copy(), batch_size=512, **options).settings["lr"] == 4e-3
    explicit = quick_fit(small_adata.copy(), batch_size=512, lr=5e-4, **options)
    assert explicit.settings["lr"] == 5e-4


def test_history_times_the_training_steps_apart_from_validation(fitted):
    """``training_seconds`` (steps only) is part of ``epoch_seconds`` (steps + held-out
    ELBO), one entry per epoch: benchmarks compare training throughput on the former."""
    model, _ = fitted
    steps = np.asarray(model.history["training_seconds"])
    whole = np.asarray(model.history["epoch_seconds"])
    assert len(steps) == len(whole) == len(model.history["validation_elbo"]) > 1
    assert np.all(steps > 0) and np.all(steps < whole)


def test_fit_keywords_are_the_fields_of_fit_settings():
    """``fit`` documents its options as keywords; ``FitSettings`` carries and checks them:
    the two lists must stay the same, names, order and defaults."""
    import dataclasses
    import inspect

    from scvae._fit.settings import FitSettings

    # After adata: reference= (a model, not an option: see scvae._fit.query), then the options.
    parameters = list(inspect.signature(scvae.fit).parameters.values())[2:]
    fields = dataclasses.fields(FitSettings)
    assert [p.name for p in parameters] == [f.name for f in fields]
    assert [p.default for p in parameters] == [f.default for f in fields]


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"classification_weight": -5.0}, "classification_weight must be a non-negative"),
        ({"early_stopping": "no"}, "early_stopping must be True or False"),
        ({"max_epochs": 2.5}, "max_epochs must be an integer"),
        ({"seed": "1"}, "seed must be an integer"),
    ],
)
def test_fit_options_are_checked_before_the_data_is_read(option, message):
    """A bad option fails at once, naming itself, even before the counts are looked at."""
    not_counts = scvae.datasets.simulate(50, 20)
    not_counts.X = not_counts.X * 0.5  # would fail the counts check, if it came first
    with pytest.raises((TypeError, ValueError), match=message):
        scvae.fit(not_counts, progress=False, **option)


def test_likelihood_of_a_model_that_generates_the_library_is_given_the_library():
    """With ``library_from_latent`` the ELBO bounds the joint log p(x, l), and
    ``log_likelihood`` reports log p(x | l) = log p(x, l) - log p(l), the quantity every
    other model reports: adding back log p(l) must land above the ELBO, as for the others."""
    import torch

    from scvae._vae.likelihood import _log_library_evidence

    adata = scvae.datasets.simulate(400, 60, n_batches=1, seed=3)
    model = quick_fit(adata, max_epochs=40)
    assert model.module.library_from_latent
    cells = adata[:100]
    log_px_given_l = model.log_likelihood(cells, n_samples=50)
    library = torch.as_tensor(np.asarray(cells.X.sum(axis=1)).ravel(), dtype=torch.float32)
    module = model.module.eval()
    with torch.no_grad():
        prior = module.prior(100, library.unsqueeze(-1))
        log_pl = _log_library_evidence(
            module, prior, library, torch.zeros(100, dtype=torch.long), None, None, 50
        ).numpy()
    assert -5 < log_pl.mean() < 2  # a density of one log library size
    joint = log_px_given_l + log_pl
    elbo = model.elbo(cells)
    assert elbo < joint.mean() < elbo + 50
