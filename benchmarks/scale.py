"""Scale: peak RSS and training throughput of a disk-backed fit versus an in-memory fit, for
simulated files of growing size, and the scaling efficiency of DDP at 2 processes on CPU.

    python data/make_large.py --cells 1000000 --out data/sim_1000000.h5ad  # once per size
    python benchmarks/scale.py --sizes 100000 300000 1000000 --data-dir data

Every measurement runs in a fresh process (its own peak RSS, VmHWM, is the number reported).
Training is one epoch capped at ``--max-steps`` minibatches of 128 cells: the per-cell work of
the stream (statistics pass over the whole file, embedding of every cell) is done in full, so
the memory a size needs is reached; only the training steps are fewer. In-memory fits run
only up to ``--in-memory-max`` cells (a 1M x 2000 in-memory fit needs > 15 GB).

DDP efficiency = cells/s of 2 processes (1 thread each, gloo) / (2 x cells/s of 1 process with
1 thread), the median over epochs 2..N. On a 2-core machine shared with other jobs this figure
is noisy and bounded by what the other jobs leave free: the same ratio for 2 *independent*
single processes run at the same time (no communication at all) is reported beside it as the
ceiling the machine allowed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from _common import report

HERE = Path(__file__).resolve()


def _rss_mb(field: str = "VmHWM") -> float:
    """``VmHWM``: peak resident memory of this process so far; ``VmRSS``: now."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(
    path: Path, mode: str, max_steps: int, epochs: int, threads: int, batch_size: int
) -> None:
    """One measurement in this (fresh) process; prints a JSON line (rank 0 only)."""
    import anndata
    import torch

    import scvae
    from scvae._batches.blocks import ChunkSource
    from scvae._batches.rows import MinibatchSource
    from scvae._utils import distributed as ddp

    torch.set_num_threads(threads)
    for source in (ChunkSource, MinibatchSource):
        full_len = source.__len__
        source.__len__ = lambda self, f=full_len: (
            min(f(self), max_steps) if self.shuffle else f(self)
        )
    distributed = ddp.init_from_environment()
    baseline = _rss_mb("VmRSS")
    started = time.perf_counter()
    adata = anndata.read_h5ad(path, backed=None if mode == "memory" else "r")
    read_s = time.perf_counter() - started
    model = scvae.fit(
        adata,
        batch_key="batch",
        max_epochs=epochs,
        validation_fraction=0.0,
        early_stopping=False,
        progress=False,
        device="cpu",
        batch_size=batch_size,
    )
    wall_s = time.perf_counter() - started
    rank, world = ddp.rank_world()
    steps = min(max_steps, adata.n_obs // (batch_size * world))
    seconds = model.history["epoch_seconds"]
    epoch_s = float(np.median(seconds[1:] if len(seconds) > 1 else seconds))
    if distributed:
        import torch.distributed as dist

        peak = ddp.all_reduce_sum(np.array([_rss_mb()]))[0][0] / world
        dist.destroy_process_group()
    else:
        peak = _rss_mb()
    if rank == 0:
        result = {
            "cells": adata.n_obs,
            "genes": adata.n_vars,
            "mode": mode,
            "processes": world,
            "threads": threads,
            "peak_rss_mb": peak,
            "baseline_rss_mb": baseline,
            "batch_size": batch_size,
            "train_cells_per_s": steps * batch_size * world / epoch_s,
            "read_s": read_s,
            "wall_s": wall_s,
            "steps": steps,
        }
        print("RESULT " + json.dumps(result), flush=True)


def measure(
    args, path: Path, mode: str, *, processes: int = 1, threads: int = 1, concurrent: int = 1
) -> dict:
    """One fresh child process (or ``torchrun`` group) measuring ``mode`` on ``path``.

    ``concurrent`` > 1 starts that many independent single-process children at once and
    reports their summed throughput: what the machine gives parallel work at that moment.
    """
    child_args = [
        str(HERE),
        "--child",
        mode,
        str(path),
        "--max-steps",
        str(args.max_steps),
        "--epochs",
        str(args.epochs if mode != "ddp" else args.ddp_epochs),
        "--threads",
        str(threads),
        "--batch-size",
        str(args.batch_size),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    if processes > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        command += [f"--nproc_per_node={processes}", *child_args]
    else:
        command = [sys.executable, *child_args]
    runs = [
        subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        for _ in range(concurrent)
    ]
    rows = []
    for run in runs:
        stdout, stderr = run.communicate()
        if run.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{stderr[-3000:]}")
        line = next(x for x in stdout.splitlines() if x.startswith("RESULT "))
        rows.append(json.loads(line[len("RESULT ") :]))
    row = rows[0]
    if concurrent > 1:
        row["mode"] = f"{concurrent} independent"
        row["train_cells_per_s"] = sum(r["train_cells_per_s"] for r in rows)
    row["dense_mb"] = row["cells"] * row["genes"] * 4 / 2**20
    row["file_mb"] = path.stat().st_size / 2**20
    logging.info("%s", row)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[100_000, 300_000, 1_000_000])
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--max-steps", type=int, default=300, help="training steps per epoch")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--in-memory-max", type=int, default=300_000)
    parser.add_argument("--ddp-cells", type=int, default=100_000, help="file for DDP; 0: skip")
    parser.add_argument("--ddp-epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128, help="cells per step and process")
    parser.add_argument(
        "--no-threads-reference",
        dest="threads_reference",
        action="store_false",
        help="skip the 1 process x 2 threads row",
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/scale.json"))
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("path", nargs="?", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.path, args.child, args.max_steps, args.epochs, args.threads, args.batch_size)
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    rows = []
    for n in args.sizes:
        path = args.data_dir / f"sim_{n}.h5ad"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: python data/make_large.py --cells {n} --out {path}")
        rows.append(measure(args, path, "backed"))
        if n <= args.in_memory_max:
            rows.append(measure(args, path, "memory"))
    if args.ddp_cells:
        path = args.data_dir / f"sim_{args.ddp_cells}.h5ad"
        one = measure(args, path, "ddp", processes=1, threads=1)
        two = measure(args, path, "ddp", processes=2, threads=1)
        independent = measure(args, path, "ddp", concurrent=2)
        for row in (two, independent):
            row["ddp_efficiency"] = row["train_cells_per_s"] / (2 * one["train_cells_per_s"])
        rows += [one, two, independent]
        if args.threads_reference:
            rows.append(measure(args, path, "ddp", processes=1, threads=2))
    columns = [
        ("cells", "cells", ","),
        ("mode", "mode", ""),
        ("processes", "processes", "d"),
        ("threads", "threads/process", "d"),
        ("batch_size", "batch/process", "d"),
        ("peak_rss_mb", "peak RSS (MB)", ".0f"),
        ("baseline_rss_mb", "RSS after imports (MB)", ".0f"),
        ("dense_mb", "dense X (MB)", ".0f"),
        ("file_mb", "file (MB)", ".0f"),
        ("train_cells_per_s", "train cells/s", ".0f"),
        ("wall_s", "wall s (whole fit)", ".0f"),
        ("ddp_efficiency", "DDP efficiency", ".2f"),
    ]
    report(rows, columns, args.out, args)


if __name__ == "__main__":
    main()
