"""Write a large simulated h5ad for the scale benchmark, block by block (bounded memory).

Usage: ``python data/make_large.py --cells 1000000 --genes 2000 --out data/large_1M.h5ad``.
Counts are sparse CSR float32 in ``X`` (about 32 % non-zero with the default library sizes:
~5 GB on disk for 1M x 2000), ``obs["cell_type"]`` and ``obs["batch"]`` hold the known groups
and batches. Memory stays near ``--chunk-cells`` x ``--genes`` x 16 bytes whatever ``--cells``.
Not committed: the same seed always gives the same file (see ``scvae.datasets.simulate_h5ad``).
"""

import argparse
import logging
from pathlib import Path

from scvae.datasets import simulate_h5ad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cells", type=int, default=1_000_000)
    parser.add_argument("--genes", type=int, default=2000)
    parser.add_argument("--groups", type=int, default=8)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--chunk-cells", type=int, default=8192)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("large.h5ad"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    simulate_h5ad(
        args.out,
        args.cells,
        args.genes,
        n_groups=args.groups,
        n_batches=args.batches,
        chunk_cells=args.chunk_cells,
        seed=args.seed,
    )


if __name__ == "__main__":
    main()
