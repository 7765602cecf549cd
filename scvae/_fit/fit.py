"""``scvae.fit``: AnnData in, a trained model out, results under documented keys."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from anndata import AnnData

from .._batches.split import make_sources
from .._batches.weights import label_head
from .._data.counts import CountData
from .._data.spec import ReadSpec, read_counts
from .._model.reference import LatentReference, build_reference
from .._model.scvae import SCVAE
from .._train.checkpoint import Checkpointing, fit_identity
from .._train.loop import NonFiniteLossError, train
from .._utils import distributed as ddp
from .._utils.device import seeded
from .._vae.library import library_standardisation
from .._vae.module import SCVAEModule
from ..metrics import leiden_clusters
from .query import query_epochs, query_module, query_settings, read_query, with_reference_labels
from .results import check_result_keys, report_all_zero_genes, write_results
from .settings import FitSettings, check_against_data

logger = logging.getLogger(__name__)

__all__ = ["fit", "fit_counts"]


def fit(
    adata: AnnData,
    *,
    reference: SCVAE | None = None,
    layer: str | None = None,
    batch_key: str | None = None,
    labels_key: str | None = None,
    mask_layer: str | None = None,
    categorical_covariate_keys: list[str] | None = None,
    continuous_covariate_keys: list[str] | None = None,
    balance: str | None = None,
    classification_weight: float = 50.0,
    batch_alignment: float | None = None,
    likelihood: str = "nb",
    dispersion: str = "gene",
    n_latent: int | None = None,
    n_hidden: int = 128,
    n_layers: int = 1,
    dropout: float = 0.1,
    prior_components: int | None = None,
    library_from_latent: bool | None = None,
    beta: float = 1.0,
    kl_warmup: int | None = None,
    max_epochs: int | None = None,
    batch_size: int = 128,
    lr: float | None = None,
    early_stopping: bool | None = None,
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
    reference
        A fitted model to map ``adata`` onto (scArches' query mapping): ``adata`` holds new
        batches (``obs[batch_key]``, the reference's key by default, with names the
        reference does not use); the reference's weights are kept as they are and only
        what the new batches need is learnt: their input weights and gene offsets (and
        dispersions, for ``"gene-batch"``), and an encoder and a decoder for their cells,
        trainable copies of the reference's. The architecture, covariates and labels are
        the reference's: pass only training options (epochs, batch size, learning rate,
        seed, ...; see ``early_stopping`` for the query's epochs). Genes are matched by
        name: the reference's genes ``adata`` lacks are missing values for its cells (left
        out of the likelihood, and imputable with ``scvae.impute(..., genes="model")``);
        genes the reference does not know are dropped with a warning. The returned model
        knows the reference's batches and the new ones and embeds both.
        See :doc:`/mapping`.
    batch_key
        ``obs`` column of batches; the batch one-hot enters every layer of the encoder and
        of the decoder.
    labels_key
        ``obs`` column of cell-type labels (NaN = unlabelled): the types
        :func:`scvae.generate` knows, and the classes of ``balance="labels"``.
    mask_layer
        Boolean layer, True where an entry was observed; False entries are missing values,
        like NaN entries of the counts.
    categorical_covariate_keys
        ``obs`` columns of other categorical covariates (donor, chemistry, ...): like the
        batch, each one's one-hot enters every layer of the encoder and of the decoder.
        New cells must use the categories seen in training.
    continuous_covariate_keys
        ``obs`` columns of numeric covariates (percent mitochondrial counts, cell-cycle
        score, ...), standardised with the training cells' mean and standard deviation, and
        entering every layer of the encoder and decoder beside the one-hots.
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
    batch_alignment
        With ``batch_key``: weight of a term of the training objective that asks the
        batches' latent distributions to match (the maximum mean discrepancy between each
        batch's latent samples and the other cells' in every minibatch, per cell). Without
        it a strong batch effect keeps the batches apart in latent space although the
        decoder, given the batch, could explain it. Default ``None``: 10 (measured in
        docs/mapping.md); 0 turns it off. It can pull a cell type that only one batch has
        towards the others: see docs/mapping.md for what was measured. The reported ELBO
        leaves it out.
    likelihood
        ``"nb"`` (negative binomial, default), ``"zinb"`` or ``"poisson"``.
    dispersion
        ``"gene"`` or ``"gene-batch"``: one NB inverse dispersion per gene (and batch).
    n_latent, n_hidden, n_layers, dropout
        Latent dimensions (default 30, 50 with ``batch_key``); width and depth
        of encoder/decoder; encoder dropout. Dimensions
        the data do not need collapse onto the prior (``adata.uns[key_added]
        ["n_active_units"]`` counts those in use); see docs/embedding.md for choosing it.
    prior_components
        The prior of z: a learned mixture of this many diagonal normals (weights, means and
        scales trained with the rest), or the standard normal with 0. Default 20. The
        mixture lets cells of one type gather around a component instead of spreading over
        the whole prior: neighbourhoods, clusters and the held-out likelihood all improve
        (docs/embedding.md). Data with one continuous trajectory and no types may be split
        into artificial clusters; use 0 there.
    library_from_latent
        Let z generate each cell's log library size too (the encoder reads it): depth that
        differs between cell types is then in the embedding, as far as it pays for its KL.
        Default: on without ``batch_key`` and covariates, off with them (depth that follows
        them would come back into z). Off, z holds composition only (docs/embedding.md).
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
        Default ``None``: on, but off for a query mapping (``reference=``), which trains
        ``max_epochs`` (default 100; fewer past 80,000 cells), since a small query's
        held-out ELBO peaks before its cells mix with the reference's. With ``batch_key``
        the batch-alignment term goes on mixing batches on the ELBO's plateau, so the epoch
        kept is the latest within 0.5 % of the best held-out ELBO (docs/mapping.md).
    device
        ``"auto"`` (GPU when available), ``"cpu"`` or ``"cuda"``.
    seed
        Seeds weight initialisation, the split, shuffling and sampling. The global torch
        random state of the caller is restored afterwards.
    key_added
        Keys written: ``obsm[f"X_{key_added}"]`` and ``uns[key_added]``. A non-empty
        string without ``/``. The results of an earlier fit under the same key are replaced;
        an ``uns[key_added]`` another tool wrote (``key_added="pca"`` and scanpy's
        ``uns["pca"]``) is refused before training, and an ``obsm`` entry without scvae's
        record in ``uns`` is replaced with a warning.
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
    (500, 50)
    >>> sc.pp.neighbors(adata, use_rep="X_scvae")  # doctest: +SKIP

    A disk-backed AnnData (``anndata.read_h5ad(path, backed="r")``) is streamed from its file
    in blocks of rows, in bounded memory; inside a ``torch.distributed`` process group (e.g.
    under ``torchrun``) each process trains on its share with DistributedDataParallel. See
    ``docs/scaling.md``.
    """
    options = {k: v for k, v in locals().items() if k not in ("adata", "reference")}
    if reference is not None:
        return _fit_query(adata, reference, options)
    settings = FitSettings(**options)
    check_result_keys(adata, settings.key_added)
    spec = ReadSpec(
        layer,
        batch_key,
        labels_key,
        mask_layer,
        categorical_covariate_keys=settings.categorical_covariate_keys or (),
        continuous_covariate_keys=settings.continuous_covariate_keys or (),
    )
    data = read_counts(adata, spec, share=ddp.rank_world(), reduce=ddp.all_reduce_sum)
    zero_genes = report_all_zero_genes(data)
    try:
        model = fit_counts(data, settings)
        write_results(adata, model, data, zero_genes)
    finally:
        data.close()
    return model


def _fit_query(adata: AnnData, reference: SCVAE, options: dict) -> SCVAE:
    """``fit(adata, reference=model)``: see :mod:`scvae._fit.query`."""
    settings = query_settings(reference, options)
    check_result_keys(adata, settings.key_added)
    data = read_query(adata, reference, settings)
    settings = replace(settings, max_epochs=query_epochs(settings.max_epochs, data.n_cells))
    try:
        module = query_module(reference, data, settings.seed)
        model = with_reference_labels(fit_counts(data, settings, module=module), reference)
        write_results(adata, model, data, [])
    finally:
        data.close()
    return model


def fit_counts(
    data: CountData,
    settings: FitSettings | None = None,
    *,
    validation_indices: np.ndarray | None = None,
    sample_weights: np.ndarray | None = None,
    module: SCVAEModule | None = None,
) -> SCVAE:
    """Fit on counts already read (:func:`scvae._data.memory.read_counts`): :func:`fit` without
    the AnnData, for benchmarks and for the first fit of ``balance="auto"``.

    ``validation_indices`` fixes the held-out cells (e.g. a benchmark's test split: their
    ELBO is then recorded every epoch) instead of drawing ``validation_fraction`` of them.
    ``sample_weights`` (one per cell of ``data``): training cells are drawn with probability
    proportional to them (for class balancing, see :mod:`scvae._batches.weights`).
    ``module``: train this module (its trainable parameters) instead of a new one, as a
    query mapping does (:mod:`scvae._fit.query`).
    """
    given = FitSettings() if settings is None else settings
    check_against_data(data, given)
    head_labels = data.labels
    if given.balance == "auto":
        head_labels = _cluster_labels(data, given, validation_indices)
    settings = given.resolved(data.n_cells, ddp.rank_world()[1])
    device = torch.device(settings.device)
    checkpointing = None
    if settings.checkpoint_dir is not None:
        identity = fit_identity(data.gene_names, data.n_cells, settings.identity())
        checkpointing = Checkpointing(
            Path(settings.checkpoint_dir), int(settings.checkpoint_every), identity
        )
        if settings.resume:
            checkpointing.resume_state = checkpointing.read()

    with_labels = given.balance in ("labels", "auto")
    with seeded(settings.seed, device):
        labelled = replace(data, labels=head_labels) if with_labels else data
        sources = make_sources(
            labelled,
            **settings.source_options(),
            validation_indices=validation_indices,
            sample_weights=sample_weights,
            with_labels=with_labels,
        )
        head = {}
        if with_labels:
            names = data.label_categories if given.balance == "labels" else None
            head = label_head(
                head_labels[sources.train_cells], names, settings.classification_weight
            )
        if module is None:
            module = SCVAEModule(
                data.n_genes,
                len(data.batch_categories),
                encode_mask=data.missing is not None,
                library_scale=sources.train.median_library(),
                **library_standardisation(data.library),
                n_covariates=0 if data.covariate_layout is None else data.covariate_layout.width,
                **settings.module_options(),
                **head,
            ).to(device)
        val_source = sources.validation
        logger.info(
            "training on %d cells (%d held out for validation), %d genes, %s, up to %d epochs",
            sources.train.n_cells,
            0 if val_source is None else val_source.n_cells,
            data.n_genes,
            device,
            settings.max_epochs,
        )
        try:
            history = train(
                module,
                sources.train,
                val_source,
                checkpointing=checkpointing,
                **settings.train_options(validating=val_source is not None),
            )
        except NonFiniteLossError as error:
            # Hand the user the model at its last finite state, without writing anything.
            error.model = _model(module, data, settings, {})
            raise
        reference = build_reference(
            module, data, labels_key=settings.labels_key, device=device, seed=settings.seed
        )
    return _model(module, data, settings, history, reference)


def _cluster_labels(
    data: CountData, settings: FitSettings, validation_indices: np.ndarray | None
) -> np.ndarray:
    """Leiden clusters of a first, unbalanced fit: the classes of ``balance="auto"``."""
    logger.info("balance='auto': first fit, then Leiden clusters of its latent space")
    first_settings = replace(
        settings, balance=None, progress=False, checkpoint_dir=None, resume=False
    )
    first = fit_counts(data, first_settings, validation_indices=validation_indices)
    clusters = leiden_clusters(first.embed_data(data), seed=settings.seed)
    codes = np.unique(clusters, return_inverse=True)[1].astype(np.int64)
    logger.info("balance='auto': %d clusters, sizes %s", codes.max() + 1, np.bincount(codes))
    return codes


def _model(
    module: SCVAEModule,
    data: CountData,
    settings: FitSettings,
    history: dict,
    reference: LatentReference | None = None,
) -> SCVAE:
    record = settings.record()
    if data.backed:
        record["backed"] = True
    return SCVAE(
        module,
        gene_names=data.gene_names,
        batch_categories=data.batch_categories,
        label_categories=data.label_categories,
        layer=settings.layer,
        batch_key=settings.batch_key,
        labels_key=settings.labels_key,
        mask_layer=settings.mask_layer,
        covariate_layout=data.covariate_layout,
        settings=record,
        history=history,
        reference=reference,
    )
