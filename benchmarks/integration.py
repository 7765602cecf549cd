"""Integration: scib-metrics' scores of unintegrated PCA, Harmony, SCVI and scvae, in one process.

Protocol: ../shared/BENCHMARK.md, row "integration". Per dataset, all four methods embed the
same cells on the same genes (2000 HVGs by ``scanpy.pp.highly_variable_genes(flavor="seurat_v3",
batch_key="batch")`` on all cells; datasets with at most 2003 genes keep all):

- unintegrated PCA: 30 PCs of log-normalised counts (``normalize_total`` to 1e4, ``log1p``);
- Harmony: ``harmonypy.run_harmony`` on those 30 PCs, with ``batch`` (its time excludes the PCA);
- SCVI: ``scvi.model.SCVI`` with ``batch_key="batch"``, its default model (ZINB) and training
  (``train()``: 400 epochs for these sizes, 90 % of the cells, no early stopping);
- scvae: ``scvae.fit(adata, batch_key="batch")``, its default training (early stopping on 10 %
  held-out cells), or with the options of ``--scvae-option`` (see below).

Then scib-metrics' ``Benchmarker`` scores the four embeddings against ``batch`` and
``cell_type`` with ``get_results(min_max_scale=False)``: every metric of its ``BioConservation``
and ``BatchCorrection`` (Leiden NMI/ARI switched on beside the default set), their two
aggregates and the total (0.4 batch + 0.6 bio). The unintegrated PCA is the Benchmarker's
pre-integration embedding (the reference of its PCR comparison). Beside scib's own k-means
NMI/ARI (its jax ``KMeans``, one initialisation) stand scikit-learn's ``KMeans`` (``n_clusters``
= number of cell types, ``n_init=10``) NMI/ARI on the same embedding. Fit time (wall seconds)
stands beside the scores. With several seeds, every number is the median over seeds (the
aggregates are medians of each seed's aggregate).

Datasets (``--datasets``): files of ``$SCVAE_DATA_DIR`` (default ../shared/data) with their
batch and label columns mapped to ``batch`` and ``cell_type`` (for ``kang2018_ifnb`` the batch
is the condition, ``stim``: CTRL / STIM), and ``simulated`` (see :func:`simulated`).

    python benchmarks/integration.py --datasets cellbench_3cl kang2018_ifnb simulated --seeds 0
    python benchmarks/integration.py --quick --datasets cellbench_3cl --seeds 0  # smoke test

A variant of scvae's training is a command line: each ``--scvae-option NAME=VALUE`` is one more
keyword of ``scvae.fit`` (``true``/``false`` become booleans, ``none`` None, numbers int or
float, anything else stays a string; ``batch_key``, ``seed``, ``max_epochs`` and ``progress``
are the script's own: use ``--seeds`` and ``--max-epochs``). The header, the Markdown file and
the JSON (``scvae_options``) record them; e.g. scvae alone, no early stopping, alignment 3:

    python benchmarks/integration.py --methods scvae --seeds 0 \
        --scvae-option batch_alignment=3 --scvae-option early_stopping=false \
        --out benchmarks/results/integration_seed0_scvae_w3_noes.json

Needs the bench extra and the peers: ``pip install -e ".[bench]" scib-metrics harmonypy``.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scanpy as sc
from _common import (
    environment,
    markdown_table,
    restore_torch_threads,
    scvae_options,
    write_json,
)
from anndata import AnnData
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

import scvae
from scvae import datasets

logger = logging.getLogger("benchmark")

#: obs columns of each public dataset that hold (batch, cell type); see ../shared/data/README.md.
COLUMNS = {
    "cellbench_3cl": ("batch", "cell_type"),  # platform: CELseq2 / Dropseq
    "cellbench_5cl": ("batch", "cell_type"),  # CEL-seq2 plate p1 / p2 / p3
    "kang2018_ifnb": ("stim", "seurat_annotations"),  # condition CTRL / STIM
}
METHODS = ("Unintegrated PCA", "Harmony", "SCVI", "scvae")
N_PCS = 30
N_HVG = 2000
QUICK_CELLS = 300
QUICK_EPOCHS = 5
SIM_BATCH_LOG_FOLD = 0.5
#: Peers whose versions the JSON records beside _common.environment's.
PEER_LIBRARIES = ("scib-metrics", "harmonypy", "scikit-learn", "jax", "lightning")
#: Keywords of ``scvae.fit`` that the script sets itself (not allowed in ``--scvae-option``).
OWN_SCVAE_KEYWORDS = ("batch_key", "seed", "max_epochs", "progress")


def simulated(batch_log_fold: float = SIM_BATCH_LOG_FOLD, seed: int = 0) -> AnnData:
    """A simulated integration task: strong gene-specific batch effect, one batch-only type.

    ``scvae.datasets.simulate`` draws, per batch, an independent log-normal factor for every
    gene (``batch_log_fold`` = its sd on the log scale): a gene-specific batch effect on all
    2000 genes, against group markers on 10 % of the genes at a mean log fold change of 1.5.
    The default 0.5 is strong: the silhouette of the batches in the unintegrated PCA is 0.22,
    above that of every real dataset here (kang2018_ifnb 0.16, cellbench_3cl 0.09,
    cellbench_5cl -0.01), and Harmony removes little of it (0.21 after); at 0.7 it moves
    the PCs by at most 0.6, at 1.0 it leaves them unchanged (its soft clusters are then each
    of one batch). ``simulate`` has no option for a type confined to one batch,
    so its output is post-processed: the cells of ``group_4`` that fell in ``batch_1`` are
    dropped, leaving ``group_4`` in ``batch_0`` only (about 2000 - 200 cells). 2000 genes:
    all kept (protocol: at most 2003).

    Parameters
    ----------
    batch_log_fold
        Standard deviation of the per-gene, per-batch log factor (``--sim-batch-effect``).
    seed
        Seed of the simulation (the data, not the methods: fixed across ``--seeds``).

    Returns
    -------
    AnnData
        Counts in ``X``; ``obs["batch"]`` (``batch_0``, ``batch_1``) and ``obs["cell_type"]``
        (``group_0`` … ``group_4``; ``group_4`` only in ``batch_0``).
    """
    adata = datasets.simulate(
        n_cells=2000,
        n_genes=N_HVG,
        n_groups=5,
        n_batches=2,
        batch_log_fold=batch_log_fold,
        seed=seed,
    )
    batch_only = (adata.obs["cell_type"] == "group_4") & (adata.obs["batch"] == "batch_1")
    adata = adata[~batch_only.to_numpy()]
    return AnnData(
        X=adata.X.copy(),
        obs=adata.obs[["batch", "cell_type"]].copy(),
        var=pd.DataFrame(index=adata.var_names),
    )


def load(
    name: str,
    *,
    max_cells: int | None = None,
    sim_batch_log_fold: float = SIM_BATCH_LOG_FOLD,
    hvg_batches: list[str] | None = None,
) -> AnnData:
    """Raw counts of ``name`` with ``obs["batch"]`` and ``obs["cell_type"]``, on the HVGs.

    Parameters
    ----------
    name
        A key of :data:`COLUMNS` (read from ``$SCVAE_DATA_DIR``) or ``"simulated"``.
    max_cells
        Subsample to this many cells first (seed 0), e.g. for ``--quick``.
    sim_batch_log_fold
        Strength of the batch effect of ``"simulated"`` (see :func:`simulated`).
    hvg_batches
        Choose the HVGs on the cells of these batches only (default: all cells), e.g. a
        mapping's reference, which the query must not influence.

    Returns
    -------
    AnnData
        Raw counts in ``X`` (CSR), ``N_HVG`` genes (seurat_v3 with ``batch_key="batch"``) if
        the data had more than 2003, only ``batch`` and ``cell_type`` in ``obs``; genes and
        cells without counts removed.
    """
    if name == "simulated":
        adata = simulated(sim_batch_log_fold)
    else:
        if name not in COLUMNS:
            raise ValueError(f"unknown dataset {name!r}: choose from {[*COLUMNS, 'simulated']}")
        adata = datasets.read(name)
        batch_key, label_key = COLUMNS[name]
        obs = pd.DataFrame(
            {
                "batch": pd.Categorical(adata.obs[batch_key].astype(str)),
                "cell_type": pd.Categorical(adata.obs[label_key].astype(str)),
            },
            index=adata.obs_names,
        )
        adata = AnnData(X=adata.X, obs=obs, var=pd.DataFrame(index=adata.var_names))
    if max_cells is not None and adata.n_obs > max_cells:
        rng = np.random.default_rng(0)
        adata = adata[np.sort(rng.choice(adata.n_obs, max_cells, replace=False))].copy()
        sc.pp.filter_genes(adata, min_cells=1)
    if adata.n_vars > N_HVG + 3:
        on = adata
        if hvg_batches is not None:
            on = adata[adata.obs["batch"].isin(hvg_batches).to_numpy()].copy()
        sc.pp.highly_variable_genes(on, flavor="seurat_v3", n_top_genes=N_HVG, batch_key="batch")
        adata = adata[:, on.var["highly_variable"].to_numpy()]
        adata = AnnData(X=adata.X, obs=adata.obs, var=pd.DataFrame(index=adata.var_names))
    empty = np.asarray(adata.X.sum(axis=1)).ravel() == 0
    if empty.any():
        logger.info("%s: dropping %d cells without counts on the genes", name, empty.sum())
        adata = adata[~empty].copy()
    for column in ("batch", "cell_type"):
        adata.obs[column] = adata.obs[column].cat.remove_unused_categories()
    return adata


def unintegrated_pca(adata: AnnData, seed: int) -> np.ndarray:
    """``N_PCS`` principal components of the log-normalised counts (1e4 per cell, log1p)."""
    lognorm = adata.copy()
    sc.pp.normalize_total(lognorm, target_sum=1e4)
    sc.pp.log1p(lognorm)
    sc.pp.pca(lognorm, n_comps=N_PCS, random_state=seed)
    return lognorm.obsm["X_pca"]


def harmony(pcs: np.ndarray, batch: pd.Series, seed: int) -> np.ndarray:
    """Harmony's corrected PCs (cells x PCs) with its default options."""
    import harmonypy

    result = harmonypy.run_harmony(
        pcs, pd.DataFrame({"batch": batch.to_numpy()}), "batch", random_state=seed, verbose=False
    )
    corrected = np.asarray(result.Z_corr)
    # harmonypy < 0.1 returned PCs x cells; the current one, cells x PCs.
    return corrected if corrected.shape[0] == pcs.shape[0] else corrected.T


def fit_scvi(adata: AnnData, seed: int, max_epochs: int | None) -> tuple[np.ndarray, int]:
    """SCVI's latent means with its defaults and ``batch_key="batch"``; (latent, epochs)."""
    import scvi

    restore_torch_threads()
    scvi.settings.seed = seed
    data = adata.copy()
    scvi.model.SCVI.setup_anndata(data, batch_key="batch")
    model = scvi.model.SCVI(data)
    model.train(
        max_epochs=max_epochs,
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    return model.get_latent_representation(), len(model.history["elbo_train"])


def fit_scvae(
    adata: AnnData, seed: int, max_epochs: int | None, **options
) -> tuple[np.ndarray, int]:
    """scvae's latent means with ``batch_key="batch"``, its defaults but for ``options`` (more
    keywords of ``scvae.fit``); (latent, epochs)."""
    restore_torch_threads()
    data = adata.copy()
    model = scvae.fit(
        data, batch_key="batch", max_epochs=max_epochs, seed=seed, progress=False, **options
    )
    key = options.get("key_added", "scvae")
    return data.obsm[f"X_{key}"], len(model.history["train_loss"])


def embed_all(
    adata: AnnData,
    seed: int,
    max_epochs: int | None,
    methods: tuple[str, ...] = METHODS,
    scvae_options: dict | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, float], dict[str, int | None]]:
    """The embeddings of ``adata`` by ``methods``, each one's fit seconds and epochs trained
    (the unintegrated PCA is computed and kept in any case: Harmony starts from it, and the
    Benchmarker compares with it); ``scvae_options``: more keywords of ``scvae.fit``."""
    embeddings, seconds, epochs = {}, {}, {}
    unintegrated_pca(adata[: 4 * N_PCS].copy(), seed)  # scanpy's one-time compilation, untimed
    started = time.perf_counter()
    embeddings["Unintegrated PCA"] = unintegrated_pca(adata, seed)
    seconds["Unintegrated PCA"] = time.perf_counter() - started
    started = time.perf_counter()
    embeddings["Harmony"] = harmony(embeddings["Unintegrated PCA"], adata.obs["batch"], seed)
    seconds["Harmony"] = time.perf_counter() - started
    epochs["Unintegrated PCA"] = epochs["Harmony"] = None
    options = {"SCVI": {}, "scvae": scvae_options or {}}
    for name, fit in (("SCVI", fit_scvi), ("scvae", fit_scvae)):
        if name not in methods:
            continue
        logger.info("seed %d: fitting %s %s", seed, name, options[name] or "")
        started = time.perf_counter()
        embeddings[name], epochs[name] = fit(adata, seed, max_epochs, **options[name])
        seconds[name] = time.perf_counter() - started
    # The unintegrated PCA stays in any case: the Benchmarker's pre-integration embedding.
    embeddings = {
        name: np.ascontiguousarray(z, dtype=np.float32)
        for name, z in embeddings.items()
        if name in methods or name == "Unintegrated PCA"
    }
    return embeddings, seconds, epochs


def scib_scores(obs: pd.DataFrame, embeddings: dict[str, np.ndarray]) -> pd.DataFrame:
    """scib-metrics' ``Benchmarker`` results, ``get_results(min_max_scale=False)``: one row per
    embedding, one column per metric and aggregate (floats); ``attrs["metric_type"]`` maps each
    column to "Bio conservation", "Batch correction" or "Aggregate score"."""
    from scib_metrics.benchmark import BatchCorrection, Benchmarker, BioConservation

    bench = AnnData(obs=obs[["batch", "cell_type"]].copy(), obsm=dict(embeddings))
    benchmarker = Benchmarker(
        bench,
        batch_key="batch",
        label_key="cell_type",
        embedding_obsm_keys=list(embeddings),
        bio_conservation_metrics=BioConservation(nmi_ari_cluster_labels_leiden=True),
        batch_correction_metrics=BatchCorrection(),
        pre_integrated_embedding_obsm_key="Unintegrated PCA",
        n_jobs=1,
        progress_bar=False,
    )
    benchmarker.benchmark()
    results = benchmarker.get_results(min_max_scale=False)
    metric_type = results.loc["Metric Type"].to_dict()
    scores = results.drop(index="Metric Type").astype(float)
    scores.attrs["metric_type"] = metric_type
    return scores


def sklearn_kmeans(z: np.ndarray, labels: np.ndarray, seed: int) -> dict[str, float]:
    """NMI and ARI against ``labels`` of scikit-learn's KMeans (k = number of types,
    ``n_init=10``), scib's definitions (arithmetic-mean NMI)."""
    n_types = len(np.unique(labels))
    predicted = KMeans(n_clusters=n_types, n_init=10, random_state=seed).fit_predict(z)
    return {
        "sklearn KMeans NMI": normalized_mutual_info_score(
            labels, predicted, average_method="arithmetic"
        ),
        "sklearn KMeans ARI": adjusted_rand_score(labels, predicted),
    }


def run_dataset(name: str, args: argparse.Namespace) -> tuple[list[dict], dict, dict]:
    """Every seed's rows of ``name`` (one per method), the dataset's description and the
    metric type of each scib column."""
    adata = load(
        name,
        max_cells=QUICK_CELLS if args.quick else None,
        sim_batch_log_fold=args.sim_batch_effect,
    )
    labels = adata.obs["cell_type"].astype(str).to_numpy()
    per_batch = pd.crosstab(adata.obs["cell_type"], adata.obs["batch"])
    description = {
        "cells": adata.n_obs,
        "genes": adata.n_vars,
        "batches": adata.obs["batch"].value_counts().to_dict(),
        "cell_types": adata.obs["cell_type"].value_counts().to_dict(),
        "cell_types_per_batch": per_batch.to_dict(orient="index"),
    }
    logger.info(
        "%s: %d cells, %d genes, %d batches, %d cell types",
        name,
        adata.n_obs,
        adata.n_vars,
        adata.obs["batch"].nunique(),
        len(np.unique(labels)),
    )
    rows, metric_type = [], {}
    for seed in args.seeds:
        embeddings, seconds, epochs = embed_all(
            adata, seed, args.max_epochs, tuple(args.methods), args.scvae_options
        )
        logger.info("seed %d: scib-metrics Benchmarker", seed)
        started = time.perf_counter()
        scores = scib_scores(adata.obs, embeddings)
        logger.info("Benchmarker took %.0f s", time.perf_counter() - started)
        metric_type = scores.attrs["metric_type"]
        for method in args.methods:
            row = {"dataset": name, "seed": seed, "method": method}
            row["fit_seconds"] = seconds[method]
            row["epochs"] = epochs[method]
            row.update(scores.loc[method].to_dict())
            row.update(sklearn_kmeans(embeddings[method], labels, seed))
            rows.append(row)
            logger.info(
                "seed %d %s: %.1f s, total %.3f", seed, method, row["fit_seconds"], row["Total"]
            )
    return rows, description, metric_type


def medians(rows: list[dict]) -> list[dict]:
    """One row per (dataset, method): the median over seeds of every number."""
    frame = pd.DataFrame(rows)
    summary = []
    for (dataset, method), group in frame.groupby(["dataset", "method"], sort=False):
        row = {"dataset": dataset, "method": method, "seeds": group["seed"].tolist()}
        for column in group.columns.drop(["dataset", "method", "seed"]):
            values = pd.to_numeric(group[column], errors="coerce")
            row[column] = None if values.isna().all() else float(values.median())
        summary.append(row)
    return summary


def table_columns(metric_type: dict) -> list[tuple[str, str, str]]:
    """(key, header, format) of the table: method, fit time, bio metrics and sklearn's k-means
    beside them, batch metrics, aggregates."""
    by_type: dict[str, list[str]] = {}
    for metric, kind in metric_type.items():
        by_type.setdefault(kind, []).append(metric)
    columns = [("dataset", "dataset", ""), ("method", "method", "")]
    columns += [("fit_seconds", "fit s", ".1f"), ("epochs", "epochs", ".0f")]
    columns += [(m, m, ".3f") for m in by_type.get("Bio conservation", [])]
    columns += [(m, m, ".3f") for m in ("sklearn KMeans NMI", "sklearn KMeans ARI")]
    columns += [(m, m, ".3f") for m in by_type.get("Batch correction", [])]
    columns += [(m, m, ".3f") for m in by_type.get("Aggregate score", [])]
    return columns


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--datasets",
        nargs="+",
        default=["cellbench_3cl", "cellbench_5cl", "kang2018_ifnb", "simulated"],
        choices=[*COLUMNS, "simulated"],
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument(
        "--methods", nargs="+", default=list(METHODS), choices=METHODS, help="default: all four"
    )
    parser.add_argument(
        "--max-epochs", type=int, default=None, help="cap for SCVI and scvae; default: their own"
    )
    parser.add_argument(
        "--sim-batch-effect",
        type=float,
        default=SIM_BATCH_LOG_FOLD,
        help="sd of the per-gene log batch factor of 'simulated'",
    )
    parser.add_argument(
        "--scvae-option",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="one more keyword of scvae.fit, e.g. batch_alignment=3 or early_stopping=false "
        "(repeatable; true/false/none/numbers are parsed)",
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/integration.json"))
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke test: {QUICK_CELLS} cells, {QUICK_EPOCHS} epochs (unless --max-epochs)",
    )
    args = parser.parse_args()
    try:
        args.scvae_options = scvae_options(args.scvae_option, OWN_SCVAE_KEYWORDS)
    except ValueError as error:
        parser.error(str(error))
    if args.quick and args.max_epochs is None:
        args.max_epochs = QUICK_EPOCHS
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logger.setLevel(logging.INFO)
    for noisy in (
        "scvi",
        "lightning.fabric",
        "lightning.pytorch",
        "lightning.fabric.utilities.seed",
        "lightning.pytorch.utilities.rank_zero",
        "jax",
    ):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    rows, descriptions, metric_type = [], {}, {}
    for name in args.datasets:
        dataset_rows, descriptions[name], metric_type = run_dataset(name, args)
        rows += dataset_rows
        # The results so far, rewritten after each dataset (a long run keeps what it did).
        write_results(rows, descriptions, metric_type, args, final=name == args.datasets[-1])


def write_results(
    rows: list[dict], descriptions: dict, metric_type: dict, args, *, final: bool
) -> None:
    """The table of medians over seeds to ``args.out`` (JSON) and its ``.md``; printed when
    ``final``."""
    summary = medians(rows)
    env = environment(seed=args.seeds[0], extra_libraries=PEER_LIBRARIES)
    env["seeds"] = args.seeds
    table = markdown_table(summary, table_columns(metric_type))
    epochs = "each tool's default" if args.max_epochs is None else f"at most {args.max_epochs}"
    header = "\n".join(
        [
            f"Integration (scib-metrics Benchmarker, min_max_scale=False); median over seeds "
            f"{args.seeds}; epochs: {epochs}; device {env['device']}, "
            f"{env['torch_threads']} torch threads"
            + (f"; scvae.fit options {args.scvae_options}" if args.scvae_options else "")
            + ("; QUICK smoke test" if args.quick else ""),
            *(
                f"- {name}: {d['cells']} cells, {d['genes']} genes, batches {d['batches']}"
                for name, d in descriptions.items()
            ),
        ]
    )
    if final:
        print(header + "\n\n" + table)  # a benchmark script reports on stdout
    write_json(
        args.out,
        {
            "header": header,
            "table": table,
            "summary": summary,
            "rows": rows,
            "metric_type": metric_type,
            "scvae_options": args.scvae_options,
            "datasets": descriptions,
            "environment": env,
            "arguments": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        },
    )
    args.out.with_suffix(".md").write_text(header + "\n\n" + table + "\n")


if __name__ == "__main__":
    main()
