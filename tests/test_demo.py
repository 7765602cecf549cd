"""The one-command demo writes what the README promises and beats PCA on the known groups."""

import json

import anndata as ad

import scvae
from scvae.__main__ import main
from scvae._fit.settings import DEFAULT_N_LATENT_WITH_BATCHES


def test_demo_command_writes_outputs_and_scvae_beats_pca(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--no-progress", "--out", str(out)]) == 0
    files = ("demo.h5ad", "generated.h5ad", "umap_scvae.png", "loss.png", "ppc.png", "scores.json")
    for name in (*files, "model/config.json"):
        assert (out / name).is_file(), name
    table = capsys.readouterr().out
    assert "| scvae |" in table and "| PCA |" in table
    adata = ad.read_h5ad(out / "demo.h5ad")
    assert adata.obsm["X_scvae"].shape[1] == DEFAULT_N_LATENT_WITH_BATCHES
    assert "X_umap" in adata.obsm
    model = scvae.load(out / "model", adata=adata)
    assert model.embed(adata).shape == adata.obsm["X_scvae"].shape

    scores = json.loads((out / "scores.json").read_text())
    assert scores["scvae"]["knn_accuracy"] > 0.95
    assert scores["scvae"]["leiden_ari"] > 0.9
    assert scores["PCA"]["batch_knn_accuracy"] > 0.9  # batches separate without correction
    assert scores["scvae"]["batch_knn_accuracy"] < 0.7  # ... and mix in scvae's latent space
    imputation = scores["imputation"]
    assert imputation["scvae"]["mae_log1p"] < 0.9 * imputation["mean fill"]["mae_log1p"]
    assert {"scvae_imputed", "scvae_lower", "scvae_upper"} <= set(adata.layers)
    generated = ad.read_h5ad(out / "generated.h5ad")
    assert generated.n_obs == adata.n_obs and generated.var_names.equals(adata.var_names)
    assert scores["generation"]["r_mean"] > 0.99
    # Compared with the complete counts (cells with holes read as zeros were told apart from
    # drawn cells at AUC 0.84); quick mode gives about 0.7, a full demo about 0.56.
    assert scores["generation"]["auc"] < 0.8
