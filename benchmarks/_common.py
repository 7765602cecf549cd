"""Shared pieces of the benchmarks: data preparation per ../shared/BENCHMARK.md, peak RSS,
environment record, table output. Both models are timed in one process on the same split."""

from __future__ import annotations

import inspect
import json
import logging
import os
import platform
import resource
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import scanpy as sc
import torch
from anndata import AnnData

import scvae
from scvae import datasets

#: The threads torch runs with in a benchmark: ``OMP_NUM_THREADS`` (else the cores) when it
#: started, or what :func:`limit_threads` set.
_torch_threads = torch.get_num_threads()


def limit_threads(threads: int) -> None:
    """``threads`` for torch, BLAS/OpenMP, numba and XLA (jax is imported later, by scib)."""
    from threadpoolctl import threadpool_limits

    global _torch_threads
    _torch_threads = threads
    threadpool_limits(threads)
    os.environ.setdefault(
        "XLA_FLAGS",
        f"--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads={threads}",
    )
    try:
        import numba

        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    except ImportError:
        pass
    restore_torch_threads()


def restore_torch_threads() -> None:
    """Set torch back to the benchmark's threads (see ``_torch_threads``); call before each
    timed fit.

    numba's OpenMP pool, which scanpy's ``neighbors`` (pynndescent) starts, shares the OpenMP
    runtime torch loaded and raises torch's count to the number of cores behind its back: two
    benchmarks side by side with ``OMP_NUM_THREADS=1`` on 2 cores then ran 2 threads each,
    and the fits after the first seed's scores took 2 to 4 times longer.
    """
    if torch.get_num_threads() != _torch_threads:
        torch.set_num_threads(_torch_threads)


def prepare(name: str, *, seed: int = 0, max_cells: int | None = None):
    """Raw counts of ``name``; 2000 HVGs (seurat_v3, on the training cells) if it has more
    than 2003 genes; a seeded 90/10 split of the cells. Returns (adata, train_idx, test_idx)."""
    adata = datasets.read(name)
    rng = np.random.default_rng(seed)
    if max_cells is not None and adata.n_obs > max_cells:
        adata = adata[np.sort(rng.choice(adata.n_obs, max_cells, replace=False))].copy()
    train_idx, test_idx = split(adata.n_obs, rng=rng)
    if adata.n_vars > 2003:
        train = adata[train_idx].copy()
        try:
            sc.pp.highly_variable_genes(train, flavor="seurat_v3", n_top_genes=2000)
        except ValueError as error:  # loess can be ill-conditioned (worm_neuron_scdcc)
            logging.getLogger(__name__).warning("seurat_v3 failed (%s): span=1.0", error)
            sc.pp.highly_variable_genes(train, flavor="seurat_v3", n_top_genes=2000, span=1.0)
        adata = adata[:, train.var["highly_variable"].to_numpy()].copy()
        keep = np.asarray(adata.X[train_idx].sum(axis=0)).ravel() > 0
        adata = adata[:, keep].copy()
    return adata, train_idx, test_idx


def split(
    n_cells: int, *, seed: int = 0, rng: np.random.Generator | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The protocol's 90/10 split: sorted (train_idx, test_idx) from a seeded permutation."""
    order = (rng if rng is not None else np.random.default_rng(seed)).permutation(n_cells)
    n_test = round(0.1 * n_cells)
    return np.sort(order[n_test:]), np.sort(order[:n_test])


def scvi_epoch_timer():
    """A Lightning callback whose ``seconds`` holds the duration of each training epoch of
    ``SCVI.train`` (needs scvi-tools' Lightning, imported here)."""
    import lightning.pytorch as lp

    class EpochTimer(lp.Callback):
        def __init__(self) -> None:
            self.seconds: list[float] = []

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self.started = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            self.seconds.append(time.perf_counter() - self.started)

    return EpochTimer()


class PeakRSS:
    """Peak resident memory of a block: resets the kernel's high-water mark (Linux) on entry."""

    def __enter__(self) -> PeakRSS:
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.resettable = True
        except OSError:
            self.resettable = False
        self.start_mb = _status_mb("VmRSS")
        return self

    def __exit__(self, *exc) -> None:
        if self.resettable:
            self.peak_mb = _status_mb("VmHWM")
        else:  # ru_maxrss is the peak of the whole process so far (kB on Linux)
            self.peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        self.increase_mb = self.peak_mb - self.start_mb


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def environment(seed: int, extra_libraries: tuple[str, ...] = ()) -> dict:
    """Library versions (with ``extra_libraries``, e.g. a benchmark's peers), machine, device
    and threads, for a benchmark's JSON."""
    libs = {}
    core = ("scvae-pyro", "torch", "pyro-ppl", "scvi-tools", "anndata", "scanpy", "numpy")
    for lib in (*core, *extra_libraries):
        try:
            libs[lib] = version(lib)
        except Exception:
            libs[lib] = "not installed"
    return {
        "libraries": libs,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "seed": seed,
    }


def markdown_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """``columns``: (key, header, format) triples."""
    lines = ["| " + " | ".join(h for _, h, _ in columns) + " |"]
    lines.append("|" + "|".join("---" for _ in columns) + "|")
    for row in rows:
        cells = []
        for key, _, fmt in columns:
            value = row.get(key)
            cells.append("" if value is None else format(value, fmt) if fmt else str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(rows: list[dict], columns: list[tuple[str, str, str]], path: Path, args) -> str:
    """Print the markdown table of ``rows`` and write it, the rows, the environment and the
    arguments to ``path`` (JSON). Returns the table."""
    table = markdown_table(rows, columns)
    print(table)  # a benchmark script reports on stdout
    write_json(
        path,
        {
            "table": table,
            "rows": rows,
            "environment": environment(seed=0),
            "arguments": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        },
    )
    return table


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1, default=float))


def subset(adata: AnnData, idx: np.ndarray) -> AnnData:
    return adata[idx].copy()


def fit_scvi_reference(train: AnnData, *, batch_key: str | None, epochs: int):
    """scvi-tools' SCVI with the protocol's architecture (1x128, latent 10, NB, batch 128,
    lr 1e-3, KL warm-up epochs // 8), trained on all of ``train`` without early stopping."""
    import scvi

    scvi.settings.seed = 0
    train = train.copy()
    scvi.model.SCVI.setup_anndata(train, batch_key=batch_key)
    model = scvi.model.SCVI(train, n_hidden=128, n_latent=10, n_layers=1, gene_likelihood="nb")
    model.train(
        max_epochs=epochs,
        batch_size=128,
        train_size=1.0,
        early_stopping=False,
        accelerator="cpu",
        plan_kwargs={"lr": 1e-3, "n_epochs_kl_warmup": max(1, epochs // 8)},
        enable_progress_bar=False,
    )
    return model


def option_value(text: str) -> bool | int | float | str | None:
    """``--scvae-option``'s value: ``true``/``false`` (any case) a bool, ``none`` None, an int or
    a float if it parses as one, else the string.

    >>> [option_value(t) for t in ("False", "3", "3.0", "1e-3", "none", "nb")]
    [False, 3, 3.0, 0.001, None, 'nb']
    """
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "none":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def scvae_options(
    pairs: list[str], own: tuple[str, ...]
) -> dict[str, bool | int | float | str | None]:
    """The ``NAME=VALUE`` pairs of ``--scvae-option`` as ``scvae.fit`` keywords; an unknown
    name, one the script sets itself (``own``) or a repeated one fails
    here, before any data is read."""
    accepted = set(inspect.signature(scvae.fit).parameters) - {"adata", *own}
    options: dict[str, bool | int | float | str | None] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ValueError(f"--scvae-option wants NAME=VALUE, got {pair!r}")
        if name in own:
            raise ValueError(f"--scvae-option {name}: the script sets it itself")
        if name not in accepted:
            raise ValueError(f"--scvae-option {name}: not a keyword of scvae.fit")
        if name in options:
            raise ValueError(f"--scvae-option {name} given twice")
        options[name] = option_value(value)
    return options
