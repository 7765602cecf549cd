"""Every public call changes the user's AnnData only under the keys it documents.

X, each layer, obs, var, obsm, varm, obsp, varp, uns and the names are hashed before and after
each call (see ``fingerprint.py``); the set of parts that changed must equal the documented
set exactly.
"""

from __future__ import annotations

import numpy as np
import pytest

import scvae

from .fingerprint import changed, fingerprint


@pytest.fixture(scope="module")
def holes():
    """Counts with 5 % NaN entries, a mask layer, and a model fitted on a copy."""
    adata = scvae.datasets.simulate(150, 40, n_groups=3, n_batches=2, seed=12)
    x = adata.X.toarray()
    hidden = np.random.default_rng(0).random(x.shape) < 0.05
    truth = x.copy()
    x[hidden] = np.nan
    adata.X = x
    adata.layers["observed"] = np.ones(x.shape, dtype=bool)
    adata.obsm["X_pca"] = np.ones((adata.n_obs, 2), dtype=np.float32)
    adata.uns["note"] = {"keep": np.arange(3)}
    model = scvae.fit(adata.copy(), batch_key="batch", max_epochs=2, progress=False)
    return adata, model, truth


def check(adata, call, documented: set[str]):
    before = fingerprint(adata)
    result = call(adata)
    assert changed(before, fingerprint(adata)) == documented
    return result


CALLS = {
    "fit": (
        lambda a, m, t: scvae.fit(a, batch_key="batch", max_epochs=1, progress=False),
        {"obsm/X_scvae", "uns/scvae"},
    ),
    "fit_key_added": (
        lambda a, m, t: scvae.fit(a, key_added="run2", max_epochs=1, progress=False),
        {"obsm/X_run2", "uns/run2"},
    ),
    "fit_mask_layer": (
        lambda a, m, t: scvae.fit(a, mask_layer="observed", max_epochs=1, progress=False),
        {"obsm/X_scvae", "uns/scvae"},
    ),
    "embed": (lambda a, m, t: m.embed(a), set()),
    "log_likelihood": (lambda a, m, t: m.log_likelihood(a, n_samples=3), set()),
    "elbo": (lambda a, m, t: m.elbo(a), set()),
    "impute": (lambda a, m, t: scvae.impute(a, m, n_samples=5), {"layers/scvae_imputed"}),
    "impute_interval": (
        lambda a, m, t: scvae.impute(a, m, interval=0.9, n_samples=5),
        {"layers/scvae_imputed", "layers/scvae_lower", "layers/scvae_upper"},
    ),
    "impute_mean": (
        lambda a, m, t: scvae.impute(a, method="mean", key_added="mean"),
        {"layers/mean_imputed"},
    ),
    "denoise": (lambda a, m, t: scvae.denoise(a, m), {"layers/scvae_denoised"}),
    "predictive_log_likelihood": (
        lambda a, m, t: scvae.predictive_log_likelihood(a, m, t, n_samples=3),
        set(),
    ),
    "concat_panels": (lambda a, m, t: scvae.concat_panels({"a": a, "b": a[:, :20]}), set()),
    "generate from cells": (
        lambda a, m, t: scvae.generate(m, 20, adata=a, labels_key="cell_type"),
        set(),
    ),
    "posterior_predictive_check": (
        lambda a, m, t: scvae.posterior_predictive_check(m, a, classifier=False),
        set(),
    ),
    "fit balance labels": (
        lambda a, m, t: scvae.fit(
            a, labels_key="cell_type", balance="labels", max_epochs=1, progress=False
        ),
        {"obsm/X_scvae", "uns/scvae"},
    ),
}


@pytest.mark.parametrize("name", sorted(CALLS))
def test_public_call_changes_only_documented_keys(holes, name):
    adata, model, truth = holes
    call, documented = CALLS[name]
    check(adata.copy(), lambda a: call(a, model, truth), documented)


def test_impute_without_interval_removes_stale_interval_layers(holes):
    adata, model, _ = holes
    adata = adata.copy()
    scvae.impute(adata, model, interval=0.9, n_samples=5)
    documented = {"layers/scvae_imputed", "layers/scvae_lower", "layers/scvae_upper"}
    check(adata, lambda a: scvae.impute(a, model, n_samples=5, seed=1), documented)
    assert "scvae_lower" not in adata.layers


def test_save_and_load_leave_adata_alone(holes, tmp_path):
    adata, model, _ = holes
    adata = adata.copy()
    check(adata, lambda a: model.save(tmp_path / "m"), set())
    check(adata, lambda a: scvae.load(tmp_path / "m", adata=a), set())
