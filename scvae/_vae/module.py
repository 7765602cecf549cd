"""The generative model and its amortised guide, written in Pyro. No AnnData here.

Generative story for one cell with observed library size ``l`` and batch ``b``::

    z ~ p(z)                     # a learned mixture of normals (default), or Normal(0, I)
    rho = softmax(decoder(z, b))                      # each gene's share of expression
    x_g ~ NB(mean = l * rho_g, inverse dispersion = theta_g[b])   # or ZINB / Poisson

With ``library_from_latent`` the model also generates ``log l`` from z (``scvae._vae.library``).

The guide is ``q(z | x, b) = Normal(encoder(x, b))``. Other covariates ``c`` (one-hot categorical
and standardised continuous columns) enter beside ``b`` wherever it does: ``decoder(z, b, c)``,
``encoder(x, b, c)``, every layer (``scvae._vae.inputs``); the prior is ``scvae._vae.prior``.
The module keeps every parameter as an ordinary ``torch.nn.Parameter`` and never calls
``pyro.param`` or ``pyro.module``: two models in one process never share state through Pyro's
global parameter store.

With labels (``n_labels > 0``, ``fit(..., balance="labels")``) the model also generates the
cell type from the latent state, ``y ~ Categorical(softmax(W z + c))``: observed for labelled
cells, left out (marginalised: a leaf that sums to one) for unlabelled ones. Its log-likelihood
enters the objective with weight ``classification_weight`` times a per-class weight that gives
every class the same total weight (class balancing), which pulls rare types apart from common
ones in latent space; :meth:`SCVAEModule.label_probabilities` predicts unlabelled cells.

With several batches and ``alignment_weight > 0`` the training objective also asks the batches'
latent distributions to match (``scvae._vae.alignment``); the reported ELBO leaves it out.

Missing entries (``observed == False``) are left out of the likelihood, and the gene shares are
renormalised over the observed genes so that the observed library ``l`` (a sum over observed
genes only) is compared with the expression the model expects on those genes alone.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn

from .alignment import alignment_mmd
from .distributions import CountDistribution, counts_from_logits
from .inputs import covariate_inputs, encoder_input
from .library import LibraryHead, log_library
from .networks import MLP, hidden_and_logits, latent_posterior, route_cells
from .objective import CountRows
from .prior import latent_prior, mixture_parameters
from .surgery import add_query_parts

__all__ = ["LIKELIHOODS", "SCVAEModule"]


LIKELIHOODS = ("nb", "zinb", "poisson")
DISPERSIONS = ("gene", "gene-batch")


class SCVAEModule(nn.Module):
    """Pyro model and guide of the count VAE.

    Parameters
    ----------
    n_genes
        Number of genes.
    n_batches
        Number of batch categories (0 or 1: no batch covariate).
    n_latent, n_hidden, n_layers
        Sizes of the latent space and of the encoder/decoder hidden layers.
    likelihood
        ``"nb"``, ``"zinb"`` or ``"poisson"``.
    dispersion
        ``"gene"`` (one inverse dispersion per gene) or ``"gene-batch"`` (per gene and batch).
    dropout
        Dropout rate of the encoder's hidden layers.
    encode_mask
        Feed the observation mask to the encoder as extra inputs (for data with missing values).
    library_scale
        Counts are scaled to this library size before ``log1p`` in the encoder input.
    n_labels
        Number of cell types of the label head ``p(y | z)`` (0: no head).
    classification_weight
        Weight of the label log-likelihood in the objective (per labelled cell, times its
        class weight).
    class_weights
        Per-class weights of the label term (default 1); saved with the module.
    label_names
        Names of the head's classes (cell types, or clusters for ``balance="auto"``).
    n_covariates
        Width of the covariates beyond the batch (one-hot categorical and standardised
        continuous columns, ``scvae._data.covariates``); like the batch one-hot they enter
        every layer of the encoder and of the decoder.
    n_query_batches
        Batches added by a query mapping (codes ``max(n_batches, 1)`` and up), with input
        weights of their own in every layer, a log-scale offset per gene (and inverse
        dispersions, for ``"gene-batch"``): the only parameters
        ``scvae._vae.surgery.freeze_reference`` leaves trainable.
    alignment_weight
        Weight of the batch-alignment term of the training objective (0: none); see the
        module's description.
    n_anchors
        Latent points drawn from the reference's aggregate posterior (the buffer
        ``anchors``, filled by a query mapping): with ``alignment_weight > 0`` a query's
        minibatches are also aligned with them, so that the query's cells mix with the
        reference's and do not only land near them.
    query_encoder, query_decoder
        Give the query batches an encoder (a decoder) of their own: trainable copies of the
        reference's networks (``scvae._vae.surgery.start_query_networks``), through which
        the query's cells alone pass. The reference's cells keep the reference's networks.
    query_panel
        The query lacked some of the reference's genes and its encoder was trained with them
        missing: embedding reads absent genes as missing values (needs ``query_encoder``).
    prior_components
        Components of the learned mixture prior of z (0: the standard normal).
    library_from_latent, library_center, library_spread
        Generate each cell's log library size from z; the mean and standard deviation of
        the training cells' log library sizes (``scvae._vae.library.LibraryHead``).
    """

    def __init__(
        self,
        n_genes: int,
        n_batches: int = 0,
        *,
        n_latent: int = 10,
        n_hidden: int = 128,
        n_layers: int = 1,
        likelihood: str = "nb",
        dispersion: str = "gene",
        dropout: float = 0.1,
        encode_mask: bool = False,
        library_scale: float = 1e4,
        n_labels: int = 0,
        classification_weight: float = 0.0,
        class_weights: list[float] | None = None,
        label_names: list[str] | None = None,
        n_covariates: int = 0,
        n_query_batches: int = 0,
        query_encoder: bool = False,
        query_decoder: bool = False,
        query_panel: bool = False,
        alignment_weight: float = 0.0,
        n_anchors: int = 0,
        prior_components: int = 0,
        library_from_latent: bool = False,
        library_center: float = 0.0,
        library_spread: float = 1.0,
    ) -> None:
        super().__init__()
        #: The constructor arguments: enough to rebuild the module (see ``scvae._model.io``).
        self.config = {
            "n_genes": n_genes,
            "n_batches": n_batches,
            "n_latent": n_latent,
            "n_hidden": n_hidden,
            "n_layers": n_layers,
            "likelihood": likelihood,
            "dispersion": dispersion,
            "dropout": dropout,
            "encode_mask": encode_mask,
            "library_scale": float(library_scale),
            "n_labels": int(n_labels),
            "classification_weight": float(classification_weight),
            "class_weights": None if class_weights is None else [float(w) for w in class_weights],
            "label_names": None if label_names is None else [str(n) for n in label_names],
            "n_covariates": int(n_covariates),
            "n_query_batches": int(n_query_batches),
            "query_encoder": bool(query_encoder),
            "query_decoder": bool(query_decoder),
            "query_panel": bool(query_panel),
            "alignment_weight": float(alignment_weight),
            "n_anchors": int(n_anchors),
            "prior_components": int(prior_components),
            "library_from_latent": bool(library_from_latent),
            "library_center": float(library_center),
            "library_spread": float(library_spread),
        }
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
        if dispersion not in DISPERSIONS:
            raise ValueError(f"dispersion must be one of {DISPERSIONS}, got {dispersion!r}")
        self.n_genes = n_genes
        self.n_batches = n_batches if n_batches > 1 else 0
        self.n_latent = n_latent
        self.likelihood = likelihood
        self.dispersion = dispersion
        self.encode_mask = encode_mask
        self.library_scale = float(library_scale)
        self.n_covariates = int(n_covariates)
        #: Code of the first batch a query mapping added (the reference's batches come first).
        self.first_query_batch = max(int(n_batches), 1)
        self.n_query_batches = int(n_query_batches)
        if not (math.isfinite(alignment_weight) and alignment_weight >= 0):
            raise ValueError(f"alignment_weight must be >= 0, got {alignment_weight!r}")
        self.alignment_weight = float(alignment_weight)
        self.register_buffer("anchors", torch.zeros(n_anchors, n_latent) if n_anchors else None)
        self.prior_components = int(prior_components)
        if self.prior_components < 0:
            raise ValueError(f"prior_components must be >= 0, got {prior_components!r}")
        if self.prior_components:
            #: The mixture prior's weights (logits), means and scales (before softplus).
            mixture = mixture_parameters(self.prior_components, n_latent)
            self.prior_logits, self.prior_locs, self.prior_raw_scales = mixture

        self.library_from_latent = bool(library_from_latent)
        n_in = n_genes * (2 if encode_mask else 1) + (1 if self.library_from_latent else 0)
        width = self.n_batches + self.n_covariates
        self.encoder = MLP(n_in, width, n_hidden, n_layers, dropout)
        self.z_loc = nn.Linear(n_hidden, n_latent)
        self.z_scale = nn.Linear(n_hidden, n_latent)
        self.decoder = MLP(n_latent, width, n_hidden, n_layers, 0.0)
        self.gene_logits = nn.Linear(n_hidden, n_genes)
        self.zi_logits = nn.Linear(n_hidden, n_genes) if likelihood == "zinb" else None
        if likelihood == "poisson":
            self.log_theta = None
        else:
            rows = self.n_batches if dispersion == "gene-batch" and self.n_batches else 1
            self.log_theta = nn.Parameter(torch.zeros(rows, n_genes))
        self.library_head = None
        if self.library_from_latent:
            self.library_head = LibraryHead(n_latent + width, library_center, library_spread)
        self.n_labels = int(n_labels)
        self.classification_weight = float(classification_weight)
        self.classifier = nn.Linear(n_latent, n_labels) if n_labels > 0 else None
        self.label_names = list(label_names or [f"class_{i}" for i in range(n_labels)])
        weights = torch.ones(n_labels) if class_weights is None else torch.tensor(class_weights)
        if weights.shape != (self.n_labels,):
            raise ValueError(f"class_weights needs {n_labels} entries, got {len(weights)}")
        self.register_buffer("class_weights", weights.to(torch.get_default_dtype()))
        add_query_parts(
            self, n_in, n_hidden, n_layers, dropout, query_encoder, query_decoder, query_panel
        )

    def prior(self, n_cells: int, like: torch.Tensor) -> dist.Distribution:
        """p(z) for ``n_cells`` cells (event shape ``(n_latent,)``): the standard normal, or
        the learned mixture of ``prior_components`` diagonal normals."""
        mixture = None
        if self.prior_components:
            mixture = (self.prior_logits, self.prior_locs, self.prior_raw_scales)
        return latent_prior(n_cells, self.n_latent, like, mixture)

    # -- networks ---------------------------------------------------------------------------
    def _covariates(
        self, batch_index: torch.Tensor, covariates: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        return covariate_inputs(
            batch_index, covariates, self.n_batches, self.first_query_batch, self.n_query_batches
        )

    def encode(
        self,
        x: torch.Tensor,
        library: torch.Tensor,
        batch_index: torch.Tensor,
        observed: torch.Tensor | None = None,
        nonzeros: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
        covariates: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Location and scale of ``q(z | x)`` (the input: ``scvae._vae.inputs.encoder_input``)."""
        h = encoder_input(x, library, self.library_scale, observed, nonzeros, self.encode_mask)
        if self.library_head is not None:
            h = torch.cat([h, self.library_head.encoder_column(library)], dim=-1)
        inputs = self._covariates(batch_index, covariates)
        query = self.query_encoder
        return route_cells(
            batch_index,
            self.first_query_batch,
            lambda: latent_posterior(self.encoder, self.z_loc, self.z_scale, h, inputs),
            None
            if query is None
            else lambda: latent_posterior(query["mlp"], query["loc"], query["scale"], h, inputs),
        )

    def decode(
        self,
        z: torch.Tensor,
        library: torch.Tensor,
        batch_index: torch.Tensor,
        observed: torch.Tensor | None = None,
        *,
        covariates: torch.Tensor | None = None,
        include_constant: bool = True,
    ) -> CountDistribution:
        """Distribution of the counts given ``z`` (elementwise, not yet masked)."""
        inputs = self._covariates(batch_index, covariates)
        query = self.query_decoder
        h, logits = route_cells(
            batch_index,
            self.first_query_batch,
            lambda: hidden_and_logits(self.decoder, self.gene_logits, z, inputs),
            None
            if query is None
            else lambda: hidden_and_logits(query["mlp"], query["logits"], z, inputs),
        )
        zi_logits = None if self.zi_logits is None else self.zi_logits(h)
        if inputs[1] is not None:  # zero for the reference's cells: their logits are unchanged
            logits = logits + inputs[1] @ self.query_gene_offsets
        log_l, log_theta = log_library(library), self._log_theta(batch_index)
        return counts_from_logits(
            logits, log_l, log_theta, zi_logits, observed, include_constant=include_constant
        )

    def _log_theta(self, batch_index: torch.Tensor) -> torch.Tensor | None:
        """Log inverse dispersions: per gene, or per cell's batch and gene."""
        if self.log_theta is None:
            return None
        if self.query_log_theta is not None:
            return torch.cat([self.log_theta, self.query_log_theta])[batch_index]
        if self.log_theta.shape[0] > 1:
            return self.log_theta[batch_index]
        return self.log_theta[0]

    def library_distribution(
        self,
        z: torch.Tensor,
        batch_index: torch.Tensor,
        covariates: torch.Tensor | None = None,
        log_observed_share: torch.Tensor | None = None,
    ) -> dist.Normal:
        """``p(log l | z, b, c)`` of a ``library_from_latent`` module, ``(cells,)``."""
        if self.library_head is None:
            raise ValueError("this model does not generate the library size (library_from_latent)")
        inputs = self._covariates(batch_index, covariates)[0]
        return self.library_head(z, inputs, log_observed_share)

    # -- Pyro model and guide -----------------------------------------------------------------
    def model(
        self,
        x: torch.Tensor,
        library: torch.Tensor,
        batch_index: torch.Tensor,
        observed: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        nonzeros: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
        kl_weight: float = 1.0,
        include_constant: bool = True,
        covariates: torch.Tensor | None = None,
        align: bool = False,
    ) -> None:
        """p(x, y, z): the prior on z, the count likelihood on the observed entries,
        and (with a label head) the cell type of the labelled cells (``labels`` >= 0).
        ``align``: add the batch-alignment term (training only, see the module's text).

        ``nonzeros`` (``(rows, cols, values)`` of the stored entries of ``x``, as minibatches
        carry them) only makes the NB training objective cheaper; the value is the same."""
        n_cells = x.shape[0]
        with pyro.plate("cells", n_cells):
            with poutine.scale(scale=kl_weight):
                z = pyro.sample("z", self.prior(n_cells, x))
            counts = self.decode(
                z,
                library,
                batch_index,
                observed,
                covariates=covariates,
                include_constant=include_constant,
            )
            pyro.sample("counts", CountRows(counts, observed, nonzeros), obs=x)
            if self.library_head is not None:
                library_given_z = self.library_distribution(
                    z, batch_index, covariates, counts.log_observed_share
                )
                pyro.sample("log_library", library_given_z, obs=log_library(library))
            if self.classifier is not None and labels is not None:
                known = labels >= 0
                code = labels.clamp(min=0)
                scale = self.classification_weight * self.class_weights[code]
                with poutine.mask(mask=known), poutine.scale(scale=scale):
                    pyro.sample("y", dist.Categorical(logits=self.classifier(z)), obs=code)
        if align and self.alignment_weight > 0 and self.n_batches + self.n_query_batches:
            n_codes = self.first_query_batch + self.n_query_batches
            mmd = alignment_mmd(z, batch_index, n_codes, self.anchors)
            pyro.factor("batch_alignment", -self.alignment_weight * n_cells * mmd)

    def guide(
        self,
        x: torch.Tensor,
        library: torch.Tensor,
        batch_index: torch.Tensor,
        observed: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        nonzeros: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
        kl_weight: float = 1.0,
        include_constant: bool = True,
        covariates: torch.Tensor | None = None,
        align: bool = False,
    ) -> None:
        """q(z | x): amortised mean-field normal; ``kl_weight`` is beta (with warm-up).
        The labels do not enter the guide."""
        with pyro.plate("cells", x.shape[0]):
            loc, scale = self.encode(x, library, batch_index, observed, nonzeros, covariates)
            with poutine.scale(scale=kl_weight):
                pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    @torch.no_grad()
    def label_probabilities(self, z: torch.Tensor) -> torch.Tensor:
        """p(y | z) of the label head, ``(cells, n_labels)``."""
        if self.classifier is None:
            raise ValueError("this model has no label head (fit with balance='labels')")
        return torch.softmax(self.classifier(z), dim=-1)
