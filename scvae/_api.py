"""``scvae.fit``: AnnData in, a trained model out, results under documented keys."""

from __future__ import annotations

import logging
import platform
from importlib.metadata import version
from typing import Any

import numpy as np
import pyro
import torch
from anndata import AnnData

from . import _distributed as ddp
from ._backed import StreamingData
from ._batches import MinibatchSource
from ._data import CountData, missing_genes, prepare_counts
from ._model import SCVAE
from ._module import SCVAEModule
from ._reference import build_reference
from ._stream import streaming_sources
from ._train import train
from ._version import __version__

logger = logging.getLogger(__name__)

__all__ = ["default_max_epochs", "fit", "resolve_device"]


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> ``cuda`` when available, else ``cpu``; other values as given."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was asked for but CUDA is not available")
    return device


def default_max_epochs(n_cells: int) -> int:
    """About 8M cell visits, capped to [20, 400] epochs (early stopping usually ends sooner)."""
    return int(np.clip(round(8_000_000 / n_cells), 20, 400))


def fit(
    adata: AnnData,
    *,
    layer: str | None = None,
    batch_key: str | None = None,
    labels_key: str | None = None,
    mask_layer: str | None = None,
    likelihood: str = "nb",
    dispersion: str = "gene",
    n_latent: int = 10,
    n_hidden: int = 128,
    n_layers: int = 1,
    dropout: float = 0.1,
    beta: float = 1.0,
    kl_warmup: int | None = None,
    max_epochs: int | None = None,
    batch_size: int = 128,
    lr: float = 1e-3,
    early_stopping: bool = True,
    validation_fraction: float = 0.1,
    patience: int = 20,
    device: str | torch.device = "auto",
    seed: int = 0,
    key_added: str = "scvae",
    progress: bool = True,
) -> SCVAE:
    """Fit the count VAE to ``adata`` and write the cells' latent coordinates.

    Writes ``adata.obsm[f"X_{key_added}"]`` (posterior means of z, ``n_latent`` columns) and
    ``adata.uns[key_added]`` (settings, library versions, per-epoch loss history, all-zero
    genes). Nothing else in ``adata`` changes.

    Parameters
    ----------
    adata
        Cells x genes with raw counts (non-negative integers; sparse stays sparse). NaN
        entries are missing values: they are left out of the likelihood.
    layer
        Layer with the raw counts; ``None`` uses ``adata.X``.
    batch_key
        ``obs`` column of batches; the batch one-hot enters the encoder and decoder.
    labels_key
        ``obs`` column of cell-type labels, recorded for later use (NaN = unlabelled).
    mask_layer
        Boolean layer, True where an entry was observed; False entries are missing values,
        like NaN entries of the counts.
    likelihood
        ``"nb"`` (negative binomial, default), ``"zinb"`` or ``"poisson"``.
    dispersion
        ``"gene"`` or ``"gene-batch"``: one NB inverse dispersion per gene (and batch).
    n_latent, n_hidden, n_layers, dropout
        Latent dimensions; width and depth of encoder/decoder; encoder dropout.
    beta
        Weight of the KL term (beta-VAE); 1 is the ELBO.
    kl_warmup
        Epochs of linear KL warm-up from 0 to ``beta``; default ``max_epochs // 8``.
    max_epochs
        Default: about 8 million cell visits, within [20, 400] epochs.
    batch_size, lr
        Minibatch size and Adam learning rate.
    early_stopping, validation_fraction, patience
        Hold out this fraction of cells (data with at least 100 cells) and stop after
        ``patience`` epochs without a better held-out ELBO, keeping the best parameters.
    device
        ``"auto"`` (GPU when available), ``"cpu"`` or ``"cuda"``.
    seed
        Seeds weight initialisation, the split, shuffling and sampling. The global torch
        random state of the caller is restored afterwards.
    key_added
        Keys written: ``obsm[f"X_{key_added}"]`` and ``uns[key_added]``.
    progress
        Show a progress bar.

    Returns
    -------
    The fitted :class:`~scvae.SCVAE`.

    Examples
    --------
    >>> import scanpy as sc, scvae
    >>> adata = scvae.datasets.simulate(n_cells=500, n_genes=100)
    >>> model = scvae.fit(adata, batch_key="batch", max_epochs=5, progress=False)
    >>> adata.obsm["X_scvae"].shape
    (500, 10)
    >>> sc.pp.neighbors(adata, use_rep="X_scvae")  # doctest: +SKIP

    A disk-backed AnnData (``anndata.read_h5ad(path, backed="r")``) is streamed from its file
    in blocks of rows, in bounded memory; inside a ``torch.distributed`` process group (e.g.
    under ``torchrun``) each process trains on its share with DistributedDataParallel. See
    ``docs/scaling.md``.
    """
    options = {k: v for k, v in locals().items() if k not in ("adata", "key_added")}
    if isinstance(adata, AnnData) and adata.isbacked:
        from ._backed_fit import fit_backed

        return fit_backed(adata, key_added=key_added, **options)
    data = prepare_counts(
        adata, layer=layer, batch_key=batch_key, labels_key=labels_key, mask_layer=mask_layer
    )
    unmeasured = missing_genes(data)
    if unmeasured:
        raise ValueError(
            f"{len(unmeasured)} genes have every entry missing (e.g. {unmeasured[:5]}); "
            "nothing can be learnt about them: remove them before fitting"
        )
    zero_genes = _report_all_zero_genes(data)
    model = fit_counts(data, **options)
    model.settings["key_added"] = key_added
    _write_results(adata, model, data, key_added, zero_genes)
    return model


def fit_counts(
    data: CountData | StreamingData,
    *,
    validation_indices: np.ndarray | None = None,
    sample_weights: np.ndarray | None = None,
    layer: str | None = None,
    batch_key: str | None = None,
    labels_key: str | None = None,
    mask_layer: str | None = None,
    likelihood: str = "nb",
    dispersion: str = "gene",
    n_latent: int = 10,
    n_hidden: int = 128,
    n_layers: int = 1,
    dropout: float = 0.1,
    beta: float = 1.0,
    kl_warmup: int | None = None,
    max_epochs: int | None = None,
    batch_size: int = 128,
    lr: float = 1e-3,
    early_stopping: bool = True,
    validation_fraction: float = 0.1,
    patience: int = 20,
    device: str | torch.device = "auto",
    seed: int = 0,
    progress: bool = True,
) -> SCVAE:
    """Fit on prepared :class:`~scvae._data.CountData`; :func:`fit` without the AnnData.

    ``validation_indices`` fixes the held-out cells (e.g. a benchmark's test split: their
    ELBO is then recorded every epoch) instead of drawing ``validation_fraction`` of them.
    ``layer``, ``batch_key``, ``labels_key`` and ``mask_layer`` are recorded so that the model
    reads new AnnData the same way. ``sample_weights`` (one per cell of ``data``): training
    cells are drawn with probability proportional to them (for class balancing, see
    :mod:`scvae._balance`). Other arguments as in :func:`fit`.
    """
    settings = {
        k: v
        for k, v in locals().items()
        if k not in ("data", "validation_indices", "sample_weights")
    }
    device = resolve_device(device)
    max_epochs = default_max_epochs(data.n_cells) if max_epochs is None else int(max_epochs)
    if max_epochs < 1 or batch_size < 1:
        raise ValueError("max_epochs and batch_size must be positive")
    if not beta > 0:
        raise ValueError(f"beta must be positive, got {beta}")
    kl_warmup = max(1, max_epochs // 8) if kl_warmup is None else int(kl_warmup)
    settings.update(max_epochs=max_epochs, kl_warmup=kl_warmup, device=str(device))

    cuda = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        if isinstance(data, StreamingData):
            train_source, val_source = streaming_sources(
                data,
                validation_fraction=validation_fraction,
                early_stopping=early_stopping,
                batch_size=batch_size,
                seed=seed,
                device=device,
            )
            library_scale = train_source.median_library()
        else:
            train_source, val_source = _memory_sources(
                data,
                validation_indices,
                validation_fraction,
                early_stopping,
                batch_size,
                device,
                seed,
                sample_weights,
            )
            library_scale = float(np.median(data.library[train_source.indices]))
        module = SCVAEModule(
            data.n_genes,
            len(data.batch_categories),
            n_latent=n_latent,
            n_hidden=n_hidden,
            n_layers=n_layers,
            likelihood=likelihood,
            dispersion=dispersion,
            dropout=dropout,
            encode_mask=data.missing is not None,
            library_scale=library_scale,
        ).to(device)
        logger.info(
            "training on %d cells (%d held out for validation), %d genes, %s, up to %d epochs",
            train_source.n_cells,
            0 if val_source is None else val_source.n_cells,
            data.n_genes,
            device,
            max_epochs,
        )
        history = train(
            module,
            train_source,
            val_source,
            max_epochs=max_epochs,
            lr=lr,
            beta=beta,
            kl_warmup_epochs=kl_warmup,
            early_stopping=early_stopping and val_source is not None,
            patience=patience,
            progress=progress,
        )
        reference = build_reference(module, data, labels_key=labels_key, device=device, seed=seed)
    return SCVAE(
        module,
        gene_names=data.gene_names,
        batch_categories=data.batch_categories,
        label_categories=data.label_categories,
        layer=layer,
        batch_key=batch_key,
        labels_key=labels_key,
        mask_layer=mask_layer,
        settings=settings,
        history=history,
        reference=reference,
    )


def _memory_sources(
    data: CountData,
    validation_indices: np.ndarray | None,
    validation_fraction: float,
    early_stopping: bool,
    batch_size: int,
    device: torch.device,
    seed: int,
    sample_weights: np.ndarray | None,
) -> tuple[MinibatchSource, MinibatchSource | None]:
    """Training and validation minibatches of in-memory counts.

    Inside a process group each rank takes an equal share of the training cells (the
    remainder of the division is left out, so that all ranks take the same number of steps)
    and its share of the validation cells."""
    rng = np.random.default_rng(seed)
    if validation_indices is None:
        train_idx, val_idx = _split(data.n_cells, validation_fraction, rng, early_stopping)
    else:
        val_idx = np.asarray(validation_indices)
        train_idx = np.setdiff1d(np.arange(data.n_cells), val_idx)
    weights = None if sample_weights is None else sample_weights[train_idx]
    validating = len(val_idx) > 0
    rank, world = ddp.rank_world()
    if world > 1:
        share = len(train_idx) // world
        mine = rng.permutation(len(train_idx))[rank * share : (rank + 1) * share]
        train_idx = train_idx[np.sort(mine)]
        weights = None if weights is None else weights[np.sort(mine)]
        val_idx = val_idx[rank::world]
        rng = np.random.default_rng([seed, rank])
    train_source = MinibatchSource(
        data,
        train_idx,
        batch_size=batch_size,
        shuffle=True,
        device=device,
        rng=rng,
        drop_last=True,
        sample_weights=weights,
    )
    val_source = None
    if validating:
        val_source = MinibatchSource(data, val_idx, batch_size=256, device=device)
    return train_source, val_source


def _split(
    n_cells: int, fraction: float, rng: np.random.Generator, early_stopping: bool
) -> tuple[np.ndarray, np.ndarray]:
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"validation_fraction must be in [0, 1), got {fraction}")
    n_val = round(n_cells * fraction) if n_cells >= 100 else 0
    if n_val == 0 and early_stopping and fraction > 0:
        logger.info("fewer than 100 cells: no validation split, no early stopping")
    order = rng.permutation(n_cells)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def _report_all_zero_genes(data: CountData) -> list[str]:
    totals = np.asarray(data.counts.sum(axis=0)).ravel()
    zero = [data.gene_names[i] for i in np.flatnonzero(totals == 0)]
    if zero:
        logger.warning(
            "%d genes have zero counts in every cell (e.g. %s); they are kept and will be "
            "predicted near zero. Filter them with sc.pp.filter_genes(adata, min_counts=1).",
            len(zero),
            ", ".join(zero[:5]),
        )
    return zero


def versions() -> dict[str, str]:
    """Versions of scvae and the libraries a result depends on."""
    return {
        "scvae": __version__,
        "torch": str(torch.__version__),
        "pyro": str(pyro.__version__),
        "anndata": version("anndata"),
        "numpy": str(np.__version__),
        "python": platform.python_version(),
    }


def _write_results(
    adata: AnnData,
    model: SCVAE,
    data: CountData | StreamingData,
    key_added: str,
    zero_genes: list[str],
    *,
    embedding: np.ndarray | None = None,
) -> None:
    obsm_key = f"X_{key_added}"
    adata.obsm[obsm_key] = model.embed_data(data) if embedding is None else embedding
    adata.uns[key_added] = {
        "settings": _h5ad_safe(model.settings),
        "versions": versions(),
        "history": {k: np.asarray(v, dtype=np.float64) for k, v in model.history.items()},
        "n_all_zero_genes": len(zero_genes),
        "all_zero_genes": np.asarray(zero_genes, dtype=str),
    }
    logger.info(
        "added %r, the posterior means of the latent space (adata.obsm), and %r, the "
        "settings and loss history (adata.uns)",
        obsm_key,
        key_added,
    )


def _h5ad_safe(settings: dict[str, Any]) -> dict[str, Any]:
    """h5ad cannot store None: unset options are written as the string 'None'."""
    return {k: ("None" if v is None else v) for k, v in settings.items()}
