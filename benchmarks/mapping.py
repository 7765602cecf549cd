"""Query mapping: scvae's ``fit(query, reference=model)`` against scvi-tools' scArches and a de
novo fit; label transfer, scIB scores of query + reference, imputation of a panel's genes.

Protocol: ../shared/BENCHMARK.md, row "query mapping" (issue 19). Per dataset, one batch is the
query and the others are the reference (``--datasets``):

- ``cellbench_5cl``: query the plate ``CELseq2_p1``, reference plates p2 and p3;
- ``kang2018_ifnb``: query ``STIM``, reference ``CTRL`` (the batch is the condition);
- ``cellbench_3cl``: query ``Dropseq``, reference ``CELseq2``;
- ``simulated``: ``scvae.datasets.simulate`` with 1500 cells, 2000 genes, 5 groups and 3
  batches with the gene-specific batch effect of integration.py's ``simulated`` (log-fold sd
  0.5); query ``batch_2``.

Genes: 2000 HVGs (seurat_v3, ``batch_key="batch"``) chosen on the **reference cells only**
(integration.py's ``load`` with ``hvg_batches``): the query does not influence the reference.

Methods (each seed of ``--seeds`` refits everything; the data are fixed):

- **scvae (mapped)**: ``scvae.fit(ref, batch_key="batch", labels_key="cell_type",
  balance="labels")``, its default training; then ``qmodel = scvae.fit(query, reference=model)``;
  labels ``qmodel.predict_labels(query)`` (the reference's label head).
- **scvae (de novo)**: the same ``scvae.fit`` on reference + query, the query's labels hidden
  (NaN: unlabelled cells train the VAE only); labels of the query cells by the label head.
- **SCVI (query)**: ``scvi.model.SCVI`` (defaults, ``batch_key="batch"``, ``train()``'s
  defaults) on the reference; ``SCVI.load_query_data(query, ref)`` trained as scvi-tools'
  scArches tutorial does (``max_epochs=100``, ``plan_kwargs=dict(weight_decay=0.0)``).
- **SCANVI (query)**: ``SCANVI.from_scvi_model`` of that SCVI (``labels_key="cell_type"``),
  ``train()``'s defaults (10 epochs for a pretrained model); ``SCANVI.load_query_data`` of the
  query with its labels hidden (``"Unknown"``), trained the same way; labels ``predict()``.
- **Unintegrated PCA**: 30 PCs of the log-normalised counts of reference + query (the
  Benchmarker's pre-integration embedding; kNN transfer only).

Metrics of the query cells: accuracy and balanced accuracy of the predicted labels (label head /
``predict``), and of kNN (k=15) label transfer from the reference cells' embedding to the query
cells' embedding (every method); scib-metrics' ``Benchmarker`` on reference + query
(integration.py's ``scib_scores``: unscaled, batch = the original batches) gives batch
correction, bio conservation and their total (0.4 / 0.6). Times are wall seconds: the reference
fit ("ref s"; SCANVI: SCVI's plus its own), the mapping ("map s"); the de novo fit is in "ref s".

Panel: the query restricted to a random 10 % of the reference's HVGs (a fixed draw, seed 0,
whatever ``--seeds``), mapped onto the same reference models. The other 90 % are the held-out
truth. Each method predicts each unmeasured gene's share of the cell's expression:

- **scvae**: ``scvae.fit(panel, reference=model)``, then ``scvae.impute(panel, qmodel,
  genes="model")``; a cell's imputed counts of the unmeasured genes divided by the sum of its
  row (its panel counts plus the imputed counts);
- **SCVI zero padding** (scArches' way): ``SCVI.prepare_query_anndata`` pads the unmeasured
  genes with zeros, ``load_query_data`` and training as above, ``get_normalized_expression``;
- **kNN averaging**: 30 PCs of the log-normalised panel genes (``normalize_total``, ``log1p``),
  fitted on the reference cells; each query cell gets the mean share (counts / cell total) of
  its 15 nearest reference cells.

Scale, the same for all: ``log1p(1e4 * share)`` against ``log1p(1e4 * x / total)`` of the true
counts (total over all 2000 HVGs of the query cell). Per unmeasured gene, Pearson and Spearman r
over the query cells (genes constant in the truth are left out); the table gives the medians,
and kNN label accuracy of the panel query. Most genes carry little but noise (on ``simulated``
only about 40 % are markers of some group), so the medians over all genes are near 0 there; the
last columns take the medians over the "type genes": those where an oracle, each query cell
given its true type's mean of the truth (row "oracle: true type means", not a method and not a
ceiling), reaches r >= 0.3. With several seeds every number is the median over seeds.

    python benchmarks/mapping.py --datasets cellbench_3cl cellbench_5cl --seeds 0
    python benchmarks/mapping.py --quick --seeds 0  # smoke test: cellbench_3cl, few epochs

One thread by default (``--threads``: torch, BLAS, numba and XLA). Needs the bench extra and
scib-metrics: ``pip install -e ".[bench]" scib-metrics``.
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp
from _common import (
    environment,
    limit_threads,
    markdown_table,
    restore_torch_threads,
    scvae_options,
    write_json,
)
from anndata import AnnData
from integration import (
    COLUMNS,
    N_HVG,
    SIM_BATCH_LOG_FOLD,
    load,
    medians,
    scib_scores,
    unintegrated_pca,
)
from scipy.stats import rankdata
from sklearn.decomposition import PCA
from sklearn.metrics import balanced_accuracy_score
from sklearn.neighbors import KNeighborsClassifier, NearestNeighbors

import scvae
from scvae import datasets

logger = logging.getLogger("benchmark")

#: The query batch of each dataset; the other batches are the reference.
QUERY = {
    "cellbench_5cl": "CELseq2_p1",
    "kang2018_ifnb": "STIM",
    "cellbench_3cl": "Dropseq",
    "simulated": "batch_2",
}
DEFAULT_DATASETS = ("cellbench_3cl", "cellbench_5cl", "simulated", "kang2018_ifnb")
METHODS = (
    "Unintegrated PCA",
    "scvae (mapped)",
    "scvae (de novo)",
    "SCVI (query)",
    "SCANVI (query)",
)
PANEL_METHODS = ("scvae", "SCVI zero padding", "kNN averaging")
ORACLE = "oracle: true type means"
INFORMATIVE_R = 0.3
K = 15
PANEL_FRACTION = 0.1
PANEL_SEED = 0
QUERY_EPOCHS = 100  # scvi-tools' scArches tutorial
QUICK_EPOCHS = 5
SIM_CELLS = 1500
PEER_LIBRARIES = ("scib-metrics", "scikit-learn", "jax", "lightning")


def simulated() -> AnnData:
    """1500 cells, ``N_HVG`` genes, 5 groups in every batch, 3 batches with a gene-specific
    batch effect of log-fold sd ``SIM_BATCH_LOG_FOLD`` (as integration.py's ``simulated``)."""
    adata = datasets.simulate(
        n_cells=SIM_CELLS,
        n_genes=N_HVG,
        n_groups=5,
        n_batches=3,
        batch_log_fold=SIM_BATCH_LOG_FOLD,
        seed=0,
    )
    obs = adata.obs[["batch", "cell_type"]].copy()
    for column in obs:
        obs[column] = pd.Categorical(obs[column].astype(str))
    return AnnData(X=sp.csr_matrix(adata.X), obs=obs, var=pd.DataFrame(index=adata.var_names))


def load_split(name: str) -> tuple[AnnData, AnnData]:
    """(reference, query) of ``name`` on HVGs chosen on the reference cells."""
    query_batch = QUERY[name]
    if name == "simulated":
        adata = simulated()
    else:
        batches = datasets.read(name).obs[COLUMNS[name][0]].astype(str)
        reference_batches = sorted(set(batches) - {query_batch})
        adata = load(name, hvg_batches=reference_batches)
    is_query = (adata.obs["batch"].astype(str) == query_batch).to_numpy()
    reference, query = adata[~is_query].copy(), adata[is_query].copy()
    for part in (reference, query):
        part.obs["batch"] = part.obs["batch"].cat.remove_unused_categories()
    return reference, query


def accuracies(truth: np.ndarray, predicted: np.ndarray, prefix: str) -> dict[str, float]:
    with warnings.catch_warnings():  # predicted classes absent from the query's truth
        warnings.simplefilter("ignore")
        balanced = balanced_accuracy_score(truth, predicted)
    return {
        f"{prefix} accuracy": float((truth == predicted).mean()),
        f"{prefix} bal acc": balanced,
    }


def n_epochs(model) -> int:
    """Epochs trained by an scvae model or an scvi-tools model."""
    history = model.history
    return len(history["train_loss"] if "train_loss" in history else history["elbo_train"])


def knn_transfer(z_ref: np.ndarray, labels_ref: np.ndarray, z_query: np.ndarray) -> np.ndarray:
    return KNeighborsClassifier(K).fit(z_ref, labels_ref).predict(z_query)


def shares(counts) -> np.ndarray:
    """Each cell's counts divided by its total (dense float64)."""
    dense = counts.toarray() if sp.issparse(counts) else np.asarray(counts, dtype=np.float64)
    dense = dense.astype(np.float64)
    return dense / np.maximum(dense.sum(1, keepdims=True), 1e-12)


def per_gene_r(truth: np.ndarray, predicted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pearson and Spearman r of each column of ``predicted`` with the same of ``truth``
    (NaN where either is constant)."""

    def pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        a = a - a.mean(0)
        b = b - b.mean(0)
        denominator = np.sqrt((a**2).sum(0) * (b**2).sum(0))
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(denominator > 0, (a * b).sum(0) / denominator, np.nan)

    return pearson(truth, predicted), pearson(rankdata(truth, axis=0), rankdata(predicted, axis=0))


def scvi_quiet() -> None:
    import scvi

    scvi.settings.verbosity = logging.WARNING
    for noisy in ("scvi", "lightning", "lightning.pytorch", "lightning.fabric", "jax"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


TRAIN_QUIET = {"accelerator": "cpu", "enable_progress_bar": False, "enable_model_summary": False}


def fit_scvi_reference(ref: AnnData, seed: int, quick: bool):
    """SCVI (defaults, ``batch_key``) and SCANVI from it; (scvi, scanvi, seconds of each)."""
    import scvi

    scvi.settings.seed = seed
    data = ref.copy()
    scvi.model.SCVI.setup_anndata(data, batch_key="batch")
    restore_torch_threads()
    started = time.perf_counter()
    scvi_model = scvi.model.SCVI(data)
    scvi_model.train(max_epochs=QUICK_EPOCHS if quick else None, **TRAIN_QUIET)
    scvi_seconds = time.perf_counter() - started
    started = time.perf_counter()
    scanvi_model = scvi.model.SCANVI.from_scvi_model(
        scvi_model, unlabeled_category="Unknown", labels_key="cell_type", adata=ref.copy()
    )
    scanvi_model.train(max_epochs=2 if quick else None, **TRAIN_QUIET)
    return scvi_model, scanvi_model, scvi_seconds, time.perf_counter() - started


def scvi_query(cls, query: AnnData, reference, quick: bool):
    """``cls.load_query_data`` of ``query`` onto ``reference``, trained as the scArches
    tutorial; (model, its AnnData, seconds)."""
    restore_torch_threads()
    started = time.perf_counter()
    model = cls.load_query_data(query, reference)
    model.train(
        max_epochs=QUICK_EPOCHS if quick else QUERY_EPOCHS,
        plan_kwargs={"weight_decay": 0.0},
        **TRAIN_QUIET,
    )
    return model, time.perf_counter() - started


@dataclass
class Mapped:
    """One method's mapping of a query: embeddings of the reference's and the query's cells,
    seconds and epochs of the reference fit and of the mapping (``None``: not measured or not
    a separate step), and the query's predicted labels where the method predicts them."""

    z_ref: np.ndarray
    z_query: np.ndarray
    seconds: tuple[float | None, float | None]
    epochs: tuple[int | None, int | None] = (None, None)
    predicted: np.ndarray | None = None


@dataclass
class Imputed:
    """One method's imputation of a panel query's unmeasured genes: their expression shares
    (cells x unmeasured genes), the query's kNN-transferred labels, seconds and epochs of the
    mapping (``None``: no training)."""

    share: np.ndarray
    labels: np.ndarray
    seconds: float
    epochs: int | None = None


def mapping_rows(name: str, ref: AnnData, query: AnnData, seed: int, args) -> tuple[list, list]:
    """One seed of ``name``: the rows of the mapping table and of the panel table."""

    epochs = QUICK_EPOCHS if args.quick else None
    labels_ref = ref.obs["cell_type"].astype(str).to_numpy()
    labels_query = query.obs["cell_type"].astype(str).to_numpy()
    mapped: dict[str, Mapped] = {}

    def fit_labelled(adata: AnnData) -> scvae.SCVAE:
        """scvae's fit with the label head, as the reference and the de novo fit use it."""
        restore_torch_threads()
        return scvae.fit(
            adata,
            batch_key="batch",
            labels_key="cell_type",
            balance="labels",
            max_epochs=epochs,
            seed=seed,
            progress=False,
            **args.scvae_options,
        )

    # scvae: reference, then the query mapped onto it.
    logger.info("%s seed %d: scvae reference", name, seed)
    ref_scvae = ref.copy()
    started = time.perf_counter()
    model = fit_labelled(ref_scvae)
    ref_seconds = time.perf_counter() - started
    q = query.copy()
    started = time.perf_counter()
    qmodel = scvae.fit(
        q, reference=model, max_epochs=epochs, seed=seed, progress=False, **args.scvae_options
    )
    mapped["scvae (mapped)"] = Mapped(
        ref_scvae.obsm["X_scvae"],
        q.obsm["X_scvae"],
        (ref_seconds, time.perf_counter() - started),
        (n_epochs(model), n_epochs(qmodel)),
        qmodel.predict_labels(q).astype(str).to_numpy(),
    )

    # scvae de novo on reference + query, the query's labels hidden.
    logger.info("%s seed %d: scvae de novo", name, seed)
    both = _concat(ref, query)
    both.obs["cell_type"] = both.obs["cell_type"].astype(object)
    both.obs.loc[both.obs_names[ref.n_obs :], "cell_type"] = np.nan
    both.obs["cell_type"] = pd.Categorical(both.obs["cell_type"])
    started = time.perf_counter()
    denovo = fit_labelled(both)
    z = both.obsm["X_scvae"]
    mapped["scvae (de novo)"] = Mapped(
        z[: ref.n_obs],
        z[ref.n_obs :],
        (time.perf_counter() - started, None),
        (n_epochs(denovo), None),
        denovo.predict_labels(query).astype(str).to_numpy(),
    )

    scvi_ref = None
    if not args.scvae_only:
        logger.info("%s seed %d: scvi-tools", name, seed)
        scvi_mapped, scvi_ref = scvi_tools_mappings(query, ref, seed, args.quick)
        mapped.update(scvi_mapped)

    # Unintegrated PCA of reference + query (the Benchmarker's pre-integration embedding).
    pcs = unintegrated_pca(both, seed)
    mapped["Unintegrated PCA"] = Mapped(pcs[: ref.n_obs], pcs[ref.n_obs :], (None, None))

    logger.info("%s seed %d: scib-metrics Benchmarker", name, seed)
    obs = pd.DataFrame(
        {
            "batch": np.concatenate(
                [ref.obs["batch"].astype(str), query.obs["batch"].astype(str)]
            ),
            "cell_type": np.concatenate([labels_ref, labels_query]),
        }
    )
    obs = obs.astype("category")
    joined = {
        method: np.ascontiguousarray(np.vstack([m.z_ref, m.z_query]), dtype=np.float32)
        for method, m in mapped.items()
    }
    scores = scib_scores(obs, joined)
    rows = []
    for method in (m for m in METHODS if m in mapped):
        one = mapped[method]
        row = {"dataset": name, "seed": seed, "method": method}
        row["ref_seconds"], row["map_seconds"] = one.seconds
        row["ref_epochs"], row["map_epochs"] = one.epochs
        if one.predicted is not None:
            row.update(accuracies(labels_query, one.predicted, "label"))
        knn = knn_transfer(one.z_ref, labels_ref, one.z_query)
        row.update(accuracies(labels_query, knn, "kNN"))
        row.update(scores.loc[method].to_dict())
        rows.append(row)
        logger.info(
            "%s seed %d %s: label %s, kNN %.3f, total %.3f",
            name,
            seed,
            method,
            row.get("label accuracy"),
            row["kNN accuracy"],
            row["Total"],
        )

    panel_rows = panel(name, ref, query, model, scvi_ref, seed, args)
    return rows, panel_rows


def scvi_tools_mappings(query, ref, seed: int, quick: bool) -> tuple[dict[str, Mapped], object]:
    """scvi-tools' SCVI and SCANVI references and their queries (``load_query_data``), and
    the SCVI reference (for the panel query)."""
    import scvi

    scvi_ref, scanvi_ref, scvi_s, scanvi_s = fit_scvi_reference(ref, seed, quick)
    scvi_q, map_s = scvi_query(scvi.model.SCVI, query.copy(), scvi_ref, quick)
    mapped = {
        "SCVI (query)": Mapped(
            scvi_ref.get_latent_representation(),
            scvi_q.get_latent_representation(),
            (scvi_s, map_s),
            (n_epochs(scvi_ref), n_epochs(scvi_q)),
        )
    }
    hidden = query.copy()
    hidden.obs["cell_type"] = "Unknown"
    scanvi_q, map_s = scvi_query(scvi.model.SCANVI, hidden, scanvi_ref, quick)
    mapped["SCANVI (query)"] = Mapped(
        scanvi_ref.get_latent_representation(),
        scanvi_q.get_latent_representation(),
        (scvi_s + scanvi_s, map_s),
        (n_epochs(scanvi_ref), n_epochs(scanvi_q)),
        np.asarray(scanvi_q.predict(), dtype=str),
    )
    return mapped, scvi_ref


def _concat(ref: AnnData, query: AnnData) -> AnnData:
    """Reference then query, on the same genes, with ``batch`` and ``cell_type``."""
    X = sp.vstack([sp.csr_matrix(ref.X), sp.csr_matrix(query.X)]).tocsr()
    obs = pd.concat([ref.obs, query.obs])
    obs["batch"] = pd.Categorical(obs["batch"].astype(str))
    return AnnData(X=X, obs=obs, var=pd.DataFrame(index=ref.var_names))


def panel_genes(genes: pd.Index) -> np.ndarray:
    """A seeded random 10 % of ``genes`` (mask)."""
    rng = np.random.default_rng(PANEL_SEED)
    chosen = rng.choice(len(genes), round(PANEL_FRACTION * len(genes)), replace=False)
    mask = np.zeros(len(genes), dtype=bool)
    mask[chosen] = True
    return mask


def panel(name, ref, query, model, scvi_ref, seed, args) -> list[dict]:
    """The panel query: imputation of its unmeasured genes by scvae, SCVI zero padding and
    kNN averaging; one row per method."""

    epochs = QUICK_EPOCHS if args.quick else None
    measured = panel_genes(ref.var_names)
    genes = ref.var_names
    unmeasured = genes[~measured]
    query_panel = query[:, measured].copy()
    labels_ref = ref.obs["cell_type"].astype(str).to_numpy()
    labels_query = query.obs["cell_type"].astype(str).to_numpy()
    truth = np.log1p(1e4 * shares(query.X)[:, ~measured])
    imputed_by: dict[str, Imputed] = {}

    logger.info("%s seed %d: panel of %d genes", name, seed, measured.sum())
    q = query_panel.copy()
    restore_torch_threads()
    started = time.perf_counter()
    qmodel = scvae.fit(
        q, reference=model, max_epochs=epochs, seed=seed, progress=False, **args.scvae_options
    )
    seconds = time.perf_counter() - started
    full = scvae.impute(query_panel, qmodel, genes="model")
    imputed = full.layers["scvae_imputed"]
    imputed = imputed.toarray() if sp.issparse(imputed) else np.asarray(imputed, dtype=np.float64)
    if np.isnan(imputed).any():
        raise RuntimeError("scvae.impute left NaN in the imputed layer")
    imputed_by["scvae"] = Imputed(
        shares(imputed)[:, full.var_names.get_indexer(unmeasured)],
        knn_transfer(model.embed(ref), labels_ref, q.obsm["X_scvae"]),
        seconds,
        n_epochs(qmodel),
    )

    if scvi_ref is not None:
        imputed_by["SCVI zero padding"] = scvi_zero_padding(
            query_panel, scvi_ref, unmeasured, labels_ref, args.quick
        )

    started = time.perf_counter()
    ref_log = ref[:, measured].copy()
    sc.pp.normalize_total(ref_log, target_sum=1e4)
    sc.pp.log1p(ref_log)
    query_log = query_panel.copy()
    sc.pp.normalize_total(query_log, target_sum=1e4)
    sc.pp.log1p(query_log)
    dense = lambda a: a.toarray() if sp.issparse(a) else np.asarray(a)  # noqa: E731
    pca = PCA(n_components=min(30, int(measured.sum()) - 1), random_state=seed)
    ref_pcs = pca.fit_transform(dense(ref_log.X))
    query_pcs = pca.transform(dense(query_log.X))
    neighbours = NearestNeighbors(n_neighbors=K).fit(ref_pcs).kneighbors(query_pcs)[1]
    ref_share = shares(ref.X)[:, ~measured]
    imputed_by["kNN averaging"] = Imputed(
        ref_share[neighbours].mean(1),
        knn_transfer(ref_pcs, labels_ref, query_pcs),
        time.perf_counter() - started,
    )

    # An oracle, not a method: each query cell gets its true type's mean of the truth (query
    # cells, log scale). Its r says how much of a gene is cell type (not a ceiling: a method
    # can also follow variation within a type); genes where it reaches INFORMATIVE_R are the
    # "type genes" of the last columns.
    type_mean = pd.DataFrame(truth).groupby(labels_query).transform("mean").to_numpy()
    informative = per_gene_r(truth, type_mean)[0] >= INFORMATIVE_R

    rows = []
    for method in (*(m for m in PANEL_METHODS if m in imputed_by), ORACLE):
        row = {"dataset": name, "seed": seed, "method": method}
        if method == ORACLE:
            pearson, spearman = per_gene_r(truth, type_mean)
        else:
            result = imputed_by[method]
            pearson, spearman = per_gene_r(truth, np.log1p(1e4 * result.share))
            row["map_seconds"], row["map_epochs"] = result.seconds, result.epochs
            row.update(accuracies(labels_query, result.labels, "kNN"))
        row["genes scored"] = int(np.isfinite(pearson).sum())
        row["median Pearson r"] = float(np.nanmedian(pearson))
        row["median Spearman r"] = float(np.nanmedian(spearman))
        row["mean Pearson r"] = float(np.nanmean(pearson))
        row["type genes"] = int(informative.sum())
        row["type genes median Pearson r"] = _median(pearson[informative])
        row["type genes median Spearman r"] = _median(spearman[informative])
        rows.append(row)
        logger.info(
            "%s seed %d panel %s: Pearson %.3f, Spearman %.3f",
            name,
            seed,
            method,
            row["median Pearson r"],
            row["median Spearman r"],
        )
    return rows


def scvi_zero_padding(query_panel, scvi_ref, unmeasured, labels_ref, quick: bool) -> Imputed:
    """scArches' way with the SCVI reference: the panel query padded with zeros and mapped;
    the unmeasured genes' shares come from the decoder."""
    import scvi

    padded = query_panel.copy()
    scvi.model.SCVI.prepare_query_anndata(padded, scvi_ref)
    padded_model, seconds = scvi_query(scvi.model.SCVI, padded, scvi_ref, quick)
    normalized = padded_model.get_normalized_expression(padded, library_size=1.0)
    labels = knn_transfer(
        scvi_ref.get_latent_representation(), labels_ref, padded_model.get_latent_representation()
    )
    share = normalized[unmeasured].to_numpy(dtype=np.float64)
    return Imputed(share, labels, seconds, n_epochs(padded_model))


def _median(values: np.ndarray) -> float | None:
    finite = values[np.isfinite(values)]
    return float(np.median(finite)) if finite.size else None


MAPPING_COLUMNS = [
    ("dataset", "dataset", ""),
    ("method", "method", ""),
    ("ref_seconds", "ref s", ".1f"),
    ("map_seconds", "map s", ".1f"),
    ("label accuracy", "label acc", ".3f"),
    ("label bal acc", "label bal acc", ".3f"),
    ("kNN accuracy", "kNN acc", ".3f"),
    ("kNN bal acc", "kNN bal acc", ".3f"),
    ("iLISI", "iLISI", ".3f"),
    ("cLISI", "cLISI", ".3f"),
    ("Batch correction", "batch correction", ".3f"),
    ("Bio conservation", "bio conservation", ".3f"),
    ("Total", "total", ".3f"),
]
PANEL_COLUMNS = [
    ("dataset", "dataset", ""),
    ("method", "method", ""),
    ("map_seconds", "map s", ".1f"),
    ("kNN accuracy", "kNN acc", ".3f"),
    ("kNN bal acc", "kNN bal acc", ".3f"),
    ("genes scored", "genes", ".0f"),
    ("median Pearson r", "median Pearson r", ".3f"),
    ("median Spearman r", "median Spearman r", ".3f"),
    ("type genes", "type genes", ".0f"),
    ("type genes median Pearson r", "type genes: Pearson", ".3f"),
    ("type genes median Spearman r", "type genes: Spearman", ".3f"),
]


def write_results(rows, panel_rows, descriptions, args, *, final: bool) -> None:
    """The two tables (medians over seeds) to ``args.out`` (JSON) and its ``.md``; printed
    when ``final``."""
    summary, panel_summary = medians(rows), medians(panel_rows)
    env = environment(seed=args.seeds[0], extra_libraries=PEER_LIBRARIES)
    env["seeds"] = args.seeds
    header = "\n".join(
        [
            f"Query mapping (leave one batch out); median over seeds {args.seeds}; each tool's "
            f"default training (scvi-tools queries {QUERY_EPOCHS} epochs); device "
            f"{env['device']}, {env['torch_threads']} torch threads"
            + ("; QUICK smoke test" if args.quick else ""),
            *(
                f"- {name}: {d['genes']} genes, reference {d['reference']}, query {d['query']}"
                for name, d in descriptions.items()
            ),
        ]
    )
    table = markdown_table(summary, MAPPING_COLUMNS)
    panel_table = markdown_table(panel_summary, PANEL_COLUMNS)
    panel_header = (
        f"Panel query: {PANEL_FRACTION:.0%} of the genes measured (seed {PANEL_SEED}); per-gene r "
        "of log1p(1e4 x share) over query cells, unmeasured genes; type genes: those where "
        f"the oracle row reaches r >= {INFORMATIVE_R}"
    )
    text = f"{header}\n\n{table}\n\n{panel_header}\n\n{panel_table}\n"
    if final:
        print(text)  # a benchmark script reports on stdout
    write_json(
        args.out,
        {
            "header": header,
            "table": table,
            "panel_header": panel_header,
            "panel_table": panel_table,
            "summary": summary,
            "panel_summary": panel_summary,
            "rows": rows,
            "panel_rows": panel_rows,
            "datasets": descriptions,
            "environment": env,
            "arguments": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        },
    )
    args.out.with_suffix(".md").write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--datasets",
        nargs="+",
        default=None,
        choices=list(QUERY),
        help="default: all four (--quick: cellbench_3cl)",
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--scvae-only",
        action="store_true",
        help="leave out scvi-tools (SCVI, SCANVI, zero padding): scvae, PCA and kNN averaging",
    )
    parser.add_argument(
        "--scvae-option",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="one more keyword of every scvae.fit here (reference, query, de novo), e.g. "
        "early_stopping=false (repeatable)",
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/mapping.json"))
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke test: cellbench_3cl only (unless --datasets), {QUICK_EPOCHS} epochs",
    )
    args = parser.parse_args()
    own = ("batch_key", "labels_key", "balance", "reference", "max_epochs", "seed", "progress")
    try:
        args.scvae_options = scvae_options(args.scvae_option, own)
    except ValueError as error:
        parser.error(str(error))
    if args.datasets is None:
        args.datasets = ["cellbench_3cl"] if args.quick else list(DEFAULT_DATASETS)
    limit_threads(args.threads)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logger.setLevel(logging.INFO)
    scvi_quiet()
    warnings.filterwarnings("ignore", category=FutureWarning)

    rows, panel_rows, descriptions = [], [], {}
    for name in args.datasets:
        ref, query = load_split(name)
        descriptions[name] = {
            "genes": ref.n_vars,
            "reference": ref.obs["batch"].value_counts().to_dict(),
            "query": query.obs["batch"].value_counts().to_dict(),
            "query cell types": query.obs["cell_type"].value_counts().to_dict(),
            "reference cell types": ref.obs["cell_type"].value_counts().to_dict(),
        }
        logger.info("%s: %s", name, descriptions[name])
        for seed in args.seeds:
            started = time.perf_counter()
            seed_rows, seed_panel = mapping_rows(name, ref, query, seed, args)
            rows += seed_rows
            panel_rows += seed_panel
            logger.info("%s seed %d took %.0f s", name, seed, time.perf_counter() - started)
        # The results so far, rewritten after each dataset (a long run keeps what it did).
        write_results(rows, panel_rows, descriptions, args, final=name == args.datasets[-1])


if __name__ == "__main__":
    main()
