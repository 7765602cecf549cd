"""Data-parallel training with torch.distributed (gloo on CPU), through the command line."""

import json
import subprocess
import sys

import anndata
import numpy as np
import pytest
import scipy.sparse as sp

import scvae
from scvae import metrics
from scvae._batches.blocks import ChunkSource
from scvae._data.backed import prepare_streaming
from scvae._utils import distributed as _distributed


def torchrun(*args: str, n_processes: int = 2) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={n_processes}",
        "-m",
        "scvae",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def h5ad_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("ddp") / "sim.h5ad"
    adata = scvae.datasets.simulate(2000, 200, n_groups=5, n_batches=2, seed=4)
    del adata.layers["counts"]
    adata.write_h5ad(path)
    return path


def test_two_process_gloo_ddp_embeds_as_well_as_one_process(h5ad_file, tmp_path):
    model_dir, embedding = tmp_path / "model", tmp_path / "z.h5ad"
    options = ["--batch-key", "batch", "--max-epochs", "15", "--no-progress"]
    run = torchrun(
        "fit", str(h5ad_file), "--out", str(model_dir), "--embedding", str(embedding), *options
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "rank 1 of 2 joined the gloo process group" in run.stderr
    assert "parameters identical on all 2 ranks" in run.stderr  # gradients were all-reduced
    two = anndata.read_h5ad(embedding)
    history = json.loads((model_dir / "config.json").read_text())["history"]

    single = anndata.read_h5ad(h5ad_file, backed="r")
    model = scvae.fit(single, batch_key="batch", max_epochs=15, progress=False)
    labels = single.obs["cell_type"].to_numpy()
    acc_two = metrics.knn_scores(two.obsm["X_scvae"], labels)["accuracy"]
    acc_one = metrics.knn_scores(single.obsm["X_scvae"], labels)["accuracy"]
    print(f"kNN accuracy 2 processes {acc_two:.3f}, 1 process {acc_one:.3f}")
    assert acc_two > 0.9
    assert acc_two > acc_one - 0.03
    # Each process made half the steps of the single process (half the cells each, the
    # same minibatch size per process): after as many epochs the held-out ELBO per cell is
    # a little behind, within 3 %.
    elbo_two, elbo_one = history["validation_elbo"][-1], model.history["validation_elbo"][-1]
    print(f"held-out ELBO 2 processes {elbo_two:.1f}, 1 process {elbo_one:.1f}")
    assert abs(elbo_two - elbo_one) < 0.03 * abs(elbo_one)
    # The loaded model embeds like the distributed run did (rank 0 wrote what all trained).
    np.testing.assert_allclose(scvae.load(model_dir).embed(single), two.obsm["X_scvae"], atol=1e-5)


def test_a_failing_rank_fails_the_job_and_writes_no_model(tmp_path):
    adata = scvae.datasets.simulate(3000, 50, seed=0)
    adata.X = sp.csr_matrix(adata.X)
    # Rows 32..63 form block 1 (32 rows per block for 3000 cells): rank 1 of 2 checks it.
    adata.X.data[adata.X.indptr[40]] = 0.5
    path = tmp_path / "bad.h5ad"
    adata.write_h5ad(path)
    model_dir = tmp_path / "model"
    run = torchrun("fit", str(path), "--out", str(model_dir), "--max-epochs", "2")
    assert run.returncode != 0
    assert "non-integer values (e.g. 0.5 at cell 'cell_40'" in run.stderr
    assert not model_dir.exists()
    assert not list(tmp_path.glob(".model.tmp-*"))


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_take_equal_steps_on_disjoint_cells_when_world_does_not_divide_data(
    h5ad_file, monkeypatch, world
):
    data = prepare_streaming(anndata.read_h5ad(h5ad_file, backed="r"), chunk_rows=70)
    chunks = np.arange(data.counts.n_chunks)  # 29 blocks, the last one of 40 rows
    # Record the rows of each minibatch instead of building tensors.
    monkeypatch.setattr(ChunkSource, "_minibatch", lambda self, counts, rows: rows.copy())
    seen, steps = [], []
    for rank in range(world):
        monkeypatch.setattr(_distributed, "rank_world", lambda r=rank: (r, world))
        source = ChunkSource(data, chunks, batch_size=64, shuffle=True, seed=1)
        batches = list(source)
        steps.append(len(batches))
        assert all(len(rows) == 64 for rows in batches)
        seen.append(set(np.concatenate(batches).tolist()))
    assert steps == [data.n_cells // (world * 64)] * world
    for rank in range(1, world):
        assert not seen[0] & seen[rank]  # each rank reads its own blocks


def test_all_reduce_is_identity_in_one_process():
    (total,) = _distributed.all_reduce_sum(np.arange(3.0))
    np.testing.assert_array_equal(total, [0.0, 1.0, 2.0])
    assert _distributed.rank_world() == (0, 1)
