"""``scvae.fit``: AnnData in, a trained model out, results under documented keys."""

from __future__ import annotations

import logging
import platform
from dataclasses import replace
from importlib.metadata import version
from typing import Any

import numpy as np
import pyro
import torch
from anndata import AnnData

from ._balance import balance_weights, class_weights
from ._batches import MinibatchSource
from ._data import CountData, missing_genes, prepare_counts
from ._model import SCVAE
from ._module import SCVAEModule
from ._reference import build_reference
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
    """
    options = {k: v for k, v in locals().items() if k not in ("adata", "key_added")}
    check_balance(balance, labels_key=labels_key, batch_key=batch_key)
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
    data: CountData,
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
    check_balance(
        balance,
        labels_key="given" if data.labels is not None else None,
        batch_key="given" if len(data.batch_categories) > 1 else None,
    )
    head_labels = data.labels
    if balance == "auto":
        head_labels = _cluster_labels(data, settings, validation_indices)
        balance = "labels"
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
        rng = np.random.default_rng(seed)
        if validation_indices is None:
            train_idx, val_idx = _split(data.n_cells, validation_fraction, rng, early_stopping)
        else:
            val_idx = np.asarray(validation_indices)
            train_idx = np.setdiff1d(np.arange(data.n_cells), val_idx)
        head = {}
        if balance == "labels":
            names = (
                list(data.label_categories)
                if settings["balance"] == "labels"
                else [f"cluster_{i}" for i in range(int(head_labels.max()) + 1)]
            )
            n_labels = len(names)
            head = {
                "n_labels": n_labels,
                "label_names": names,
                "classification_weight": classification_weight,
                "class_weights": class_weights(head_labels[train_idx], n_labels).tolist(),
            }
        elif balance == "batch":
            sample_weights = np.zeros(data.n_cells)
            sample_weights[train_idx] = balance_weights(data.batch_index[train_idx])
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
            library_scale=float(np.median(data.library[train_idx])),
            **head,
        ).to(device)
        labelled = replace(data, labels=head_labels) if head else data
        train_source = MinibatchSource(
            labelled,
            train_idx,
            batch_size=batch_size,
            shuffle=True,
            device=device,
            rng=rng,
            drop_last=True,
            sample_weights=None if sample_weights is None else sample_weights[train_idx],
            with_labels=bool(head),
        )
        val_source = None
        if len(val_idx):
            val_source = MinibatchSource(data, val_idx, batch_size=256, device=device)
        logger.info(
            "training on %d cells (%d held out for validation), %d genes, %s, up to %d epochs",
            len(train_idx),
            len(val_idx),
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


BALANCE = (None, "labels", "batch", "auto")


def check_balance(balance: str | None, *, labels_key: str | None, batch_key: str | None) -> None:
    """Errors for a ``balance`` value that cannot work with the given keys."""
    if balance not in BALANCE:
        raise ValueError(f"balance must be one of {BALANCE}, got {balance!r}")
    if balance == "labels" and labels_key is None:
        raise ValueError("balance='labels' needs labels_key (the obs column of cell types)")
    if balance == "batch" and batch_key is None:
        raise ValueError("balance='batch' needs batch_key with at least two batches")


def _cluster_labels(
    data: CountData, settings: dict[str, Any], validation_indices: np.ndarray | None
) -> np.ndarray:
    """Leiden clusters of a first, unbalanced fit: the classes of ``balance="auto"``."""
    from .metrics import leiden_clusters

    options = {k: v for k, v in settings.items() if k not in ("balance", "progress")}
    logger.info("balance='auto': first fit, then Leiden clusters of its latent space")
    first = fit_counts(
        data, validation_indices=validation_indices, balance=None, progress=False, **options
    )
    clusters = leiden_clusters(first.embed_data(data), seed=settings["seed"])
    codes = np.unique(clusters, return_inverse=True)[1].astype(np.int64)
    logger.info("balance='auto': %d clusters, sizes %s", codes.max() + 1, np.bincount(codes))
    return codes


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
    adata: AnnData, model: SCVAE, data: CountData, key_added: str, zero_genes: list[str]
) -> None:
    obsm_key = f"X_{key_added}"
    adata.obsm[obsm_key] = model.embed_data(data)
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
