"""Bad input gets a clear error that says what was wrong and what to do."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import scvae

from .conftest import quick_fit


def _with_x(adata, values):
    out = adata.copy()
    out.X = values
    return out


def test_negative_counts(small_adata):
    x = small_adata.X.toarray()
    x[3, 7] = -2
    with pytest.raises(ValueError, match=r"negative values.*'cell_3'.*'gene_7'"):
        quick_fit(_with_x(small_adata, sp.csr_matrix(x)))


def test_log_normalised_data_points_to_the_counts_layer(small_adata):
    import scanpy as sc

    adata = small_adata.copy()
    sc.pp.normalize_total(adata)
    sc.pp.log1p(adata)
    with pytest.raises(ValueError, match=r"non-integer values.*raw counts layer"):
        quick_fit(adata)
    # ... and the advice works:
    quick_fit(adata, layer="counts", max_epochs=1)


def test_dense_non_integer_names_the_cell_and_gene(small_adata):
    x = small_adata.X.toarray()
    x[10, 20] = 1.5
    with pytest.raises(ValueError, match=r"1\.5 at cell 'cell_10', gene 'gene_20'"):
        quick_fit(_with_x(small_adata, x))


def test_infinite_values(small_adata):
    x = small_adata.X.toarray()
    x[0, 0] = np.inf
    with pytest.raises(ValueError, match="infinite"):
        quick_fit(_with_x(small_adata, x))


def test_empty_adata():
    with pytest.raises(ValueError, match="empty"):
        quick_fit(ad.AnnData(np.zeros((0, 5), dtype=np.float32)))


def test_one_cell(small_adata):
    with pytest.raises(ValueError, match="at least 2 cells"):
        quick_fit(small_adata[:1].copy())


def test_all_zero_cells_are_named(small_adata):
    x = small_adata.X.toarray()
    x[[4, 9]] = 0
    with pytest.raises(
        ValueError, match=r"2 cells have zero total counts.*'cell_4'.*filter_cells"
    ):
        quick_fit(_with_x(small_adata, sp.csr_matrix(x)))


def test_missing_batch_key_lists_the_columns(small_adata):
    with pytest.raises(KeyError, match=r"batch_key='donor'.*available.*'batch'"):
        quick_fit(small_adata, batch_key="donor")


def test_missing_layer_lists_the_layers(small_adata):
    with pytest.raises(KeyError, match=r"layer 'raw'.*available.*'counts'"):
        quick_fit(small_adata, layer="raw")


def test_non_numeric_x():
    adata = ad.AnnData(obs=pd.DataFrame(index=["a", "b"]), var=pd.DataFrame(index=["g1", "g2"]))
    adata.layers["text"] = np.array([["1", "2"], ["3", "x"]], dtype=object)
    with pytest.raises(TypeError, match="numeric"):
        quick_fit(adata, layer="text")


def test_batch_with_missing_values(small_adata):
    adata = small_adata.copy()
    adata.obs["batch"] = adata.obs["batch"].astype(object)
    adata.obs.iloc[0, adata.obs.columns.get_loc("batch")] = np.nan
    with pytest.raises(ValueError, match="missing values"):
        quick_fit(adata, batch_key="batch")


def test_embed_names_missing_genes(fitted):
    model, adata = fitted
    with pytest.raises(ValueError, match=r"1 of the model's 200 genes.*'gene_0'"):
        model.embed(adata[:, 1:])


def test_embed_rejects_unknown_batch(fitted):
    model, adata = fitted
    new = adata[:10].copy()
    new.obs["batch"] = pd.Categorical(["batch_9"] * 10)
    with pytest.raises(ValueError, match=r"does not know.*batch_9.*known"):
        model.embed(new)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"likelihood": "gaussian"}, "likelihood must be one of"),
        ({"dispersion": "cell"}, "dispersion must be one of"),
        ({"beta": 0.0}, "beta must be positive"),
        ({"max_epochs": 0}, "must be positive"),
        ({"validation_fraction": 1.0}, "validation_fraction"),
    ],
)
def test_bad_options(small_adata, option, message):
    with pytest.raises(ValueError, match=message):
        quick_fit(small_adata, **option)


def test_not_an_anndata():
    with pytest.raises(TypeError, match="AnnData"):
        scvae.fit(np.ones((3, 3)))


def test_sparse_nan_marks_only_the_nan_entries_missing():
    from scvae._data.memory import prepare_counts

    x = np.array([[1, np.nan, 0, 4], [2, 3, np.nan, 0]], dtype=np.float32)
    data = prepare_counts(ad.AnnData(sp.csr_matrix(x)))
    np.testing.assert_array_equal(data.counts.toarray(), np.nan_to_num(x))
    np.testing.assert_array_equal(data.missing.toarray(), np.isnan(x))
    np.testing.assert_array_equal(data.library, [5, 5])
