"""Missing values: left out of the likelihood, imputed from the posterior, honest intervals."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import scvae
from scvae._train.loop import mean_field_loss
from scvae._vae.module import SCVAEModule

from .conftest import quick_fit


def _hide(adata, fraction, seed=0):
    """Copy of adata with a random ``fraction`` of entries set to NaN (dense X), and the mask."""
    rng = np.random.default_rng(seed)
    out = adata.copy()
    x = out.X.toarray()
    hidden = rng.random(x.shape) < fraction
    x[hidden] = np.nan
    out.X = x
    return out, hidden


@pytest.fixture(scope="module")
def hidden_fit():
    truth = scvae.datasets.simulate(800, 150, n_groups=4, n_batches=2, seed=3, return_truth=True)
    adata, hidden = _hide(truth, 0.2)
    # Trained on the first 600 cells; the last 200 are new to the model.
    model = quick_fit(adata[:600].copy(), batch_key="batch", max_epochs=200)
    scvae.impute(adata, model, interval=0.9, n_samples=100)
    return truth, adata, hidden, model


def _log_error(estimate, target):
    return float(np.mean(np.abs(np.log1p(estimate) - np.log1p(target))))


def test_imputation_beats_mean_and_random_fill(hidden_fit):
    truth, adata, hidden, _ = hidden_fit
    true_mean = truth.layers["true_mean"][hidden]
    counts = truth.X.toarray()[hidden]
    ours = adata.layers["scvae_imputed"][hidden]
    scvae.impute(adata, method="mean", key_added="mean")
    scvae.impute(adata, method="random", key_added="random")
    for baseline in ("mean", "random"):
        theirs = adata.layers[f"{baseline}_imputed"][hidden]
        assert _log_error(ours, true_mean) < 0.8 * _log_error(theirs, true_mean), baseline
        assert _log_error(ours, counts) < _log_error(theirs, counts), baseline


def test_new_cells_are_imputed_as_well_as_training_cells(hidden_fit):
    truth, adata, hidden, _ = hidden_fit
    true_mean = truth.layers["true_mean"]
    errors = []
    for cells in (slice(0, 600), slice(600, 800)):
        mask = np.zeros_like(hidden)
        mask[cells] = hidden[cells]
        errors.append(_log_error(adata.layers["scvae_imputed"][mask], true_mean[mask]))
    assert errors[1] < 1.2 * errors[0]


def test_nan_in_another_layer_than_the_fitted_one(hidden_fit):
    truth, adata, _, model = hidden_fit
    other = adata[:20].copy()
    other.layers["counts"] = truth[:20].X.copy()  # complete, while X has NaN
    with pytest.raises(ValueError, match=r"no missing entries.*adata\.X has NaN"):
        scvae.impute(other, model, layer="counts")


def test_observed_entries_are_kept_bitwise(hidden_fit):
    _, adata, hidden, _ = hidden_fit
    imputed = adata.layers["scvae_imputed"]
    assert np.array_equal(imputed[~hidden], adata.X[~hidden])
    assert not np.isnan(imputed).any()
    assert np.isnan(adata.X[hidden]).all()  # the user's data was not touched


def test_interval_coverage_is_calibrated(hidden_fit):
    truth, adata, hidden, _ = hidden_fit
    counts = truth.X.toarray()[hidden]
    lower, upper = adata.layers["scvae_lower"][hidden], adata.layers["scvae_upper"][hidden]
    coverage = np.mean((lower <= counts) & (counts <= upper))
    assert 0.85 <= coverage <= 0.95, coverage
    assert np.all(lower <= adata.layers["scvae_imputed"][hidden] + 1e-6)


def test_sparse_input_with_explicit_nan_gives_sparse_layers(hidden_fit):
    _, adata, _, model = hidden_fit
    sparse = adata[:100].copy()
    sparse.X = sp.csr_matrix(np.where(np.isnan(sparse.X), np.nan, sparse.X))
    scvae.impute(sparse, model, n_samples=20)
    out = sparse.layers["scvae_imputed"]
    assert sp.issparse(out) and not np.isnan(out.data).any()
    dense = adata[:100].X
    observed = ~np.isnan(dense)
    assert np.array_equal(out.toarray()[observed], dense[observed])


def test_mask_layer_marks_missing_entries_like_nan(hidden_fit):
    truth, adata, hidden, model = hidden_fit
    masked = truth[:200].copy()
    masked.layers["observed"] = ~hidden[:200]
    scvae.impute(masked, model, mask_layer="observed", n_samples=50, seed=1)
    nan_version = adata[:200].copy()
    scvae.impute(nan_version, model, n_samples=50, seed=1)
    np.testing.assert_allclose(
        masked.layers["scvae_imputed"].toarray(), nan_version.layers["scvae_imputed"], rtol=1e-5
    )


def test_all_true_mask_equals_no_mask_in_the_objective():
    torch.manual_seed(0)
    module = SCVAEModule(30, 2, n_hidden=16).eval()
    x = torch.poisson(torch.rand(20, 30) * 4)
    batch = {"x": x, "library": x.sum(-1), "batch_index": torch.zeros(20, dtype=torch.long)}
    torch.manual_seed(1)
    without = mean_field_loss(module.model, module.guide, **batch)
    torch.manual_seed(1)
    with_mask = mean_field_loss(
        module.model, module.guide, **batch, observed=torch.ones(20, 30, dtype=torch.bool)
    )
    torch.testing.assert_close(without, with_mask)


def test_fit_with_no_missing_values_is_unchanged_by_an_all_true_mask(small_adata):
    a, b = small_adata.copy(), small_adata.copy()
    b.layers["observed"] = np.ones(b.shape, dtype=bool)
    quick_fit(a, max_epochs=3)
    quick_fit(b, max_epochs=3, mask_layer="observed")
    np.testing.assert_array_equal(a.obsm["X_scvae"], b.obsm["X_scvae"])


def test_gene_panels_train_and_impute_the_unmeasured_block():
    truth = scvae.datasets.simulate(1000, 150, n_groups=4, n_batches=2, seed=4, return_truth=True)
    in_b = truth.obs["batch"] == "batch_1"
    absent = truth.var_names[:30]  # 20 % of the genes never measured in batch_1
    panel_a = truth[~in_b].copy()
    panel_b = truth[in_b][:, ~truth.var_names.isin(absent)].copy()
    joint = scvae.concat_panels({"batch_0": panel_a, "batch_1": panel_b})
    assert (
        sp.issparse(joint.X)
        and np.isnan(joint[joint.obs["batch"] == "batch_1", absent].X.toarray()).all()
    )
    model = quick_fit(joint, batch_key="batch", max_epochs=200)
    scvae.impute(joint, model)
    cells = joint.obs_names[joint.obs["batch"] == "batch_1"]
    imputed = joint[cells, absent].layers["scvae_imputed"].toarray()
    true_mean = truth[cells, absent].layers["true_mean"]
    r = np.corrcoef(np.log1p(imputed).ravel(), np.log1p(true_mean).ravel())[0, 1]
    assert r > 0.8, r


def test_denoise_is_a_separate_dense_layer(hidden_fit):
    _, adata, _, model = hidden_fit
    small = adata[:50].copy()
    before = set(small.layers)
    scvae.denoise(small, model, library_size=1e4)
    denoised = small.layers["scvae_denoised"]
    assert denoised.shape == small.shape and not np.isnan(denoised).any()
    np.testing.assert_allclose(denoised.sum(axis=1), 1e4, rtol=1e-3)
    assert set(small.layers) == before | {"scvae_denoised"}


def test_cell_with_every_entry_missing_is_named(small_adata):
    adata = small_adata.copy()
    x = adata.X.toarray()
    x[7] = np.nan
    adata.X = x
    with pytest.raises(ValueError, match=r"every entry missing.*'cell_7'"):
        quick_fit(adata)


def test_gene_with_every_entry_missing_is_named(small_adata):
    adata = small_adata.copy()
    x = adata.X.toarray()
    x[:, 11] = np.nan
    adata.X = x
    with pytest.raises(ValueError, match=r"every entry missing.*gene_11"):
        quick_fit(adata)


def test_mask_layer_must_be_boolean(small_adata):
    small_adata.layers["observed"] = np.ones(small_adata.shape, dtype=np.int64)
    with pytest.raises(TypeError, match="must be boolean"):
        quick_fit(small_adata, mask_layer="observed")


def test_impute_with_a_model_of_other_genes(fitted):
    model, _ = fitted
    other = scvae.datasets.simulate(50, 20, seed=0)
    other.var_names = [f"other_{i}" for i in range(20)]
    with pytest.raises(ValueError, match=r"missing from adata\.var_names"):
        scvae.impute(other, model)


def test_bad_impute_options(fitted):
    model, adata = fitted
    with pytest.raises(ValueError, match="method must be one of"):
        scvae.impute(adata, model, method="knn")
    with pytest.raises(ValueError, match="needs a fitted model"):
        scvae.impute(adata)
    with pytest.raises(ValueError, match="interval"):
        scvae.impute(adata, model, interval=1.5)


def test_count_interval_holds_the_mass_closest_to_the_level():
    from scvae._tools.predictive import count_interval

    draws = torch.tensor([0.0] * 93 + [1.0] * 7)[:, None]  # P(0) = 0.93
    lower, upper = count_interval(draws, 0.9)
    assert (float(lower), float(upper)) == (0.0, 0.0)  # mass 0.93, not [0, 1] with mass 1
    wide = torch.arange(100.0)[:, None]  # uniform on 0..99
    lower, upper = count_interval(wide, 0.9)
    assert 88 <= float(upper - lower + 1) <= 92


def test_predictive_log_likelihood_beats_a_gene_mean_poisson(hidden_fit):
    from scipy import stats

    truth, adata, hidden, model = hidden_fit
    ours = scvae.predictive_log_likelihood(adata, model, truth.X, n_samples=50)
    counts = truth.X.toarray()
    assert ours.shape == (hidden.sum(),)
    # Row-major order of the hidden entries, as documented.
    observed_mean = np.nanmean(np.where(hidden, np.nan, counts), axis=0)
    rows, cols = np.nonzero(hidden)
    baseline = stats.poisson.logpmf(counts[rows, cols], observed_mean[cols])
    assert np.all(ours <= 0)
    assert ours.mean() > baseline.mean() + 0.1


def test_median_fill_is_an_integer_count_with_a_lower_absolute_error(hidden_fit):
    """The median minimises the expected absolute error: on the log1p scale it beats the mean."""
    truth, adata, hidden, model = hidden_fit
    counts = truth.X.toarray()[hidden]
    scvae.impute(adata, model, point="median", key_added="median", n_samples=100)
    median = adata.layers["median_imputed"][hidden]
    assert np.array_equal(median, np.round(median))
    assert _log_error(median, counts) < _log_error(adata.layers["scvae_imputed"][hidden], counts)
    observed = ~hidden
    assert np.array_equal(adata.layers["median_imputed"][observed], adata.X[observed])
    with pytest.raises(ValueError, match="median needs method='model'"):
        scvae.impute(adata, method="mean", point="median")


def test_randomized_pit_is_uniform_for_a_calibrated_predictive_of_sparse_counts():
    """For a mostly-zero gene no integer interval holds 90 %: [0, 0] already holds 95 %, so a
    perfect predictive over-covers; the randomised PIT still reads 0.90, and a wrong
    predictive is caught."""
    rng = np.random.default_rng(0)
    draws = rng.poisson(0.05, size=(400, 20000))
    truth = rng.poisson(0.05, size=20000)
    lower, upper = scvae._tools.predictive.count_interval(
        torch.as_tensor(draws, dtype=torch.float32), 0.9
    )
    plain = np.mean((lower.numpy() <= truth) & (truth <= upper.numpy()))
    pit = scvae.metrics.randomized_pit(draws, truth)
    assert plain > 0.94
    assert abs(np.mean((pit >= 0.05) & (pit <= 0.95)) - 0.9) < 0.01
    assert abs(np.mean(pit < 0.5) - 0.5) < 0.02
    wrong = scvae.metrics.randomized_pit(draws, rng.poisson(0.5, size=20000))
    assert np.mean((wrong >= 0.05) & (wrong <= 0.95)) < 0.75
    with pytest.raises(ValueError, match="samples x entries"):
        scvae.metrics.randomized_pit(draws[0], truth)
