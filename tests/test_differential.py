"""Differential expression from the model: calls against a known truth, and scanpy's format.

One model is fitted on simulated counts of two conditions with known DE genes (log2 fold
change 1), two batches the conditions spread over unequally, and unequal depth, plus two
genes made by hand with the same 9-fold ratio: one at a tiny mean, one at a moderate mean.
"""

from __future__ import annotations

import anndata as ad
import matplotlib
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp
from scipy.special import ndtr
from sklearn.metrics import average_precision_score

import scvae
from scvae._tools.shrinkage import shrink

from .fingerprint import changed, fingerprint

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def de_fit():
    adata = scvae.datasets.simulate_differential(
        n_cells=1500, n_genes=300, log2_folds=(1.0,), seed=0
    )
    rng = np.random.default_rng(1)
    depth = np.asarray(adata.X.sum(axis=1)).ravel() / 2000
    in_b = (adata.obs["condition"] == "B").to_numpy()
    # Same 9-fold ratio, at 0.001 -> 0.009 (under the tiny-gene rule's 0.0095 counts per
    # cell) and at 0.2 -> 1.8 counts per cell.
    tiny = rng.poisson(depth * np.where(in_b, 0.009, 0.001))
    moderate = rng.poisson(depth * np.where(in_b, 1.8, 0.2))
    extra = sp.csr_matrix(np.stack([tiny, moderate], axis=1).astype(np.float32))
    var = pd.concat([adata.var, pd.DataFrame({"is_de": [True, True]}, index=["tiny", "moderate"])])
    adata = ad.AnnData(sp.hstack([adata.X, extra]).tocsr(), obs=adata.obs, var=var)
    model = scvae.fit(adata, batch_key="batch", max_epochs=100, progress=False, seed=0)
    return adata, model


def test_true_de_genes_rank_first_and_the_fdr_holds(de_fit):
    adata, model = de_fit
    before = fingerprint(adata)
    de = scvae.differential_expression(adata, model, "condition", "B", "A", fdr=0.05)
    assert not changed(before, fingerprint(adata))
    truth = adata.var.loc[de.index, "is_de"].astype(bool)
    assert average_precision_score(truth, de["proba_de"]) > 0.9
    called = de["is_de"]
    assert called.sum() >= 0.8 * truth.sum()
    assert (called & ~truth).sum() / called.sum() <= 0.05
    # The sign: called genes up in B have lfc_mean > 0, and proba_up near 1 where the call is
    # confident (a selection at 5 % expected FDR may take a gene with proba_de near 0.5
    # beside many near 1, and such a gene's sign is less certain too).
    true_lfc = adata.var.loc[de.index, "true_lfc"]
    up = called & (true_lfc > 0)
    assert (de.loc[up, "lfc_mean"] > 0).all() and (de.loc[up, "proba_up"] > 0.5).all()
    confident = up & (de["proba_de"] > 0.9)
    assert confident.sum() >= 10 and (de.loc[confident, "proba_up"] > 0.9).all()


def test_fold_changes_of_expressed_genes_are_not_attenuated(de_fit):
    """The conditions spread over the batches unequally (30 % / 70 % B): decoding a cell in
    a batch it was not measured in took part of the condition away with the batch, and the
    fold changes of well-expressed DE genes came out at 0.87 of the truth (slope)."""
    adata, model = de_fit
    de = scvae.differential_expression(adata, model, "condition", "B", "A")
    var = adata.var.iloc[:-2]  # the two genes made by hand have no true_lfc
    strong = var.index[var["is_de"] & (np.minimum(var["true_mean_A"], var["true_mean_B"]) > 1)]
    assert len(strong) >= 10
    slope = np.polyfit(var.loc[strong, "true_lfc"], de.loc[strong, "lfc_mean"], 1)[0]
    assert 0.93 < slope < 1.07


def test_a_tiny_gene_is_not_called_whatever_its_ratio(de_fit):
    adata, model = de_fit
    de = scvae.differential_expression(adata, model, "condition", "B", "A")
    tiny, moderate = de.loc["tiny"], de.loc["moderate"]
    assert tiny["raw_mean1"] > 3 * tiny["raw_mean2"]  # a large ratio in the data
    assert not tiny["is_de"] and abs(tiny["lfc_mean"]) < 0.25
    assert moderate["is_de"] and moderate["lfc_mean"] > 1.5


@pytest.mark.parametrize("delta", [0.25, 0.0])
def test_random_halves_of_one_group_select_almost_nothing(de_fit, delta):
    """``delta=0`` asks for any change at all: the point mass of "no change" in the shared
    prior keeps it a question (under normals alone every gene had P(|lfc| > 0) = 1)."""
    adata, model = de_fit
    a = adata.copy()
    rows = np.flatnonzero((a.obs["condition"] == "A").to_numpy())
    halves = np.random.default_rng(2).permutation(rows)
    a.obs["half"] = pd.Categorical(np.full(a.n_obs, None, dtype=object))
    a.obs["half"] = a.obs["half"].cat.add_categories(["h1", "h2"])
    a.obs.iloc[halves[: len(rows) // 2], a.obs.columns.get_loc("half")] = "h1"
    a.obs.iloc[halves[len(rows) // 2 :], a.obs.columns.get_loc("half")] = "h2"
    de = scvae.differential_expression(a, model, "half", "h1", "h2", delta=delta, fdr=0.05)
    assert de["is_de"].sum() <= 0.05 * a.n_vars
    assert de["proba_de"].median() < 0.5


def halves_of_a(adata: ad.AnnData, seed: int) -> tuple[ad.AnnData, np.ndarray, np.ndarray]:
    """A copy of ``adata`` with ``obs["half"]``: condition A's cells in two random halves."""
    a = adata.copy()
    rows = np.random.default_rng(seed).permutation(np.flatnonzero(a.obs["condition"] == "A"))
    first, second = np.sort(rows[: len(rows) // 2]), np.sort(rows[len(rows) // 2 :])
    half = np.full(a.n_obs, None, dtype=object)
    half[first], half[second] = "h1", "h2"
    a.obs["half"] = pd.Categorical(half, categories=["h1", "h2"])
    return a, first, second


def test_missing_entries_in_one_group_do_not_make_its_genes_look_up(de_fit):
    """Random halves of A, 40 % of one half's entries missing. The counts of a cell with
    holes were compared with expected counts not renormalised over its observed genes: every
    gene came out up in that half (median lfc 0.65, nearly every gene called)."""
    adata, model = de_fit
    a, first, _ = halves_of_a(adata, seed=4)
    x = a.X.toarray()
    holes = np.zeros_like(x, dtype=bool)
    holes[first] = np.random.default_rng(5).random((len(first), a.n_vars)) < 0.4
    x[holes] = np.nan
    a.X = x
    de = scvae.differential_expression(a, model, "half", "h1", "h2")
    assert de["is_de"].sum() <= 0.05 * a.n_vars
    assert abs(de["lfc_mean"].median()) < 0.05


def test_a_cell_or_two_in_a_batch_count_as_a_cell_or_two(de_fit):
    """Random halves of A, one of them keeping a single cell of batch_1: with the batches'
    means averaged alike, that cell was half its group's mean (57 of 120 genes called in a
    null comparison)."""
    adata, model = de_fit
    a, first, _ = halves_of_a(adata, seed=6)
    in_1 = first[(a.obs["batch"].to_numpy()[first] == "batch_1")]
    half = a.obs["half"].astype(object).to_numpy()
    half[in_1[1:]] = None
    a.obs["half"] = pd.Categorical(half, categories=["h1", "h2"])
    de = scvae.differential_expression(a, model, "half", "h1", "h2")
    assert de["is_de"].sum() <= 0.05 * a.n_vars


def test_a_gene_with_no_count_in_a_small_group_is_not_a_certain_change(de_fit):
    """Ten cells of A against the rest of A (twice): a gene with no count among the ten had a
    mean of exactly 0 in every posterior draw (the bootstrap over cells has nothing to vary)
    and was called with certainty. Its counts' noise now enters the posterior."""
    adata, model = de_fit
    a = adata.copy()
    rows = np.flatnonzero((a.obs["condition"] == "A").to_numpy())
    unseen = []
    for seed in (7, 8):
        few = np.random.default_rng(seed).choice(rows, 10, replace=False)
        group = np.full(a.n_obs, None, dtype=object)
        group[rows], group[few] = "rest", "few"
        a.obs["group"] = pd.Categorical(group)
        de = scvae.differential_expression(a, model, "group", "few", "rest")
        # Genes at 0.1-1 counts per cell elsewhere: 1 to 10 counts expected among the ten.
        unseen.append(de[(de["raw_mean1"] == 0) & de["raw_mean2"].between(0.1, 1.0)])
    unseen = pd.concat(unseen)
    assert len(unseen) >= 5
    assert (unseen["proba_de"] < 0.9).all() and not unseen["is_de"].any()


def test_a_group_gets_the_same_draws_whatever_it_is_compared_with(de_fit):
    """Each group's draws are seeded by the group: swapping the groups negates the fold
    changes exactly, and a group's ranking does not depend on the other groups asked for."""
    adata, model = de_fit
    one = scvae.differential_expression(adata, model, "condition", "B", "A")
    two = scvae.differential_expression(adata, model, "condition", "A", "B")
    np.testing.assert_allclose(one["lfc_mean"], -two["lfc_mean"].reindex(one.index), atol=1e-9)
    a = adata.copy()
    scvae.rank_genes_groups(a, model, "condition", key_added="all")
    scvae.rank_genes_groups(a, model, "condition", groups=["B"], key_added="b")
    for field in ("names", "scores", "pvals_adj"):
        np.testing.assert_array_equal(a.uns["all"][field]["B"], a.uns["b"][field]["B"])


def test_batch_correction_removes_a_pure_batch_difference(de_fit):
    adata, model = de_fit
    a = adata.copy()
    rows = np.flatnonzero((a.obs["condition"] == "A").to_numpy())
    batch = a.obs["batch"].to_numpy()[rows]
    first, second = rows[batch == "batch_0"], rows[batch == "batch_1"]
    cut0, cut1 = int(0.8 * len(first)), int(0.2 * len(second))
    mix = np.full(a.n_obs, "other", dtype=object)
    mix[np.r_[first[:cut0], second[:cut1]]] = "mostly_0"
    mix[np.r_[first[cut0:], second[cut1:]]] = "mostly_1"
    a.obs["mix"] = pd.Categorical(mix)
    corrected = scvae.differential_expression(a, model, "mix", "mostly_0", "mostly_1")
    as_measured = scvae.differential_expression(
        a, model, "mix", "mostly_0", "mostly_1", batch_correction=False
    )
    assert corrected["is_de"].sum() <= 0.05 * a.n_vars
    assert as_measured["is_de"].sum() >= 10  # the batch effect is there to be removed


def test_same_seed_same_numbers(de_fit):
    adata, model = de_fit
    one = scvae.differential_expression(adata, model, "condition", "B", "A", seed=3)
    two = scvae.differential_expression(adata, model, "condition", "B", "A", seed=3)
    pd.testing.assert_frame_equal(one, two)


def test_rank_genes_groups_is_read_by_scanpy(de_fit):
    adata, model = de_fit
    a = adata.copy()
    scvae.rank_genes_groups(a, model, "condition", n_genes=50)
    result = a.uns["scvae_rank_genes_groups"]
    assert result["names"].dtype.names == ("A", "B") and len(result["names"]) == 50
    table = sc.get.rank_genes_groups_df(a, group="B", key="scvae_rank_genes_groups")
    assert list(table.columns[:5]) == ["names", "scores", "logfoldchanges", "pvals", "pvals_adj"]
    # The top 10 markers of B (of about 15 genes up in B) are truly up in B; the scores are
    # sorted as scanpy expects.
    top = table.head(10)
    true_lfc = a.var["true_lfc"].reindex(top["names"]).fillna(3.0)  # 'moderate' is up in B
    assert (true_lfc > 0.5).all()
    assert (np.diff(table["scores"].to_numpy()) <= 0).all()
    assert (table["pvals_adj"].head(10) <= 0.05).all()
    sc.pp.normalize_total(a)
    sc.pp.log1p(a)
    sc.pl.rank_genes_groups_dotplot(a, key="scvae_rank_genes_groups", n_genes=3, show=False)
    sc.pl.rank_genes_groups(a, key="scvae_rank_genes_groups", n_genes=5, show=False)


def test_shrinkage_leaves_large_effects_and_removes_noise():
    rng = np.random.default_rng(0)
    truth = np.r_[np.zeros(900), rng.choice([-1.0, 1.0], 100)]
    se = rng.uniform(0.05, 0.3, 1000)
    estimate = truth + rng.normal(0, se)
    posterior = shrink(estimate, se)
    proba = posterior.proba_beyond(0.25)
    # The likelihood alone (no shared prior) gives null genes far more probability of a change.
    alone = ndtr((estimate - 0.25) / se) + ndtr((-0.25 - estimate) / se)
    assert proba[:900].mean() < 0.05 < alone[:900].mean()
    assert (proba[:900] > 0.5).sum() < (alone[:900] > 0.5).sum()
    assert np.median(proba[900:]) > 0.95
    assert abs(np.median(np.abs(posterior.mean()[900:])) - 1.0) < 0.1


def test_any_change_is_told_from_none():
    """``delta=0``: the posterior probability of any change, from the prior's point mass at
    zero. Selected at a 5 % expected FDR, the calls hold few null genes (7.8 % over 20
    seeds of this simulation, 6.0 % at ``delta=0.25``; every gene, before the point mass),
    and P(lfc > 0) leaves the point mass out."""
    fdrs, n_calls = [], []
    for seed in range(10):
        rng = np.random.default_rng(seed)
        truth = np.r_[np.zeros(900), rng.choice([-1.0, 1.0], 100)]
        se = rng.uniform(0.05, 0.3, 1000)
        posterior = shrink(truth + rng.normal(0, se), se)
        proba = posterior.proba_beyond(0.0)
        assert proba[:900].mean() < 0.2 and np.median(proba[900:]) > 0.99
        order = np.argsort(-proba)
        expected_fdr = np.cumsum(1 - proba[order]) / np.arange(1, 1001)
        called = order[: np.flatnonzero(expected_fdr <= 0.05).max() + 1]
        fdrs.append((called < 900).mean())
        n_calls.append(len(called))
        up = 1 - posterior.cdf(0.0)
        assert np.median(up[:900]) < 0.1 and np.median(up[900:][truth[900:] > 0]) > 0.99
    assert np.mean(fdrs) <= 0.1 and 90 <= np.median(n_calls) <= 115
