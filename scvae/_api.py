"""``scvae.fit``: AnnData in, a trained model out, results under documented keys."""

from __future__ import annotations

import logging
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from anndata import AnnData

from . import _distributed as ddp
from ._backed import StreamingData
from ._balance import check_balance, cluster_labels, label_head
from ._checkpoint import Checkpointing, fit_identity
from ._data import CountData, missing_genes, prepare_counts
from ._device import cuda_devices, resolve_device
from ._model import SCVAE
from ._module import SCVAEModule
from ._reference import LatentReference, build_reference
from ._results import report_all_zero_genes, write_results
from ._sources import memory_sources
from ._stream import streaming_sources
from ._train import NonFiniteLossError, train

logger = logging.getLogger(__name__)

__all__ = ["default_max_epochs", "fit"]


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
    balance: str | None = None,
    classification_weight: float = 50.0,
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
    lr: float | None = None,
    early_stopping: bool = True,
    validation_fraction: float = 0.1,
    patience: int = 20,
    device: str | torch.device = "auto",
    seed: int = 0,
    key_added: str = "scvae",
    progress: bool = True,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 10,
    resume: bool = False,
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
        ``obs`` column of cell-type labels (NaN = unlabelled): the types
        :func:`scvae.generate` knows, and the classes of ``balance="labels"``.
    mask_layer
        Boolean layer, True where an entry was observed; False entries are missing values,
        like NaN entries of the counts.
    balance
        Keep rare groups from being drowned by common ones (default ``None``: off).
        ``"labels"``: the model also predicts each labelled cell's type from z (a label head
        ``p(y | z)``, as in semi-supervised VAEs); the label log-likelihood is added to the
        ELBO with weight ``classification_weight`` times a class weight that gives every type
        the same total weight, so rare types pull as hard as common ones and get their own
        region of latent space. Unlabelled (NaN) cells train the VAE only and are predicted
        by :meth:`SCVAE.predict_labels`. ``"auto"``, for data without labels: a first fit,
        Leiden clusters of its latent space, then ``"labels"`` on the clusters.
        ``"batch"``: minibatches sampled so that each batch contributes equally.
    classification_weight
        Weight of the label term for ``balance="labels"`` / ``"auto"``.
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
    batch_size
        Cells per training step (per process under ``torchrun``). 128 gives the best final
        held-out ELBO; 512 gets close in less time on the CPU; larger batches suit a GPU
        (measurements: docs/speed.md, "Large batches").
    lr
        Adam's learning rate. Default: 1e-3 up to 128 cells per step, then in proportion to
        the cells per step (all processes' under ``torchrun``) up to 1.6e-2 at 2048; what it
        gains on held-out ELBO is measured in docs/speed.md, "Large batches".
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
    checkpoint_dir, checkpoint_every
        Write the full training state to ``checkpoint_dir/checkpoint.pt`` (atomically) every
        ``checkpoint_every`` epochs.
    resume
        Continue from the checkpoint in ``checkpoint_dir``, if there is one (same data and
        options; ``max_epochs`` may be larger). On CPU the result equals, bit for bit, a fit
        that was never stopped.

    Returns
    -------
    The fitted :class:`~scvae.SCVAE`.

    Notes
    -----
    A ``KeyboardInterrupt`` (stopping a notebook cell) ends training early: the parameters
    of the best or last complete epoch are kept, results are written as usual, a warning is
    issued and ``model.history["interrupted_at_epoch"]`` records it. A NaN or infinite loss
    raises :class:`.NonFiniteLossError` (its ``model`` attribute holds the model
    at its last finite state) and writes nothing.

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
    check_balance(balance, labels_key=labels_key, batch_key=batch_key)
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
    zero_genes = report_all_zero_genes(data.gene_names, data.counts.sum(axis=0))
    model = fit_counts(data, **options)
    model.settings["key_added"] = key_added
    write_results(adata, model, data, key_added, zero_genes)
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
    balance: str | None = None,
    classification_weight: float = 50.0,
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
    lr: float | None = None,
    early_stopping: bool = True,
    validation_fraction: float = 0.1,
    patience: int = 20,
    device: str | torch.device = "auto",
    seed: int = 0,
    progress: bool = True,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 10,
    resume: bool = False,
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
    check_balance(
        balance,
        labels_key="given" if data.labels is not None else None,
        batch_key="given" if len(data.batch_categories) > 1 else None,
    )
    head_labels = data.labels
    if balance == "auto":
        head_labels = cluster_labels(fit_counts, data, settings, validation_indices)
        balance = "labels"
    device = resolve_device(device)
    max_epochs = default_max_epochs(data.n_cells) if max_epochs is None else int(max_epochs)
    if max_epochs < 1 or batch_size < 1:
        raise ValueError("max_epochs and batch_size must be positive")
    if not beta > 0:
        raise ValueError(f"beta must be positive, got {beta}")
    kl_warmup = max(1, max_epochs // 8) if kl_warmup is None else int(kl_warmup)
    lr = default_lr(batch_size * ddp.rank_world()[1]) if lr is None else lr
    settings.update(max_epochs=max_epochs, kl_warmup=kl_warmup, lr=lr, device=str(device))
    _check_options(data, settings)
    checkpointing = None
    if checkpoint_dir is not None:
        settings["checkpoint_dir"] = str(checkpoint_dir)
        identity = fit_identity(data.gene_names, data.n_cells, settings)
        checkpointing = Checkpointing(Path(checkpoint_dir), int(checkpoint_every), identity)
        if resume:
            checkpointing.resume_state = checkpointing.read()
    elif resume:
        raise ValueError("resume=True needs the checkpoint_dir of the fit to resume")

    with torch.random.fork_rng(devices=cuda_devices(device)):
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
            if balance is not None:
                raise NotImplementedError(
                    "balance= is not supported for disk-backed data yet; load the cells "
                    "with adata.to_memory() to balance them"
                )
            head = {}
        else:
            labelled = replace(data, labels=head_labels) if balance == "labels" else data
            train_source, val_source, train_idx = memory_sources(
                labelled,
                validation_indices,
                validation_fraction,
                early_stopping,
                batch_size,
                device,
                seed,
                sample_weights,
                with_labels=balance == "labels",
                balance_batches=balance == "batch",
            )
            library_scale = float(np.median(data.library[train_source.indices]))
            head = {}
            if balance == "labels":
                names = data.label_categories if settings["balance"] == "labels" else None
                head = label_head(head_labels[train_idx], names, classification_weight)
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
            **head,
        ).to(device)
        logger.info(
            "training on %d cells (%d held out for validation), %d genes, %s, up to %d epochs",
            train_source.n_cells,
            0 if val_source is None else val_source.n_cells,
            data.n_genes,
            device,
            max_epochs,
        )
        train_options = dict(
            max_epochs=max_epochs,
            lr=lr,
            beta=beta,
            kl_warmup_epochs=kl_warmup,
            early_stopping=early_stopping and val_source is not None,
            patience=patience,
            progress=progress,
            checkpointing=checkpointing,
        )
        try:
            history = train(module, train_source, val_source, **train_options)
        except NonFiniteLossError as error:
            # Hand the user the model at its last finite state, without writing anything.
            error.model = _model(module, data, settings, {})
            raise
        reference = build_reference(module, data, labels_key=labels_key, device=device, seed=seed)
    return _model(module, data, settings, history, reference)


def _model(
    module: SCVAEModule,
    data: CountData,
    settings: dict,
    history: dict,
    reference: LatentReference | None = None,
) -> SCVAE:
    return SCVAE(
        module,
        gene_names=data.gene_names,
        batch_categories=data.batch_categories,
        label_categories=data.label_categories,
        layer=settings["layer"],
        batch_key=settings["batch_key"],
        labels_key=settings["labels_key"],
        mask_layer=settings["mask_layer"],
        settings=settings,
        history=history,
        reference=reference,
    )


def default_lr(cells_per_step: int) -> float:
    """Adam's learning rate for ``cells_per_step`` cells per update: ``1e-3`` up to 128 cells,
    then ``1e-3`` per 128 cells, at most ``1.6e-2`` (2048 cells, the largest batch measured).

    Linear scaling beat square-root scaling on pbmc4k (held-out ELBO after 100 epochs: -615
    vs -622 at 512 cells, -633 vs -644 at 2048) and was stable; above 2048 cells per step the
    rate is held, not extrapolated.

    Examples
    --------
    >>> default_lr(128), default_lr(512), default_lr(65536)
    (0.001, 0.004, 0.016)
    """
    return 1e-3 * min(max(cells_per_step / 128, 1.0), 16.0)


def _check_options(data: CountData, settings: dict[str, Any]) -> None:
    """Reject option values that would fail deep inside torch or train a degenerate model."""
    if data.n_cells < 2:
        raise ValueError(f"adata has {data.n_cells} cell(s); fitting needs at least 2 cells")
    for name in ("n_latent", "n_hidden", "n_layers", "patience"):
        value = settings[name]
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not 0.0 <= settings["dropout"] < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {settings['dropout']!r}")
    if not (math.isfinite(settings["lr"]) and settings["lr"] > 0):
        raise ValueError(f"lr must be a positive number, got {settings['lr']!r}")
    if settings["checkpoint_every"] < 1:
        raise ValueError(f"checkpoint_every must be >= 1, got {settings['checkpoint_every']!r}")
    if settings["kl_warmup"] < 0:
        raise ValueError(f"kl_warmup must be >= 0, got {settings['kl_warmup']!r}")
    if not math.isfinite(settings["beta"]):
        raise ValueError(f"beta must be finite, got {settings['beta']!r}")
