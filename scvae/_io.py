"""Save and load: a folder with the weights (tensors only) and a JSON config.

Loading reads the weights with ``torch.load(weights_only=True)``, which unpickles tensors and
plain containers only: loading a model file never runs code from it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from anndata import AnnData

from ._data import align_genes
from ._model import SCVAE
from ._module import SCVAEModule
from ._reference import LatentReference
from ._version import __version__

logger = logging.getLogger(__name__)

__all__ = ["load", "save"]

WEIGHTS = "weights.pt"
CONFIG = "config.json"
FORMAT = 1


def save(model: SCVAE, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``model`` to the folder ``path``; see :meth:`SCVAE.save`."""
    path = Path(path)
    if path.exists() and any(path.iterdir()) and not overwrite:
        raise FileExistsError(f"{path} exists and is not empty; pass overwrite=True")
    path.mkdir(parents=True, exist_ok=True)
    module = model.module
    config = {
        "format": FORMAT,
        "scvae_version": __version__,
        "module": module.config,
        "gene_names": model.gene_names,
        "batch_categories": model.batch_categories,
        "label_categories": model.label_categories,
        "layer": model.layer,
        "batch_key": model.batch_key,
        "labels_key": model.labels_key,
        "mask_layer": model.mask_layer,
        "settings": model.settings,
        "history": model.history,
        "reference": None if model.reference is None else model.reference.to_dict(),
    }
    state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    torch.save(state, path / WEIGHTS)
    (path / CONFIG).write_text(json.dumps(config, indent=1))
    logger.info("saved model to %s", path)
    return path


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
    from ._api import resolve_device

    path = Path(path)
    if not (path / CONFIG).is_file() or not (path / WEIGHTS).is_file():
        raise FileNotFoundError(f"{path} is not an scvae model folder ({CONFIG}, {WEIGHTS})")
    config = json.loads((path / CONFIG).read_text())
    if config.get("format") != FORMAT:
        raise ValueError(f"{path}: unknown model format {config.get('format')!r}")
    if config["scvae_version"] != __version__:
        logger.warning(
            "model saved by scvae %s, loading with %s", config["scvae_version"], __version__
        )
    if config["module"]["n_genes"] != len(config["gene_names"]):
        raise ValueError(
            f"{path}: config lists {len(config['gene_names'])} genes for a "
            f"model of {config['module']['n_genes']}"
        )
    reference = config.get("reference")
    module = SCVAEModule(**config["module"])
    state = torch.load(path / WEIGHTS, map_location="cpu", weights_only=True)
    module.load_state_dict(state)
    module.to(resolve_device(device)).eval()
    if adata is not None:
        align_genes(adata.var_names, config["gene_names"])
    return SCVAE(
        module,
        gene_names=config["gene_names"],
        batch_categories=config["batch_categories"],
        label_categories=config["label_categories"],
        layer=config["layer"],
        batch_key=config["batch_key"],
        labels_key=config["labels_key"],
        mask_layer=config.get("mask_layer"),
        settings=config["settings"],
        history=config["history"],
        reference=LatentReference.from_dict(reference) if reference else None,
    )
