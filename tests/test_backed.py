"""Disk-backed AnnData: streamed fit and embedding, bounded memory, clear errors."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import anndata
import numpy as np
import pytest
import scipy.sparse as sp

import scvae
from scvae import metrics
from scvae._batches.blocks import ChunkSource
from scvae._data.backed import prepare_streaming
from scvae._fit.settings import DEFAULT_N_LATENT_WITH_BATCHES

# A child process measures its own peak RSS: imports and a tiny warm-up fit first (their
# memory is not the data's), then the kernel's high-water mark is reset. "stream": one
# statistics pass, one training epoch of minibatches, validation and embedding, without the
# optimiser (fast); "fit": the whole of scvae.fit for one epoch.
_RSS_CHILD = r"""
import json, sys
from pathlib import Path
import anndata, scvae, torch

def status_bytes(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024

scvae.fit(scvae.datasets.simulate(300, 50), max_epochs=1, progress=False)
Path("/proc/self/clear_refs").write_text("5")
start = status_bytes("VmRSS")
adata = anndata.read_h5ad(sys.argv[1], backed="r" if sys.argv[2] != "memory" else None)
if sys.argv[2] == "stream":
    from scvae._data.backed import prepare_streaming
    from scvae._vae.module import SCVAEModule
    from scvae._model.encode import posterior_means
    from scvae._batches.split import make_sources

    data = prepare_streaming(adata)
    train, val, _ = make_sources(
        data, validation_fraction=0.1, early_stopping=True, batch_size=128, seed=0,
        device=torch.device("cpu"),
    )
    n = sum(b.x.shape[0] for b in train) + sum(b.x.shape[0] for b in val)
    assert n > 0.95 * adata.n_obs, n
    posterior_means(SCVAEModule(data.n_genes, 0), data)
else:
    scvae.fit(adata, max_epochs=1, early_stopping=False, progress=False)
print(json.dumps({"increase": status_bytes("VmHWM") - start}))
"""


def peak_rss_increase(path: Path, mode: str) -> int:
    """Bytes by which a fresh process's peak RSS rises while it streams or fits ``path``.

    One thread and one malloc arena: glibc otherwise gives each of torch's threads its own
    arena, and their high-water marks (tens of MB, varying run to run) would hide the data's.
    """
    env = {**os.environ, "MALLOC_ARENA_MAX": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", _RSS_CHILD, str(path), mode],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])["increase"]


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def backed_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("backed") / "sim.h5ad"
    adata = scvae.datasets.simulate(2000, 200, n_groups=4, n_batches=2, seed=3)
    del adata.layers["counts"]
    adata.write_h5ad(path)
    return path, adata


@pytest.fixture(scope="module")
def backed_fit(backed_file):
    path, _ = backed_file
    before = _file_digest(path)
    adata = anndata.read_h5ad(path, backed="r")
    model = scvae.fit(adata, batch_key="batch", max_epochs=15, progress=False)
    return model, adata, before


def test_backed_fit_recovers_groups_like_in_memory_fit(backed_file, backed_fit):
    path, in_memory = backed_file
    model, backed, digest_before = backed_fit
    labels = backed.obs["cell_type"].to_numpy()
    z_backed = backed.obsm["X_scvae"]
    assert z_backed.shape == (2000, DEFAULT_N_LATENT_WITH_BATCHES)
    memory = in_memory.copy()
    scvae.fit(memory, batch_key="batch", max_epochs=15, progress=False)
    acc_backed = metrics.knn_scores(z_backed, labels)["accuracy"]
    acc_memory = metrics.knn_scores(memory.obsm["X_scvae"], labels)["accuracy"]
    assert acc_backed > 0.9
    assert acc_backed > acc_memory - 0.03
    assert model.history["validation_elbo"][-1] > model.history["validation_elbo"][0] + 50
    assert backed.uns["scvae"]["settings"]["backed"]
    assert _file_digest(path) == digest_before  # the file itself is never written


def test_backed_embedding_equals_in_memory_embedding(backed_file, backed_fit):
    _, in_memory = backed_file
    model, backed, _ = backed_fit
    np.testing.assert_allclose(model.embed(backed), model.embed(in_memory), atol=1e-5)
    np.testing.assert_allclose(model.embed(backed), backed.obsm["X_scvae"], atol=1e-6)


def test_backed_embedding_matches_genes_by_name(backed_file, backed_fit, tmp_path):
    _, in_memory = backed_file
    model, _, _ = backed_fit
    shuffled = in_memory[:, np.random.default_rng(0).permutation(in_memory.n_vars)].copy()
    shuffled.write_h5ad(tmp_path / "shuffled.h5ad")
    reread = anndata.read_h5ad(tmp_path / "shuffled.h5ad", backed="r")
    np.testing.assert_allclose(model.embed(reread), model.embed(in_memory), atol=1e-5)


def test_stream_visits_each_cell_once_per_epoch_in_shuffled_order(backed_file):
    path, in_memory = backed_file
    data = prepare_streaming(anndata.read_h5ad(path, backed="r"), chunk_rows=50)
    source = ChunkSource(data, np.arange(data.counts.n_chunks), batch_size=64, shuffle=True)
    assert len(source) == 2000 // 64
    epochs = []
    for _ in range(2):
        rows = []
        for batch in source:
            assert batch.x.shape == (64, 200)
            rows.append(batch.library.numpy())
        epochs.append(np.concatenate(rows))
    assert len(epochs[0]) == 64 * (2000 // 64)
    library = np.asarray(in_memory.X.sum(axis=1)).ravel()
    # Libraries of the yielded cells are those of distinct cells, in a new order each epoch.
    assert np.isin(epochs[0], library).all()
    assert not np.array_equal(epochs[0], epochs[1])
    first = epochs[0][:64]
    assert not np.array_equal(first, library[:64])


def test_streaming_peak_memory_is_a_fraction_of_the_dense_matrix(tmp_path):
    n_cells, n_genes = 50_000, 2000
    path = scvae.datasets.simulate_h5ad(tmp_path / "rss.h5ad", n_cells, n_genes, seed=1)
    dense_bytes = n_cells * n_genes * 4
    increase = peak_rss_increase(path, "stream")
    # The sparse counts alone would take ~0.64x the dense size in memory (32 % non-zero,
    # value + column index); the stream holds one buffer of 16 blocks of rows at a time.
    assert increase < 0.3 * dense_bytes, f"peak RSS rose by {increase / 2**20:.0f} MiB"


@pytest.mark.slow
def test_backed_fit_of_50k_cells_recovers_groups_within_bounded_memory(tmp_path):
    n_cells, n_genes = 50_000, 2000
    path = scvae.datasets.simulate_h5ad(tmp_path / "50k.h5ad", n_cells, n_genes, seed=2)
    increase = peak_rss_increase(path, "fit")
    assert increase < 0.5 * n_cells * n_genes * 4, f"peak RSS rose by {increase / 2**20:.0f} MiB"

    backed = anndata.read_h5ad(path, backed="r")
    scvae.fit(backed, batch_key="batch", max_epochs=4, progress=False)
    memory = anndata.read_h5ad(path)
    scvae.fit(memory, batch_key="batch", max_epochs=4, progress=False)
    sample = np.random.default_rng(0).choice(n_cells, 10_000, replace=False)
    labels = memory.obs["cell_type"].to_numpy()[sample]
    acc_backed = metrics.knn_scores(backed.obsm["X_scvae"][sample], labels)["accuracy"]
    acc_memory = metrics.knn_scores(memory.obsm["X_scvae"][sample], labels)["accuracy"]
    assert acc_backed > 0.9
    assert acc_backed > acc_memory - 0.02


def test_dense_backed_x_is_refused_with_advice(tmp_path):
    adata = scvae.datasets.simulate(200, 30, seed=0)
    adata.X = adata.X.toarray()
    adata.write_h5ad(tmp_path / "dense.h5ad")
    backed = anndata.read_h5ad(tmp_path / "dense.h5ad", backed="r")
    with pytest.raises(TypeError, match=r"CSR.*to_memory"):
        scvae.fit(backed, max_epochs=1, progress=False)


def test_bad_counts_in_backed_file_name_the_cell(tmp_path):
    adata = scvae.datasets.simulate(300, 30, seed=0)
    adata.X = sp.csr_matrix(adata.X)
    adata.X.data[adata.X.indptr[250]] = 1.5
    adata.write_h5ad(tmp_path / "bad.h5ad")
    backed = anndata.read_h5ad(tmp_path / "bad.h5ad", backed="r")
    with pytest.raises(ValueError, match=r"non-integer.*cell_250"):
        scvae.fit(backed, max_epochs=1, progress=False)


def test_writing_layers_of_read_only_backed_file_says_where_to_write(backed_file, backed_fit):
    path, _ = backed_file
    model, _, _ = backed_fit
    backed = anndata.read_h5ad(path, backed="r")
    with pytest.raises(NotImplementedError, match=r"to_memory.*new file"):
        scvae.impute(backed, model)
    assert "scvae_imputed" not in backed.layers


def test_cli_fit_then_embed_a_file(backed_file, tmp_path):
    from scvae.__main__ import main

    path, in_memory = backed_file
    model_dir, out = tmp_path / "model", tmp_path / "z.h5ad"
    args = ["fit", str(path), "--out", str(model_dir), "--max-epochs", "2", "--no-progress"]
    assert main([*args, "--batch-key", "batch"]) == 0
    assert (model_dir / "weights.pt").is_file()
    assert not list(tmp_path.glob(".model.tmp-*"))
    with pytest.raises(FileExistsError, match="--overwrite"):
        main(["--debug", *args])
    assert main(["embed", str(path), "--model", str(model_dir), "--out", str(out)]) == 0
    written = anndata.read_h5ad(out)
    assert written.obsm["X_scvae"].shape == (2000, DEFAULT_N_LATENT_WITH_BATCHES)
    assert list(written.obs_names) == list(in_memory.obs_names)
    np.testing.assert_allclose(
        written.obsm["X_scvae"], scvae.load(model_dir).embed(in_memory), atol=1e-5
    )
    with pytest.raises(ValueError, match=r"input file, opened read-only.*new file"):
        main(["--debug", "embed", str(path), "--model", str(model_dir), "--out", str(path)])


def test_model_fitted_on_backed_file_generates_cells_of_a_type(backed_file):
    path, _ = backed_file
    backed = anndata.read_h5ad(path, backed="r")
    model = scvae.fit(backed, labels_key="cell_type", max_epochs=2, progress=False)
    generated = scvae.generate(model, 20, cell_type="group_1")
    assert generated.shape == (20, 200)
    assert (generated.obs["cell_type"] == "group_1").all()


def test_backed_fit_names_genes_with_no_counts(tmp_path, caplog):
    adata = scvae.datasets.simulate(300, 40, n_groups=2, seed=5)
    del adata.layers["counts"]
    x = adata.X.tolil()
    x[:, 7] = 0
    adata.X = x.tocsr()
    adata.X.eliminate_zeros()
    adata.write_h5ad(tmp_path / "zero.h5ad")
    backed = anndata.read_h5ad(tmp_path / "zero.h5ad", backed="r")
    scvae.fit(backed, max_epochs=2, progress=False)
    assert list(backed.uns["scvae"]["all_zero_genes"]) == [adata.var_names[7]]
    assert f"1 genes have zero counts in every cell (e.g. {adata.var_names[7]})" in caplog.text
    assert "filter_genes" not in caplog.text  # a backed file cannot be filtered in place
