"""The trained model as a user holds it: the Pyro module plus what it needs to read AnnData."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from anndata import AnnData

from .._batches.rows import MinibatchSource
from .._data.checks import align_genes, missing_genes
from .._data.counts import CountData
from .._data.covariates import CovariateLayout
from .._data.memory import prepare_counts
from .._data.spec import ReadSpec, read_counts
from .._train.loss import evaluate_elbo
from .._utils.device import resolve_device, seeded
from .._utils.options import check_flag, check_int, check_number, check_seed
from .._vae.likelihood import importance_log_likelihood
from .._vae.module import SCVAEModule
from .encode import posterior_means
from .io import CONFIG, WEIGHTS, read_model_folder, write_model_folder
from .reference import LatentReference

logger = logging.getLogger(__name__)

__all__ = ["SCVAE", "check_model", "load"]


class SCVAE:
    """A fitted scvae model. Made by :func:`scvae.fit` or :func:`scvae.load`.

    Attributes
    ----------
    module
        The Pyro model and guide (a ``torch.nn.Module`` that owns all parameters).
    gene_names
        Genes the model was trained on, in order.
    batch_categories, label_categories
        Categories of ``batch_key`` and ``labels_key`` seen in training.
    layer, batch_key, labels_key, mask_layer
        Where the counts, covariates and observation mask were read from; new data is read
        the same way (a mask layer only if ``adata`` has it).
    covariate_layout
        The covariates beyond the batch (``categorical_covariate_keys`` and
        ``continuous_covariate_keys`` of the fit): their keys, categories and scaling;
        ``None`` without them.
    settings
        The arguments of the fit.
    history
        Per-epoch training loss, validation ELBO, KL weight and epoch time.
    reference
        Latent regions and library sizes of the training cells per type and batch, what
        :func:`scvae.generate` draws new cells from.
    """

    def __init__(
        self,
        module: SCVAEModule,
        *,
        gene_names: list[str],
        batch_categories: list[str],
        label_categories: list[str],
        layer: str | None,
        batch_key: str | None,
        labels_key: str | None,
        settings: dict[str, Any],
        mask_layer: str | None = None,
        covariate_layout: CovariateLayout | None = None,
        history: dict[str, list[float]],
        reference: LatentReference | None = None,
    ) -> None:
        self.module = module
        self.gene_names = list(gene_names)
        self.batch_categories = list(batch_categories)
        self.label_categories = list(label_categories)
        self.layer = layer
        self.batch_key = batch_key
        self.labels_key = labels_key
        self.mask_layer = mask_layer
        self.covariate_layout = covariate_layout
        self.settings = dict(settings)
        self.history = {k: list(v) for k, v in history.items()}
        self.reference = reference

    def __repr__(self) -> str:
        m = self.module
        return (
            f"SCVAE({len(self.gene_names)} genes, {m.n_latent} latent dims, "
            f"likelihood={m.likelihood!r}, batches={self.batch_categories or None})"
        )

    @property
    def device(self) -> torch.device:
        """The device that holds the model's parameters."""
        return next(self.module.parameters()).device

    def prepare(
        self,
        adata: AnnData,
        *,
        layer: str | type | None = ...,
        mask_layer: str | type | None = ...,
        allow_backed: bool = False,
    ) -> CountData:
        """Read ``adata`` the way the training data was read (genes by name, same batches).

        ``...`` (the default) means "as at fit time"; the fit's mask layer is used only if
        ``adata`` has it. ``allow_backed``: a disk-backed ``adata`` is streamed from its file
        (for embedding); otherwise it is refused with a message saying how to load it.
        """
        backed = allow_backed and isinstance(adata, AnnData) and adata.isbacked
        if mask_layer is ...:
            known = not backed and isinstance(adata, AnnData) and self.mask_layer in adata.layers
            mask_layer = self.mask_layer if known else None
        spec = ReadSpec(
            layer=self.layer if layer is ... else layer,
            batch_key=self.batch_key,
            mask_layer=mask_layer,
            batch_categories=self.batch_categories if self.batch_key else None,
            gene_names=self.gene_names,
            covariate_layout=self.covariate_layout,
            # A query mapped from a smaller panel: its encoder reads the panel.
            absent_genes_missing=self.module.query_panel,
        )
        if backed:
            return read_counts(adata, spec, for_fit=False)
        data = prepare_counts(adata, **vars(spec))
        # A panel query's own encoder was trained with its absent genes missing: no bias.
        panel = self.module.query_panel and bool(missing_genes(data))
        if data.missing is not None and not self.module.encode_mask and not panel:
            logger.warning(
                "this model was fitted without missing values: its encoder cannot tell a "
                "missing entry from a zero, so the latent position of cells with missing "
                "entries is biased towards low expression of those genes (the likelihood "
                "still leaves them out). Fit on data with missing values for such cells."
            )
        return data

    def embed(
        self, adata: AnnData, *, layer: str | type | None = ..., batch_size: int = 1024
    ) -> np.ndarray:
        """Posterior mean of z for the cells of ``adata``.

        Genes are matched by name (extra genes are ignored, missing ones raise an error that
        names them); ``adata.obs[batch_key]`` must hold batches the model knows.
        ``adata`` is not modified.

        Parameters
        ----------
        adata
            Cells to embed, raw counts in the layer the model was fitted on. A disk-backed
            AnnData is read from its file block by block, in bounded memory.
        layer
            Override the layer recorded at fit time (``None`` reads ``X``).
        batch_size
            Cells per forward pass.

        Returns
        -------
        ``(n_cells, n_latent)`` float32 array.

        Examples
        --------
        >>> z = model.embed(new_adata)  # doctest: +SKIP
        >>> new_adata.obsm["X_scvae"] = z  # doctest: +SKIP
        """
        check_int("batch_size", batch_size)
        data = self.prepare(adata, layer=layer, allow_backed=True)
        try:
            return self.embed_data(data, batch_size=batch_size)
        finally:
            data.close()

    def embed_data(self, data: CountData, *, batch_size: int = 1024) -> np.ndarray:
        """Posterior means of z for data returned by :meth:`prepare` (see :meth:`embed`)."""
        return posterior_means(self.module, data, batch_size=batch_size)

    @torch.no_grad()
    def predict_labels(
        self,
        adata: AnnData,
        *,
        layer: str | type | None = ...,
        probabilities: bool = False,
        min_probability: float = 0.0,
        unknown: str = "unknown",
        batch_size: int = 1024,
    ):
        """Cell types predicted by the label head of a ``balance="labels"`` (or ``"auto"``) fit.

        The head's ``p(y | z)`` at each cell's posterior mean. ``adata`` is not modified.
        For label transfer, call it on the model a query mapping returned
        (``fit(query, reference=model)``): the query's cells are in the reference's latent
        space, where the head was trained.

        Parameters
        ----------
        adata
            Cells to predict (genes and batches as for :meth:`embed`).
        probabilities
            Return ``p(y | z)`` for every type instead of the most probable one.
        min_probability
            Cells whose most probable type has a lower probability are called ``unknown``
            (default 0: never). On a query, 0.5 flags cells the reference's types do not
            explain well (a type the reference lacks lands between types, where no type is
            probable); see the mapping guide, ``docs/mapping.md``.
        unknown
            The name given to those cells (a category of its own).

        Returns
        -------
        pandas.Series or pandas.DataFrame
            A ``pandas.Series`` of predicted types (categorical, indexed by cell), or with
            ``probabilities=True`` a ``DataFrame`` of cells x types.

        Examples
        --------
        >>> model = scvae.fit(adata, labels_key="cell_type", balance="labels")  # doctest: +SKIP
        >>> adata.obs["predicted"] = model.predict_labels(adata)  # doctest: +SKIP
        >>> qmodel = scvae.fit(query, reference=model)  # doctest: +SKIP
        >>> calls = qmodel.predict_labels(query, min_probability=0.5)  # doctest: +SKIP
        """
        import pandas as pd

        if self.module.classifier is None:
            raise ValueError("this model has no label head: fit with balance='labels' or 'auto'")
        check_flag("probabilities", probabilities)
        check_int("batch_size", batch_size)
        min_probability = check_number("min_probability", min_probability, low=0, high=1)
        names = list(self.module.label_names)
        if not isinstance(unknown, str) or unknown in names:
            raise ValueError(
                f"unknown={unknown!r} must be a string that is not one of the types {names}"
            )
        z = torch.as_tensor(
            self.embed(adata, layer=layer, batch_size=batch_size), device=self.device
        )
        p = self.module.label_probabilities(z).cpu().numpy()
        if probabilities:
            return pd.DataFrame(p, index=adata.obs_names, columns=names)
        predicted = np.asarray(names, dtype=object)[p.argmax(1)]
        doubtful = p.max(1) < min_probability
        predicted[doubtful] = unknown
        categories = names + ([unknown] if min_probability > 0 else [])
        return pd.Series(
            pd.Categorical(predicted, categories=categories),
            index=adata.obs_names,
            name="predicted",
        )

    def log_likelihood(
        self,
        adata: AnnData,
        *,
        n_samples: int = 100,
        layer: str | type | None = ...,
        batch_size: int = 256,
        seed: int = 0,
    ) -> np.ndarray:
        """Per-cell log p(x) (nats), by importance sampling with ``n_samples`` draws of z.

        The exact likelihood of the observed entries (``lgamma(x + 1)`` included), so that
        held-out cells can be compared across models. ``adata`` is not modified.

        Examples
        --------
        >>> model.log_likelihood(test_adata).mean()  # doctest: +SKIP
        """
        check_int("n_samples", n_samples)
        check_int("batch_size", batch_size)
        check_seed(seed)
        data = self.prepare(adata, layer=layer)
        self.module.eval()
        source = MinibatchSource(data, batch_size=batch_size, device=self.device)
        with seeded(seed, self.device):
            parts = [
                importance_log_likelihood(
                    self.module,
                    b.x,
                    b.library,
                    b.batch_index,
                    b.observed,
                    covariates=b.covariates,
                    n_samples=n_samples,
                ).cpu()
                for b in source
            ]
        return torch.cat(parts).numpy().astype(np.float64)

    def elbo(self, adata: AnnData, *, layer: str | type | None = ..., seed: int = 0) -> float:
        """Mean ELBO per cell on ``adata`` (exact likelihood, KL weight 1, one z draw)."""
        check_seed(seed)
        data = self.prepare(adata, layer=layer)
        source = MinibatchSource(data, batch_size=1024, device=self.device)
        with seeded(seed, self.device):
            return evaluate_elbo(self.module, source)

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write the model to folder ``path`` (``weights.pt`` + ``config.json``).

        An existing folder needs ``overwrite=True``, and only an scvae model folder is ever
        replaced. A symbolic link is followed: the folder it points to is checked and
        replaced, the link stays. A place that cannot be written (under a file, a folder
        without write permission) fails before anything is written.

        Examples
        --------
        >>> model.save("pbmc_model")  # doctest: +SKIP
        >>> model = scvae.load("pbmc_model")  # doctest: +SKIP
        """
        check_flag("overwrite", overwrite)
        config = {
            "module": self.module.config,
            "gene_names": self.gene_names,
            "batch_categories": self.batch_categories,
            "label_categories": self.label_categories,
            "layer": self.layer,
            "batch_key": self.batch_key,
            "labels_key": self.labels_key,
            "mask_layer": self.mask_layer,
            "covariates": None
            if self.covariate_layout is None
            else self.covariate_layout.to_dict(),
            "settings": self.settings,
            "history": self.history,
            "reference": None if self.reference is None else self.reference.to_dict(),
        }
        return write_model_folder(path, self.module.state_dict(), config, overwrite=overwrite)


def check_model(model: Any, name: str = "model") -> SCVAE:
    """``model`` if it is a fitted :class:`SCVAE`, else an error naming what it is (e.g. the
    path of a saved model, which :func:`load` reads)."""
    if not isinstance(model, SCVAE):
        hint = (
            " (load a saved model with scvae.load(path))" if isinstance(model, str | Path) else ""
        )
        raise TypeError(
            f"{name} must be a fitted scvae model (scvae.fit or scvae.load), got "
            f"{type(model).__name__}{hint}"
        )
    return model


def load(
    path: str | Path, *, adata: AnnData | None = None, device: str | torch.device = "cpu"
) -> SCVAE:
    """Load a model written by :meth:`SCVAE.save`.

    Parameters
    ----------
    path
        The model folder.
    adata
        If given, checked to hold every gene of the model (an error names missing ones).
    device
        Where to put the parameters (``"cpu"``, ``"cuda"``, ``"auto"``).

    Examples
    --------
    >>> model = scvae.load("pbmc_model", adata=adata)  # doctest: +SKIP
    >>> adata.obsm["X_scvae"] = model.embed(adata)  # doctest: +SKIP
    """
    if adata is not None and not isinstance(adata, AnnData):
        raise TypeError(f"adata must be an AnnData, got {type(adata).__name__}")
    config, state = read_model_folder(path)
    device = resolve_device(device)
    module = SCVAEModule(**config["module"])
    try:
        module.load_state_dict(state)
    except RuntimeError as error:
        weights = Path(path) / WEIGHTS
        raise ValueError(f"{weights} does not fit {CONFIG}: {error}") from None
    module.to(device).eval()
    if adata is not None:
        align_genes(adata.var_names, config["gene_names"])
    reference = config.get("reference")
    covariates = config.get("covariates")
    return SCVAE(
        module,
        gene_names=config["gene_names"],
        batch_categories=config["batch_categories"],
        label_categories=config["label_categories"],
        layer=config["layer"],
        batch_key=config["batch_key"],
        labels_key=config["labels_key"],
        mask_layer=config.get("mask_layer"),
        covariate_layout=CovariateLayout.from_dict(covariates) if covariates else None,
        settings=config["settings"],
        history=config["history"],
        reference=LatentReference.from_dict(reference) if reference else None,
    )
