"""A query mapping's surgery on a copy of the reference's module (scArches' idea).

:class:`~scvae._vae.module.SCVAEModule` built with ``n_query_batches`` (and, for a query
measured on fewer genes, ``query_encoder=True``) has parameters for the new batches beside the
reference's; these functions start the query's encoder from the reference's and leave only the
new parameters trainable. ``scvae._fit.query.query_module`` calls them.
"""

from __future__ import annotations

from torch import nn

from .module import SCVAEModule

__all__ = ["freeze_reference", "query_parameters", "start_query_encoder"]


def start_query_encoder(module: SCVAEModule) -> None:
    """Start the query's encoder from the reference's weights."""
    module.query_encoder["mlp"].layers.load_state_dict(module.encoder.layers.state_dict())
    module.query_encoder["loc"].load_state_dict(module.z_loc.state_dict())
    module.query_encoder["scale"].load_state_dict(module.z_scale.state_dict())


def query_parameters(module: SCVAEModule) -> list[nn.Parameter]:
    """The parameters of the batches a query mapping added."""
    extra = [] if module.query_log_theta is None else [module.query_log_theta]
    if module.query_encoder is not None:
        extra += list(module.query_encoder.parameters())
    extra.append(module.query_gene_offsets)
    return [*module.encoder.query_weights, *module.decoder.query_weights, *extra]


def freeze_reference(module: SCVAEModule) -> None:
    """Leave only the query batches' parameters trainable (a query mapping's fit)."""
    query = {id(p) for p in query_parameters(module)}
    for parameter in module.parameters():
        parameter.requires_grad_(id(parameter) in query)
