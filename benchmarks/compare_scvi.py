"""scvae against scvi-tools' SCVI, side by side in one process (protocol: ../shared/BENCHMARK.md).

Same data, split (seed 0, 90/10), architecture (1 x 128 hidden, 10 latent, NB, per-gene
dispersion), batch size, Adam lr 1e-3, epochs and KL warm-up; SCVI trains on all training
cells (no validation split), scvae likewise (the held-out cells are only evaluated).

Prints one markdown table and writes the same as JSON (with versions, device, threads, seed):

    python benchmarks/compare_scvi.py --dataset pbmc4k_scdcc --epochs 100 --repeats 3

Needs the bench extra: ``pip install -e ".[bench]"``.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
from _common import (
    PeakRSS,
    environment,
    markdown_table,
    prepare,
    restore_torch_threads,
    scvi_epoch_timer,
    write_json,
)

from scvae import metrics
from scvae._batches.minibatch import minibatches_per_epoch
from scvae._data.memory import prepare_counts
from scvae._fit.fit import fit_counts
from scvae._fit.settings import FitSettings

logger = logging.getLogger("benchmark")


def run_scvae(adata, train_idx, test_idx, args, seed: int, evaluate: bool = True) -> dict:
    data = prepare_counts(adata)
    restore_torch_threads()
    with PeakRSS() as rss:
        model = fit_counts(
            data,
            FitSettings(
                max_epochs=args.epochs,
                batch_size=args.batch_size,
                n_latent=10,  # SCVI's architecture: 10 latent, standard normal prior
                prior_components=0,
                lr=1e-3,
                kl_warmup=args.kl_warmup,
                early_stopping=False,
                progress=False,
                seed=seed,
                device=args.device,
            ),
            validation_indices=test_idx,
        )
    if not evaluate:
        return {"rss_increase_mb": rss.increase_mb}
    history = model.history
    # The cells of the minibatches fit trains on (a last one under half a batch is dropped).
    steps = minibatches_per_epoch(len(train_idx), args.batch_size, drop_last=True)
    cells_per_epoch = min(len(train_idx), steps * args.batch_size)
    # Training steps only, as SCVI's epoch timer (it validates nothing with train_size=1.0);
    # scvae's per-epoch held-out ELBO, which draws the curve below, is not counted.
    seconds = np.asarray(history["training_seconds"])
    test = adata[test_idx].copy()
    return {
        "model": "scvae",
        "cells_per_s": cells_per_epoch / float(np.median(seconds[1:])),
        "train_seconds": float(seconds.sum()),
        "elapsed": np.cumsum(seconds),
        "heldout_elbo_curve": np.asarray(history["validation_elbo"]),
        "heldout_elbo": model.elbo(test),
        "heldout_log_px": float(model.log_likelihood(test, n_samples=100).mean()),
        "latent": model.embed(adata),
    }


def run_scvi(adata, train_idx, test_idx, args, seed: int, evaluate: bool = True) -> dict:
    import scvi

    scvi.settings.seed = seed
    train = adata[train_idx].copy()
    test = adata[test_idx].copy()
    scvi.model.SCVI.setup_anndata(train)
    model = scvi.model.SCVI(
        train, n_hidden=128, n_latent=10, n_layers=1, gene_likelihood="nb", dispersion="gene"
    )
    timer = scvi_epoch_timer()
    restore_torch_threads()
    with PeakRSS() as rss:
        model.train(
            max_epochs=args.epochs,
            batch_size=args.batch_size,
            train_size=1.0,
            early_stopping=False,
            accelerator="gpu" if args.device == "cuda" else "cpu",
            plan_kwargs={"lr": 1e-3, "n_epochs_kl_warmup": args.kl_warmup},
            callbacks=[timer],
            enable_progress_bar=False,
            enable_model_summary=False,
        )
    if not evaluate:
        return {"rss_increase_mb": rss.increase_mb}
    seconds = np.asarray(timer.seconds)
    cells_per_epoch = len(train_idx)
    full = adata.copy()
    return {
        "model": "SCVI",
        "cells_per_s": cells_per_epoch / float(np.median(seconds[1:])),
        "train_seconds": float(seconds.sum()),
        "heldout_elbo": float(model.get_elbo(test)),
        "heldout_log_px": float(model.get_marginal_ll(test, n_mc_samples=100)),
        "latent": model.get_latent_representation(full),
    }


def peak_memory_in_fresh_process(name: str, args) -> float:
    """Peak RSS increase (MB) of a short fit of ``name``, in a fresh Python process.

    In one process the second model's peak would hide under the first one's freed memory,
    and forked children inherit the parent's allocator state; a fresh process per model
    (this script with ``--memory-probe``) measures both alike.
    """
    command = [
        sys.executable,
        __file__,
        "--dataset",
        args.dataset,
        "--batch-size",
        str(args.batch_size),
        "--kl-warmup",
        str(args.kl_warmup),
        "--device",
        args.device,
        "--memory-epochs",
        str(args.memory_epochs),
        "--memory-probe",
        name,
    ]
    if args.max_cells is not None:
        command += ["--max-cells", str(args.max_cells)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])["rss_increase_mb"]


def memory_probe(name: str, adata, train_idx, test_idx, args) -> None:
    """Body of ``--memory-probe``: a warm-up fit, then one short fit under PeakRSS.

    The warm-up (1 epoch on 256 cells, same tool) takes the one-time allocations of torch
    and of the tool (thread pools, allocator caches, lazily imported code; ~80 MB) out of
    the measurement, so that the peak is what the fit itself needs.
    """
    run = {"scvae": run_scvae, "SCVI": run_scvi}[name]
    tiny = argparse.Namespace(**{**vars(args), "epochs": 1})
    run(adata, train_idx[:256], test_idx[:32], tiny, 0, evaluate=False)
    short = argparse.Namespace(**{**vars(args), "epochs": args.memory_epochs})
    result = run(adata, train_idx, test_idx, short, 0, evaluate=False)
    print(json.dumps({"rss_increase_mb": result["rss_increase_mb"]}))


def time_to_quality(ours: dict, target_elbo: float) -> float:
    """Training seconds until scvae's held-out ELBO first reaches ``target_elbo``
    (inf if never)."""
    reached = np.flatnonzero(ours["heldout_elbo_curve"] >= target_elbo)
    return float(ours["elapsed"][reached[0]]) if reached.size else float("inf")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="pbmc4k_scdcc")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--kl-warmup", type=int, default=None, help="default: epochs // 8")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-cells", type=int, default=None)
    parser.add_argument("--memory-epochs", type=int, default=5, help="epochs of the memory probe")
    parser.add_argument("--memory-probe", choices=["scvae", "SCVI"], help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    args.kl_warmup = args.kl_warmup if args.kl_warmup is not None else max(1, args.epochs // 8)
    logging.basicConfig(level=logging.WARNING)

    adata, train_idx, test_idx = prepare(args.dataset, seed=0, max_cells=args.max_cells)
    labels = adata.obs["cell_type"].astype(str).to_numpy()
    if args.memory_probe is not None:
        memory_probe(args.memory_probe, adata, train_idx, test_idx, args)
        return
    memory = {name: peak_memory_in_fresh_process(name, args) for name in ("scvae", "SCVI")}
    if args.repeats == 0:  # memory only
        print({name: round(mb) for name, mb in memory.items()})
        return
    repeats = []
    for repeat in range(args.repeats):
        # Alternate the order so that neither model always runs on a warmer process.
        runners = (run_scvae, run_scvi) if repeat % 2 == 0 else (run_scvi, run_scvae)
        runs = [run(adata, train_idx, test_idx, args, repeat) for run in runners]
        results = {r["model"]: r for r in runs}
        ours, ref = results["scvae"], results["SCVI"]
        ttq = time_to_quality(ours, ref["heldout_elbo"])
        for r in (ours, ref):
            latent = r.pop("latent")
            knn = metrics.knn_scores(latent, labels)
            leiden = metrics.leiden_scores(latent, labels)
            r.update(
                knn_accuracy=knn["accuracy"],
                knn_balanced_accuracy=knn["balanced_accuracy"],
                leiden_ari=leiden["ari"],
                leiden_nmi=leiden["nmi"],
            )
        ours["throughput_ratio"] = ours["cells_per_s"] / ref["cells_per_s"]
        ours["time_to_scvi_quality_s"] = ttq
        ours["time_to_quality_ratio"] = ttq / ref["train_seconds"]
        for key in ("elapsed", "heldout_elbo_curve"):
            ours[key] = ours[key].tolist()
        repeats.append({"scvae": ours, "SCVI": ref})

    rows = []
    for name in ("scvae", "SCVI"):
        row = {"model": name, "fit_rss_increase_mb": memory[name]}
        for key in repeats[0][name]:
            values = [rep[name][key] for rep in repeats]
            if isinstance(values[0], (int, float)):
                row[key] = float(np.median(values))
        rows.append(row)
    columns = [
        ("model", "model", ""),
        ("cells_per_s", "train cells/s", ".0f"),
        ("throughput_ratio", "ratio to SCVI", ".2f"),
        ("time_to_quality_ratio", "time to SCVI's ELBO (ratio)", ".2f"),
        ("fit_rss_increase_mb", "fit peak RSS increase MB", ".0f"),
        ("heldout_elbo", "held-out ELBO", ".2f"),
        ("heldout_log_px", "held-out log p(x) (IS 100)", ".2f"),
        ("knn_accuracy", "kNN acc.", ".3f"),
        ("knn_balanced_accuracy", "kNN bal. acc.", ".3f"),
        ("leiden_ari", "Leiden ARI", ".3f"),
    ]
    table = markdown_table(rows, columns)
    env = environment(seed=0)
    header = (
        f"{args.dataset}: {adata.n_obs} cells ({len(train_idx)} train / {len(test_idx)} "
        f"held out), {adata.n_vars} genes; {args.epochs} epochs, batch {args.batch_size}, "
        f"KL warm-up {args.kl_warmup} epochs; median of {args.repeats} repeat(s); "
        f"device {env['device']}, {env['torch_threads']} torch threads; peak RSS increase "
        f"of a {args.memory_epochs}-epoch fit in a fresh process, after a warm-up fit"
    )
    print(header + "\n\n" + table)
    out = args.out / f"compare_scvi_{args.dataset}_bs{args.batch_size}.json"
    write_json(
        out,
        {
            "header": header,
            "table": table,
            "summary": rows,
            "repeats": repeats,
            "environment": env,
            "arguments": vars(args) | {"out": str(args.out)},
        },
    )


if __name__ == "__main__":
    main()
