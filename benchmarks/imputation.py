"""Imputation of hidden entries: scvae (NaN = missing) against SCVI (fed zeros, its only
option), per-gene mean fill and random fill. Protocol: ../shared/BENCHMARK.md.

Both models train on the training cells (seed-0 90/10 split, 1 x 128 hidden, 10 latent, NB,
batch 128, lr 1e-3); then 10 % of the entries of the held-out
cells are hidden: (a) at random, (b) among the nonzero entries, (c) a random 10 % of the genes
in the held-out cells of one batch (of all held-out cells where the dataset has no batch).
Each model fills them with its posterior predictive mean and, in a second row, its median (the
best point estimate for absolute error); "PIT coverage" is the share of randomised PIT values
in [0.05, 0.95], the coverage an interval holding exactly 90 % would have (``scvae.metrics.
randomized_pit``): integer intervals cannot hold exactly 90 % for mostly-zero genes.

The dataset ``simulated`` (``scvae.datasets.simulate``, 4000 cells x 2000 genes, 6 groups, 2
batches, NB counts with known means) adds what only known truth allows: the error of each
estimate against the true mean, and "oracle" rows that fill the hidden entries from the true NB
distribution itself, the floor no method can beat on average.

    python benchmarks/imputation.py --datasets pbmc4k_scdcc cellbench_5cl mouse_bladder_scdcc
    python benchmarks/imputation.py --datasets simulated
"""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

import anndata as ad
import numpy as np
import scipy.sparse as sp
import torch
from _common import fit_scvi_reference, prepare, report, split

import scvae
from scvae._data.memory import prepare_counts
from scvae._fit.fit import fit_counts
from scvae._fit.settings import FitSettings
from scvae._tools.predictive import count_interval, predictive_draws
from scvae._vae.distributions import CountDistribution
from scvae.datasets import simulate
from scvae.metrics import randomized_pit

logger = logging.getLogger("benchmark")
SCENARIOS = ("random", "nonzero", "gene_block")


def load(name: str) -> tuple[ad.AnnData, np.ndarray, np.ndarray, tuple | None]:
    """(adata, train_idx, test_idx, truth) where truth is (true means as cells x genes,
    inverse dispersions per gene) for ``simulated`` and None for the public datasets."""
    if name != "simulated":
        return (*prepare(name, seed=0), None)
    adata = simulate(4000, 2000, n_groups=6, n_batches=2, seed=0, return_truth=True)
    truth = (adata.layers["true_mean"], adata.var["true_theta"].to_numpy())
    adata = ad.AnnData(adata.X, obs=adata.obs[["cell_type", "batch"]], var=adata.var[[]])
    return (adata, *split(adata.n_obs, seed=0), truth)


def hide(test: ad.AnnData, scenario: str, batch_key: str | None, rng) -> np.ndarray:
    """Boolean cells x genes mask of the entries to hide."""
    counts = test.X.toarray()
    hidden = np.zeros(counts.shape, dtype=bool)
    if scenario == "random":
        hidden = rng.random(counts.shape) < 0.1
    elif scenario == "nonzero":
        rows, cols = np.nonzero(counts)
        pick = rng.random(rows.size) < 0.1
        hidden[rows[pick], cols[pick]] = True
    else:
        genes = rng.choice(counts.shape[1], size=max(1, counts.shape[1] // 10), replace=False)
        cells = np.ones(test.n_obs, dtype=bool)
        if batch_key is not None:
            batch = test.obs[batch_key].astype(str).to_numpy()
            cells = batch == sorted(set(batch))[0]
        hidden[np.ix_(cells, genes)] = True
    # A cell must keep some observed counts: never hide every nonzero entry of a cell.
    empty = ((counts * ~hidden).sum(axis=1) == 0) & hidden.any(axis=1)
    hidden[empty] = False
    return hidden


def scores(
    estimate: np.ndarray,
    truth: np.ndarray,
    log_lik: np.ndarray | None = None,
    lower: np.ndarray | None = None,
    upper: np.ndarray | None = None,
    pit: np.ndarray | None = None,
) -> dict:
    """Metrics of the protocol on the hidden entries (1-d arrays)."""
    le, lt = np.log1p(estimate), np.log1p(truth)
    nonzero = truth > 0
    out = {
        "mae_log1p": float(np.mean(np.abs(le - lt))),
        "r_log1p": float(np.corrcoef(le, lt)[0, 1]),
        "median_ae_nonzero": float(np.median(np.abs(estimate[nonzero] - truth[nonzero]))),
        "pred_loglik": None if log_lik is None else float(np.mean(log_lik)),
        "coverage90": None,
        "pit_coverage90": None if pit is None else float(np.mean((pit >= 0.05) & (pit <= 0.95))),
        "_estimate": estimate,  # for the error against the true mean, where it is known
    }
    if lower is not None:
        out["coverage90"] = float(np.mean((lower <= truth) & (truth <= upper)))
    return out


def evaluate_scvae(model, test_nan, truth, hidden, n_samples: int) -> dict[str, dict]:
    """Rows "scvae" (predictive mean) and "scvae median", through the public API."""
    rows, cols = np.nonzero(hidden)
    log_lik = scvae.predictive_log_likelihood(test_nan, model, truth, n_samples=n_samples)
    draws = [
        torch.stack([d.sample() for d in dists]).numpy()
        for _, _, dists in predictive_draws(model, model.prepare(test_nan), n_samples=n_samples)
    ]
    pit = randomized_pit(np.concatenate(draws, axis=1), truth[rows, cols])
    filled = test_nan.copy()
    scvae.impute(filled, model, interval=0.9, n_samples=n_samples)
    scvae.impute(filled, model, point="median", key_added="median", n_samples=n_samples)
    layer = filled.layers
    interval = (layer["scvae_lower"][rows, cols], layer["scvae_upper"][rows, cols])
    out = {}
    for name, key in (("scvae", "scvae_imputed"), ("scvae median", "median_imputed")):
        out[name] = scores(layer[key][rows, cols], truth[rows, cols], log_lik, *interval, pit)
    return out


def evaluate_scvi(model, test_zero: ad.AnnData, truth, hidden, n_samples: int) -> dict[str, dict]:
    """Rows "SCVI (zeros)" (predictive mean) and "SCVI (zeros) median"."""
    rows, cols = np.nonzero(hidden)
    means, medians, log_lik, lowers, uppers, samples = [], [], [], [], [], []
    for chunk in np.array_split(np.arange(test_zero.n_obs), max(1, test_zero.n_obs // 64)):
        params = model.get_likelihood_parameters(test_zero, indices=chunk, n_samples=n_samples)
        mu = torch.as_tensor(params["mean"])  # samples x cells x genes
        theta = torch.as_tensor(params["dispersions"])  # (samples x) cells x genes
        if theta.dim() == 3:  # per-gene dispersion: the same in every sample
            theta = theta[0]
        in_chunk = np.isin(rows, chunk)
        r = np.searchsorted(chunk, rows[in_chunk])
        c = cols[in_chunk]
        log_mu = torch.log(mu[:, r, c].clamp(min=1e-12))
        dist = CountDistribution(log_mu, torch.log(theta[r, c])[None].expand_as(log_mu))
        x = torch.as_tensor(truth[rows[in_chunk], c], dtype=torch.float32)
        log_lik.append(torch.logsumexp(dist.log_prob(x.expand_as(log_mu)), 0) - math.log(len(mu)))
        means.append(mu[:, r, c].mean(0))
        drawn = dist.sample()
        samples.append(drawn.numpy())
        medians.append(drawn.median(0).values)
        lower, upper = count_interval(drawn, 0.9)
        lowers.append(lower)
        uppers.append(upper)
    # Chunks were taken in row order, so concatenating keeps the row-major order of rows/cols.
    common = {
        "truth": truth[rows, cols],
        "log_lik": torch.cat(log_lik).numpy(),
        "lower": torch.cat(lowers).numpy(),
        "upper": torch.cat(uppers).numpy(),
        "pit": randomized_pit(np.concatenate(samples, axis=1), truth[rows, cols]),
    }
    return {
        "SCVI (zeros)": scores(torch.cat(means).numpy(), **common),
        "SCVI (zeros) median": scores(torch.cat(medians).numpy(), **common),
    }


def evaluate_oracle(true_mean, theta, truth, hidden, n_samples: int) -> dict[str, dict]:
    """Rows "oracle" (the true mean) and "oracle median": the hidden entries filled from the
    true NB distribution that drew them (simulated data only)."""
    rows, cols = np.nonzero(hidden)
    mu = torch.as_tensor(true_mean[rows, cols], dtype=torch.float64)
    dist = CountDistribution(mu.log(), torch.as_tensor(np.log(theta[cols]), dtype=torch.float64))
    x = torch.as_tensor(truth[rows, cols], dtype=torch.float64)
    torch.manual_seed(0)
    drawn = dist.sample((n_samples,))
    lower, upper = count_interval(drawn, 0.9)
    common = {
        "truth": truth[rows, cols],
        "log_lik": dist.log_prob(x).numpy(),
        "lower": lower.numpy(),
        "upper": upper.numpy(),
        "pit": randomized_pit(drawn.numpy(), truth[rows, cols]),
    }
    return {
        "oracle": scores(mu.numpy(), **common),
        "oracle median": scores(drawn.median(0).values.numpy(), **common),
    }


def evaluate_baseline(train: ad.AnnData, test_nan: ad.AnnData, truth, hidden, method: str):
    combined = ad.concat([train, test_nan])
    combined.X = combined.X.toarray() if sp.issparse(combined.X) else combined.X
    scvae.impute(combined, method=method, key_added=method)
    filled = combined.layers[f"{method}_imputed"][train.n_obs :]
    rows, cols = np.nonzero(hidden)
    return scores(filled[rows, cols], truth[rows, cols])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["pbmc4k_scdcc"])
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rows = []
    for name in args.datasets:
        adata, train_idx, test_idx, known = load(name)
        batch_key = "batch" if "batch" in adata.obs else None
        train, test = adata[train_idx].copy(), adata[test_idx].copy()
        ours = fit_counts(
            prepare_counts(train, batch_key=batch_key),
            FitSettings(
                batch_key=batch_key,
                max_epochs=args.epochs,
                batch_size=128,
                n_latent=10,  # SCVI's architecture: 10 latent, standard normal prior
                prior_components=0,
                lr=1e-3,
                early_stopping=False,
                validation_fraction=0.0,
                progress=False,
                seed=0,
            ),
        )
        reference = fit_scvi_reference(train, batch_key=batch_key, epochs=args.epochs)
        truth = test.X.toarray()
        for scenario in SCENARIOS:
            hidden = hide(test, scenario, batch_key, np.random.default_rng(0))
            test_nan = test.copy()
            test_nan.X = np.where(hidden, np.nan, truth).astype(np.float32)
            test_zero = test.copy()
            test_zero.X = sp.csr_matrix(np.where(hidden, 0.0, truth).astype(np.float32))
            results = {
                **evaluate_scvae(ours, test_nan.copy(), truth, hidden, args.samples),
                **evaluate_scvi(reference, test_zero, truth, hidden, args.samples),
                "mean fill": evaluate_baseline(train, test_nan, truth, hidden, "mean"),
                "random fill": evaluate_baseline(train, test_nan, truth, hidden, "random"),
            }
            if known is not None:
                true_mean = known[0][test_idx]
                results.update(evaluate_oracle(true_mean, known[1], truth, hidden, args.samples))
            for method, metrics in results.items():
                estimate = metrics.pop("_estimate")
                if known is not None:
                    off = np.log1p(estimate) - np.log1p(true_mean[np.nonzero(hidden)])
                    metrics["mae_true_mean"] = float(np.mean(np.abs(off)))
                rows.append(
                    {
                        "dataset": name,
                        "scenario": scenario,
                        "method": method,
                        "n_hidden": int(hidden.sum()),
                        **metrics,
                    }
                )
    columns = [
        ("dataset", "dataset", ""),
        ("scenario", "hidden", ""),
        ("method", "method", ""),
        ("pred_loglik", "pred. log-lik (nats/entry)", ".3f"),
        ("mae_log1p", "MAE log1p", ".3f"),
        ("r_log1p", "r log1p", ".3f"),
        ("mae_true_mean", "MAE log1p vs true mean", ".3f"),
        ("median_ae_nonzero", "median AE nonzero", ".2f"),
        ("coverage90", "90% coverage", ".3f"),
        ("pit_coverage90", "PIT coverage", ".3f"),
    ]
    report(rows, columns, args.out / "imputation.json", args)


if __name__ == "__main__":
    main()
