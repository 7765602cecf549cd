import numpy as np
import pyro
import pytest

import scvae


@pytest.fixture(autouse=True)
def _clean_param_store():
    """scvae must never use Pyro's global parameter store; each test checks it stays empty."""
    pyro.clear_param_store()
    yield
    assert len(pyro.get_param_store()) == 0, "scvae wrote to Pyro's global param store"


@pytest.fixture
def small_adata():
    """600 cells x 200 genes, 4 groups, 2 batches with a batch effect."""
    return scvae.datasets.simulate(600, 200, n_groups=4, n_batches=2, seed=1)


def quick_fit(adata, **kwargs):
    options = {"max_epochs": 150, "progress": False}
    options.update(kwargs)
    return scvae.fit(adata, **options)


@pytest.fixture(scope="session")
def fitted():
    """A model fitted once on small simulated data, and that data (treat both as read-only)."""
    adata = scvae.datasets.simulate(600, 200, n_groups=4, n_batches=2, seed=1)
    model = quick_fit(adata, batch_key="batch", labels_key="cell_type", max_epochs=None)
    return model, adata


def assert_close_embeddings(a: np.ndarray, b: np.ndarray) -> None:
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
