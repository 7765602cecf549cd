"""The model folder on disk: the weights (tensors only) and a JSON config; files only.

Saving is atomic (see :mod:`scvae._utils.atomic`): a crash or a kill during ``save`` leaves the
previous model in place. Loading reads the weights with ``torch.load(weights_only=True)``,
which unpickles tensors and plain containers only: loading a model file never runs code from
it. The config records a SHA-256 of the weights, so a truncated, corrupt or mismatched
``weights.pt`` is reported instead of loaded.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._utils.atomic import interrupted_saves, write_folder
from .._version import __version__

logger = logging.getLogger(__name__)

__all__ = ["check_model_path", "read_model_folder", "write_model_folder"]

WEIGHTS = "weights.pt"
CONFIG = "config.json"
FORMAT = 1
# Constructor arguments of SCVAEModule a config may hold, and their types.
_MODULE_TYPES = {
    "n_genes": int,
    "n_batches": int,
    "n_latent": int,
    "n_hidden": int,
    "n_layers": int,
    "likelihood": str,
    "dispersion": str,
    "dropout": (int, float),
    "encode_mask": bool,
    "library_scale": (int, float),
    "n_labels": int,
    "classification_weight": (int, float),
    "class_weights": (list, type(None)),
    "label_names": (list, type(None)),
    "n_covariates": int,
    "n_query_batches": int,
    "query_encoder": bool,
    "query_decoder": bool,
    "query_panel": bool,
    "alignment_weight": (int, float),
    "n_anchors": int,
    "prior_components": int,
    "library_from_latent": bool,
    "library_center": (int, float),
    "library_spread": (int, float),
}


def write_model_folder(
    path: str | Path,
    state: dict[str, torch.Tensor],
    config: dict[str, Any],
    *,
    overwrite: bool = False,
) -> Path:
    """Write the weights ``state`` and the ``config`` (the model's description, to which the
    format, the version and the weights' SHA-256 are added) to the folder ``path``.

    The new folder is written beside ``path`` and renamed into place; with ``overwrite=True``
    an existing model folder is swapped out in one step. A folder holding anything but an
    scvae model is never replaced.
    """
    path = check_model_path(path, overwrite=overwrite)
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in state.items()}, buffer)
    weights = buffer.getvalue()
    config = {
        "format": FORMAT,
        "scvae_version": __version__,
        **config,
        "weights_sha256": hashlib.sha256(weights).hexdigest(),
    }
    text = json.dumps(config, indent=1, default=_json_default, allow_nan=True)
    write_folder(path, {WEIGHTS: weights, CONFIG: text.encode()})
    logger.info("saved model to %s", path)
    return path


def check_model_path(
    path: str | Path, *, overwrite: bool = False, flag: str = "overwrite=True"
) -> Path:
    """``path`` as a place a model folder may be written to, or an error saying why not.

    Free: ``path`` does not exist or is an empty folder. Taken: it needs ``overwrite=True``,
    and even then only a folder holding an scvae model (``config.json`` and ``weights.pt``,
    nothing else) is replaced; a file, the current folder or any other folder never is.
    Called before any long work (``python -m scvae fit`` checks ``--out`` before training);
    ``flag`` names the switch in the messages (``"--overwrite"`` for the command line).
    A symbolic link is followed: what it points to is checked (and later replaced), the link
    stays. The folder it would be written in must exist as a folder (or be creatable) and be
    writable, so that a bad place fails here, not after training.

    Examples
    --------
    >>> check_model_path("a_new_model_folder")
    PosixPath('a_new_model_folder')
    """
    path = _followed(_as_path(path))
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} is a file, not a folder: choose another path")
    if path.is_dir() and any(path.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{path} exists and is not empty; pass {flag}")
        others = sorted(p.name for p in path.iterdir() if p.name not in (WEIGHTS, CONFIG))
        if others or not (path / CONFIG).is_file():
            raise FileExistsError(
                f"{path} is not an scvae model folder (it holds {others[:5] or 'no config'}); "
                f"{flag} replaces model folders only: choose another path"
            )
    _check_writable_place(path)
    return path


def _as_path(path: Any) -> Path:
    """``path`` as a :class:`~pathlib.Path`, or an error naming what was given instead."""
    if not isinstance(path, str | os.PathLike) or isinstance(os.fspath(path), bytes):
        raise TypeError(
            f"path must be a str or a pathlib.Path, got {type(path).__name__} {path!r}"
        )
    if os.fspath(path) == "":
        raise ValueError("path is empty: give the model folder, e.g. 'my_model'")
    return Path(path)


def _followed(path: Path) -> Path:
    """``path``, or where it leads if it is a symbolic link: a link to a model folder is
    replaced where it points (the link itself stays), and checked as that folder."""
    if not path.is_symlink():
        return path
    try:
        return path.resolve()
    except (RuntimeError, OSError):  # RuntimeError: a loop, before Python 3.13
        raise FileNotFoundError(
            f"{path} is a symbolic link loop (it leads back to itself): fix or remove the "
            "link, or choose another path"
        ) from None


def _check_writable_place(path: Path) -> None:
    """The folder the model folder would be written in (its nearest existing ancestor, where
    missing folders are created) must be a folder this process may write to."""
    ancestor = path.absolute().parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise NotADirectoryError(
            f"{path} cannot be written: {ancestor} is a file, not a folder; choose another path"
        )
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise PermissionError(
            f"{path} cannot be written: no permission to write in the folder {ancestor}; "
            "choose another path"
        )


def _json_default(value: Any) -> Any:
    """numpy scalars and arrays (e.g. ``n_latent=np.int64(10)``) as plain JSON values."""
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    if isinstance(value, torch.device | Path):
        return str(value)
    raise TypeError(f"cannot save a setting of type {type(value).__name__}: {value!r}")


def read_model_folder(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The checked config and weights of the model folder ``path`` (see :func:`save`)."""
    path = _followed(_as_path(path))
    if path.is_dir() and not os.access(path, os.R_OK | os.X_OK):
        raise PermissionError(f"{path}: no permission to read this model folder")
    if not (path / CONFIG).is_file() or not (path / WEIGHTS).is_file():
        hint = ""
        aside = interrupted_saves(path)
        if aside and not path.exists():
            hint = f"; a save was interrupted: the previous model is in {aside[0]}"
        raise FileNotFoundError(f"{path} is not an scvae model folder ({CONFIG}, {WEIGHTS}){hint}")
    config = _read_config(path)
    weights = (path / WEIGHTS).read_bytes()
    expected = config.get("weights_sha256")
    if expected is not None and hashlib.sha256(weights).hexdigest() != expected:
        raise ValueError(
            f"{path / WEIGHTS} does not match {CONFIG} (SHA-256 differs): the file is "
            "corrupt, truncated or from another save; save the model again"
        )
    try:
        state = torch.load(io.BytesIO(weights), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise pickle.UnpicklingError(
            f"{path / WEIGHTS} holds objects other than tensors; scvae does not load it "
            f"(loading it could run code from the file): {error}"
        ) from None
    except (RuntimeError, EOFError, OSError) as error:
        raise ValueError(
            f"{path / WEIGHTS} cannot be read ({error}); save the model again"
        ) from None
    _check_state(state, path)
    return config, state


def _read_config(path: Path) -> dict[str, Any]:
    """The parsed config, checked so that nothing in it reaches a constructor unchecked."""
    where = path / CONFIG
    try:
        config = json.loads(where.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{where} is not valid JSON ({error}); save the model again") from None
    if not isinstance(config, dict):
        raise ValueError(f"{where} does not hold a model config")
    version = config.get("format")
    if isinstance(version, int) and version > FORMAT:
        raise ValueError(
            f"{path} was saved by a newer scvae ({config.get('scvae_version')!r}, format "
            f"{version}); this is scvae {__version__} (format {FORMAT}): upgrade scvae"
        )
    if version != FORMAT:
        raise ValueError(f"{path}: unknown model format {version!r}")
    required = ("scvae_version", "module", "gene_names", "batch_categories", "label_categories")
    required += ("layer", "batch_key", "labels_key", "settings", "history")
    absent = [k for k in required if k not in config]
    if absent:
        raise ValueError(f"{where} lacks {absent}: not a complete scvae model config")
    if config["scvae_version"] != __version__:
        logger.warning(
            "model saved by scvae %s, loading with %s", config["scvae_version"], __version__
        )
    module = config["module"]
    if not isinstance(module, dict) or "n_genes" not in module:
        raise ValueError(f"{where}: 'module' must be a mapping with 'n_genes'")
    for key, value in module.items():
        kind = _MODULE_TYPES.get(key)
        if kind is None:
            raise ValueError(f"{where}: unknown module setting {key!r}")
        wrong_bool = isinstance(value, bool) and kind is not bool
        if wrong_bool or not isinstance(value, kind):
            raise ValueError(f"{where}: module setting {key}={value!r} has the wrong type")
    genes = config["gene_names"]
    if not isinstance(genes, list) or not all(isinstance(g, str) for g in genes):
        raise ValueError(f"{where}: gene_names must be a list of strings")
    if module["n_genes"] != len(genes):
        raise ValueError(
            f"{path}: config lists {len(genes)} genes for a model of {module['n_genes']}"
        )
    return config


def _check_state(state: Any, path: Path) -> None:
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ValueError(f"{path / WEIGHTS} does not hold a mapping of names to tensors")
    bad = [k for k, v in state.items() if v.is_floating_point() and not v.isfinite().all()]
    if bad:
        raise ValueError(
            f"{path / WEIGHTS} holds NaN or infinite weights ({bad[:3]}): this model would "
            "give NaN results; fit it again"
        )
