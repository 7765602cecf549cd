"""The encoder's and decoder's networks: blocks of Linear -> LayerNorm -> ReLU -> Dropout with
the covariates entering every block, and a cheaper dropout; a query mapping's own copies of
them, and the routing of a minibatch's reference and query cells through theirs."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "MLP",
    "Dropout",
    "hidden_and_logits",
    "latent_posterior",
    "query_decoder_copy",
    "query_encoder_copy",
    "route_cells",
]


class Dropout(nn.Module):
    """``nn.Dropout`` with a cheaper mask: 16 random bits per entry, four from each 64-bit
    draw, so that the drop rate is ``p`` rounded to 1/65536. ``nn.Dropout`` draws a Bernoulli
    variable per entry, about twice the time (``docs/speed.md``, measured building blocks)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {p}")
        self.p = p
        self.threshold = round(p * 65536) - 32768  # int16 values below it are dropped

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return h
        words = -(-h.numel() // 4)
        bits = torch.empty(words, dtype=torch.int64, device=h.device).random_(-(2**63), None)
        keep = bits.view(torch.int16)[: h.numel()].view(h.shape) >= self.threshold
        return h * (keep * (1.0 / (1.0 - self.p))).to(h.dtype)


class MLP(nn.Module):
    """Linear -> LayerNorm -> ReLU -> Dropout blocks; the covariates (batch one-hot and the
    others) enter every block.

    :meth:`add_query_batches` gives every block extra input weights of its own for batches
    a query mapping adds (``fit(query, reference=model)``): a separate term added after the
    block's linear map, zero for the reference's cells, so that they are computed exactly as
    before, bit for bit.
    """

    def __init__(
        self, n_in: int, n_covariates: int, n_hidden: int, n_layers: int, dropout: float
    ) -> None:
        super().__init__()
        self.n_covariates = n_covariates
        self.layers = nn.ModuleList()
        for i in range(n_layers):
            width = (n_in if i == 0 else n_hidden) + n_covariates
            self.layers.append(
                nn.Sequential(
                    nn.Linear(width, n_hidden),
                    nn.LayerNorm(n_hidden, elementwise_affine=False),
                    nn.ReLU(),
                    Dropout(dropout) if dropout > 0 else nn.Identity(),
                )
            )
        self.query_weights = nn.ParameterList()

    def add_query_batches(self, n_new: int) -> None:
        """Input weights, zero to start with, for ``n_new`` batches of a query."""
        for layer in self.layers:
            n_hidden = layer[0].out_features
            self.query_weights.append(nn.Parameter(torch.zeros(n_hidden, n_new)))

    def forward(
        self,
        h: torch.Tensor,
        covariates: torch.Tensor | None,
        query_batches: torch.Tensor | None = None,
    ) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            if covariates is not None:
                h = torch.cat([h, covariates], dim=-1)
            if query_batches is None:
                h = layer(h)
                continue
            h = layer[0](h) + query_batches @ self.query_weights[i].T
            for block in list(layer)[1:]:
                h = block(h)
        return h


def latent_posterior(
    mlp: MLP, loc: nn.Linear, scale: nn.Linear, h: torch.Tensor, inputs: tuple
) -> tuple[torch.Tensor, torch.Tensor]:
    """Location and scale of q(z | x) from an encoder's ``mlp`` and output layers."""
    h = mlp(h, *inputs)
    return loc(h), F.softplus(scale(h)) + 1e-4


def hidden_and_logits(
    mlp: MLP, out: nn.Linear, z: torch.Tensor, inputs: tuple
) -> tuple[torch.Tensor, torch.Tensor]:
    """A decoder's last hidden layer and its ``out`` layer's gene logits for ``z``."""
    h = mlp(z, *inputs)
    return h, out(h)


def query_encoder_copy(
    n_in: int,
    n_covariates: int,
    n_hidden: int,
    n_latent: int,
    n_layers: int,
    dropout: float,
    n_query_batches: int,
) -> nn.ModuleDict:
    """A query mapping's own encoder (``mlp``, then ``loc`` and ``scale`` of q(z | x)), shaped
    like the reference's, with inputs for ``n_query_batches`` new batches."""
    networks = nn.ModuleDict(
        {
            "mlp": MLP(n_in, n_covariates, n_hidden, n_layers, dropout),
            "loc": nn.Linear(n_hidden, n_latent),
            "scale": nn.Linear(n_hidden, n_latent),
        }
    )
    networks["mlp"].add_query_batches(n_query_batches)
    return networks


def query_decoder_copy(
    n_latent: int,
    n_covariates: int,
    n_hidden: int,
    n_genes: int,
    n_layers: int,
    n_query_batches: int,
) -> nn.ModuleDict:
    """A query mapping's own decoder (``mlp``, then the genes' ``logits``), shaped like the
    reference's, with inputs for ``n_query_batches`` new batches."""
    networks = nn.ModuleDict(
        {
            "mlp": MLP(n_latent, n_covariates, n_hidden, n_layers, 0.0),
            "logits": nn.Linear(n_hidden, n_genes),
        }
    )
    networks["mlp"].add_query_batches(n_query_batches)
    return networks


def route_cells(
    batch_index: torch.Tensor,
    first_query_batch: int,
    reference: Callable[[], tuple[torch.Tensor, ...]],
    query: Callable[[], tuple[torch.Tensor, ...]] | None,
) -> tuple[torch.Tensor, ...]:
    """``reference()``'s outputs for the reference's cells and ``query()``'s for a query's
    (batch codes from ``first_query_batch`` on), each called only if some cell needs it;
    ``query=None``: the reference's for all.

    Examples
    --------
    >>> ones, twos = (lambda: (torch.ones(3, 1),)), (lambda: (2 * torch.ones(3, 1),))
    >>> route_cells(torch.tensor([0, 2, 1]), 2, ones, twos)[0].ravel().tolist()
    [1.0, 2.0, 1.0]
    """
    if query is None:
        return reference()
    is_query = batch_index >= first_query_batch
    if not bool(is_query.any()):
        return reference()
    if bool(is_query.all()):
        return query()
    pick = is_query.unsqueeze(-1)
    return tuple(torch.where(pick, q, r) for q, r in zip(query(), reference(), strict=True))
