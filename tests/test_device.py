"""Minibatches resident on the training device, and the GPU path.

Tests marked ``gpu`` need CUDA and are skipped without it; the others check on the CPU the
code the GPU runs (the resident minibatches) against the host path.
"""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import scvae
import scvae._batches.rows
from scvae._batches.rows import MinibatchSource, ResidentCSR
from scvae._data.memory import prepare_counts

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _counts_with_holes():
    adata = scvae.datasets.simulate(300, 80, n_groups=3, n_batches=2, seed=4)
    dense = adata.X.toarray()
    dense[np.random.default_rng(0).random(dense.shape) < 0.1] = np.nan
    adata.X = dense
    adata.obs.loc[adata.obs_names[::7], "cell_type"] = np.nan
    return prepare_counts(adata, batch_key="batch", labels_key="cell_type")


def _assert_same_minibatches(a: MinibatchSource, b: MinibatchSource, epochs: int = 2) -> None:
    for _ in range(epochs):
        for first, second in zip(a, b, strict=True):
            for name in first._fields:
                x, y = getattr(first, name), getattr(second, name)
                assert (x is None) == (y is None), name
                if x is None:
                    continue
                for u, v in zip(*((x, y) if name == "nonzeros" else ((x,), (y,))), strict=True):
                    assert u.dtype == v.dtype, name
                    assert torch.equal(u.cpu(), v.cpu()), name
            # The stored entries the minibatch lists are exactly its nonzero counts.
            rows, cols, values = first.nonzeros
            rebuilt = torch.zeros_like(first.x).index_put((rows, cols), values)
            assert torch.equal(rebuilt, first.x)


@pytest.mark.parametrize(
    "options",
    [
        {"shuffle": True, "drop_last": True, "with_labels": True},
        {"shuffle": False},
        {"sample_weights": np.linspace(0.1, 3.0, 300)},
    ],
    ids=["shuffled", "in-order", "weighted"],
)
def test_device_minibatches_equal_host_minibatches(options):
    """The device-side gathers (counts resident, or streamed in chunks) give exactly the host
    path's minibatches (counts, mask, covariates, labels), epoch after epoch, from the same
    random stream."""
    data = _counts_with_holes()
    host, resident, chunks = (
        MinibatchSource(
            data, batch_size=64, rng=np.random.default_rng(2), placement=placement, **options
        )
        for placement in ("host", "resident", "chunks")
    )
    assert host.resident is None and resident.resident is not None
    assert resident.resident[1] is not None  # the missing mask is resident too
    chunks.chunk_batches = 3  # several chunks per epoch, the last one short
    assert len(chunks) > chunks.chunk_batches and len(chunks) % chunks.chunk_batches
    _assert_same_minibatches(host, resident)
    _assert_same_minibatches(
        MinibatchSource(
            data, batch_size=64, rng=np.random.default_rng(2), placement="host", **options
        ),
        chunks,
    )


def test_resident_counts_sum_duplicate_entries():
    """A CSR matrix with duplicate entries (legal in scipy) is densified as scipy does."""
    matrix = sp.csr_matrix(
        (np.array([1.0, 2.0, 5.0], np.float32), np.array([1, 1, 0]), np.array([0, 2, 3])),
        shape=(2, 3),
    )
    assert not matrix.has_canonical_format
    resident = ResidentCSR.from_scipy(matrix, torch.device("cpu"))
    dense, rows, cols, values = resident.dense_rows(torch.tensor([1, 0]), np.array([1, 0]))
    assert torch.equal(dense, torch.tensor([[5.0, 0, 0], [0, 3.0, 0]]))
    assert rows.tolist() == [0, 1] and cols.tolist() == [0, 1] and values.tolist() == [5.0, 3.0]


@pytest.mark.gpu
@needs_cuda
def test_gpu_minibatches_are_resident_and_equal_cpu_minibatches(monkeypatch):
    """On a GPU the counts are resident by default, streamed in chunks when they would not
    fit; both give the CPU's minibatches."""
    data = _counts_with_holes()

    def source(device: str, placement: str | None = None) -> MinibatchSource:
        return MinibatchSource(
            data,
            batch_size=64,
            shuffle=True,
            rng=np.random.default_rng(3),
            device=device,
            placement=placement,
        )

    gpu = source("cuda")
    assert gpu.placement == "resident" and gpu.resident[0].values.is_cuda
    _assert_same_minibatches(source("cpu"), gpu)
    chunks = source("cuda", "chunks")
    chunks.chunk_batches = 2
    _assert_same_minibatches(source("cpu"), chunks)
    monkeypatch.setattr(scvae._batches.rows, "_RESIDENT_SHARE", 0.0)  # nothing fits
    data = _counts_with_holes()  # a fresh copy: the device copy is made once per data
    too_large = source("cuda")
    assert too_large.placement == "chunks" and too_large.resident is None
    _assert_same_minibatches(source("cpu"), too_large)


@pytest.mark.gpu
@needs_cuda
def test_gpu_and_cpu_fits_agree(small_adata, tmp_path):
    """The same seed on GPU and CPU: the same held-out ELBO within 1 %, the same clusters;
    a CPU model moved to the GPU embeds the same cells to float32 precision."""
    options = {"batch_key": "batch", "max_epochs": 60, "progress": False, "seed": 0}
    on_cpu = scvae.fit(small_adata.copy(), device="cpu", **options)
    on_gpu = scvae.fit(small_adata.copy(), device="cuda", **options)
    assert on_gpu.device.type == "cuda"
    cpu_elbo, gpu_elbo = on_cpu.elbo(small_adata), on_gpu.elbo(small_adata)
    assert abs(gpu_elbo - cpu_elbo) < 0.01 * abs(cpu_elbo)
    labels = small_adata.obs["cell_type"].to_numpy()
    for model in (on_cpu, on_gpu):
        assert scvae.metrics.knn_scores(model.embed(small_adata), labels)["accuracy"] > 0.9
    moved = scvae.load(on_cpu.save(tmp_path / "model"), device="cuda")
    np.testing.assert_allclose(
        moved.embed(small_adata), on_cpu.embed(small_adata), rtol=1e-4, atol=1e-4
    )


@pytest.mark.gpu
@needs_cuda
def test_gpu_training_steps_never_wait_for_the_device():
    """Minibatch, loss, backward and Adam on the GPU without one host-device synchronisation
    (CUDA's sync debug mode turns any into an error); the host looks once per epoch."""
    first, second = _training_steps("cuda", sync_check=True)
    assert second < first


def _training_steps(device: str, sync_check: bool = False) -> list[float]:
    """Two epochs of training steps; returns the mean loss of each epoch."""
    import pyro

    from scvae._train.loop import _step_loss
    from scvae._vae.module import SCVAEModule

    data = _counts_with_holes()
    # 300 cells in 5 minibatches: each epoch's mean loss is over the same cells.
    source = MinibatchSource(data, batch_size=60, shuffle=True, drop_last=True, device=device)
    module = SCVAEModule(
        data.n_genes, len(data.batch_categories), encode_mask=True, library_scale=500.0
    ).to(device)
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-3)
    losses = torch.zeros(len(source), device=device)
    means = []
    with pyro.validation_enabled(False):
        for epoch in range(2):  # the first epoch warms up (optimizer state, allocator)
            if sync_check and epoch == 1:
                torch.cuda.set_sync_debug_mode("error")
            try:
                for step, batch in enumerate(source):
                    loss = _step_loss(module, batch, 0.5, False)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    losses[step] = loss.detach()
            finally:
                if sync_check:
                    torch.cuda.set_sync_debug_mode("default")
            means.append(float(losses.mean()))  # the host looks once per epoch
    return means


def test_training_steps_of_the_sync_test_learn_on_the_cpu():
    """The body of the GPU sync test, on the CPU: the second epoch's loss is lower."""
    first, second = _training_steps("cpu")
    assert second < first


def test_training_loss_from_stored_entries_equals_the_elementwise_loss():
    """The step's loss and gradients are the same whether the NB objective is computed from
    the minibatch's stored entries or elementwise (data with holes, two batches)."""
    from scvae._train.loop import _step_loss
    from scvae._vae.module import SCVAEModule

    data = _counts_with_holes()
    batch = next(iter(MinibatchSource(data, batch_size=64, shuffle=True)))
    assert batch.nonzeros is not None and batch.observed is not None
    module = SCVAEModule(data.n_genes, 2, dispersion="gene-batch", encode_mask=True)
    module.eval()  # no dropout: the two evaluations see the same network
    results = []
    for nonzeros in (batch.nonzeros, None):
        torch.manual_seed(0)
        loss = _step_loss(module, batch._replace(nonzeros=nonzeros), 0.5, False)
        results.append((loss, torch.autograd.grad(loss, list(module.parameters()))))
    (fast, fast_grads), (slow, slow_grads) = results
    torch.testing.assert_close(fast, slow)
    for a, b in zip(fast_grads, slow_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
