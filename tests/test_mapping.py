"""Query mapping (``fit(query, reference=model)``), label transfer, counterfactuals."""

import numpy as np
import pytest
from scipy.stats import pearsonr
from sklearn.neighbors import KNeighborsClassifier

import scvae
from tests.conftest import quick_fit
from tests.fingerprint import fingerprint


@pytest.fixture(scope="module")
def mapped():
    """A reference fitted on two batches of simulated cells with a strong, gene-specific batch
    effect, with a label head; the third batch renamed as a query."""
    adata = scvae.datasets.simulate(1200, 150, n_groups=4, n_batches=3, batch_log_fold=1.0, seed=3)
    batch = adata.obs["batch"].astype(str).to_numpy()
    reference = adata[batch != "batch_2"].copy()
    query = adata[batch == "batch_2"].copy()
    query.obs["batch"] = "query"
    model = quick_fit(
        reference, batch_key="batch", labels_key="cell_type", balance="labels", max_epochs=120
    )
    return model, reference, query


def _type_accuracy(reference, z_query, query) -> float:
    knn = KNeighborsClassifier(15).fit(reference.obsm["X_scvae"], reference.obs["cell_type"])
    return float((knn.predict(z_query) == query.obs["cell_type"].to_numpy()).mean())


def test_query_lands_with_its_types_and_the_reference_is_unchanged(mapped):
    model, reference, query = mapped
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    query = query.copy()
    qmodel = scvae.fit(query, reference=model, max_epochs=100, progress=False)
    # The reference model and its embedding of its own cells: bit for bit as they were.
    after = model.module.state_dict()
    assert all(torch_equal(before[k], after[k]) for k in before)
    np.testing.assert_array_equal(qmodel.embed(reference), reference.obsm["X_scvae"])
    assert qmodel.batch_categories == ["batch_0", "batch_1", "query"]
    assert not qmodel.module.query_panel
    assert _type_accuracy(reference, query.obsm["X_scvae"], query) > 0.9
    # Label transfer through the reference's head.
    predicted = qmodel.predict_labels(query)
    assert (predicted.to_numpy() == query.obs["cell_type"].to_numpy()).mean() > 0.9
    doubtful = qmodel.predict_labels(query, min_probability=0.999999)
    assert "unknown" in doubtful.cat.categories
    p = qmodel.predict_labels(query, probabilities=True).to_numpy()
    np.testing.assert_array_equal(doubtful == "unknown", p.max(1) < 0.999999)
    # Counterfactual expression: a query cell decoded as if measured in a reference batch.
    scvae.denoise(query, qmodel, transform_batch="batch_0", key_added="as_b0")
    scvae.denoise(query, qmodel, key_added="own")
    scvae.denoise(reference, model, key_added="ref")
    b0 = reference.obs["batch"].to_numpy() == "batch_0"
    gene_mean = np.log(reference.layers["ref_denoised"][b0].mean(0))
    as_b0 = np.log(query.layers["as_b0_denoised"].mean(0))
    own = np.log(query.layers["own_denoised"].mean(0))
    # Same types in both: in batch 0's terms the query's mean profile is batch 0's.
    assert np.abs(as_b0 - gene_mean).mean() < 0.5 * np.abs(own - gene_mean).mean()


def torch_equal(a, b) -> bool:
    return bool((a == b).all())


def test_a_query_whose_difference_depends_on_the_type_lands_with_its_types(mapped):
    """A query where each type changes in genes of its own (as a stimulation does: 60 of 150
    genes per type, log fold +-2.5): its cells get their own encoder and decoder, so they
    still land with their reference type (new-batch inputs alone: 0.96)."""
    model, reference, query = mapped
    rng = np.random.default_rng(0)
    types = query.obs["cell_type"].astype(str).to_numpy()
    x = query.X.toarray() if hasattr(query.X, "toarray") else np.array(query.X, dtype=float)
    for cell_type in np.unique(types):
        genes = rng.choice(query.n_vars, 60, replace=False)
        x[np.ix_(types == cell_type, genes)] *= np.exp(rng.choice([-2.5, 2.5], 60))
    changed = query.copy()
    changed.X = rng.poisson(x).astype(np.float32)
    scvae.fit(changed, reference=model, max_epochs=100, progress=False)
    assert _type_accuracy(reference, changed.obsm["X_scvae"], query) > 0.98


def test_a_query_measured_on_a_panel_is_mapped_and_its_other_genes_imputed(mapped, caplog):
    model, reference, query = mapped
    panel_genes = query.var_names[::3]
    panel = query[:, panel_genes].copy()
    qmodel = scvae.fit(panel, reference=model, max_epochs=200, progress=False)
    assert _type_accuracy(reference, panel.obsm["X_scvae"], query) > 0.85
    assert qmodel.module.query_panel  # absent genes are read as missing when embedding
    untouched = panel.copy()
    with caplog.at_level("WARNING", logger="scvae"):
        full = scvae.impute(panel, qmodel, genes="model")
    # The panel's own encoder was trained with the absent genes missing: no bias to warn of.
    assert "fitted without missing values" not in caplog.text
    assert fingerprint(panel) == fingerprint(untouched)
    assert full.shape == (query.n_obs, len(model.gene_names))
    unmeasured = ~full.var["measured"].to_numpy()
    assert unmeasured.sum() == query.n_vars - len(panel_genes)
    assert np.isnan(full.X[:, unmeasured]).all()
    truth = np.log1p(query[:, full.var_names[unmeasured]].X.toarray())
    imputed = np.log1p(full.layers["scvae_imputed"][:, unmeasured])
    r = [pearsonr(truth[:, j], imputed[:, j])[0] for j in range(truth.shape[1])]
    # Zero padding, scArches' way, has no per-gene correlation at all: r > 0 is earned.
    assert np.nanmedian(r) > 0.2, np.nanmedian(r)


def test_bad_queries_raise_and_leave_both_anndata_unchanged(mapped):
    model, reference, query = mapped
    ref_before, query_before = fingerprint(reference), fingerprint(query)
    clash = query.copy()
    clash.obs["batch"] = "batch_0"
    with pytest.raises(ValueError, match=r"batches the reference was trained on: \['batch_0'\]"):
        scvae.fit(clash, reference=model, max_epochs=1, progress=False)
    nan_batch = query.copy()
    nan_batch.obs["batch"] = nan_batch.obs["batch"].astype(object)
    nan_batch.obs.iloc[0, nan_batch.obs.columns.get_loc("batch")] = np.nan
    with pytest.raises(ValueError, match="missing values"):
        scvae.fit(nan_batch, reference=model, max_epochs=1, progress=False)
    renamed = query.copy()
    renamed.var_names = [f"other_{g}" for g in renamed.var_names]
    with pytest.raises(ValueError, match="none of the model's 150 genes"):
        scvae.fit(renamed, reference=model, max_epochs=1, progress=False)
    with pytest.raises(ValueError, match="n_latent=5: a query mapping keeps the reference's"):
        scvae.fit(query, reference=model, n_latent=5, progress=False)
    with pytest.raises(TypeError, match="reference must be a fitted scvae model"):
        scvae.fit(query, reference="model/", progress=False)
    assert fingerprint(reference) == ref_before and fingerprint(query) == query_before


def test_a_reference_without_batches_cannot_be_mapped_onto(small_adata):
    model = quick_fit(small_adata, max_epochs=1)
    with pytest.raises(ValueError, match="fitted without batch_key"):
        scvae.fit(small_adata.copy(), reference=model, max_epochs=1, progress=False)


def test_a_mapped_model_saves_and_loads(mapped, tmp_path):
    model, reference, query = mapped
    query = query[:, query.var_names[::2]].copy()
    qmodel = scvae.fit(query, reference=model, max_epochs=3, progress=False)
    qmodel.save(tmp_path / "q")
    loaded = scvae.load(tmp_path / "q")
    np.testing.assert_array_equal(loaded.embed(query), qmodel.embed(query))
    np.testing.assert_array_equal(loaded.embed(reference), reference.obsm["X_scvae"])


def test_integration_mixes_batches_and_keeps_types():
    """A strong, gene-specific batch effect: fitted with batch_key (and the default batch
    alignment), the latent space mixes the batches (a kNN classifier of the batch near
    chance, 0.5) and keeps the types apart; without the alignment term it does not (0.99)."""
    adata = scvae.datasets.simulate(900, 150, n_groups=3, n_batches=2, batch_log_fold=1.0, seed=5)
    quick_fit(adata, batch_key="batch", max_epochs=120)
    z = adata.obsm["X_scvae"]
    batch = scvae.metrics.knn_scores(z, adata.obs["batch"].to_numpy())
    types = scvae.metrics.knn_scores(z, adata.obs["cell_type"].to_numpy())
    assert types["accuracy"] > 0.95, types
    assert batch["balanced_accuracy"] < 0.8, batch


def test_the_reported_elbo_leaves_the_alignment_term_out():
    """The batch-alignment MMD is part of the training objective only: the ELBO a user reads
    (and early stopping watches) is the same whatever its weight."""
    adata = scvae.datasets.simulate(300, 80, n_groups=2, n_batches=2, batch_log_fold=1.0, seed=1)
    model = quick_fit(adata, batch_key="batch", max_epochs=5)
    assert model.module.alignment_weight > 0
    with_term = model.elbo(adata, seed=3)
    model.module.alignment_weight = 0.0
    assert model.elbo(adata, seed=3) == with_term
