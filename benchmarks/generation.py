"""Generation and posterior predictive checks: scvae against SCVI's posterior predictive samples.

Per ../shared/BENCHMARK.md (generation row): both models fitted on the same 90 % of the cells
(2000 HVGs, 1x128 hidden, latent 10, NB, batch 128, lr 1e-3, same epochs); drawn counts are
compared with the real held-out cells: Pearson r of the per-gene mean, variance (log1p scale)
and zero fraction, and the AUC of a logistic regression on 50 PCs that tells drawn from real
cells (0.5 is ideal).

Rows per dataset:
- scvae generate: *new* cells from ``scvae.generate``, with the held-out cells' batch and
  cell-type composition (cell types from the training labels).
- scvae posterior: each held-out cell redrawn through its posterior (z ~ q(z|x), x ~ p(x|z)).
- SCVI posterior: ``SCVI.posterior_predictive_sample`` of the held-out cells, the same check.
- real (train) vs held-out: the training cells themselves, the ceiling any model can reach.

    python benchmarks/generation.py --datasets pbmc4k_scdcc kang2018_ifnb --epochs 100
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
from _common import fit_scvi_reference, prepare, report

import scvae
from scvae._data.memory import prepare_counts
from scvae._fit.fit import fit_counts
from scvae._fit.settings import FitSettings
from scvae._tools.ppc import compare_counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["pbmc4k_scdcc", "kang2018_ifnb"])
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    rows = []
    for name in args.datasets:
        adata, train_idx, test_idx = prepare(name, seed=0)
        batch_key = "batch" if "batch" in adata.obs else None
        train, test = adata[train_idx].copy(), adata[test_idx].copy()
        ours = fit_counts(
            prepare_counts(train, batch_key=batch_key, labels_key="cell_type"),
            FitSettings(
                batch_key=batch_key,
                labels_key="cell_type",
                max_epochs=args.epochs,
                n_latent=10,  # SCVI's architecture: 10 latent, standard normal prior
                prior_components=0,
                early_stopping=False,
                validation_fraction=0.0,
                progress=False,
                seed=0,
            ),
        )
        reference = fit_scvi_reference(train, batch_key=batch_key, epochs=args.epochs)
        scvi_draws = reference.posterior_predictive_sample(test, n_samples=1).to_scipy_sparse()
        train_sample = train[np.random.default_rng(0).choice(len(train), len(test), False)]
        checks = {
            "scvae generate": scvae.posterior_predictive_check(
                ours, test, kind="generate", labels_key="cell_type"
            ),
            "scvae posterior": scvae.posterior_predictive_check(ours, test, kind="posterior"),
            "SCVI posterior": compare_counts(test.X, scvi_draws, kind="posterior"),
            "real (train) vs held-out": compare_counts(test.X, train_sample.X, kind="real"),
        }
        for method, check in checks.items():
            rows.append(
                {"dataset": name, "method": method, "n_cells": test.n_obs, **check.summary}
            )
    columns = [
        ("dataset", "dataset", ""),
        ("method", "drawn cells", ""),
        ("n_cells", "held-out cells", "d"),
        ("r_mean", "r mean", ".4f"),
        ("r_variance", "r variance", ".4f"),
        ("r_zero_fraction", "r zero fraction", ".4f"),
        ("auc", "two-sample AUC", ".3f"),
    ]
    report(rows, columns, args.out / "generation.json", args)


if __name__ == "__main__":
    main()
