"""Every row of docs/bad_inputs.md, one test case each (the case id is the row's #).

A case either expects an error that names the key or value (and checks that the user's
AnnData is unchanged by the failed call), or checks the documented handling (a warning and
a defined result). ``test_every_table_row_has_a_case`` keeps the table and the cases in step.
"""

from __future__ import annotations

import copy
import json
import os
import pickle
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

import scvae
import scvae._cli  # the K rows patch it
from scvae._data.memory import prepare_counts
from scvae._fit.settings import DEFAULT_N_LATENT
from scvae._train.loop import NonFiniteLossError

from .fingerprint import changed, fingerprint

TABLE = Path(__file__).parents[1] / "docs" / "bad_inputs.md"
CASES: dict[str, Callable[[Env], None]] = {}


def case(row: str):
    def register(function):
        assert row not in CASES, row
        CASES[row] = function
        return function

    return register


@dataclass
class Env:
    base: ad.AnnData
    model: scvae.SCVAE
    tmp: Path
    caplog: pytest.LogCaptureFixture
    monkeypatch: pytest.MonkeyPatch

    def adata(self) -> ad.AnnData:
        """A fresh copy of the small simulated data (120 cells x 30 genes, 2 batches)."""
        return self.base.copy()

    def saved(self) -> Path:
        path = self.tmp / "model"
        if not path.exists():
            self.model.save(path)
        return path


@pytest.fixture(scope="module")
def tiny():
    adata = scvae.datasets.simulate(120, 30, n_groups=3, n_batches=2, seed=5)
    model = scvae.fit(adata.copy(), batch_key="batch", max_epochs=2, progress=False)
    return adata, model


def fit(adata, **options):
    settings = {"max_epochs": 1, "progress": False}
    settings.update(options)
    return scvae.fit(adata, **settings)


def expect_error(target, error, match, call, /, *args, **kwargs):
    """``call`` raises ``error`` matching ``match`` and leaves the AnnData ``target`` as it
    was."""
    before = fingerprint(target)
    with pytest.raises(error, match=match):
        call(*args, **kwargs)
    assert not changed(before, fingerprint(target))


def with_x(adata, values):
    adata.X = values
    return adata


def dense(env: Env) -> np.ndarray:
    return env.base.X.toarray()


# -- fit: values -------------------------------------------------------------------------------
@case("F01")
def _(env):
    x = dense(env)
    x[3, 7] = -2
    a = with_x(env.adata(), sp.csr_matrix(x))
    expect_error(
        a, ValueError, r"negative values \(e\.g\. -2 at cell 'cell_3', gene 'gene_7'", fit, a
    )


@case("F02")
def _(env):
    x = dense(env)
    x[10, 20] = 1.5
    a = with_x(env.adata(), x)
    expect_error(
        a,
        ValueError,
        r"non-integer values \(e\.g\. 1\.5 at cell 'cell_10', gene 'gene_20'",
        fit,
        a,
    )


@case("F03")
def _(env):
    import scanpy as sc

    a = env.adata()
    sc.pp.normalize_total(a)
    sc.pp.log1p(a)
    expect_error(a, ValueError, r"non-integer values.*layer='counts'", fit, a)


@case("F04")
def _(env):
    x = dense(env).astype(np.float64)
    x[2, 3] = 3.0000001  # float32 would round it to 3
    a = with_x(env.adata(), x)
    expect_error(a, ValueError, r"non-integer values.*cell 'cell_2', gene 'gene_3'", fit, a)


@case("F05")
def _(env):
    x = dense(env).astype(np.int64)
    x[1, 1] = 2**24 + 1  # float32 would store 2**24
    a = with_x(env.adata(), x)
    expect_error(a, ValueError, r"counts above 2\*\*24.*cell 'cell_1', gene 'gene_1'", fit, a)


@case("F06")
def _(env):
    x = dense(env)
    x[0, 0] = np.inf
    a = with_x(env.adata(), x)
    expect_error(
        a, ValueError, r"infinite values \(e\.g\. inf at cell 'cell_0', gene 'gene_0'", fit, a
    )


@case("F07")
def _(env):
    x = dense(env)
    x[5, 2] = -np.inf
    a = with_x(env.adata(), sp.csr_matrix(x))
    expect_error(a, ValueError, r"infinite values \(e\.g\. -inf at cell 'cell_5'", fit, a)


@case("F08")
def _(env):
    x = dense(env)
    x[0, :3] = np.nan
    a = with_x(env.adata(), x)
    fit(a)
    assert "3 entries of adata.X are NaN: they are treated as missing values" in env.caplog.text
    assert np.isfinite(a.obsm["X_scvae"]).all()


@case("F09")
def _(env):
    x = dense(env)
    x[1, 4] = np.nan
    a = with_x(env.adata(), sp.csr_matrix(x))
    data = prepare_counts(a)
    assert data.missing.nnz == 1 and data.missing[1, 4]
    assert "1 entries of adata.X are NaN" in env.caplog.text


@case("F10")
def _(env):
    x = dense(env)
    x[0, 0] = np.nan
    a = with_x(env.adata(), x)
    observed = np.ones(a.shape, dtype=bool)
    observed[1, 1] = False
    a.layers["observed"] = observed
    data = prepare_counts(a, mask_layer="observed")
    assert data.missing.nnz == 2 and data.missing[0, 0] and data.missing[1, 1]


@case("F11")
def _(env):
    a = ad.AnnData(np.zeros((0, 5), dtype=np.float32))
    expect_error(a, ValueError, r"adata is empty \(0 cells x 5 genes\)", fit, a)


@case("F12")
def _(env):
    a = env.adata()[:, []].copy()
    expect_error(a, ValueError, r"adata is empty \(120 cells x 0 genes\)", fit, a)


@case("F13")
def _(env):
    a = env.adata()[:1].copy()
    expect_error(a, ValueError, r"1 cell\(s\); fitting needs at least 2 cells", fit, a)


@case("F14")
def _(env):
    x = dense(env)
    x[[4, 9]] = 0
    a = with_x(env.adata(), sp.csr_matrix(x))
    expect_error(a, ValueError, r"2 cells have zero total counts.*'cell_4'.*filter_cells", fit, a)


@case("F15")
def _(env):
    x = dense(env)
    x[:, 5] = 0
    a = with_x(env.adata(), sp.csr_matrix(x))
    fit(a)
    assert "1 genes have zero counts in every cell (e.g. gene_5)" in env.caplog.text
    assert list(a.uns["scvae"]["all_zero_genes"]) == ["gene_5"]


@case("F16")
def _(env):
    x = dense(env)
    x[7] = np.nan
    a = with_x(env.adata(), x)
    expect_error(a, ValueError, r"1 cells have every entry missing.*'cell_7'", fit, a)


@case("F17")
def _(env):
    x = dense(env)
    x[:, 6] = np.nan
    a = with_x(env.adata(), x)
    expect_error(a, ValueError, r"1 genes have every entry missing.*gene_6", fit, a)


@case("F18")
def _(env):
    a = env.adata()
    a.var_names = ["gene_0", *a.var_names[:-1]]
    expect_error(a, ValueError, r"var_names are not unique \(e\.g\. \['gene_0'\]\)", fit, a)


@case("F19")
def _(env):
    a = env.adata()
    a.obs_names = ["cell_0", *a.obs_names[:-1]]
    fit(a)
    assert "obs_names are not unique (e.g. 'cell_0')" in env.caplog.text
    assert a.obsm["X_scvae"].shape == (120, DEFAULT_N_LATENT)


@case("F20")
def _(env):
    a = env.adata()
    a.layers["text"] = dense(env).astype(str)
    expect_error(a, TypeError, r"counts must be numeric, got dtype <U", fit, a, layer="text")


@case("F21")
def _(env):
    a = env.adata()
    a.layers["present"] = dense(env) > 0
    expect_error(a, TypeError, r"counts must be numeric, got dtype bool", fit, a, layer="present")


@case("F22")
def _(env):
    a = env.adata()
    a.layers["objects"] = dense(env).astype(object)
    expect_error(a, TypeError, r"got dtype object.*astype\(np\.float32\)", fit, a, layer="objects")


@case("F23")
def _(env):
    as_int, as_float = env.adata(), env.adata()
    as_int.X = dense(env).astype(np.int64)
    fit(as_int, seed=1)
    fit(as_float, seed=1)
    np.testing.assert_array_equal(as_int.obsm["X_scvae"], as_float.obsm["X_scvae"])


@case("F24")
def _(env):
    as_csc, as_csr = env.adata(), env.adata()
    as_csc.X = sp.csc_matrix(as_csc.X)
    fit(as_csc, seed=1)
    fit(as_csr, seed=1)
    np.testing.assert_array_equal(as_csc.obsm["X_scvae"], as_csr.obsm["X_scvae"])


@case("F25")
def _(env):
    a = env.adata()
    a.X = None
    expect_error(a, ValueError, r"adata\.X is empty: pass the layer", fit, a)


@case("F26")
def _(env):
    a = env.adata()
    expect_error(a, KeyError, r"layer 'raw'.*available.*'counts'", fit, a, layer="raw")


@case("F27")
def _(env):
    a = env.adata()
    expect_error(a, KeyError, r"batch_key='donor'.*available.*'batch'", fit, a, batch_key="donor")


@case("F28")
def _(env):
    a = env.adata()
    expect_error(a, KeyError, r"labels_key='celltype'.*available", fit, a, labels_key="celltype")


@case("F29")
def _(env):
    a = env.adata()
    expect_error(
        a, KeyError, r"mask_layer 'observed' not in adata\.layers", fit, a, mask_layer="observed"
    )


@case("F30")
def _(env):
    a = env.adata()
    a.layers["observed"] = np.ones(a.shape, dtype=np.float32)
    expect_error(
        a,
        TypeError,
        r"layers\['observed'\] must be boolean.*float32",
        fit,
        a,
        mask_layer="observed",
    )


@case("F31")
def _(env):
    a = env.adata()
    a.obs["batch"] = a.obs["batch"].astype(object)
    a.obs.iloc[0, a.obs.columns.get_loc("batch")] = np.nan
    expect_error(
        a, ValueError, r"adata\.obs\['batch'\] has 1 missing values", fit, a, batch_key="batch"
    )


@case("F32")
def _(env):
    a = env.adata()
    a.obs["batch"] = a.obs["batch"].cat.add_categories(["batch_unused"])
    model = fit(a, batch_key="batch")
    assert model.batch_categories == ["batch_0", "batch_1"]
    assert "ignoring 1 unused categories" in env.caplog.text


@case("F33")
def _(env):
    a = env.adata()
    a.obs["cell_type"] = a.obs["cell_type"].cat.add_categories(["unused"])
    a.obs.iloc[:5, a.obs.columns.get_loc("cell_type")] = np.nan
    data = prepare_counts(a, labels_key="cell_type")
    assert (data.labels[:5] == -1).all() and (data.labels[5:] >= 0).all()
    assert "unused" not in data.label_categories


@case("F34")
def _(env):
    a = env.adata()
    a.obs["treated"] = np.arange(a.n_obs) % 2 == 0
    model = fit(a, batch_key="treated")
    assert model.batch_categories == ["False", "True"]


@case("F35")
def _(env):
    with pytest.raises(TypeError, match="expected an AnnData, got ndarray"):
        fit(np.ones((3, 3)))


@case("F36")
def _(env):
    parent = env.adata()
    before = fingerprint(parent)
    view = parent[:100]
    with pytest.warns(UserWarning, match="view"):  # anndata's ImplicitModificationWarning
        fit(view)
    assert view.obsm["X_scvae"].shape == (100, DEFAULT_N_LATENT)
    assert not changed(before, fingerprint(parent))


def _bad_option(option, message, error=ValueError):
    def run(env):
        a = env.adata()
        expect_error(a, error, message, fit, a, **option)

    return run


for _row, _option, _message in [
    ("F37", {"likelihood": "gaussian"}, "likelihood must be one of"),
    ("F38", {"dispersion": "cell"}, "dispersion must be one of"),
    ("F39", {"beta": 0.0}, "beta must be positive, got 0.0"),
    ("F40", {"max_epochs": 0}, "max_epochs and batch_size must be positive"),
    ("F41", {"validation_fraction": 1.0}, r"validation_fraction must be in \[0, 1\)"),
    ("F42", {"n_latent": 0}, "n_latent must be a positive integer, got 0"),
    ("F43", {"dropout": 1.0}, r"dropout must be in \[0, 1\), got 1.0"),
    ("F44", {"lr": 0.0}, "lr must be a positive number, got 0.0"),
    ("F45", {"lr": float("nan")}, "lr must be a positive number, got nan"),
    ("F46", {"batch_size": 0}, "max_epochs and batch_size must be positive"),
    ("F47", {"n_layers": 0}, "n_layers must be a positive integer, got 0"),
    ("F48", {"device": "gpu"}, r"device='gpu' is not a device"),
    ("F70", {"prior_components": -1}, "prior_components must be >= 0, got -1"),
]:
    case(_row)(_bad_option(_option, _message))

case("F71")(
    _bad_option({"prior_components": 2.5}, "prior_components must be an integer", TypeError)
)
case("F72")(
    _bad_option(
        {"library_from_latent": "yes"},
        "library_from_latent must be True or False, got str 'yes'",
        TypeError,
    )
)


@case("F49")
def _(env):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    a = env.adata()
    expect_error(
        a,
        RuntimeError,
        r"device='cuda' was asked for but CUDA is not available",
        fit,
        a,
        device="cuda",
    )


@case("F50")
def _(env):
    path = env.tmp / "backed.h5ad"
    dense_x = env.adata()
    dense_x.X = dense_x.X.toarray()
    dense_x.write_h5ad(path)
    content = path.read_bytes()
    a = ad.read_h5ad(path, backed="r")
    try:
        with pytest.raises(TypeError, match=r"CSR.*to_memory"):
            fit(a)
    finally:
        a.file.close()
    assert path.read_bytes() == content


@case("F51")
def _(env):
    a = env.adata()
    before = fingerprint(a)
    calls = {"n": 0}
    step = torch.optim.Adam.step

    def corrupting_step(self, *args, **kwargs):
        out = step(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:  # epoch 0, step 2: a parameter turns NaN
            with torch.no_grad():
                self.param_groups[0]["params"][0].fill_(float("nan"))
        return out

    env.monkeypatch.setattr(torch.optim.Adam, "step", corrupting_step)
    with pytest.raises(
        NonFiniteLossError, match=r"epoch 0, step 3 \(loss nan; minibatch of cells 'cell_"
    ) as info:
        fit(a, batch_size=16, max_epochs=3)
    assert isinstance(info.value, FloatingPointError)
    assert np.isfinite(info.value.model.embed(a)).all()
    assert not changed(before, fingerprint(a))


@case("F52")
def _(env):
    a = env.adata()
    model = fit(a, n_latent=np.int64(4), max_epochs=np.int64(1))
    model.save(env.tmp / "numpy_options")
    assert scvae.load(env.tmp / "numpy_options").module.n_latent == 4


@case("F53")
def _(env):
    a = env.adata()
    expect_error(a, ValueError, r"resume=True needs the checkpoint_dir", fit, a, resume=True)


@case("F54")
def _(env):
    folder = env.tmp / "ckpt"
    fit(env.adata(), checkpoint_dir=folder, checkpoint_every=1)
    a = env.adata()
    expect_error(
        a,
        ValueError,
        r"checkpoint of another fit \(differs in \['n_latent'\]\)",
        fit,
        a,
        checkpoint_dir=folder,
        resume=True,
        n_latent=3,
    )


@case("F55")
def _(env):
    a = env.adata()
    expect_error(
        a,
        ValueError,
        "checkpoint_every must be >= 1",
        fit,
        a,
        checkpoint_dir=env.tmp,
        checkpoint_every=0,
    )


@case("F56")
def _(env):
    marker = env.tmp / "code_ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (env.tmp / "ckpt").mkdir()
    (env.tmp / "ckpt" / "checkpoint.pt").write_bytes(pickle.dumps({"x": Payload()}))
    a = env.adata()
    expect_error(
        a, pickle.UnpicklingError, "", fit, a, checkpoint_dir=env.tmp / "ckpt", resume=True
    )
    assert not marker.exists()


@case("F57")
def _(env):
    a = env.adata()
    model = fit(a, checkpoint_dir=env.tmp / "none_yet", resume=True)
    assert "no checkpoint in" in env.caplog.text and "starts from the beginning" in env.caplog.text
    assert len(model.history["train_loss"]) == 1


# -- embed / log_likelihood -----------------------------------------------------------------------
@case("E01")
def _(env):
    a = env.adata()[:, 2:].copy()
    expect_error(
        a,
        ValueError,
        r"2 of the model's 30 genes are missing.*'gene_0', 'gene_1'",
        env.model.embed,
        a,
    )


@case("E02")
def _(env):
    a = env.adata()
    shuffled = a[:, np.random.default_rng(0).permutation(a.n_vars)].copy()
    np.testing.assert_allclose(env.model.embed(shuffled), env.model.embed(a), rtol=1e-5, atol=1e-6)


@case("E03")
def _(env):
    a = env.adata()
    extra = ad.AnnData(
        sp.csr_matrix(np.ones((a.n_obs, 2), dtype=np.float32)),
        obs=a.obs,
        var=pd.DataFrame(index=["extra_1", "extra_2"]),
    )
    wider = ad.concat([a, extra], axis=1, merge="same")
    np.testing.assert_allclose(env.model.embed(wider), env.model.embed(a), rtol=1e-5, atol=1e-6)
    assert "ignoring 2 genes that the model was not trained on" in env.caplog.text


@case("E04")
def _(env):
    a = env.adata()[:10].copy()
    a.obs["batch"] = pd.Categorical(["batch_9"] * 10)
    expect_error(a, ValueError, r"does not know: \['batch_9'\].*known", env.model.embed, a)


@case("E05")
def _(env):
    a = env.adata()
    del a.obs["batch"]
    expect_error(a, KeyError, r"batch_key='batch' is not a column", env.model.embed, a)


@case("E06")
def _(env):
    a = env.adata()
    one = env.model.embed(a[:1])
    np.testing.assert_allclose(one, env.model.embed(a)[:1], rtol=1e-5, atol=1e-6)


@case("E07")
def _(env):
    x = dense(env)
    x[0, :5] = np.nan
    a = with_x(env.adata(), x)
    z = env.model.embed(a)
    assert np.isfinite(z).all()
    assert "fitted without missing values: its encoder cannot tell" in env.caplog.text


@case("E08")
def _(env):
    a = env.adata()
    a.var_names = ["gene_1", *a.var_names[1:]]
    expect_error(
        a, ValueError, r"var_names are not unique \(e\.g\. \['gene_1'\]\)", env.model.embed, a
    )


@case("E09")
def _(env):
    import scanpy as sc

    a = env.adata()
    sc.pp.normalize_total(a)
    sc.pp.log1p(a)
    expect_error(a, ValueError, r"non-integer values.*layer='counts'", env.model.embed, a)


@case("E10")
def _(env):
    a = env.adata()
    expect_error(
        a,
        ValueError,
        r"batch_size must be a positive integer, got 0",
        env.model.embed,
        a,
        batch_size=0,
    )


@case("E11")
def _(env):
    a = env.adata()
    a.X = sp.csr_matrix(np.vstack([np.zeros((1, a.n_vars), dtype=np.float32), dense(env)[1:]]))
    expect_error(a, ValueError, r"1 cells have zero total counts.*'cell_0'", env.model.embed, a)


@case("E12")
def _(env):
    a = env.adata()[:0].copy()
    expect_error(a, ValueError, r"adata is empty \(0 cells", env.model.embed, a)


@case("E13")
def _(env):
    a = env.adata()
    expect_error(
        a,
        ValueError,
        r"n_samples must be a positive integer, got 0",
        env.model.log_likelihood,
        a,
        n_samples=0,
    )


@case("E14")
def _(env):
    a = env.adata()
    expect_error(a, KeyError, r"layer 'raw' not in adata\.layers", env.model.elbo, a, layer="raw")


# -- impute / denoise / predictive_log_likelihood ---------------------------------------------
def with_holes(env: Env) -> ad.AnnData:
    x = dense(env)
    x[0, :3] = np.nan
    x[5, 7] = np.nan
    return with_x(env.adata(), x)


@case("I01")
def _(env):
    a = with_holes(env)
    expect_error(
        a, ValueError, r"method must be one of.*'median'", scvae.impute, a, method="median"
    )


@case("I15")
def _(env):
    a = with_holes(env)
    expect_error(a, ValueError, r"point must be one of", scvae.impute, a, env.model, point="mode")
    expect_error(
        a,
        ValueError,
        r"median needs method='model'",
        scvae.impute,
        a,
        method="mean",
        point="median",
    )


@case("I02")
def _(env):
    a = with_holes(env)
    expect_error(a, ValueError, r"method='model' needs a fitted model", scvae.impute, a)


@case("I03")
def _(env):
    a = with_holes(env)
    expect_error(
        a, ValueError, r"interval must be in \(0, 1\)", scvae.impute, a, env.model, interval=1.5
    )


@case("I04")
def _(env):
    a = env.adata()
    scvae.impute(a, env.model)
    assert "no missing entries in adata.X: the imputed layer is a copy" in env.caplog.text
    assert (a.layers["scvae_imputed"] != a.X).nnz == 0


@case("I05")
def _(env):
    a = env.adata()
    a.layers["holes"] = with_holes(env).X
    expect_error(
        a,
        ValueError,
        r"adata\.X has no missing entries, but adata\.layers\['holes'\] has NaN",
        scvae.impute,
        a,
        env.model,
    )


@case("I06")
def _(env):
    a = env.adata()
    a.layers["observed"] = np.ones(a.shape, dtype=np.int8)
    expect_error(
        a, TypeError, r"must be boolean.*int8", scvae.impute, a, env.model, mask_layer="observed"
    )


@case("I07")
def _(env):
    other = scvae.datasets.simulate(50, 20, seed=0)
    other.X[0, 0] = np.nan
    expect_error(
        other,
        ValueError,
        r"10 of the model's 30 genes are missing",
        scvae.impute,
        other,
        env.model,
    )


@case("I08")
def _(env):
    a = with_holes(env)
    expect_error(
        a,
        ValueError,
        r"n_samples must be a positive integer, got 0",
        scvae.impute,
        a,
        env.model,
        n_samples=0,
    )


@case("I09")
def _(env):
    a = with_holes(env)
    expect_error(
        a, KeyError, r"layer 'raw' not in adata\.layers", scvae.impute, a, env.model, layer="raw"
    )


@case("I10")
def _(env):
    a = env.adata()[:, 1:].copy()
    expect_error(
        a,
        ValueError,
        r"denoise needs adata to have exactly the model's genes",
        scvae.denoise,
        a,
        env.model,
    )


@case("I11")
def _(env):
    a = with_holes(env)
    truth = dense(env)[:-1]
    expect_error(
        a,
        ValueError,
        r"truth has shape \(119, 30\).*aligned with adata \(120, 30\)",
        scvae.predictive_log_likelihood,
        a,
        env.model,
        truth,
    )


@case("I12")
def _(env):
    a = with_holes(env)
    expect_error(
        a,
        ValueError,
        r"truth must hold the true counts.*NaN",
        scvae.predictive_log_likelihood,
        a,
        env.model,
        a.X,
    )


@case("I13")
def _(env):
    a = with_holes(env)
    a.obs["batch"] = a.obs["batch"].astype(object)
    a.obs.iloc[3, a.obs.columns.get_loc("batch")] = None
    expect_error(
        a, ValueError, r"adata\.obs\['batch'\] has 1 missing values", scvae.impute, a, env.model
    )


@case("I14")
def _(env):
    a = env.adata()
    a.X = dense(env).astype(np.int64)
    observed = np.ones(a.shape, dtype=bool)
    observed[0, 0] = False
    a.layers["observed"] = observed
    scvae.impute(a, env.model, mask_layer="observed")
    imputed = a.layers["scvae_imputed"]
    assert imputed.dtype == np.float32
    np.testing.assert_array_equal(imputed[observed], a.X[observed])


# -- save / load ---------------------------------------------------------------------------
def edit_config(path: Path, **changes) -> None:
    config = json.loads((path / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key)
        else:
            config[key] = value
    (path / "config.json").write_text(json.dumps(config))


def set_weights(path: Path, content: bytes) -> None:
    import hashlib

    (path / "weights.pt").write_bytes(content)
    edit_config(path, weights_sha256=hashlib.sha256(content).hexdigest())


@case("L01")
def _(env):
    with pytest.raises(FileNotFoundError, match="is not an scvae model folder"):
        scvae.load(env.tmp / "nowhere")


@case("L02")
def _(env):
    path = env.saved()
    (path / "weights.pt").unlink()
    with pytest.raises(
        FileNotFoundError, match=r"not an scvae model folder \(config\.json, weights\.pt\)"
    ):
        scvae.load(path)


@case("L03")
def _(env):
    path = env.saved()
    (path / "config.json").write_text("{'format': 1")
    with pytest.raises(ValueError, match=r"config\.json is not valid JSON"):
        scvae.load(path)


@case("L04")
def _(env):
    path = env.saved()
    edit_config(path, format=2, scvae_version="9.0")
    with pytest.raises(ValueError, match=r"saved by a newer scvae \('9\.0', format 2\).*upgrade"):
        scvae.load(path)


@case("L05")
def _(env):
    path = env.saved()
    edit_config(path, format=0)
    with pytest.raises(ValueError, match="unknown model format 0"):
        scvae.load(path)


@case("L06")
def _(env):
    path = env.saved()
    edit_config(path, scvae_version="0.0.1")
    model = scvae.load(path)
    assert "model saved by scvae 0.0.1, loading with" in env.caplog.text
    np.testing.assert_array_equal(model.embed(env.base), env.model.embed(env.base))


@case("L07")
def _(env):
    path = env.saved()
    content = (path / "weights.pt").read_bytes()
    (path / "weights.pt").write_bytes(content[: len(content) // 2])
    with pytest.raises(ValueError, match=r"weights\.pt does not match config\.json \(SHA-256"):
        scvae.load(path)


@case("L08")
def _(env):
    path = env.saved()
    other = env.tmp / "other"
    fit(scvae.datasets.simulate(60, 20, seed=2)).save(other)
    set_weights(path, (other / "weights.pt").read_bytes())
    with pytest.raises(
        ValueError, match=r"(?s)weights\.pt does not fit config\.json.*size mismatch"
    ):
        scvae.load(path)


@case("L09")
def _(env):
    path = env.saved()
    marker = env.tmp / "code_ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    set_weights(path, pickle.dumps({"x": Payload()}))
    with pytest.raises(pickle.UnpicklingError, match="holds objects other than tensors"):
        scvae.load(path)
    assert not marker.exists()


@case("L10")
def _(env):
    path = env.saved()
    config = json.loads((path / "config.json").read_text())
    edit_config(path, module={**config["module"], "__class__": "os.system"})
    with pytest.raises(ValueError, match=r"unknown module setting '__class__'"):
        scvae.load(path)


@case("L11")
def _(env):
    path = env.saved()
    config = json.loads((path / "config.json").read_text())
    edit_config(path, gene_names=config["gene_names"][:-1])
    with pytest.raises(ValueError, match="config lists 29 genes for a model of 30"):
        scvae.load(path)


@case("L12")
def _(env):
    import io

    path = env.saved()
    state = torch.load(path / "weights.pt", weights_only=True)
    state["log_theta"][0, 0] = float("nan")
    buffer = io.BytesIO()
    torch.save(state, buffer)
    set_weights(path, buffer.getvalue())
    with pytest.raises(ValueError, match=r"NaN or infinite weights \(\['log_theta'\]\)"):
        scvae.load(path)


@case("L13")
def _(env):
    a = env.adata()[:, ~env.base.var_names.isin(["gene_3", "gene_7"])].copy()
    expect_error(
        a,
        ValueError,
        r"2 of the model's 30 genes.*'gene_3', 'gene_7'",
        scvae.load,
        env.saved(),
        adata=a,
    )


@case("L14")
def _(env):
    a = env.adata()
    a.var_names = ["gene_0", *a.var_names[1:-1], "gene_0"]
    expect_error(a, ValueError, r"var_names are not unique", scvae.load, env.saved(), adata=a)


@case("L15")
def _(env):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(
        RuntimeError, match="device='cuda' was asked for but CUDA is not available"
    ):
        scvae.load(env.saved(), device="cuda")


@case("L16")
def _(env):
    with pytest.raises(ValueError, match=r"device='gpu' is not a device"):
        scvae.load(env.saved(), device="gpu")


@case("L17")
def _(env):
    with pytest.raises(TypeError, match="adata must be an AnnData, got DataFrame"):
        scvae.load(env.saved(), adata=env.base.obs)


@case("L18")
def _(env):
    path = env.saved()
    with pytest.raises(FileExistsError, match="exists and is not empty; pass overwrite=True"):
        env.model.save(path)


@case("L19")
def _(env):
    path = env.tmp / "a_file"
    path.write_text("notes")
    with pytest.raises(FileExistsError, match="is a file, not a folder"):
        env.model.save(path)
    assert path.read_text() == "notes"


@case("L20")
def _(env):
    folder = env.tmp / "analysis"
    folder.mkdir()
    (folder / "results.csv").write_text("precious")
    with pytest.raises(FileExistsError, match=r"not an scvae model folder.*results\.csv"):
        env.model.save(folder, overwrite=True)
    assert (folder / "results.csv").read_text() == "precious"


@case("L21")
def _(env):
    (env.tmp / ".model.old-abc").mkdir()
    with pytest.raises(
        FileNotFoundError,
        match=r"a save was interrupted: the previous model is in .*\.model\.old-abc",
    ):
        scvae.load(env.tmp / "model")


# -- concat_panels ---------------------------------------------------------------------------
@case("C01")
def _(env):
    with pytest.raises(ValueError, match="needs at least one AnnData"):
        scvae.concat_panels({})


@case("C02")
def _(env):
    a = env.adata()
    a.var_names = ["gene_0", *a.var_names[:-1]]
    expect_error(
        a, ValueError, r"adatas\['a'\]\.var_names are not unique", scvae.concat_panels, {"a": a}
    )


@case("C03")
def _(env):
    a, b = env.adata(), env.adata()[:, :20].copy()
    joint = scvae.concat_panels({"a": a, "b": b})
    assert joint.obs_names.is_unique and joint.n_obs == 240
    assert np.isnan(joint.X[120:].toarray()[:, 20:]).all()


@case("C04")
def _(env):
    a = env.adata()
    with pytest.raises(KeyError, match=r"layer 'raw' not in adatas\['a'\]\.layers"):
        scvae.concat_panels({"a": a}, layer="raw")


# -- generate, posterior_predictive_check -------------------------------------------------------
@case("G01")
def _(env):
    with pytest.raises(ValueError, match="n_cells must be a positive integer, got 0"):
        scvae.generate(env.model, 0)


@case("G02")
def _(env):
    with pytest.raises(TypeError, match=r"n_cells must be an integer, got float 2\.5"):
        scvae.generate(env.model, 2.5)


@case("G03")
def _(env):
    with pytest.raises(ValueError, match="unknown batch 'nope'; known: 'batch_0', 'batch_1'"):
        scvae.generate(env.model, 5, batch="nope")


@case("G04")
def _(env):
    with pytest.raises(ValueError, match="pass adata= and labels_key="):
        scvae.generate(env.model, 5, cell_type="group_0")


@case("G05")
def _(env):
    with pytest.raises(ValueError, match="labels_key needs adata"):
        scvae.generate(env.model, 5, labels_key="cell_type")


@case("G06")
def _(env):
    a = env.adata()
    expect_error(
        a,
        KeyError,
        "labels_key 'kind' is not a column",
        scvae.generate,
        env.model,
        5,
        adata=a,
        labels_key="kind",
    )


@case("G07")
def _(env):
    a = env.adata()
    expect_error(
        a,
        ValueError,
        "unknown cell_type 'T cells'; known: 'group_0'",
        scvae.generate,
        env.model,
        5,
        cell_type="T cells",
        adata=a,
        labels_key="cell_type",
    )


@case("G08")
def _(env):
    old = copy.copy(env.model)
    old.reference = None
    with pytest.raises(ValueError, match="holds no latent reference"):
        scvae.generate(old, 5)


@case("G09")
def _(env):
    with pytest.raises(ValueError, match="chunk_size must be a positive integer, got 0"):
        scvae.generate(env.model, 5, chunk_size=0)


@case("P01")
def _(env):
    a = env.adata()
    expect_error(
        a,
        ValueError,
        "kind must be one of",
        scvae.posterior_predictive_check,
        env.model,
        a,
        kind="prior",
    )


@case("P02")
def _(env):
    a = env.adata()
    expect_error(
        a,
        KeyError,
        "labels_key 'kind' is not a column",
        scvae.posterior_predictive_check,
        env.model,
        a,
        kind="generate",
        labels_key="kind",
    )


@case("P03")
def _(env):
    x = dense(env)
    x[:60, :5] = np.nan
    a = with_x(env.adata(), x)
    check = scvae.posterior_predictive_check(env.model, a)
    expected = np.nanmean(x[:, :5], axis=0)
    np.testing.assert_allclose(check.genes["mean_observed"].to_numpy()[:5], expected, rtol=1e-6)
    assert "reads missing entries as zeros" in env.caplog.text


# -- balance, predict_labels -------------------------------------------------------------------
@case("B01")
def _(env):
    a = env.adata()
    expect_error(a, ValueError, "balance='labels' needs labels_key", fit, a, balance="labels")


@case("B02")
def _(env):
    a = env.adata()
    expect_error(a, ValueError, "balance='batch' needs batch_key", fit, a, balance="batch")


@case("B03")
def _(env):
    a = env.adata()
    expect_error(a, ValueError, "balance must be one of", fit, a, balance="maybe")


@case("B04")
def _(env):
    a = env.adata()
    a.obs["one"] = "T"
    expect_error(
        a, ValueError, "at least 2 classes, found 1", fit, a, labels_key="one", balance="labels"
    )


@case("B05")
def _(env):
    a = env.adata()
    a.obs["none"] = pd.Categorical([np.nan] * a.n_obs, categories=["T", "B"])
    expect_error(
        a, ValueError, "at least 2 classes, found 0", fit, a, labels_key="none", balance="labels"
    )


@case("B06")
def _(env):
    a = env.adata()
    a.obs["kind"] = np.where(np.arange(a.n_obs) == 0, "rare", "common")
    model = fit(a, labels_key="kind", balance="labels")
    assert model.module.n_labels == 2
    assert "fewer than 5 cells" in env.caplog.text


@case("B07")
def _(env):
    with pytest.raises(ValueError, match="no label head"):
        env.model.predict_labels(env.adata())


# -- second reliability pass (issue 21): options, views, gene names ------------------------------
for _row, _option, _message, _error in [
    (
        "F58",
        {"classification_weight": -5.0},
        "classification_weight must be a non-negative",
        ValueError,
    ),
    ("F59", {"early_stopping": "no"}, "early_stopping must be True or False", TypeError),
    ("F60", {"max_epochs": 2.5}, "max_epochs must be an integer, got float 2.5", TypeError),
    ("F61", {"seed": "1"}, "seed must be an integer, got '1'", TypeError),
    (
        "F64",
        {"batch_alignment": -1.0},
        "batch_alignment must be a non-negative number, got -1.0",
        ValueError,
    ),
]:
    case(_row)(_bad_option(_option, _message, _error))


def backed(env: Env) -> ad.AnnData:
    path = env.tmp / "backed.h5ad"
    if not path.exists():
        env.adata().write_h5ad(path)
    return ad.read_h5ad(path, backed="r")


@case("F62")
def _(env):
    view = backed(env)[:100]
    with pytest.raises(ValueError, match=r"a view of the backed file .*to_memory\(\)"):
        fit(view)


@case("F63")
def _(env):
    full = backed(env)
    with pytest.raises(ValueError, match=r"a view of the backed file .*write_h5ad"):
        fit(full[:, full.var_names[:10]])


@case("E15")
def _(env):
    a = env.adata()
    a.var.index = pd.Index(np.arange(a.n_vars))  # integer-like gene names
    model = fit(a, batch_key="batch")
    assert model.gene_names[:2] == ["0", "1"]
    np.testing.assert_array_equal(model.embed(a), a.obsm["X_scvae"])


@case("E16")
def _(env):
    with pytest.raises(ValueError, match=r"a view of the backed file"):
        env.model.embed(backed(env)[:50])


@case("I16")
def _(env):
    a = with_holes(env)
    before = fingerprint(a)
    with pytest.raises(ValueError, match=r"adata is a view .*impute writes layers.*\.copy\(\)"):
        scvae.impute(a[:60], env.model)
    assert not changed(before, fingerprint(a))


@case("I17")
def _(env):
    a = env.adata()
    with pytest.raises(ValueError, match=r"adata is a view .*denoise writes layers"):
        scvae.denoise(a[:50], env.model)
    assert "scvae_denoised" not in a.layers


# -- the command line -----------------------------------------------------------------------------
def cli(*args: str) -> int:
    from scvae.__main__ import main

    return main([*args])


def counts_file(env: Env) -> Path:
    path = env.tmp / "small.h5ad"
    if not path.exists():
        env.adata().write_h5ad(path)
    return path


def fit_args(env: Env, out: Path, *extra: str) -> list[str]:
    return [
        "fit",
        str(counts_file(env)),
        "--out",
        str(out),
        "--max-epochs",
        "1",
        "--no-progress",
        *extra,
    ]


@case("K01")
def _(env):
    results = env.tmp / "results"
    results.mkdir()
    (results / "analysis.csv").write_text("mine")
    with pytest.raises(FileExistsError, match=r"not an scvae model folder.*--overwrite replaces"):
        cli("--debug", *fit_args(env, results, "--overwrite"))
    assert (results / "analysis.csv").read_text() == "mine"


@case("K02")
def _(env):
    env.monkeypatch.chdir(env.tmp)
    (env.tmp / "notes.md").write_text("mine")
    with pytest.raises(FileExistsError, match="not an scvae model folder"):
        cli("--debug", *fit_args(env, Path("."), "--overwrite"))
    assert (env.tmp / "notes.md").read_text() == "mine"


@case("K03")
def _(env):
    target = env.tmp / "afile.txt"
    target.write_text("mine")
    with pytest.raises(FileExistsError, match="is a file, not a folder"):
        cli("--debug", *fit_args(env, target, "--overwrite"))
    assert target.read_text() == "mine"


@case("K11")
def _(env):
    project = env.tmp / "project"
    project.mkdir()
    (project / "scores.json").write_text("mine")  # a name the demo writes, but the user's
    with pytest.raises(FileExistsError, match=r"was not written by the demo and is not empty"):
        cli("--debug", "demo", "--quick", "--out", str(project))
    assert (project / "scores.json").read_text() == "mine"
    target = env.tmp / "afile"
    target.write_text("mine")
    with pytest.raises(FileExistsError, match="is a file, not a folder"):
        cli("--debug", "demo", "--quick", "--out", str(target))
    assert target.read_text() == "mine"


@case("K04")
def _(env):
    notes = env.tmp / "notes.txt"
    notes.write_text("not counts")
    with pytest.raises(ValueError, match=r"is not an h5ad file \(no HDF5 signature\)"):
        cli("--debug", "fit", str(notes), "--out", str(env.tmp / "m"))


@case("K05")
def _(env):
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        status = cli("fit", str(env.tmp / "absent.h5ad"), "--out", str(env.tmp / "m"))
    assert status == 1
    assert err.getvalue().startswith("scvae fit: error:") and "not found" in err.getvalue()
    assert "Traceback" not in err.getvalue()
    # A KeyError's message without the quotes str() adds around it.
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        cli(*fit_args(env, env.tmp / "m", "--layer", "cnts"))
    assert err.getvalue().startswith("scvae fit: error: layer 'cnts' not in"), err.getvalue()


@case("K06")
def _(env):
    from scvae._train import loop

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    env.monkeypatch.setattr(loop, "_step_loss", interrupted)
    out = env.tmp / "model"
    with pytest.warns(RuntimeWarning, match="interrupted"):
        assert cli(*fit_args(env, out)) == 130
    assert not out.exists()


@case("K07")
def _(env):
    env.saved()
    mine = env.tmp / "mine.npy"
    np.save(mine, np.arange(3))
    embed = ["embed", str(counts_file(env)), "--model", str(env.saved()), "--out", str(mine)]
    with pytest.raises(FileExistsError, match="exists: choose another path or pass --overwrite"):
        cli("--debug", *embed)
    with pytest.raises(FileExistsError, match="not an embedding written by scvae"):
        cli("--debug", *embed, "--overwrite")
    np.testing.assert_array_equal(np.load(mine), np.arange(3))


@case("K08")
def _(env):
    mine = env.tmp / "z.h5ad"
    env.adata().write_h5ad(mine)  # a full AnnData of the user's, not an scvae embedding
    out = env.tmp / "model"
    with pytest.raises(FileExistsError, match="not an embedding written by scvae"):
        cli("--debug", *fit_args(env, out, "--embedding", str(mine), "--overwrite"))
    assert not out.exists()  # refused before training
    assert ad.read_h5ad(mine).n_vars == 30


# -- covariates, query mapping, label transfer, counterfactuals (issue 19) ----------------------
def with_obs(env: Env, **columns) -> ad.AnnData:
    a = env.adata()
    for key, values in columns.items():
        a.obs[key] = values
    return a


@case("V01")
def _(env):
    a = with_obs(env, donor="d1")
    expect_error(
        a, TypeError, r"did you mean \['donor'\]", fit, a, categorical_covariate_keys="donor"
    )


@case("V02")
def _(env):
    a = env.adata()
    expect_error(
        a,
        ValueError,
        r"categorical_covariate_keys: 'batch' is already given as batch_key",
        fit,
        a,
        batch_key="batch",
        categorical_covariate_keys=["batch"],
    )


@case("V03")
def _(env):
    a = env.adata()
    expect_error(
        a,
        KeyError,
        r"'pct_mito' is not a column of adata.obs",
        fit,
        a,
        continuous_covariate_keys=["pct_mito"],
    )


@case("V04")
def _(env):
    a = with_obs(env, donor="d1")
    expect_error(
        a,
        TypeError,
        r"adata.obs\['donor'\] is object, not numbers",
        fit,
        a,
        continuous_covariate_keys=["donor"],
    )


@case("V05")
def _(env):
    a = with_obs(env, mito=np.where(np.arange(120) == 7, np.nan, 1.0))
    expect_error(
        a,
        ValueError,
        r"1 missing or infinite values \(e.g. at cell 'cell_7'\)",
        fit,
        a,
        continuous_covariate_keys=["mito"],
    )


@case("V06")
def _(env):
    donors = np.where(np.arange(120) % 2 == 0, "d1", "d2")
    model = fit(with_obs(env, donor=donors), categorical_covariate_keys=["donor"])
    a = with_obs(env, donor="d3")
    expect_error(a, ValueError, r"categories the model does not know: \['d3'\]", model.embed, a)


def query_of(env: Env) -> ad.AnnData:
    a = env.adata()
    a.obs["batch"] = "query_" + a.obs["batch"].astype(str)
    return a


@case("Q01")
def _(env):
    a = env.adata()
    expect_error(
        a,
        ValueError,
        r"batches the reference was trained on: \['batch_0', 'batch_1'\]",
        fit,
        a,
        reference=env.model,
    )


@case("Q02")
def _(env):
    a = query_of(env)
    a.obs["batch"] = a.obs["batch"].astype(object)
    a.obs.iloc[3, a.obs.columns.get_loc("batch")] = np.nan
    expect_error(
        a, ValueError, r"adata.obs\['batch'\] has 1 missing values", fit, a, reference=env.model
    )


@case("Q03")
def _(env):
    a = query_of(env)
    a.var_names = [f"ENSG{i:05d}" for i in range(a.n_vars)]
    expect_error(
        a,
        ValueError,
        r"none of the model's 30 genes is in adata.var_names",
        fit,
        a,
        reference=env.model,
    )


@case("Q04")
def _(env):
    a = query_of(env)
    expect_error(
        a,
        ValueError,
        r"likelihood='zinb': a query mapping keeps the reference's likelihood",
        fit,
        a,
        reference=env.model,
        likelihood="zinb",
    )


@case("Q05")
def _(env):
    a = query_of(env)
    expect_error(
        a,
        TypeError,
        r"reference must be a fitted scvae model .* got PosixPath",
        fit,
        a,
        reference=env.saved(),
    )


@case("Q06")
def _(env):
    model = fit(env.adata())
    a = query_of(env)
    expect_error(a, ValueError, r"fitted without batch_key", fit, a, reference=model)


@case("Q13")
def _(env):
    a = env.adata()
    model = fit(a, batch_key="batch", library_from_latent=True, max_epochs=1, progress=False)
    query = query_of(env)
    expect_error(
        query,
        ValueError,
        r"library_from_latent=True\), which a query mapping",
        fit,
        query,
        reference=model,
    )


@case("Q07")
def _(env):
    a = query_of(env)
    path = env.tmp / "query.h5ad"
    a.write_h5ad(path)
    with pytest.raises(NotImplementedError, match=r"disk-backed query .*to_memory\(\)"):
        fit(ad.read_h5ad(path, backed="r"), reference=env.model)


@case("Q08")
def _(env):
    a = query_of(env)
    qmodel = fit(a, reference=env.model)
    expect_error(
        a,
        ValueError,
        r"the reference is itself a query mapping",
        fit,
        query_of(env),
        reference=qmodel,
    )


@case("Q09")
def _(env):
    a = query_of(env)
    fit(a, reference=env.model)
    assert "X_scvae" in a.obsm and a.obsm["X_scvae"].shape == (120, env.model.module.n_latent)
    assert not np.isnan(a.obsm["X_scvae"]).any()
    env.caplog.clear()
    b = query_of(env)
    b.var_names = [f"{g}" for g in b.var_names]
    b = b[:, b.var_names[:20]].copy()
    b.obs_names = [f"q{i}" for i in range(b.n_obs)]
    extra = ad.AnnData(np.ones((b.n_obs, 2), dtype=np.float32), obs=b.obs)
    extra.var_names = ["novel_1", "novel_2"]
    c = ad.concat([b, extra], axis=1, merge="same")
    fit(c, reference=env.model)
    assert "dropping 2 genes of adata that the model does not know" in env.caplog.text
    assert "10 of the model's 30 genes are not in adata" in env.caplog.text


@case("Q10")
def _(env):
    model = scvae.fit(
        env.adata(),
        batch_key="batch",
        labels_key="cell_type",
        balance="labels",
        max_epochs=1,
        progress=False,
    )
    a = env.adata()
    expect_error(
        a,
        ValueError,
        r"min_probability must be a finite number >= 0 and <= 1, got 1.5",
        model.predict_labels,
        a,
        min_probability=1.5,
    )


@case("Q11")
def _(env):
    a = env.adata()
    expect_error(
        a,
        ValueError,
        r"transform_batch='batch_9' is not a batch of the model",
        scvae.denoise,
        a,
        env.model,
        transform_batch="batch_9",
    )


@case("Q12")
def _(env):
    a = env.adata()
    expect_error(
        a,
        ValueError,
        r"genes must be 'adata' or 'model', got 'all'",
        scvae.impute,
        a,
        env.model,
        genes="all",
    )


# -- differential expression and rank_genes_groups ---------------------------------------------
def with_column(env: Env, name: str, values) -> ad.AnnData:
    a = env.adata()
    a.obs[name] = pd.Categorical(values)
    return a


@case("D01")
def _(env):
    a = env.adata()
    expect_error(
        a,
        KeyError,
        r"groupby='leiden' is not a column of adata.obs",
        scvae.differential_expression,
        a,
        env.model,
        "leiden",
        "0",
    )


@case("D02")
def _(env):
    a = env.adata()
    expect_error(
        a,
        ValueError,
        r"group1: \['group_9'\] not among the values of 'cell_type'",
        scvae.differential_expression,
        a,
        env.model,
        "cell_type",
        "group_9",
    )


@case("D03")
def _(env):
    a = with_column(env, "size", ["few"] * 4 + ["many"] * (env.base.n_obs - 4))
    expect_error(
        a,
        ValueError,
        r"group1 \('few'\) has 4 cells: at least 10 are needed",
        scvae.differential_expression,
        a,
        env.model,
        "size",
        "few",
    )


@case("D04")
def _(env):
    a = env.adata()
    expect_error(
        a,
        ValueError,
        r"share values of 'cell_type': the groups must be different cells",
        scvae.differential_expression,
        a,
        env.model,
        "cell_type",
        "group_0",
        "group_0",
    )


@case("D05")
def _(env):
    obs = env.base.obs
    a = with_column(env, "where", obs["cell_type"].astype(str) + "/" + obs["batch"].astype(str))
    expect_error(
        a,
        ValueError,
        r"the two groups share no batch \(group1 in \['batch_0'\], group2 in \['batch_1'\]\)",
        scvae.differential_expression,
        a,
        env.model,
        "where",
        "group_0/batch_0",
        "group_1/batch_1",
    )


@case("D06")
def _(env):
    a = env.adata()
    expect_error(
        a,
        ValueError,
        r"delta must be at least 0, got -1",
        scvae.differential_expression,
        a,
        env.model,
        "cell_type",
        "group_0",
        delta=-1,
    )


@case("D07")
def _(env):
    a = env.adata()
    expect_error(
        a,
        ValueError,
        r"fdr must be between 0 and 1, got 1.5",
        scvae.differential_expression,
        a,
        env.model,
        "cell_type",
        "group_0",
        fdr=1.5,
    )


@case("D08")
def _(env):
    a = env.adata()
    args = (a, env.model, "cell_type", "group_0")
    expect_error(
        a,
        ValueError,
        r"n_samples must be an integer >= 10, got 0",
        scvae.differential_expression,
        *args,
        n_samples=0,
    )
    # One draw has no spread: its genes' posteriors came out with zero width.
    expect_error(
        a,
        ValueError,
        r"n_samples must be an integer >= 10, got 1",
        scvae.differential_expression,
        *args,
        n_samples=1,
    )
    expect_error(
        a,
        TypeError,
        r"batch_correction must be True or False, got str 'yes'",
        scvae.differential_expression,
        *args,
        batch_correction="yes",
    )
    expect_error(
        a,
        TypeError,
        r"n_samples must be an integer, got float 2.5",
        scvae.differential_expression,
        *args,
        n_samples=2.5,
    )
    expect_error(
        a,
        ValueError,
        r"seed must be an integer in \[0, 2\*\*64\), got -1",
        scvae.differential_expression,
        *args,
        seed=-1,
    )


@case("D09")
def _(env):
    a = env.adata()[:, :20].copy()
    expect_error(
        a,
        ValueError,
        r"10 of the model's 30 genes are missing from adata.var_names",
        scvae.differential_expression,
        a,
        env.model,
        "cell_type",
        "group_0",
    )


@case("D10")
def _(env):
    a = env.adata()
    labels = a.obs["cell_type"].astype(object).to_numpy()
    labels[:30] = np.nan
    a.obs["some"] = pd.Categorical(labels)
    before = fingerprint(a)
    de = scvae.differential_expression(a, env.model, "some", "group_0", n_samples=10)
    assert not changed(before, fingerprint(a))
    assert list(de.columns[:4]) == ["lfc_mean", "lfc_median", "lfc_std", "proba_de"]
    # The rest is the labelled cells outside group_0: the unlabelled ones are not in it.
    rest = a[a.obs["some"].notna().to_numpy() & (a.obs["some"] != "group_0").to_numpy()]
    frac = np.asarray((rest.X > 0).mean(axis=0)).ravel()
    np.testing.assert_allclose(de["frac_nonzero2"].reindex(a.var_names), frac)


@case("D11")
def _(env):
    a = with_column(env, "cell_type", ["few"] * 4 + ["many"] * (env.base.n_obs - 4))
    expect_error(
        a,
        ValueError,
        r"groups \['few'\] of 'cell_type' have fewer than 10 cells: pass groups=\[...\]",
        scvae.rank_genes_groups,
        a,
        env.model,
        "cell_type",
    )
    assert "scvae_rank_genes_groups" not in a.uns


@case("D12")
def _(env):
    a = env.adata()
    expect_error(
        a,
        ValueError,
        r"'group_9' is not a value of 'cell_type'",
        scvae.rank_genes_groups,
        a,
        env.model,
        "cell_type",
        reference="group_9",
    )


@case("D13")
def _(env):
    a = env.adata()
    view = a[:60]
    with pytest.raises(ValueError, match=r"adata is a view .*rank_genes_groups writes adata.uns"):
        scvae.rank_genes_groups(view, env.model, "cell_type")
    assert "scvae_rank_genes_groups" not in a.uns


@case("D14")
def _(env):
    a = env.adata()
    a.obs["code"] = np.where(a.obs["cell_type"] == "group_0", 0, 1)
    # The same cells asked for as the integer 1 and the string "1": compared as strings, as
    # the cells are selected (it was let through and gave a table of zeros).
    for group1, group2 in ((1, "1"), ([0, 1], ["1"])):
        expect_error(
            a,
            ValueError,
            r"share values of 'code': the groups must be different cells",
            scvae.differential_expression,
            a,
            env.model,
            "code",
            group1,
            group2,
        )


@case("D15")
def _(env):
    a = env.adata()
    a.obs["one"] = pd.Categorical(["x"] * a.n_obs)
    expect_error(
        a,
        ValueError,
        r"'one' has a single value \(\['x'\]\): ranking needs at least two groups",
        scvae.rank_genes_groups,
        a,
        env.model,
        "one",
    )
    assert "scvae_rank_genes_groups" not in a.uns


@case("D16")
def _(env):
    a = env.adata()
    for options, message in (
        ({"groups": []}, r"groups is empty: pass None \(every group\) or a list of groups"),
        (
            {"groups": ["group_0"], "reference": "group_0"},
            r"no group to rank against reference 'group_0': groups holds only the reference",
        ),
    ):
        expect_error(
            a, ValueError, message, scvae.rank_genes_groups, a, env.model, "cell_type", **options
        )
    assert "scvae_rank_genes_groups" not in a.uns


# -- issue 21, second pass: every option of the other public functions, paths, keys ----------
def labelled_model(env: Env) -> scvae.SCVAE:
    return fit(env.adata(), batch_key="batch", labels_key="cell_type", balance="labels")


def each_error(target, cases) -> None:
    """``expect_error`` for each ``(error, match, call, kwargs)`` of ``cases``."""
    for error, match, call, kwargs in cases:
        expect_error(target, error, match, call, target, **kwargs)


@case("F65")
def _(env):
    a = env.adata()
    expect_error(
        a, ValueError, r"seed must be an integer in \[0, 2\*\*64\), got -1", fit, a, seed=-1
    )


@case("F66")
def _(env):
    a = env.adata()
    expect_error(
        a, ValueError, r"key_added='a/b' holds '/': h5ad files cannot", fit, a, key_added="a/b"
    )


@case("F67")
def _(env):
    a = env.adata()
    a.obsm["X_pca"] = np.ones((a.n_obs, 5), dtype=np.float32)
    a.uns["pca"] = {"variance_ratio": np.ones(5)}  # what scanpy's pca writes, in short
    env.monkeypatch.setattr(sys.modules["scvae._fit.fit"], "fit_counts", None)  # no training
    expect_error(
        a,
        ValueError,
        r"adata.uns\['pca'\] exists and is not the record of an scvae fit .* choose another "
        r"key_added",
        fit,
        a,
        key_added="pca",
    )


@case("F68")
def _(env):
    a = env.adata()
    a.obsm["X_scvae"] = np.zeros((a.n_obs, 3), dtype=np.float32)
    fit(a)
    assert a.obsm["X_scvae"].shape == (a.n_obs, DEFAULT_N_LATENT)
    assert "adata.obsm['X_scvae'] exists without the record of an scvae fit" in env.caplog.text


@case("F69")
def _(env):
    a = env.adata()
    fit(a)
    path = env.tmp / "fitted.h5ad"
    a.write_h5ad(path)
    b = ad.read_h5ad(path)
    env.caplog.clear()
    fit(b, seed=1)
    assert b.uns["scvae"]["settings"]["seed"] == 1
    assert "exists" not in env.caplog.text


@case("F73")
def _(env):
    a = env.adata()
    labels = a.obs["cell_type"].astype(object)
    labels.iloc[::3] = np.nan
    a.obs["lab"] = labels.astype(str)  # NaN becomes the string "nan"
    model = fit(a, labels_key="lab")
    assert "adata.obs['lab'] holds ['nan'] in 40 cells: a string, taken as a label" in (
        env.caplog.text
    )
    assert "nan" in model.label_categories


@case("F74")
def _(env):
    a = env.adata()
    a.obs["depth"] = np.asarray(a.X.sum(axis=1)).ravel() + np.arange(a.n_obs) / 1000
    fit(a, batch_key="depth")
    assert "adata.obs['depth'] has 120 distinct values for 120 cells, each taken as a batch" in (
        env.caplog.text
    )


@case("F75")
def _(env):
    import warnings

    a = env.adata()
    a.X = dense(env).astype(np.float16)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # was "overflow encountered in cast"
        fit(a)
    assert a.obsm["X_scvae"].shape == (120, DEFAULT_N_LATENT)


@case("E20")
def _(env):
    a = env.adata()
    a.var_names = [f"ENSG{i:011d}" for i in range(a.n_vars)]
    expect_error(
        a,
        ValueError,
        r"30 of the model's 30 genes are missing .* none is: use the same gene identifiers",
        env.model.embed,
        a,
    )


@case("E17")
def _(env):
    a = env.adata()
    m = env.model
    each_error(
        a,
        [
            (
                TypeError,
                r"batch_size must be an integer, got float 2\.5",
                m.embed,
                {"batch_size": 2.5},
            ),
            (
                TypeError,
                r"batch_size must be an integer, got bool True",
                m.embed,
                {"batch_size": True},
            ),
            (
                TypeError,
                r"batch_size must be an integer, got str '64'",
                m.embed,
                {"batch_size": "64"},
            ),
            (
                TypeError,
                r"batch_size must be an integer, got NoneType",
                m.embed,
                {"batch_size": None},
            ),
            (
                TypeError,
                r"batch_size must be an integer, got float nan",
                m.embed,
                {"batch_size": np.nan},
            ),
        ],
    )


@case("E18")
def _(env):
    a = env.adata()
    ll = env.model.log_likelihood
    each_error(
        a,
        [
            (TypeError, r"n_samples must be an integer, got float 2\.5", ll, {"n_samples": 2.5}),
            (TypeError, r"n_samples must be an integer, got bool True", ll, {"n_samples": True}),
            (TypeError, r"n_samples must be an integer, got str '5'", ll, {"n_samples": "5"}),
            (TypeError, r"batch_size must be an integer, got float 2\.5", ll, {"batch_size": 2.5}),
        ],
    )


@case("E19")
def _(env):
    a = env.adata()
    m = env.model
    each_error(
        a,
        [
            (
                ValueError,
                r"seed must be an integer in \[0, 2\*\*64\), got -1",
                m.elbo,
                {"seed": -1},
            ),
            (TypeError, r"seed must be an integer, got str '1'", m.elbo, {"seed": "1"}),
            (
                TypeError,
                r"seed must be an integer, got NoneType",
                m.log_likelihood,
                {"seed": None},
            ),
            (
                TypeError,
                r"seed must be an integer, got float inf",
                m.log_likelihood,
                {"seed": np.inf},
            ),
        ],
    )


@case("B08")
def _(env):
    model = labelled_model(env)
    a = env.adata()
    each_error(
        a,
        [
            (
                TypeError,
                r"probabilities must be True or False, got str 'yes'",
                model.predict_labels,
                {"probabilities": "yes"},
            ),
            (
                TypeError,
                r"batch_size must be an integer, got float 2\.5",
                model.predict_labels,
                {"batch_size": 2.5},
            ),
        ],
    )


@case("I18")
def _(env):
    a = with_holes(env)
    each_error(
        a,
        [
            (
                TypeError,
                r"n_samples must be an integer, got float 2\.5",
                scvae.impute,
                {"model": env.model, "n_samples": 2.5},
            ),
            (
                TypeError,
                r"n_samples must be an integer, got bool True",
                scvae.impute,
                {"model": env.model, "n_samples": True},
            ),
            (
                TypeError,
                r"n_samples must be an integer, got str '5'",
                scvae.impute,
                {"model": env.model, "n_samples": "5"},
            ),
        ],
    )


@case("I19")
def _(env):
    a = with_holes(env)
    each_error(
        a,
        [
            (
                TypeError,
                r"batch_size must be an integer, got float 2\.5",
                scvae.impute,
                {"model": env.model, "batch_size": 2.5},
            ),
            (
                ValueError,
                r"batch_size must be a positive integer, got 0",
                scvae.impute,
                {"method": "mean", "batch_size": 0},
            ),
        ],
    )


@case("I20")
def _(env):
    a = with_holes(env)
    each_error(
        a,
        [
            (
                TypeError,
                r"interval must be a number, got str '0\.9'",
                scvae.impute,
                {"model": env.model, "interval": "0.9"},
            ),
            (
                ValueError,
                r"interval must be a finite number, got nan",
                scvae.impute,
                {"model": env.model, "interval": np.nan},
            ),
            (
                TypeError,
                r"interval must be a number, got bool True",
                scvae.impute,
                {"model": env.model, "interval": True},
            ),
        ],
    )


@case("I21")
def _(env):
    a = with_holes(env)
    each_error(
        a,
        [
            (
                ValueError,
                r"seed must be an integer in \[0, 2\*\*64\), got -1",
                scvae.impute,
                {"method": "random", "seed": -1},
            ),
            (
                TypeError,
                r"seed must be an integer, got float 2\.5",
                scvae.impute,
                {"model": env.model, "seed": 2.5},
            ),
        ],
    )


@case("I22")
def _(env):
    a = with_holes(env)
    each_error(
        a,
        [
            (
                ValueError,
                r"key_added must be a non-empty string, got ''",
                scvae.impute,
                {"model": env.model, "key_added": ""},
            ),
            (
                TypeError,
                r"key_added must be a non-empty string, got NoneType None",
                scvae.impute,
                {"model": env.model, "key_added": None},
            ),
            (
                TypeError,
                r"key_added must be a non-empty string, got int 5",
                scvae.impute,
                {"model": env.model, "key_added": 5},
            ),
            (
                ValueError,
                r"key_added='a/b' holds '/'",
                scvae.impute,
                {"model": env.model, "key_added": "a/b"},
            ),
        ],
    )


@case("I23")
def _(env):
    a = with_holes(env)
    a.layers["scvae_imputed"] = a.X.copy()  # the user's counts, in a layer of that name
    expect_error(
        a,
        ValueError,
        r"key_added would write adata.layers\['scvae_imputed'\], the layer this call reads",
        scvae.impute,
        a,
        env.model,
        layer="scvae_imputed",
    )


@case("I24")
def _(env):
    a = with_holes(env)
    scvae.impute(a, env.model, n_samples=3)
    first = a.layers["scvae_imputed"].copy()
    env.caplog.clear()
    scvae.impute(a, env.model, n_samples=3, seed=1)
    assert (
        "replaced 'scvae_imputed' (adata.layers), the result of an earlier call" in env.caplog.text
    )
    assert not np.array_equal(first, a.layers["scvae_imputed"], equal_nan=True)
    b = env.adata()
    scvae.denoise(b, env.model)
    env.caplog.clear()
    scvae.denoise(b, env.model, library_size=100.0)
    assert "replaced 'scvae_denoised'" in env.caplog.text


@case("I25")
def _(env):
    a = with_holes(env)
    path = str(env.saved())
    message = r"model must be a fitted scvae model \(scvae.fit or scvae.load\), got str \(load"
    expect_error(a, TypeError, message, scvae.impute, a, path)
    expect_error(a, TypeError, message, scvae.denoise, a, path)
    expect_error(a, TypeError, r"got NoneType", scvae.denoise, a, None)


@case("I26")
def _(env):
    a = env.adata()
    for value in (0, -1.0, np.nan, np.inf):
        expect_error(
            a,
            ValueError,
            rf"library_size must be a finite number > 0, got {value!r}",
            scvae.denoise,
            a,
            env.model,
            library_size=value,
        )
    expect_error(
        a,
        TypeError,
        r"library_size must be a number, got str",
        scvae.denoise,
        a,
        env.model,
        library_size="1e4",
    )


@case("I27")
def _(env):
    a = env.adata()
    each_error(
        a,
        [
            (
                TypeError,
                r"batch_size must be an integer, got float 2\.5",
                scvae.denoise,
                {"model": env.model, "batch_size": 2.5},
            ),
            (
                ValueError,
                r"key_added must be a non-empty string, got ''",
                scvae.denoise,
                {"model": env.model, "key_added": ""},
            ),
        ],
    )


@case("I28")
def _(env):
    with pytest.raises(TypeError, match=r"expected an AnnData, got ndarray"):
        scvae.denoise(dense(env), env.model)


@case("I29")
def _(env):
    a = with_holes(env)
    pll = scvae.predictive_log_likelihood
    expect_error(
        a,
        TypeError,
        r"n_samples must be an integer, got float 2\.5",
        pll,
        a,
        env.model,
        dense(env),
        n_samples=2.5,
    )
    expect_error(
        a,
        TypeError,
        r"truth must be an array or a sparse matrix, got list",
        pll,
        a,
        env.model,
        dense(env).tolist(),
    )


@case("L22")
def _(env):
    path = env.saved()
    before = (path / "config.json").read_bytes()
    with pytest.raises(TypeError, match=r"overwrite must be True or False, got str 'no'"):
        env.model.save(path, overwrite="no")
    assert (path / "config.json").read_bytes() == before


@case("L23")
def _(env):
    env.monkeypatch.chdir(env.tmp)
    for value in (None, 5):
        with pytest.raises(TypeError, match=r"path must be a str or a pathlib.Path, got"):
            env.model.save(value)
        with pytest.raises(TypeError, match=r"path must be a str or a pathlib.Path, got"):
            scvae.load(value)
    with pytest.raises(ValueError, match=r"path is empty: give the model folder"):
        env.model.save("")
    with pytest.raises(ValueError, match=r"path is empty"):
        scvae.load("")
    assert list(env.tmp.iterdir()) == []


@case("L24")
def _(env):
    mine = env.tmp / "mine"
    mine.mkdir()
    (mine / "analysis.csv").write_text("mine")
    link = env.tmp / "link"
    link.symlink_to(mine)
    with pytest.raises(FileExistsError, match=r"mine is not an scvae model folder"):
        env.model.save(link, overwrite=True)
    assert sorted(p.name for p in mine.iterdir()) == ["analysis.csv"]
    assert link.is_symlink()


@case("L25")
def _(env):
    target = env.tmp / "models" / "m1"
    target.parent.mkdir()
    env.model.save(target)
    link = env.tmp / "current"
    link.symlink_to(target)
    other = fit(env.adata(), batch_key="batch", n_latent=3)
    other.save(link, overwrite=True)
    assert link.is_symlink() and link.resolve() == target.resolve()
    assert scvae.load(link).module.n_latent == 3
    # No leftovers: no temporary or old folder beside the link or beside the target.
    assert sorted(p.name for p in env.tmp.iterdir()) == ["current", "models"]
    assert sorted(p.name for p in target.parent.iterdir()) == ["m1"]


@case("L26")
def _(env):
    empty = env.tmp / "empty"
    empty.mkdir()
    link = env.tmp / "link"
    link.symlink_to(empty)
    env.model.save(link)
    assert link.is_symlink()
    assert sorted(p.name for p in empty.iterdir()) == ["config.json", "weights.pt"]


@case("L27")
def _(env):
    loop = env.tmp / "loop"
    loop.symlink_to(loop)
    with pytest.raises(FileNotFoundError, match=r"loop is a symbolic link loop"):
        env.model.save(loop)
    with pytest.raises(FileNotFoundError, match=r"loop is a symbolic link loop"):
        scvae.load(loop)
    assert loop.is_symlink()


@case("L28")
def _(env):
    notes = env.tmp / "notes.txt"
    notes.write_text("mine")
    with pytest.raises(
        NotADirectoryError, match=r"model cannot be written: .*notes.txt is a file"
    ):
        env.model.save(notes / "model")
    assert notes.read_text() == "mine"


def read_only(env: Env, folder: Path, mode: int) -> None:
    """Make ``folder`` read-only (``mode``); as root, whom permissions do not stop, make the
    permission check see it as such."""
    folder.chmod(mode)
    env.monkeypatch.setattr(
        "os.access",
        lambda path, how, _real=os.access: (
            False if Path(path).absolute() == folder.absolute() else _real(path, how)
        ),
    )


@case("L29")
def _(env):
    ro = env.tmp / "ro"
    ro.mkdir()
    read_only(env, ro, 0o555)
    env.monkeypatch.setattr(torch, "save", None)  # refused before the weights are serialised
    try:
        with pytest.raises(PermissionError, match=r"no permission to write in the folder .*ro"):
            env.model.save(ro / "model")
        with pytest.raises(PermissionError, match=r"no permission to write in the folder .*ro"):
            env.model.save(ro / "deeper" / "model")
    finally:
        ro.chmod(0o755)
    assert list(ro.iterdir()) == []


@case("L30")
def _(env):
    path = env.saved()
    read_only(env, path, 0o000)
    try:
        with pytest.raises(
            PermissionError, match=r"model: no permission to read this model folder"
        ):
            scvae.load(path)
    finally:
        path.chmod(0o755)


@case("K09")
def _(env):
    ro = env.tmp / "ro"
    ro.mkdir()
    read_only(env, ro, 0o555)
    env.monkeypatch.setattr(sys.modules["scvae._cli"], "fit", None)  # refused before training
    try:
        with pytest.raises(PermissionError, match=r"no permission to write in the folder"):
            cli("--debug", *fit_args(env, ro / "model"))
        with pytest.raises(PermissionError, match=r"no permission to write in the folder"):
            cli("--debug", *fit_args(env, env.tmp / "m", "--embedding", str(ro / "z.npy")))
    finally:
        ro.chmod(0o755)
    assert list(ro.iterdir()) == [] and not (env.tmp / "m").exists()


@case("K10")
def _(env):
    notes = env.tmp / "notes.txt"
    notes.write_text("mine")
    env.monkeypatch.setattr(sys.modules["scvae._cli"], "fit", None)
    with pytest.raises(NotADirectoryError, match=r"notes.txt is a file, not a folder"):
        cli("--debug", *fit_args(env, env.tmp / "m", "--embedding", str(notes / "z.npy")))
    with pytest.raises(NotADirectoryError, match=r"notes.txt is a file, not a folder"):
        cli("--debug", *fit_args(env, notes / "m"))
    assert notes.read_text() == "mine"


@case("G10")
def _(env):
    with pytest.raises(TypeError, match=r"chunk_size must be an integer, got float 2\.5"):
        scvae.generate(env.model, 5, chunk_size=2.5)
    with pytest.raises(TypeError, match=r"chunk_size must be an integer, got bool True"):
        scvae.generate(env.model, 5, chunk_size=True)


@case("G11")
def _(env):
    with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 2\*\*64\), got -1"):
        scvae.generate(env.model, 5, seed=-1)
    with pytest.raises(TypeError, match=r"seed must be an integer, got str '1'"):
        scvae.generate(env.model, 5, seed="1")


@case("G12")
def _(env):
    with pytest.raises(TypeError, match=r"progress must be True or False, got str 'no'"):
        scvae.generate(env.model, 5, progress="no")


@case("G13")
def _(env):
    a = env.adata()
    a.obs["batch"] = pd.Categorical(np.where(a.obs["batch"] == "batch_0", 1, 2))
    model = fit(a, batch_key="batch")
    cells = scvae.generate(model, 20, batch=1)
    assert set(cells.obs["batch"]) == {"1"}
    with pytest.raises(TypeError, match=r"batch must be a name \(a string\), got list"):
        scvae.generate(model, 5, batch=["1"])


@case("G14")
def _(env):
    with pytest.raises(TypeError, match=r"model must be a fitted scvae model .*got str"):
        scvae.generate(str(env.saved()), 5)


@case("P04")
def _(env):
    a = env.adata()
    expect_error(
        a,
        TypeError,
        r"classifier must be True or False, got str 'no'",
        scvae.posterior_predictive_check,
        env.model,
        a,
        classifier="no",
    )


@case("P05")
def _(env):
    a = env.adata()
    ppc = scvae.posterior_predictive_check
    env.monkeypatch.setattr(
        sys.modules["scvae._tools.ppc"], "_redraw", None
    )  # refused before drawing
    expect_error(
        a, ValueError, r"max_cells must be an integer >= 10, got 5", ppc, env.model, a, max_cells=5
    )
    expect_error(
        a,
        TypeError,
        r"max_cells must be an integer, got float nan",
        ppc,
        env.model,
        a,
        max_cells=np.nan,
    )


@case("P06")
def _(env):
    a = env.adata()
    expect_error(
        a,
        ValueError,
        r"labels_key='cell_type' is used by kind='generate' only",
        scvae.posterior_predictive_check,
        env.model,
        a,
        labels_key="cell_type",
    )


@case("P07")
def _(env):
    a = env.adata()[:5].copy()
    env.monkeypatch.setattr(sys.modules["scvae._tools.ppc"], "_redraw", None)
    expect_error(
        a,
        ValueError,
        r"adata has 5 cells: the two-sample classifier needs at least 10; pass classifier=False",
        scvae.posterior_predictive_check,
        env.model,
        a,
    )


@case("C05")
def _(env):
    a = env.adata()
    with pytest.raises(
        TypeError, match=r"adatas must be a mapping \{batch name: AnnData\}, got list"
    ):
        scvae.concat_panels([a, a])
    with pytest.raises(TypeError, match=r"adatas\['b'\] must be an AnnData, got ndarray"):
        scvae.concat_panels({"a": a, "b": dense(env)})


@case("C06")
def _(env):
    a = env.adata()
    for value in (None, 5, ""):
        expect_error(
            a,
            TypeError,
            r"batch_key must be a non-empty string",
            scvae.concat_panels,
            {"a": a},
            batch_key=value,
        )


@case("C07")
def _(env):
    a, b = env.adata(), env.adata()
    expect_error(
        a,
        ValueError,
        r"the names of adatas \[1, '1'\] are not distinct as strings",
        scvae.concat_panels,
        {1: a, "1": b},
    )


@case("C08")
def _(env):
    a = env.adata()
    a.X = None
    expect_error(
        a, ValueError, r"adatas\['a'\].X is empty: pass layer=", scvae.concat_panels, {"a": a}
    )


# -- the harness ---------------------------------------------------------------------------------
@pytest.mark.parametrize("row", sorted(CASES))
def test_bad_input(row, tiny, tmp_path, caplog, monkeypatch):
    caplog.set_level("INFO", logger="scvae")
    base, model = tiny
    CASES[row](Env(base, model, tmp_path, caplog, monkeypatch))


def table_rows() -> dict[str, list[str]]:
    rows = {}
    for line in TABLE.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if re.fullmatch(r"[A-Z]\d\d", cells[0]):
            rows[cells[0]] = cells
    return rows


def test_every_table_row_has_a_case():
    rows = table_rows()
    assert len(rows) >= 40
    assert set(rows) == set(CASES), set(rows) ^ set(CASES)
    for row, cells in rows.items():
        assert cells[-1] == f"`test_bad_input[{row}]`", row
