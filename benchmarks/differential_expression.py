"""Differential expression against a known truth: scvae, scvi-tools and scanpy, in one process.

Protocol: ../shared/BENCHMARK.md, row "differential expression".

1. ``simulated``: :func:`scvae.datasets.simulate_differential` (condition B vs A, 10 % of the
   genes DE at |log2 fold change| 0.75, 1, 1.5 or 2, two batches the conditions spread over
   unequally (30 % / 70 % B), B at 1.5 times A's depth, baseline means from a few hundredths
   of a count per cell to tens). Per method: AUPRC of its ranking against ``var["is_de"]``,
   and of its calls at a nominal 5 % and 10 %: the empirical FDR (false calls / calls) and
   the recall. Methods and their calls:

   - scvae: ``scvae.fit(adata, batch_key="batch")`` (default training), then
     ``differential_expression(B vs A, delta=0.25, fdr=level)``; ranking by ``proba_de``
     (ties by ``|lfc_mean|``), calls ``is_de``;
   - scvi-tools: ``SCVI(batch_key="batch")`` with its default training, then
     ``differential_expression(groupby="condition", group1="B", group2="A",
     batch_correction=True)``: its default ``mode="vanilla"`` (ranking by ``|bayes_factor|``;
     it has no FDR, so calls are its documented ``|bayes_factor| > 3``, the same at both
     levels) and ``mode="change"`` (``delta=0.25``, ranking by ``proba_de``, calls by its own
     posterior expected FDR at each level);
   - scanpy: ``rank_genes_groups(method="wilcoxon" / "t-test", groups=["B"],
     reference="A")`` on ``normalize_total(1e4)`` + ``log1p`` counts; ranking by p-value
     (ties by ``|score|``), calls ``pvals_adj`` (Benjamini-Hochberg) below the level.

   The truth for every method is "the gene was given a fold change" (every DE gene's
   ``|true_lfc|`` is at least 0.66, every other gene's at most 0.1). Beside it, the FDR of
   the same calls against the event scvae tests (:func:`tested_truth`: the true fold change
   of ``mean + pseudocount`` counts per cell beyond ``delta``), which differs from it for the DE
   genes expressed at a few hundredths of a count per cell.
2. ``kang2018_ifnb``: scvae fitted on all cells (no batch key: the condition is what is
   compared), then STIM vs CTRL within each cell type with at least 10 cells in both: the
   rank of interferon-stimulated genes among the genes up in STIM (ordered by ``proba_de``,
   then ``lfc_mean``), beside scanpy Wilcoxon's ranks, and the agreement between cell types
   (median pairwise Jaccard index of their top-50 up genes).
3. ``timing``: one ``differential_expression`` call for 2 groups x 2000 genes x 10,000 cells
   (simulated, a model trained 20 epochs), with the default ``max_cells`` and with all cells.

    python benchmarks/differential_expression.py --seeds 0 1 2
    python benchmarks/differential_expression.py --quick   # smoke test, scanpy and scvae only
    python benchmarks/differential_expression.py --parts simulated --methods none \\
        --seeds 0 1 --scvae-option early_stopping=false   # a variant of scvae's fit

Needs the bench extra for scvi-tools (``pip install -e ".[bench]"``); without it, the scvi-tools
rows are left out with a warning.
"""

from __future__ import annotations

import argparse
import inspect
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
from sklearn.metrics import average_precision_score

import scvae
from scvae import datasets

logger = logging.getLogger("benchmark")

LEVELS = (0.05, 0.1)
DELTA = 0.25
#: scvae's default pseudocount: the tested event's.
PSEUDOCOUNT = inspect.signature(scvae.differential_expression).parameters["pseudocount"].default
#: Interferon-stimulated genes whose rank in STIM vs CTRL is reported (those in the data).
ISGS = ("ISG15", "IFI6", "IFIT1", "IFIT3", "MX1", "ISG20", "IFIT2", "OAS1", "LY6E", "IFITM3")
TOP = 50


def log_normalised(adata: AnnData) -> AnnData:
    out = adata.copy()
    sc.pp.normalize_total(out, target_sum=1e4)
    sc.pp.log1p(out)
    return out


def scanpy_calls(adata: AnnData, method: str) -> pd.DataFrame:
    logged = log_normalised(adata)
    sc.tl.rank_genes_groups(logged, "condition", groups=["B"], reference="A", method=method)
    table = sc.get.rank_genes_groups_df(logged, group="B").set_index("names")
    rank = -np.log10(np.maximum(table["pvals"], 1e-300)) + 1e-6 * table["scores"].abs()
    calls = {level: table["pvals_adj"] < level for level in LEVELS}
    return pd.DataFrame({"rank": rank, **{f"call_{lv}": c for lv, c in calls.items()}})


def scvae_calls(
    adata: AnnData, seed: int, max_epochs: int | None, options: dict
) -> tuple[pd.DataFrame, float]:
    restore_torch_threads()
    start = time.perf_counter()
    model = scvae.fit(
        adata, batch_key="batch", seed=seed, progress=False, max_epochs=max_epochs, **options
    )
    fit_seconds = time.perf_counter() - start
    out = {}
    for level in LEVELS:
        de = scvae.differential_expression(
            adata, model, "condition", "B", "A", delta=DELTA, fdr=level, seed=seed
        )
        out[f"call_{level}"] = de["is_de"]
    out["rank"] = de["proba_de"] + 1e-6 * de["lfc_mean"].abs()
    return pd.DataFrame(out), fit_seconds


def scvi_calls(
    adata: AnnData, seed: int, max_epochs: int | None
) -> tuple[dict[str, pd.DataFrame], float]:
    import scvi

    scvi.settings.seed = seed
    data = adata.copy()
    scvi.model.SCVI.setup_anndata(data, batch_key="batch")
    model = scvi.model.SCVI(data)
    restore_torch_threads()
    start = time.perf_counter()
    model.train(max_epochs=max_epochs, enable_progress_bar=False)
    fit_seconds = time.perf_counter() - start
    common = {"groupby": "condition", "group1": "B", "group2": "A", "batch_correction": True}
    vanilla = model.differential_expression(**common)
    calls = vanilla["bayes_factor"].abs() > 3
    out = {
        "scvi-tools (vanilla)": pd.DataFrame(
            {
                "rank": vanilla["bayes_factor"].abs(),
                **{f"call_{lv}": calls for lv in LEVELS},
            }
        )
    }
    change = {}
    for level in LEVELS:
        table = model.differential_expression(
            **common, mode="change", delta=DELTA, fdr_target=level
        )
        change[f"call_{level}"] = table[f"is_de_fdr_{level}"]
    change["rank"] = table["proba_de"] + 1e-6 * table["lfc_mean"].abs()
    out["scvi-tools (change)"] = pd.DataFrame(change)
    return out, fit_seconds


def scores(
    method: str, calls: pd.DataFrame, truth: pd.Series, tested: pd.Series, seed: int
) -> dict:
    """AUPRC against ``truth``; per level, the calls' FDR and recall against ``truth`` and
    their FDR against ``tested`` (see :func:`tested_truth`)."""
    calls = calls.reindex(truth.index)
    row = {"method": method, "seed": seed, "auprc": average_precision_score(truth, calls["rank"])}
    for level in LEVELS:
        called = calls[f"call_{level}"].fillna(False).astype(bool)
        n = int(called.sum())
        row[f"calls_{level}"] = n
        row[f"fdr_{level}"] = float((called & ~truth).sum() / n) if n else 0.0
        row[f"recall_{level}"] = float((called & truth).sum() / truth.sum())
        row[f"fdr_tested_{level}"] = float((called & ~tested).sum() / n) if n else 0.0
    return row


def tested_truth(adata: AnnData) -> pd.Series:
    """The event scvae's ``proba_de`` is about, from the true means: ``|log2((mean_B + pc) /
    (mean_A + pc))| > delta`` with scvae's default pseudocount ``pc``, means in counts per
    cell at the median depth of all cells (the simulation's ``true_mean_*`` are at 2000
    counts). A DE gene expressed at a few thousandths of a count per cell falls short of
    ``delta`` there by the documented tiny-gene rule: calling it is false for this truth,
    true for ``is_de``."""
    depth = float(np.median(np.asarray(adata.X.sum(axis=1)).ravel())) / 2000.0
    var = adata.var
    pc = PSEUDOCOUNT
    lfc = np.log2(var["true_mean_B"] * depth + pc) - np.log2(var["true_mean_A"] * depth + pc)
    return lfc.abs() > DELTA


def simulated_rows(seed: int, args) -> list[dict]:
    adata = datasets.simulate_differential(n_cells=args.cells, n_genes=args.genes, seed=seed)
    truth = adata.var["is_de"].astype(bool)
    tested = tested_truth(adata)
    rows = []
    for method in ("wilcoxon", "t-test"):
        calls = scanpy_calls(adata, method)
        rows.append(scores(f"scanpy {method}", calls, truth, tested, seed))
    calls, seconds = scvae_calls(adata, seed, args.max_epochs, args.scvae_options)
    rows.append({**scores("scvae", calls, truth, tested, seed), "fit_s": seconds})
    if "scvi" in args.methods:
        try:
            by_mode, seconds = scvi_calls(adata, seed, args.max_epochs)
        except ImportError:
            logger.warning("scvi-tools is not installed: its rows are left out")
        else:
            for name, table in by_mode.items():
                rows.append({**scores(name, table, truth, tested, seed), "fit_s": seconds})
    for row in rows:
        logger.info("seed %d %s", seed, row)
    return rows


def median_rows(rows: list[dict]) -> list[dict]:
    frame = pd.DataFrame(rows)
    numeric = frame.drop(columns=["seed"]).groupby("method", sort=False).median()
    numeric["seeds"] = frame.groupby("method", sort=False)["seed"].count()
    return numeric.reset_index().to_dict("records")


def kang(args) -> dict:
    adata = datasets.read("kang2018_ifnb")
    counts = adata.copy()
    sc.pp.highly_variable_genes(counts, flavor="seurat_v3", n_top_genes=2000)
    keep = counts.var["highly_variable"] | counts.var_names.isin(ISGS)
    adata = adata[:, keep.to_numpy()].copy()
    isgs = [g for g in ISGS if g in adata.var_names]
    model = scvae.fit(adata, seed=0, progress=False, max_epochs=args.max_epochs)
    logged = log_normalised(adata)
    types = [
        t
        for t, n in pd.crosstab(adata.obs["seurat_annotations"], adata.obs["stim"]).iterrows()
        if n.min() >= 10
    ]
    ranks, tops, wilcoxon_ranks = {}, {}, {}
    adata.obs["type_stim"] = (
        adata.obs["seurat_annotations"].astype(str) + "|" + adata.obs["stim"].astype(str)
    )
    logged.obs["type_stim"] = adata.obs["type_stim"]
    for cell_type in types:
        de = scvae.differential_expression(
            adata, model, "type_stim", f"{cell_type}|STIM", f"{cell_type}|CTRL"
        )
        up = de[de["lfc_mean"] > 0].sort_values(["proba_de", "lfc_mean"], ascending=False)
        order = {g: i + 1 for i, g in enumerate(up.index)}
        ranks[cell_type] = {g: order.get(g) for g in isgs}
        tops[cell_type] = set(up.index[:TOP])
        sc.tl.rank_genes_groups(
            logged,
            "type_stim",
            groups=[f"{cell_type}|STIM"],
            reference=f"{cell_type}|CTRL",
            method="wilcoxon",
        )
        names = list(sc.get.rank_genes_groups_df(logged, group=f"{cell_type}|STIM")["names"])
        wilcoxon_ranks[cell_type] = {g: names.index(g) + 1 for g in isgs}
    pairs = [(a, b) for i, a in enumerate(types) for b in types[i + 1 :]]
    jaccard = [len(tops[a] & tops[b]) / len(tops[a] | tops[b]) for a, b in pairs]
    return {
        "cell_types": types,
        "isgs": isgs,
        "scvae_ranks": ranks,
        "wilcoxon_ranks": wilcoxon_ranks,
        "median_rank_scvae": float(
            np.median([r for t in ranks.values() for r in t.values() if r is not None] or [np.nan])
        ),
        "median_rank_wilcoxon": float(
            np.median([r for t in wilcoxon_ranks.values() for r in t.values()])
        ),
        "top50_jaccard_median": float(np.median(jaccard)) if jaccard else float("nan"),
    }


def timing() -> dict:
    adata = datasets.simulate_differential(n_cells=10_000, n_genes=2000, seed=0)
    model = scvae.fit(adata, batch_key="batch", max_epochs=20, progress=False)
    out = {}
    for name, max_cells in (("default max_cells (2000)", 2000), ("all cells", 10_000)):
        start = time.perf_counter()
        scvae.differential_expression(adata, model, "condition", "B", "A", max_cells=max_cells)
        out[name] = time.perf_counter() - start
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument(
        "--parts",
        nargs="+",
        default=["simulated", "kang", "timing"],
        choices=["simulated", "kang", "timing"],
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        default=["scvi"],
        choices=["scvi", "none"],
        help="peers beside scvae and scanpy ('none': no scvi-tools)",
    )
    parser.add_argument("--cells", type=int, default=4000)
    parser.add_argument("--genes", type=int, default=2000)
    parser.add_argument("--max-epochs", type=int, default=None, help="default: each tool's own")
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/differential_expression.json")
    )
    parser.add_argument(
        "--scvae-option",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="one more keyword of the simulated part's scvae.fit, e.g. early_stopping=false "
        "(repeatable)",
    )
    parser.add_argument("--quick", action="store_true", help="800 cells, 300 genes, 10 epochs")
    args = parser.parse_args()
    try:
        args.scvae_options = scvae_options(
            args.scvae_option, ("batch_key", "seed", "progress", "max_epochs")
        )
    except ValueError as error:
        parser.error(str(error))
    if args.quick:
        args.cells, args.genes, args.max_epochs = 800, 300, 10
        args.methods, args.seeds, args.parts = ["none"], args.seeds[:1], ["simulated"]
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logger.setLevel(logging.INFO)

    payload: dict = {
        "environment": environment(args.seeds[0]),
        "args": vars(args) | {"out": str(args.out)},
    }
    if "simulated" in args.parts:
        rows = [row for seed in args.seeds for row in simulated_rows(seed, args)]
        payload["simulated_per_seed"] = rows
        payload["simulated"] = median_rows(rows)
        columns = [("method", "method", "s"), ("auprc", "AUPRC", ".3f")]
        for level in LEVELS:
            pct = f"{level:.0%}"
            columns += [
                (f"fdr_{level}", f"FDR at {pct}", ".3f"),
                (f"recall_{level}", f"recall at {pct}", ".3f"),
                (f"fdr_tested_{level}", f"FDR at {pct}, tested event", ".3f"),
            ]
        columns += [("fit_s", "fit s", ".0f"), ("seeds", "seeds", "d")]
        print(markdown_table(payload["simulated"], columns))
    if "kang" in args.parts:
        payload["kang2018_ifnb"] = kang(args)
        print(payload["kang2018_ifnb"])
    if "timing" in args.parts:
        payload["timing_seconds"] = timing()
        print(payload["timing_seconds"])
    write_json(args.out, payload)


if __name__ == "__main__":
    main()
