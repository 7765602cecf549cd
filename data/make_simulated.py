"""Write the simulated dataset with known ground truth to ``data/simulated.h5ad``.

Usage: ``python data/make_simulated.py [--cells 3000] [--genes 1000] [--seed 0]``. The file holds
raw counts (``X`` and ``layers["counts"]``), ``obs["cell_type"]``, ``obs["batch"]``, the true NB
means (``layers["true_mean"]``) and inverse dispersions (``var["true_theta"]``). It is not
committed: the same seed always gives the same data (see ``scvae.datasets.simulate``).
"""

import argparse
from pathlib import Path

from scvae.datasets import simulate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cells", type=int, default=3000)
    parser.add_argument("--genes", type=int, default=1000)
    parser.add_argument("--groups", type=int, default=6)
    parser.add_argument("--batches", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("simulated.h5ad"))
    args = parser.parse_args()
    adata = simulate(
        args.cells,
        args.genes,
        n_groups=args.groups,
        n_batches=args.batches,
        seed=args.seed,
        return_truth=True,
    )
    adata.write_h5ad(args.out, compression="gzip")


if __name__ == "__main__":
    main()
