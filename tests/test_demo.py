"""The one-command demo writes what the README promises and beats PCA on the known groups."""

import json

import anndata as ad

import scvae
from scvae.__main__ import main


def test_demo_command_writes_outputs_and_scvae_beats_pca(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--no-progress", "--out", str(out)]) == 0
    for name in ("demo.h5ad", "umap_scvae.png", "loss.png", "model/config.json", "scores.json"):
        assert (out / name).is_file(), name
    table = capsys.readouterr().out
    assert "| scvae |" in table and "| PCA |" in table
    adata = ad.read_h5ad(out / "demo.h5ad")
    assert adata.obsm["X_scvae"].shape[1] == 10 and "X_umap" in adata.obsm
    model = scvae.load(out / "model", adata=adata)
    assert model.embed(adata).shape == adata.obsm["X_scvae"].shape

    scores = json.loads((out / "scores.json").read_text())
    assert scores["scvae"]["knn_accuracy"] > 0.95
    assert scores["scvae"]["leiden_ari"] > 0.9
    assert scores["PCA"]["batch_knn_accuracy"] > 0.9  # batches separate without correction
    assert scores["scvae"]["batch_knn_accuracy"] < 0.7  # ... and mix in scvae's latent space
