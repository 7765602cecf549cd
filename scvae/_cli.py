"""``python -m scvae fit`` and ``python -m scvae embed``: files in, files out, for clusters.

Both read the h5ad backed (streamed in blocks of rows) unless ``--in-memory`` is given, and
both run under ``torchrun``: every process trains (or embeds) its share, rank 0 writes. ``--out``
is checked before training (an existing folder needs ``--overwrite``, and only an scvae model
folder is ever replaced); the model is written with :meth:`SCVAE.save`, atomically, only when
the whole job succeeded, so the old model stays readable until the new one replaces it.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import anndata
import numpy as np
import torch.distributed as dist
from anndata import AnnData

from ._fit.fit import fit
from ._model.io import check_model_path
from ._model.scvae import load
from ._utils import distributed as ddp

logger = logging.getLogger(__name__)

__all__ = ["add_commands", "run_command"]


def add_commands(commands) -> None:
    """Add the ``fit`` and ``embed`` sub-commands to an argparse sub-parser set."""
    fit = commands.add_parser(
        "fit",
        help="fit a model to an h5ad file (streamed from disk); write the model folder",
        description="Fit scvae to FILE and write the model folder --out. Under torchrun "
        "(torchrun --nproc_per_node=4 -m scvae fit ...) each process trains on its share "
        "with DistributedDataParallel.",
    )
    fit.add_argument("file", type=Path, help="h5ad file with raw counts (CSR X or a layer)")
    fit.add_argument("--out", type=Path, required=True, help="model folder to write")
    fit.add_argument("--layer", default=None, help="layer with the raw counts (default: X)")
    fit.add_argument("--batch-key", default=None, help="obs column of batches")
    fit.add_argument("--labels-key", default=None, help="obs column of cell-type labels")
    fit.add_argument("--max-epochs", type=int, default=None)
    fit.add_argument("--batch-size", type=int, default=128, help="cells per step per process")
    fit.add_argument("--lr", type=float, default=None, help="default: scvae.fit's rule")
    fit.add_argument("--n-latent", type=int, default=10)
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--device", default="auto", help="auto, cpu or cuda (one process)")
    fit.add_argument("--embedding", type=Path, default=None, help="also write the embedding")
    fit.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    fit.add_argument("--in-memory", action="store_true", help="load the file instead")
    fit.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    embed = commands.add_parser(
        "embed",
        help="embed the cells of an h5ad file with a saved model",
        description="Posterior means of z for the cells of FILE, written to --out: a .npy "
        "array, or a new .h5ad with obs and obsm['X_scvae'] (no counts).",
    )
    embed.add_argument("file", type=Path, help="h5ad file with raw counts")
    embed.add_argument("--model", type=Path, required=True, help="model folder (scvae fit)")
    embed.add_argument("--out", type=Path, required=True, help="output .npy or .h5ad")
    embed.add_argument("--layer", default=None, help="layer with the raw counts")
    embed.add_argument("--device", default="auto")
    embed.add_argument("--in-memory", action="store_true", help="load the file instead")


def run_command(args: argparse.Namespace) -> int:
    """Run ``fit`` or ``embed``; returns the exit status."""
    distributed = ddp.init_from_environment()
    if ddp.rank_world()[0] > 0:  # one copy of the log: rank 0's (warnings from all ranks)
        logging.getLogger("scvae").setLevel(logging.WARNING)
    try:
        if args.command == "fit":
            _fit(args, distributed)
        else:
            _embed(args, distributed)
    finally:
        if distributed:
            dist.destroy_process_group()
    return 0


def _read(path: Path, in_memory: bool):
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    return anndata.read_h5ad(path, backed=None if in_memory else "r")


def _fit(args: argparse.Namespace, distributed: bool) -> None:
    out: Path = args.out
    # Before any training: a bad --out fails in the first second, not after the fit.
    check_model_path(out, overwrite=args.overwrite, flag="--overwrite")
    _check_output(args.embedding, args.file)
    adata = _read(args.file, args.in_memory)
    device = ddp.local_device() if distributed else args.device
    model = fit(
        adata,
        layer=args.layer,
        batch_key=args.batch_key,
        labels_key=args.labels_key,
        max_epochs=args.max_epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        n_latent=args.n_latent,
        seed=args.seed,
        device=device,
        progress=not args.no_progress,
    )
    # Every rank has finished training (a rank that failed never gets here, and the others
    # fail in their next collective): only now does rank 0 write.
    ddp.barrier()
    if ddp.rank_world()[0] == 0:
        # Atomic: the old model stays readable until the new one replaces it in one step.
        model.save(out, overwrite=args.overwrite)
        logger.info("model written to %s", out)
        if args.embedding is not None:
            _write_embedding(args.embedding, adata, adata.obsm["X_scvae"])
    ddp.barrier()


def _embed(args: argparse.Namespace, distributed: bool) -> None:
    _check_output(args.out, args.file)
    device = ddp.local_device() if distributed else args.device
    model = load(args.model, device=device)
    adata = _read(args.file, args.in_memory)
    z = model.embed(adata, layer=model.layer if args.layer is None else args.layer)
    if ddp.rank_world()[0] == 0:
        _write_embedding(args.out, adata, z)
    ddp.barrier()


def _check_output(out: Path | None, source: Path) -> None:
    if out is None:
        return
    if out.suffix not in (".npy", ".h5ad"):
        raise ValueError(f"--out {out}: write a .npy array or a new .h5ad file")
    if out.exists() and out.resolve() == source.resolve():
        raise ValueError(
            f"{out} is the input file, opened read-only to stream its counts: write the "
            f"embedding to a new file (e.g. {out.with_name(out.stem + '_scvae.h5ad')}) and "
            "join it with obs_names; or load the input with anndata.read_h5ad (in memory), "
            "set adata.obsm['X_scvae'] and write it again"
        )


def _write_embedding(out: Path, adata, z: np.ndarray) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".npy":
        np.save(out, z)
    else:
        AnnData(obs=adata.obs.copy(), obsm={"X_scvae": z}).write_h5ad(out)
    logger.info("embedding of %d cells written to %s", z.shape[0], out)
