"""A query mapping's surgery on a copy of the reference's module (scArches' idea).

:class:`~scvae._vae.module.SCVAEModule` built with ``n_query_batches``, ``query_encoder=True``
and ``query_decoder=True`` has parameters for the new batches beside the reference's: input
weights in every layer, per-gene offsets and copies of the encoder and of the decoder through
which only the query's cells pass. These functions start the copies from the reference's
networks and leave only the new parameters trainable. ``scvae._fit.query.query_module`` calls
them.
"""

from __future__ import annotations

from torch import nn

from .module import SCVAEModule

__all__ = ["freeze_reference", "query_parameters", "start_query_networks"]


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
