"""Property-based tests of the data path: AnnData -> CountData -> minibatches.

For random dense and sparse counts (several dtypes), random NaN entries, random boolean mask
layers and batches, the rows the model sees are exactly the input rows: counts
with missing entries at 0, the mask of observed entries, the observed library size, batch
codes and weights, for every cell of an epoch, in any minibatch size and order.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from scvae._batches.rows import MinibatchSource
from scvae._data.memory import prepare_counts

from .fingerprint import changed, fingerprint

SETTINGS = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,  # the same examples every run: a failure here is reproducible
)
FORMATS = ("dense_float32", "dense_float64", "dense_int32", "csr", "csc")


@st.composite
def count_inputs(draw):
    """An AnnData with random counts, NaN entries, mask layer and batches, plus the truth.

    Usually every cell keeps one observed positive count; about one draw in ten does not,
    to check that such input is refused."""
    n_cells = draw(st.integers(2, 25))
    n_genes = draw(st.integers(1, 8))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    density = draw(st.floats(0.05, 1.0))
    counts = rng.poisson(draw(st.floats(0.5, 30.0)), size=(n_cells, n_genes)).astype(np.float64)
    counts *= rng.random((n_cells, n_genes)) < density
    form = draw(st.sampled_from(FORMATS))
    nan = np.zeros(counts.shape, dtype=bool)
    if form != "dense_int32" and draw(st.booleans()):
        nan = rng.random(counts.shape) < draw(st.floats(0.0, 0.5))
    use_mask = draw(st.booleans())
    masked = np.zeros(counts.shape, dtype=bool)
    if use_mask:
        masked = rng.random(counts.shape) < draw(st.floats(0.0, 0.4))
    if draw(st.integers(0, 9)) > 0:
        keep = rng.integers(n_genes, size=n_cells)
        cells = np.arange(n_cells)
        counts[cells, keep] = np.maximum(counts[cells, keep], 1.0)
        nan[cells, keep] = masked[cells, keep] = False
    values = np.where(nan, np.nan, counts)
    if form == "csr":
        stored = sp.csr_matrix(np.where(nan, 1.0, values))  # keep NaN entries stored
        stored.data[nan[stored.nonzero()]] = np.nan
        x = stored.astype(np.float32)
    elif form == "csc":
        x = sp.csc_matrix(values.astype(np.float32))
    else:
        x = values.astype(form.removeprefix("dense_"))
    adata = ad.AnnData(
        x,
        obs=pd.DataFrame(
            {"batch": pd.Categorical(rng.choice(["b0", "b1", "b2"], size=n_cells))},
            index=[f"c{i}" for i in range(n_cells)],
        ),
        var=pd.DataFrame(index=[f"g{j}" for j in range(n_genes)]),
    )
    if use_mask:
        adata.layers["observed"] = ~masked
    missing = nan | masked
    return adata, np.where(missing, 0.0, counts), missing, use_mask, rng


@SETTINGS
@given(count_inputs())
def test_prepared_counts_equal_the_input(case):
    adata, counts, missing, use_mask, _ = case
    before = fingerprint(adata)
    library = counts.sum(axis=1)
    mask_layer = "observed" if use_mask else None
    all_missing = missing.all(axis=1).any()
    if all_missing or (library <= 0).any():
        event("refused: a cell with no observed counts")
        with pytest.raises(ValueError, match=r"every entry missing|zero total counts"):
            prepare_counts(adata, mask_layer=mask_layer, batch_key="batch")
        return
    data = prepare_counts(adata, mask_layer=mask_layer, batch_key="batch")
    event(f"prepared, {'with' if data.missing is not None else 'no'} missing entries")
    assert not changed(before, fingerprint(adata))  # the user's AnnData is never written
    np.testing.assert_array_equal(data.counts.toarray(), counts)
    got_missing = np.zeros(counts.shape, bool) if data.missing is None else data.missing.toarray()
    np.testing.assert_array_equal(got_missing, missing)
    np.testing.assert_array_equal(data.library, library.astype(np.float32))
    categories = np.asarray(data.batch_categories)
    np.testing.assert_array_equal(categories[data.batch_index], adata.obs["batch"].astype(str))


@SETTINGS
@given(
    count_inputs(),
    st.integers(1, 30),
    st.booleans(),
    st.booleans(),
    st.sampled_from(["none", "sample"]),
)
def test_minibatches_are_exactly_the_input_rows(case, batch_size, shuffle, drop_last, weighting):
    adata, counts, missing, use_mask, rng = case
    library = counts.sum(axis=1)
    if missing.all(axis=1).any() or (library <= 0).any():
        event("skipped: refused by prepare_counts")
        return  # refused by prepare_counts (previous test)
    event(f"checked, weighting={weighting}")
    data = prepare_counts(adata, mask_layer="observed" if use_mask else None, batch_key="batch")
    n = data.n_cells
    indices = np.sort(rng.choice(n, size=rng.integers(1, n + 1), replace=False))
    source = MinibatchSource(
        data,
        indices,
        batch_size=batch_size,
        shuffle=shuffle,
        rng=rng,
        drop_last=drop_last,
        sample_weights=rng.uniform(0.0, 1.0, len(indices)) + 0.01
        if weighting == "sample"
        else None,
    )
    for _ in range(2):  # two epochs: a new order each time
        batches = list(source)
        order = source.order
        assert len(batches) == len(source)
        n_seen = sum(b.x.shape[0] for b in batches)
        if weighting != "sample":
            assert sorted(order.tolist()) == indices.tolist()  # each cell once per epoch
            if not shuffle:
                np.testing.assert_array_equal(order, indices)
        else:
            assert np.isin(order, indices).all() and len(order) == len(indices)
        if not source.drop_last:
            assert n_seen == len(order)
        else:  # a last minibatch of fewer than half batch_size cells is dropped
            full, rest = divmod(len(order), batch_size)
            assert n_seen == full * batch_size + (rest if 2 * rest >= batch_size else 0)
        for k, b in enumerate(batches):
            cells = order[k * batch_size : (k + 1) * batch_size]
            np.testing.assert_array_equal(b.x.numpy(), counts[cells].astype(np.float32))
            observed = (
                np.ones((len(cells), data.n_genes), bool) if b.observed is None else b.observed
            )
            np.testing.assert_array_equal(np.asarray(observed), ~missing[cells])
            assert (b.observed is None) == (data.missing is None)
            np.testing.assert_array_equal(b.library.numpy(), library[cells].astype(np.float32))
            np.testing.assert_array_equal(b.batch_index.numpy(), data.batch_index[cells])


@settings(max_examples=10, deadline=None, derandomize=True)
@given(count_inputs(), st.integers(2, 16))
def test_fit_trains_on_exactly_the_input_rows(monkeypatch_once, case, batch_size):
    """End to end: every minibatch ``fit`` hands the model holds input rows, bit for bit."""
    import scvae
    from scvae._train import loop as _train

    adata, counts, missing, use_mask, _ = case
    library = counts.sum(axis=1)
    if missing.all(axis=1).any() or missing.all(axis=0).any() or (library <= 0).any():
        event("skipped: refused by fit")
        return
    event("fitted")
    rows = {
        (tuple(np.float32(counts[i])), tuple(~missing[i]), np.float32(library[i]))
        for i in range(len(counts))
    }
    seen = []
    step_loss = _train._step_loss

    def spy(module, batch, kl_weight, exact):
        mask = np.ones(batch.x.shape, bool) if batch.observed is None else batch.observed.numpy()
        for x, m, lib in zip(batch.x.numpy(), mask, batch.library.numpy(), strict=True):
            seen.append((tuple(x), tuple(m), np.float32(lib)))
        return step_loss(module, batch, kl_weight, exact)

    with monkeypatch_once.context() as patch:
        patch.setattr(_train, "_step_loss", spy)
        scvae.fit(
            adata,
            mask_layer="observed" if use_mask else None,
            max_epochs=1,
            batch_size=batch_size,
            n_hidden=8,
            n_latent=2,
            progress=False,
        )
    n_train = len(counts)  # fewer than 100 cells: no validation split
    full, rest = divmod(n_train, batch_size)  # a last minibatch under half a batch is dropped
    expected = n_train if n_train <= batch_size or 2 * rest >= batch_size else full * batch_size
    assert len(seen) == expected
    assert all(row in rows for row in seen)


@pytest.fixture(scope="module")
def monkeypatch_once():
    """A monkeypatch that hypothesis may reuse across examples (each use is a context)."""
    with pytest.MonkeyPatch.context() as patch:
        yield patch
