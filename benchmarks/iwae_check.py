"""Does an importance-weighted bound sharpen the embedding? (issue 20, docs/embedding.md)

Trains scvae's default model with the IWAE bound of ``K`` particles (Burda et al. 2016:
``log mean_k p(x, z_k) / q(z_k | x)``, the KL part weighted by the warm-up as the ELBO's is)
in place of the ELBO, by swapping the training loop's per-minibatch loss; everything else as
``embedding.py`` (the protocol's split, scores, held-out log p(x) with 100 importance
samples). Its loss has no term for a library size generated from z, so the fits leave
``library_from_latent`` off, as the default was when this was measured. An experiment, not an
option of ``fit``::

    python benchmarks/iwae_check.py --particles 5 --seeds 0 1
"""

from __future__ import annotations

import argparse
import logging
import math
import time

import torch
from _common import prepare, restore_torch_threads
from embedding import scores

import scvae
from scvae._train import loop
from scvae._vae.objective import CountRows

logger = logging.getLogger("benchmark")


def iwae_loss(particles: int):
    """A replacement of ``scvae._train.loss.step_loss``: the negative IWAE bound per cell."""

    def step_loss(module, batch, kl_weight: float, exact: bool, align: bool = True):
        x, n = batch.x, batch.x.shape[0]
        loc, scale = module.encode(
            x, batch.library, batch.batch_index, batch.observed, batch.nonzeros, batch.covariates
        )
        q = torch.distributions.Normal(loc, scale)
        z = q.rsample((particles,))
        flat = z.reshape(particles * n, -1)

        def repeat(t):
            return None if t is None else t.repeat(particles, *([1] * (t.dim() - 1)))

        counts = module.decode(
            flat,
            repeat(batch.library),
            repeat(batch.batch_index),
            repeat(batch.observed),
            covariates=repeat(batch.covariates),
            include_constant=exact,
        )
        log_px = CountRows(counts, repeat(batch.observed), None).log_prob(repeat(x))
        log_pz = module.prior(particles * n, x).log_prob(flat)
        log_w = log_px.reshape(particles, n) + kl_weight * (
            log_pz.reshape(particles, n) - q.log_prob(z).sum(-1)
        )
        bound = torch.logsumexp(log_w, dim=0) - math.log(particles)
        return -bound.sum() / n

    return step_loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["mouse_bladder_scdcc", "pbmc4k_scdcc"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--particles", type=int, default=5)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logger.setLevel(logging.INFO)
    loop._step_loss = iwae_loss(args.particles)
    for dataset in args.datasets:
        adata, train_idx, test_idx = prepare(dataset, seed=0)
        labels = adata.obs["cell_type"].astype(str).to_numpy()
        for seed in args.seeds:
            restore_torch_threads()
            started = time.perf_counter()
            model = scvae.fit(
                adata[train_idx].copy(), seed=seed, progress=False, library_from_latent=False
            )
            seconds = time.perf_counter() - started
            score = scores(model.embed(adata), labels, seed)
            log_px = float(model.log_likelihood(adata[test_idx].copy(), n_samples=100).mean())
            logger.info(
                "%s seed %d, %d particles: kNN balanced accuracy %.3f, Leiden ARI %.3f, "
                "held-out log p(x) %.1f, fit %.0f s",
                dataset,
                seed,
                args.particles,
                score["knn_balanced_accuracy"],
                score["leiden_ari"],
                log_px,
                seconds,
            )


if __name__ == "__main__":
    main()
