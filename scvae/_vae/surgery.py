"""A query mapping's surgery on a copy of the reference's module (scArches' idea).

:class:`~scvae._vae.module.SCVAEModule` built with ``n_query_batches``, ``query_encoder=True``
and ``query_decoder=True`` has parameters for the new batches beside the reference's: input
weights in every layer, per-gene offsets and copies of the encoder and of the decoder through
which only the query's cells pass. :func:`add_query_parts` builds them (the module's
constructor calls it); the other functions start the copies from the reference's networks and
leave only the new parameters trainable. ``scvae._fit.query.query_module`` calls those.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from .networks import query_decoder_copy, query_encoder_copy

if TYPE_CHECKING:
    from .module import SCVAEModule

__all__ = ["add_query_parts", "freeze_reference", "query_parameters", "start_query_networks"]


def add_query_parts(
    module: SCVAEModule,
    n_in: int,
    n_hidden: int,
    n_layers: int,
    dropout: float,
    encoder: bool,
    decoder: bool,
    panel: bool,
) -> None:
    """Give ``module`` the parameters of its ``n_query_batches`` query batches (none if it has
    none): input weights in every layer, per-gene offsets, per-batch inverse dispersions
    where the reference has them, and with ``encoder`` / ``decoder`` networks of their own
    (``n_in``: the encoder's input width; the other sizes as the reference's). ``panel``:
    the query's encoder reads absent genes as missing (``SCVAEModule``'s ``query_panel``)."""
    module.query_log_theta = module.query_encoder = module.query_decoder = None
    module.query_gene_offsets = None
    module.query_panel = bool(panel)
    n_query = module.n_query_batches
    if (encoder or decoder) and not n_query:
        raise ValueError("query_encoder and query_decoder need n_query_batches > 0")
    if panel and not encoder:
        raise ValueError("query_panel needs query_encoder")
    if not n_query:
        return
    width = module.n_batches + module.n_covariates
    n_latent, n_genes = module.n_latent, module.n_genes
    if decoder:
        module.query_decoder = query_decoder_copy(
            n_latent, width, n_hidden, n_genes, n_layers, n_query
        )
    if encoder:
        module.query_encoder = query_encoder_copy(
            n_in, width, n_hidden, n_latent, n_layers, dropout, n_query
        )
    # Per new batch and gene, a log-scale offset of expression: the gene-specific part of a
    # batch effect, which the hidden layers' new inputs alone express poorly.
    module.query_gene_offsets = nn.Parameter(torch.zeros(n_query, n_genes))
    module.encoder.add_query_batches(n_query)
    module.decoder.add_query_batches(n_query)
    if module.log_theta is not None and module.log_theta.shape[0] > 1:
        # Started at the reference's mean dispersion by the query mapping.
        module.query_log_theta = nn.Parameter(torch.zeros(n_query, n_genes))


def start_query_networks(module: SCVAEModule) -> None:
    """Start the query's encoder and decoder (those the module has) from the reference's
    weights; their inputs for the new batches stay at zero."""
    if module.query_encoder is not None:
        module.query_encoder["mlp"].layers.load_state_dict(module.encoder.layers.state_dict())
        module.query_encoder["loc"].load_state_dict(module.z_loc.state_dict())
        module.query_encoder["scale"].load_state_dict(module.z_scale.state_dict())
    if module.query_decoder is not None:
        module.query_decoder["mlp"].layers.load_state_dict(module.decoder.layers.state_dict())
        module.query_decoder["logits"].load_state_dict(module.gene_logits.state_dict())


def query_parameters(module: SCVAEModule) -> list[nn.Parameter]:
    """The parameters of the batches a query mapping added."""
    extra = [] if module.query_log_theta is None else [module.query_log_theta]
    for networks in (module.query_encoder, module.query_decoder):
        if networks is not None:
            extra += list(networks.parameters())
    extra.append(module.query_gene_offsets)
    return [*module.encoder.query_weights, *module.decoder.query_weights, *extra]


def freeze_reference(module: SCVAEModule) -> None:
    """Leave only the query batches' parameters trainable (a query mapping's fit)."""
    query = {id(p) for p in query_parameters(module)}
    for parameter in module.parameters():
        parameter.requires_grad_(id(parameter) in query)
