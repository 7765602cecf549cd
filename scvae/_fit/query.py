"""Query mapping: new batches fitted onto a trained reference whose weights stay as they are.

scArches' idea, in scvae's terms: ``fit(query, reference=model)`` copies the reference's module,
gives every layer of its encoder and decoder input weights for the query's batches (zero to
start with), each new batch a log-scale offset per gene (and inverse dispersions, for
``dispersion="gene-batch"``), and the query's cells an encoder and a decoder of their own,
trainable copies of the reference's; it freezes everything else and trains those on the
query's cells. With the reference's batch alignment on, the query's cells are also aligned with
points drawn from the reference's aggregate posterior (``SCVAEModule.anchors``), so that they
mix with the reference's cells instead of only landing near them. The copies let a query
whose difference from the reference depends on the cell type (a stimulation, a technology)
be placed with the reference's types: with new-batch inputs alone, kang2018's stimulated
cells stayed apart from the control reference (``docs/mapping.md``). The reference's cells
pass through the reference's own networks with zero new-batch inputs, so the mapped model
embeds them bit for bit as the reference did, and the query's cells land in the same latent space.

Genes are matched by name. The reference's genes the query did not measure are missing values
for its cells: left out of the likelihood, as any missing entry, and imputable from the
posterior (``scvae.impute(query, qmodel, genes="model")``), never zeros (scArches pads them
with zeros). Query genes the reference does not know are dropped with a warning.
"""

from __future__ import annotations

import logging
from dataclasses import fields
from typing import Any

import numpy as np
import torch
from anndata import AnnData

from .._data.checks import missing_genes, obs_codes
from .._data.counts import CountData
from .._data.spec import ReadSpec, read_counts
from .._model.reference import ANY
from .._model.scvae import SCVAE
from .._vae.module import SCVAEModule
from .._vae.surgery import freeze_reference, start_query_networks
from .settings import FitSettings, default_max_epochs

logger = logging.getLogger(__name__)

__all__ = [
    "new_batches",
    "query_epochs",
    "query_module",
    "query_settings",
    "read_query",
    "with_reference_labels",
]

# What a query's fit may set: where its data are, and how to train. Everything else (the
# architecture, the likelihood, covariates, labels) is the reference's.
QUERY_OPTIONS = frozenset(
    {"layer", "batch_key", "mask_layer", "kl_warmup", "max_epochs", "batch_size", "lr"}
    | {"early_stopping", "validation_fraction", "patience", "device", "seed", "key_added"}
    | {"progress", "checkpoint_dir", "checkpoint_every", "resume"}
)
#: Latent points of the reference a query is aligned with.
N_ANCHORS = 4096
#: Most epochs of a query's fit when ``max_epochs`` is not given.
QUERY_MAX_EPOCHS = 100
_DEFAULTS = {f.name: f.default for f in fields(FitSettings)}


def query_settings(reference: SCVAE, options: dict[str, Any]) -> FitSettings:
    """The settings of a query's fit: the reference's architecture and the training options
    of ``options`` (``fit``'s keywords); an architecture option set to anything other than
    the reference's value is refused."""
    if not isinstance(reference, SCVAE):
        raise TypeError(
            f"reference must be a fitted scvae model (scvae.fit or scvae.load), got "
            f"{type(reference).__name__}"
        )
    if reference.batch_key is None:
        raise ValueError(
            "the reference was fitted without batch_key: a query mapping adds the query's "
            "batches to the reference's, so fit the reference with batch_key=..."
        )
    if reference.module.library_from_latent:
        raise ValueError(
            "the reference generates library sizes from its latent space "
            "(library_from_latent=True), which a query mapping does not support yet: fit the "
            "reference with library_from_latent=False"
        )
    if reference.module.n_query_batches:
        raise ValueError(
            "the reference is itself a query mapping; map every query onto the original "
            "reference (or refit a reference on the reference and earlier queries)"
        )
    recorded = reference.settings
    for name, value in options.items():
        if name in QUERY_OPTIONS or value == _DEFAULTS[name]:
            continue
        if recorded.get(name, _DEFAULTS[name]) != value:
            raise ValueError(
                f"{name}={value!r}: a query mapping keeps the reference's {name} "
                f"({recorded.get(name)!r}); pass only where the data are and how to train "
                f"({', '.join(sorted(QUERY_OPTIONS))})"
            )
    chosen = {k: v for k, v in options.items() if k in QUERY_OPTIONS}
    if chosen["batch_key"] is None:
        chosen["batch_key"] = reference.batch_key
    if chosen["kl_warmup"] is None:
        chosen["kl_warmup"] = 0  # the decoder is trained already: no warm-up to protect
    if chosen["early_stopping"] is None:
        # A small query's held-out ELBO peaks within a few epochs (its own encoder and
        # decoder fit its few cells fast), before the alignment has mixed its cells with the
        # reference's: cellbench_5cl's 156 cells stopped at epoch 28 with batch correction
        # 0.75, trained 100 epochs 0.91 (docs/mapping.md).
        chosen["early_stopping"] = False
    architecture = {k: recorded.get(k, _DEFAULTS[k]) for k in _DEFAULTS if k not in QUERY_OPTIONS}
    architecture.update(labels_key=None, balance=None)  # the label head stays as it is
    return FitSettings(**{**architecture, **chosen})


def read_query(adata: AnnData, reference: SCVAE, settings: FitSettings) -> CountData:
    """The query's counts in the reference's genes (absent ones missing), its batches coded
    after the reference's, and the reference's covariates; ``adata`` is not modified."""
    if not isinstance(adata, AnnData):
        raise TypeError(f"expected an AnnData, got {type(adata).__name__}")
    key = settings.batch_key
    _, new = obs_codes(adata.obs, key, None, "batch_key")
    shared = sorted(set(new) & set(reference.batch_categories))
    if shared:
        raise ValueError(
            f"adata.obs[{key!r}] has batches the reference was trained on: {shared[:10]}. "
            "A query mapping learns new batches only: give the query's batches names of "
            "their own (e.g. adata.obs[key] = 'query_' + adata.obs[key].astype(str)), or "
            "embed cells of the reference's batches with reference.embed(adata)"
        )
    spec = ReadSpec(
        layer=settings.layer,
        batch_key=key,
        mask_layer=settings.mask_layer,
        batch_categories=list(reference.batch_categories) + list(new),
        gene_names=reference.gene_names,
        covariate_layout=reference.covariate_layout,
        absent_genes_missing=True,
    )
    data = read_counts(adata, spec, for_fit=False)
    # A query lacking whole genes gets an encoder of its own (query_module); scattered
    # missing entries meet the reference's encoder.
    if data.missing is not None and not reference.module.encode_mask and not missing_genes(data):
        logger.warning(
            "the reference was fitted without missing values: its encoder sees a missing "
            "entry of the query as a zero, which biases the latent position of cells with "
            "many missing genes (the likelihood still leaves them out)"
        )
    logger.info(
        "mapping %d cells of %d new batches onto a reference of %d batches",
        data.n_cells,
        len(new),
        len(reference.batch_categories),
    )
    return data


def query_module(reference: SCVAE, data: CountData, seed: int = 0) -> SCVAEModule:
    """A copy of the reference's module with weights for the new batches of ``data``,
    everything but those frozen; the reference's module is not touched. The query's cells get
    an encoder and a decoder of their own, started from the reference's
    (``SCVAEModule.query_encoder``, ``query_decoder``); a query that lacks some of the
    reference's genes is read with them missing (``query_panel``)."""
    panel = bool(missing_genes(data))
    n_new = len(new_batches(data, reference))
    anchors = _anchors(reference, seed)
    config = dict(
        reference.module.config,
        n_query_batches=n_new,
        query_encoder=True,
        query_decoder=True,
        query_panel=panel,
        n_anchors=0 if anchors is None else len(anchors),
    )
    module = SCVAEModule(**config)
    state = {k: v.detach().clone() for k, v in reference.module.state_dict().items()}
    missing, unexpected = module.load_state_dict(state, strict=False)
    assert not unexpected and all("query" in k or k == "anchors" for k in missing), missing
    if anchors is not None:
        module.anchors.copy_(torch.as_tensor(anchors, dtype=module.anchors.dtype))
    start_query_networks(module)
    if module.query_log_theta is not None:  # start each new batch at the mean dispersion
        module.query_log_theta.data[:] = module.log_theta.detach().mean(0, keepdim=True)
    freeze_reference(module)
    return module.to(reference.device)


def query_epochs(max_epochs: int | None, n_cells: int) -> int:
    """Epochs of a query's fit: ``max_epochs`` if given, else 100 (scArches' query training),
    fewer where a reference fit would train fewer (about 8M cell visits).

    Examples
    --------
    >>> query_epochs(None, 1000), query_epochs(None, 200_000), query_epochs(7, 1000)
    (100, 40, 7)
    """
    if max_epochs is not None:
        return max_epochs
    return min(QUERY_MAX_EPOCHS, default_max_epochs(n_cells))


def with_reference_labels(model: SCVAE, reference: SCVAE) -> SCVAE:
    """The fitted query ``model``, given the reference's label names and key (its label
    head is the reference's) and the reference's batches in its settings."""
    model.label_categories = list(reference.label_categories)
    model.labels_key = reference.labels_key
    model.settings["reference_batches"] = list(reference.batch_categories)
    return model


def new_batches(data: CountData, reference: SCVAE) -> list[str]:
    """The batches of ``data`` (read by :func:`read_query`) that the reference lacks."""
    return data.batch_categories[len(reference.batch_categories) :]


def _anchors(reference: SCVAE, seed: int) -> np.ndarray | None:
    """Points of the reference's aggregate posterior, for aligning the query with it (only
    with the reference's batch alignment on, and its latent reference at hand)."""
    if not reference.module.alignment_weight or reference.reference is None:
        return None
    region = reference.reference.regions[ANY]
    return region.sample(N_ANCHORS, np.random.default_rng(seed)).astype(np.float32)
