"""``python -m scvae demo``: the main job on built-in simulated data, no network needed.

Hides 10 % of the entries (NaN: missing), fits the model, imputes the hidden entries with 90 %
intervals, generates new cells and checks them against the data, and writes to an output
folder: the AnnData with embedding and imputed layers (``demo.h5ad``), the generated cells
(``generated.h5ad``), a UMAP coloured by cell type and batch, the loss curve, the posterior
predictive check plot, the saved model and ``scores.json``. It reports how well the embedding
recovers the known groups next to PCA of the complete log-normalised counts, the imputation
error next to per-gene mean fill, and how close generated cells are to real ones.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from . import datasets, metrics, pl
from ._fit.fit import fit
from ._tools.generate import generate
from ._tools.impute import impute
from ._tools.ppc import posterior_predictive_check

logger = logging.getLogger(__name__)

__all__ = ["run_demo"]

#: What the demo writes into its folder, and nothing else.
DEMO_OUTPUTS = (
    "demo.h5ad",
    "generated.h5ad",
    "umap_scvae.png",
    "loss.png",
    "ppc.png",
    "model",
    "scores.json",
)
#: The file that marks a folder as a demo's (written before anything else).
DEMO_MARKER = ".scvae_demo"


def check_demo_folder(out: Path) -> None:
    """Refuse an output folder the demo did not make, unless it is empty, and one that
    holds anything the demo does not write: the demo replaces its own files, never a
    user's (a ``scores.json`` of the user's included).

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> check_demo_folder(folder)  # empty: used
    >>> (folder / "scores.json").write_text("{}")
    2
    >>> check_demo_folder(folder)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    FileExistsError: ... was not written by the demo and is not empty ...
    """
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} is a file, not a folder: pass a folder for the demo")
    if not out.is_dir():
        return
    held = sorted(p.name for p in out.iterdir())
    if held and DEMO_MARKER not in held:
        raise FileExistsError(
            f"{out} was not written by the demo and is not empty (it holds {held[:10]}): "
            "the demo writes into a new folder, an empty one, or one an earlier demo wrote; "
            "pass another --out"
        )
    others = [name for name in held if name not in (*DEMO_OUTPUTS, DEMO_MARKER)]
    if others:
        raise FileExistsError(
            f"{out} holds files the demo does not write ({others[:10]}): they are not "
            "replaced; pass another --out"
        )


def run_demo(
    out: str | Path = "scvae_demo", *, quick: bool = False, progress: bool = True
) -> dict:
    """Run the demo and write its outputs to ``out``; returns the table of scores.

    Parameters
    ----------
    out
        Output folder: new, empty, or written by an earlier demo (whose files are replaced);
        any other folder, or one holding files the demo does not write, is refused before
        any work.
    quick
        A smaller dataset (600 cells x 300 genes; for smoke tests).
    progress
        Show the training progress bar.
    """
    import matplotlib

    matplotlib.use("Agg")
    import scanpy as sc

    out = Path(out)
    check_demo_folder(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / DEMO_MARKER).write_text("written by python -m scvae demo; it replaces its own files\n")
    n_cells, n_genes = (600, 300) if quick else (3000, 1000)
    complete = datasets.simulate(n_cells, n_genes, n_groups=6, n_batches=2, seed=0)
    truth = complete.X.toarray()
    hidden = np.random.default_rng(0).random(truth.shape) < 0.1
    adata = complete.copy()
    del adata.layers["counts"]
    adata.X = np.where(hidden, np.nan, truth).astype(np.float32)
    logger.info(
        "simulated %d cells x %d genes, 6 groups, 2 batches; %d entries hidden (NaN)",
        n_cells,
        n_genes,
        hidden.sum(),
    )

    started = time.perf_counter()
    model = fit(
        adata,
        batch_key="batch",
        labels_key="cell_type",
        progress=progress,
    )
    seconds = time.perf_counter() - started

    # Baseline: PCA of log-normalised counts (what a scanpy user would do without scvae),
    # given the complete counts.
    baseline = complete.copy()
    sc.pp.normalize_total(baseline, target_sum=1e4)
    sc.pp.log1p(baseline)
    sc.pp.pca(baseline, n_comps=10)
    labels = adata.obs["cell_type"].to_numpy()
    scores = {}
    for name, embedding in (("scvae", adata.obsm["X_scvae"]), ("PCA", baseline.obsm["X_pca"])):
        knn = metrics.knn_scores(embedding, labels)
        leiden = metrics.leiden_scores(embedding, labels, resolution=0.5)
        batch_mix = metrics.knn_scores(embedding, adata.obs["batch"].to_numpy())["accuracy"]
        scores[name] = {
            "knn_accuracy": knn["accuracy"],
            "leiden_ari": leiden["ari"],
            "batch_knn_accuracy": batch_mix,
        }

    sc.pp.neighbors(adata, use_rep="X_scvae")
    sc.tl.umap(adata, random_state=0)
    fig = sc.pl.umap(adata, color=["cell_type", "batch"], show=False, return_fig=True)
    fig.savefig(out / "umap_scvae.png", dpi=120, bbox_inches="tight")
    pl.loss(model, save=out / "loss.png", show=False)
    model.save(out / "model", overwrite=True)

    impute(adata, model, interval=0.9)
    impute(adata, method="mean", key_added="mean")
    scores["imputation"] = {
        name: {
            "mae_log1p": float(
                np.abs(np.log1p(adata.layers[key][hidden]) - np.log1p(truth[hidden])).mean()
            ),
        }
        for name, key in (("scvae", "scvae_imputed"), ("mean fill", "mean_imputed"))
    }
    inside = (adata.layers["scvae_lower"][hidden] <= truth[hidden]) & (
        truth[hidden] <= adata.layers["scvae_upper"][hidden]
    )
    scores["imputation"]["scvae"]["coverage90"] = float(inside.mean())

    generated = generate(model, n_cells, seed=0)
    generated.write_h5ad(out / "generated.h5ad")
    # Against the complete counts: a classifier would tell cells with holes (read as zeros)
    # from drawn cells without any.
    check = posterior_predictive_check(model, complete, kind="generate", labels_key="cell_type")
    pl.ppc(check, save=out / "ppc.png", show=False)
    scores["generation"] = check.summary
    adata.write_h5ad(out / "demo.h5ad")

    scores["fit_seconds"] = seconds
    scores["epochs"] = len(model.history["train_loss"])
    scores["heldout_elbo"] = float(np.max(model.history.get("validation_elbo", [np.nan])))
    (out / "scores.json").write_text(json.dumps(scores, indent=1))
    return scores


def format_table(scores: dict) -> str:
    """The demo's scores as a small markdown table."""
    lines = [
        "| embedding | kNN acc. (cell type) | Leiden ARI | kNN acc. (batch; 0.5 = mixed) |",
        "|---|---:|---:|---:|",
    ]
    for name in ("scvae", "PCA"):
        s = scores[name]
        lines.append(
            f"| {name} | {s['knn_accuracy']:.3f} | {s['leiden_ari']:.3f} | "
            f"{s['batch_knn_accuracy']:.3f} |"
        )
    imputation, generation = scores["imputation"], scores["generation"]
    lines += [
        "",
        "| imputation of the hidden 10 % | MAE (log1p) | 90 % interval coverage |",
        "|---|---:|---:|",
        f"| scvae | {imputation['scvae']['mae_log1p']:.3f} | "
        f"{imputation['scvae']['coverage90']:.3f} |",
        f"| per-gene mean fill | {imputation['mean fill']['mae_log1p']:.3f} | |",
        "",
        f"generated cells vs real: r per-gene mean {generation['r_mean']:.4f}, "
        f"zero fraction {generation['r_zero_fraction']:.4f}, "
        f"two-sample AUC {generation['auc']:.3f} (0.5 = indistinguishable)",
        f"\nfit: {scores['epochs']} epochs in {scores['fit_seconds']:.1f} s; "
        f"best held-out ELBO {scores['heldout_elbo']:.1f} nats/cell",
    ]
    return "\n".join(lines)
