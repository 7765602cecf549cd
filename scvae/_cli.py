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
import os
from pathlib import Path

import anndata
import h5py
import numpy as np
import torch.distributed as dist
from anndata import AnnData

from ._fit.fit import fit
from ._model.io import check_model_path
from ._model.scvae import load
from ._utils import distributed as ddp

logger = logging.getLogger(__name__)

__all__ = ["Interrupted", "add_commands", "run_command"]


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
    fit.add_argument("--n-latent", type=int, default=None, help="default: scvae.fit's")
    fit.add_argument(
        "--prior-components",
        type=int,
        default=None,
        help="components of the mixture prior of z (0: standard normal; default: scvae.fit's)",
    )
    fit.add_argument(
        "--library-from-latent",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="generate library sizes from z (default: scvae.fit's, on without --batch-key)",
    )
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
    embed.add_argument(
        "--overwrite", action="store_true", help="replace an embedding scvae wrote at --out"
    )


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
    """The input h5ad, backed (read-only) unless ``in_memory``; a clear error for a path that
    is not an h5ad file."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found" + (" (a folder)" if path.is_dir() else ""))
    if not h5py.is_hdf5(path):
        raise ValueError(f"{path} is not an h5ad file (no HDF5 signature): scvae reads .h5ad")
    return anndata.read_h5ad(path, backed=None if in_memory else "r")


def _fit(args: argparse.Namespace, distributed: bool) -> None:
    out: Path = args.out
    # Before any training: a bad --out fails in the first second, not after the fit.
    check_model_path(out, overwrite=args.overwrite, flag="--overwrite")
    _check_output(args.embedding, args.file, overwrite=args.overwrite)
    if args.embedding is not None and args.embedding.resolve() == out.resolve():
        raise ValueError("--embedding and --out are the same path: give each its own")
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
        prior_components=args.prior_components,
        library_from_latent=args.library_from_latent,
        seed=args.seed,
        device=device,
        progress=not args.no_progress,
    )
    interrupted = model.history.get("interrupted_at_epoch")
    if interrupted:
        # A stopped job writes nothing: the user asked for a finished model, not a partial one.
        kept = f"{out} is unchanged" if out.exists() else f"{out} was not written"
        raise Interrupted(
            f"interrupted during epoch {int(interrupted[0])}: nothing was written ({kept})"
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
    _check_output(args.out, args.file, overwrite=args.overwrite)
    device = ddp.local_device() if distributed else args.device
    model = load(args.model, device=device)
    adata = _read(args.file, args.in_memory)
    z = model.embed(adata, layer=model.layer if args.layer is None else args.layer)
    if ddp.rank_world()[0] == 0:
        _write_embedding(args.out, adata, z)
    ddp.barrier()


class Interrupted(Exception):
    """A command stopped by Ctrl-C (or SIGINT) before it wrote its results."""


def _check_output(out: Path | None, source: Path, *, overwrite: bool = False) -> None:
    """Refuse, before any work, an embedding path that would destroy something: the input
    file, a folder, or an existing file that is not an embedding scvae wrote (and even that
    only with ``--overwrite``)."""
    if out is None:
        return
    if out.suffix not in (".npy", ".h5ad"):
        raise ValueError(f"{out}: write a .npy array or a new .h5ad file")
    if out.exists() and out.resolve() == source.resolve():
        raise ValueError(
            f"{out} is the input file, opened read-only to stream its counts: write the "
            f"embedding to a new file (e.g. {out.with_name(out.stem + '_scvae.h5ad')}) and "
            "join it with obs_names; or load the input with anndata.read_h5ad (in memory), "
            "set adata.obsm['X_scvae'] and write it again"
        )
    if out.is_dir():
        raise FileExistsError(f"{out} is a folder: choose a file name for the embedding")
    if out.exists():
        if not overwrite:
            raise FileExistsError(f"{out} exists: choose another path or pass --overwrite")
        if not _is_scvae_embedding(out):
            raise FileExistsError(
                f"{out} is not an embedding written by scvae: --overwrite replaces only "
                "those; choose another path"
            )
    if not out.parent.exists():
        raise FileNotFoundError(f"the folder of {out} does not exist: create it first")
    if not out.parent.is_dir():
        raise NotADirectoryError(f"{out} cannot be written: {out.parent} is a file, not a folder")
    if not os.access(out.parent, os.W_OK | os.X_OK):
        raise PermissionError(
            f"{out} cannot be written: no permission to write in the folder {out.parent}; "
            "choose another path"
        )


def _is_scvae_embedding(path: Path) -> bool:
    """Whether ``path`` holds what :func:`_write_embedding` writes: a 2-d float32 .npy array,
    or an .h5ad with no counts and only ``obsm['X_scvae']``."""
    try:
        if path.suffix == ".npy":
            array = np.load(path, mmap_mode="r", allow_pickle=False)  # the header only
            return array.ndim == 2 and array.dtype == np.float32
        if not h5py.is_hdf5(path):
            return False
        with h5py.File(path, "r") as handle:
            obsm = handle.get("obsm")
            return "X" not in handle and obsm is not None and list(obsm) == ["X_scvae"]
    except (OSError, ValueError):
        return False


def _write_embedding(out: Path, adata, z: np.ndarray) -> None:
    """Write the embedding beside ``out`` and rename it into place: a crash never leaves a
    half-written file, and an old embedding stays whole until the new one replaces it."""
    tmp = out.with_name(f".{out.name}.writing-{os.getpid()}{out.suffix}")
    try:
        if out.suffix == ".npy":
            np.save(tmp, z)
        else:
            AnnData(obs=adata.obs.copy(), obsm={"X_scvae": z}).write_h5ad(tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    logger.info("embedding of %d cells written to %s", z.shape[0], out)
