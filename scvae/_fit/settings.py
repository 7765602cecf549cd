"""``FitSettings``: the options of :func:`scvae.fit` in one frozen record, checked in one place.

``fit`` keeps its explicit, documented keywords (what a user reads and tab-completes); inside,
they travel as one :class:`FitSettings`, checked when it is made, before any data is read or
any long work starts. :meth:`FitSettings.resolved` fills the defaults that depend on the data
(epochs, KL warm-up, learning rate, device), and each stage takes its own part
(:meth:`~FitSettings.module_options`, :meth:`~FitSettings.train_options`). A test checks that
``fit``'s keywords and the fields here are the same list.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .._utils.device import resolve_device
from .._utils.options import check_key, check_seed
from .._vae.module import DISPERSIONS, LIKELIHOODS

if TYPE_CHECKING:
    from .._data.counts import CountData

__all__ = [
    "BALANCE",
    "DEFAULT_ALIGNMENT",
    "FitSettings",
    "check_against_data",
    "default_lr",
    "default_max_epochs",
]

BALANCE = (None, "labels", "batch", "auto")
#: Weight of the batch-alignment (MMD) term when ``batch_alignment`` is not given.
DEFAULT_ALIGNMENT = 10.0
#: With batch alignment, early stopping keeps the latest epoch whose held-out ELBO is within
#: this fraction of the best: the alignment term goes on mixing batches on the ELBO's plateau
#: (docs/mapping.md, the integration measurements).
ALIGNED_ELBO_TOLERANCE = 0.005
#: The default latent space: a learned mixture of 20 diagonal normals, with or without batches
#: and covariates, in 30 dimensions, or 50 with ``batch_key``: 50 integrated every scIB dataset
#: as well or better, but without batches it collapsed onto one direction on the small
#: simulated data of ``tests/test_embedding.py`` (docs/embedding.md, docs/mapping.md).
DEFAULT_N_LATENT = 30
DEFAULT_N_LATENT_WITH_BATCHES = 50
DEFAULT_PRIOR_COMPONENTS = 20
# Options that do not change what is trained: a checkpoint may be resumed with other values.
_FREE_FOR_RESUME = frozenset(
    {"max_epochs", "patience", "early_stopping", "progress", "checkpoint_dir"}
    | {"checkpoint_every", "resume", "device", "key_added"}
)


def default_max_epochs(n_cells: int) -> int:
    """About 8M cell visits, capped to [20, 400] epochs (early stopping usually ends sooner).

    Examples
    --------
    >>> default_max_epochs(1000), default_max_epochs(100_000)
    (400, 80)
    """
    return int(np.clip(round(8_000_000 / n_cells), 20, 400))


def default_lr(cells_per_step: int) -> float:
    """Adam's learning rate for ``cells_per_step`` cells per update: ``1e-3`` up to 128 cells,
    then ``1e-3`` per 128 cells, at most ``1.6e-2`` (2048 cells, the largest batch measured).

    Linear scaling beat square-root scaling on pbmc4k and was stable (``docs/speed.md``);
    above 2048 cells per step the rate is held, not extrapolated.

    Examples
    --------
    >>> default_lr(128), default_lr(512), default_lr(65536)
    (0.001, 0.004, 0.016)
    """
    return 1e-3 * min(max(cells_per_step / 128, 1.0), 16.0)


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _number(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")


def _flag(name: str, value: Any) -> None:
    if not isinstance(value, bool | np.bool_):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")


def _key(name: str, value: Any) -> None:
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{name} must be a string or None, got {type(value).__name__} {value!r}")


@dataclass(frozen=True)
class FitSettings:
    """The options of :func:`scvae.fit` (documented there), checked when made.

    Examples
    --------
    >>> FitSettings(n_latent=8).n_latent
    8
    >>> FitSettings(n_latent=0)
    Traceback (most recent call last):
    ...
    ValueError: n_latent must be a positive integer, got 0
    """

    layer: str | None = None
    batch_key: str | None = None
    labels_key: str | None = None
    mask_layer: str | None = None
    categorical_covariate_keys: list[str] | None = None
    continuous_covariate_keys: list[str] | None = None
    balance: str | None = None
    classification_weight: float = 50.0
    batch_alignment: float | None = None
    likelihood: str = "nb"
    dispersion: str = "gene"
    n_latent: int | None = None
    n_hidden: int = 128
    n_layers: int = 1
    dropout: float = 0.1
    prior_components: int | None = None
    library_from_latent: bool | None = None
    beta: float = 1.0
    kl_warmup: int | None = None
    max_epochs: int | None = None
    batch_size: int = 128
    lr: float | None = None
    early_stopping: bool | None = None
    validation_fraction: float = 0.1
    patience: int = 20
    device: str | torch.device = "auto"
    seed: int = 0
    key_added: str = "scvae"
    progress: bool = True
    checkpoint_dir: str | Path | None = None
    checkpoint_every: int = 10
    resume: bool = False

    def __post_init__(self) -> None:
        for name in ("layer", "batch_key", "labels_key", "mask_layer"):
            _key(name, getattr(self, name))
        self._check_covariate_keys()
        if not isinstance(self.key_added, str) or not self.key_added:
            raise ValueError(f"key_added must be a non-empty string, got {self.key_added!r}")
        check_key("key_added", self.key_added)
        if self.balance not in BALANCE:
            raise ValueError(f"balance must be one of {BALANCE}, got {self.balance!r}")
        if self.balance == "labels" and self.labels_key is None:
            raise ValueError("balance='labels' needs labels_key (the obs column of cell types)")
        if self.balance == "batch" and self.batch_key is None:
            raise ValueError("balance='batch' needs batch_key with at least two batches")
        if self.likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {self.likelihood!r}")
        if self.dispersion not in DISPERSIONS:
            raise ValueError(f"dispersion must be one of {DISPERSIONS}, got {self.dispersion!r}")
        if self.library_from_latent is not None:  # None: the default, resolved per kind of fit
            _flag("library_from_latent", self.library_from_latent)
        if self.early_stopping is not None:  # None: the default, resolved per kind of fit
            _flag("early_stopping", self.early_stopping)
        for name in ("progress", "resume"):
            _flag(name, getattr(self, name))
        if self.batch_alignment is not None:
            _number("batch_alignment", self.batch_alignment)
            if not (math.isfinite(self.batch_alignment) and self.batch_alignment >= 0):
                raise ValueError(
                    f"batch_alignment must be a non-negative number, got {self.batch_alignment!r}"
                )
        for name in ("classification_weight", "dropout", "beta", "validation_fraction"):
            _number(name, getattr(self, name))
        if not (math.isfinite(self.classification_weight) and self.classification_weight >= 0):
            raise ValueError(
                "classification_weight must be a non-negative number, got "
                f"{self.classification_weight!r}"
            )
        for name in ("max_epochs", "batch_size"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | np.integer)
            ):
                raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
            if value is not None and value < 1:
                raise ValueError("max_epochs and batch_size must be positive")
        if not self.beta > 0:
            raise ValueError(f"beta must be positive, got {self.beta}")
        if not math.isfinite(self.beta):
            raise ValueError(f"beta must be finite, got {self.beta!r}")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(
                f"validation_fraction must be in [0, 1), got {self.validation_fraction}"
            )
        for name in ("n_hidden", "n_layers", "patience"):
            _positive_int(name, getattr(self, name))
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.lr is not None:
            _number("lr", self.lr)
            if not (math.isfinite(self.lr) and self.lr > 0):
                raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        if self.n_latent is not None:
            _positive_int("n_latent", self.n_latent)
        if self.prior_components is None:
            pass
        elif isinstance(self.prior_components, bool) or not isinstance(
            self.prior_components, int | np.integer
        ):
            raise TypeError(f"prior_components must be an integer, got {self.prior_components!r}")
        elif self.prior_components < 0:
            raise ValueError(f"prior_components must be >= 0, got {self.prior_components!r}")
        if self.kl_warmup is not None:
            if isinstance(self.kl_warmup, bool) or not isinstance(
                self.kl_warmup, int | np.integer
            ):
                raise TypeError(f"kl_warmup must be an integer, got {self.kl_warmup!r}")
            if self.kl_warmup < 0:
                raise ValueError(f"kl_warmup must be >= 0, got {self.kl_warmup!r}")
        if isinstance(self.checkpoint_every, bool) or not isinstance(
            self.checkpoint_every, int | np.integer
        ):
            raise TypeError(f"checkpoint_every must be an integer, got {self.checkpoint_every!r}")
        if self.checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be >= 1, got {self.checkpoint_every!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int | np.integer):
            raise TypeError(f"seed must be an integer, got {self.seed!r}")
        check_seed(self.seed)
        if self.resume and self.checkpoint_dir is None:
            raise ValueError("resume=True needs the checkpoint_dir of the fit to resume")
        resolve_device(self.device)  # an unknown or unavailable device fails here

    def _check_covariate_keys(self) -> None:
        """Lists of distinct obs columns, none of them the batch or the labels; kept as
        tuples (the settings are frozen)."""
        seen: dict[str, str] = {}
        for name in ("categorical_covariate_keys", "continuous_covariate_keys"):
            keys = getattr(self, name)
            if keys is None:
                continue
            if isinstance(keys, str) or not all(isinstance(k, str) for k in keys):
                raise TypeError(
                    f"{name} must be a list of obs column names, got {keys!r}"
                    + (f" (did you mean [{keys!r}]?)" if isinstance(keys, str) else "")
                )
            for key in keys:
                role = {self.batch_key: "batch_key", self.labels_key: "labels_key"}.get(key)
                if key in seen or role is not None:
                    raise ValueError(
                        f"{name}: {key!r} is already given as {seen.get(key, role)}; each "
                        "obs column can play one part"
                    )
                seen[key] = name
            object.__setattr__(self, name, tuple(keys))

    # -- the data-dependent defaults ---------------------------------------------------------
    def resolved(self, n_cells: int, world_size: int = 1) -> FitSettings:
        """These settings with the defaults that depend on the data filled in: ``n_latent``
        (:meth:`default_n_latent`), ``max_epochs``
        (:func:`default_max_epochs`), ``kl_warmup`` (an eighth of the epochs), ``lr``
        (:func:`default_lr` of the cells per step of all ``world_size`` processes) and the
        device (``"auto"`` becomes ``"cpu"`` or ``"cuda"``)."""
        max_epochs = default_max_epochs(n_cells) if self.max_epochs is None else self.max_epochs
        max_epochs = int(max_epochs)
        kl_warmup = max(1, max_epochs // 8) if self.kl_warmup is None else int(self.kl_warmup)
        lr = default_lr(self.batch_size * world_size) if self.lr is None else self.lr
        alignment = DEFAULT_ALIGNMENT if self.batch_alignment is None else self.batch_alignment
        return replace(
            self,
            n_latent=int(self.default_n_latent() if self.n_latent is None else self.n_latent),
            prior_components=int(
                DEFAULT_PRIOR_COMPONENTS
                if self.prior_components is None
                else self.prior_components
            ),
            library_from_latent=(
                self.default_library_from_latent()
                if self.library_from_latent is None
                else bool(self.library_from_latent)
            ),
            batch_alignment=float(alignment),
            early_stopping=True if self.early_stopping is None else self.early_stopping,
            max_epochs=max_epochs,
            kl_warmup=kl_warmup,
            lr=lr,
            device=str(resolve_device(self.device)),
            checkpoint_dir=None if self.checkpoint_dir is None else str(self.checkpoint_dir),
        )

    # -- each stage's part ---------------------------------------------------------------------
    def module_options(self) -> dict[str, Any]:
        """Keyword arguments of :class:`~scvae._vae.module.SCVAEModule` (after
        :meth:`resolved`, which fills in the defaults)."""
        return {
            "n_latent": self.n_latent,
            "n_hidden": self.n_hidden,
            "n_layers": self.n_layers,
            "likelihood": self.likelihood,
            "dispersion": self.dispersion,
            "dropout": self.dropout,
            "prior_components": self.prior_components,
            "library_from_latent": self.library_from_latent,
            "alignment_weight": self.batch_alignment,
        }

    def source_options(self) -> dict[str, Any]:
        """Keyword arguments of :func:`~scvae._batches.split.make_sources` (after
        :meth:`resolved`)."""
        return {
            "validation_fraction": self.validation_fraction,
            "early_stopping": self.early_stopping,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "device": self.device,
            "balance_batches": self.balance == "batch",
        }

    def train_options(self, *, validating: bool) -> dict[str, Any]:
        """Keyword arguments of :func:`~scvae._train.loop.train` (after :meth:`resolved`)."""
        return {
            "max_epochs": self.max_epochs,
            "lr": self.lr,
            "beta": self.beta,
            "kl_warmup_epochs": self.kl_warmup,
            "early_stopping": self.early_stopping and validating,
            "patience": self.patience,
            "elbo_tolerance": ALIGNED_ELBO_TOLERANCE if self.aligns_batches() else 0.0,
            "progress": self.progress,
        }

    def default_n_latent(self) -> int:
        """``n_latent`` when it is not given: :data:`DEFAULT_N_LATENT_WITH_BATCHES` with a
        ``batch_key``, else :data:`DEFAULT_N_LATENT`.

        Examples
        --------
        >>> FitSettings().default_n_latent(), FitSettings(batch_key="batch").default_n_latent()
        (30, 50)
        """
        return DEFAULT_N_LATENT if self.batch_key is None else DEFAULT_N_LATENT_WITH_BATCHES

    def default_library_from_latent(self) -> bool:
        """``library_from_latent`` when it is not given: on for a fit without a ``batch_key``
        and without covariates. Where batches or covariates are given, the latent space
        should let them go; depth that follows them (a batch sequenced deeper, a covariate
        that raises many genes) would come back into it through the library size.

        Examples
        --------
        >>> FitSettings().default_library_from_latent()
        True
        >>> FitSettings(continuous_covariate_keys=["age"]).default_library_from_latent()
        False
        """
        covariates = self.categorical_covariate_keys or self.continuous_covariate_keys
        return self.batch_key is None and not covariates

    def aligns_batches(self) -> bool:
        """Whether the objective has the batch-alignment term (after :meth:`resolved`)."""
        return self.batch_key is not None and bool(self.batch_alignment)

    def record(self) -> dict[str, Any]:
        """The settings as the plain dict a model keeps (``model.settings``), in ``fit``'s
        order with ``key_added`` last."""
        record = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "key_added"}
        for name in ("categorical_covariate_keys", "continuous_covariate_keys"):
            record[name] = None if record[name] is None else list(record[name])
        record["key_added"] = self.key_added
        return record

    def identity(self) -> dict[str, str]:
        """The options a checkpoint must share with the fit that resumes it."""
        return {k: str(v) for k, v in asdict(self).items() if k not in _FREE_FOR_RESUME}


def check_against_data(data: CountData, settings: FitSettings) -> None:
    """What the settings need from the data: cells, labels, several batches."""
    if data.n_cells < 2:
        raise ValueError(f"adata has {data.n_cells} cell(s); fitting needs at least 2 cells")
    if settings.balance == "labels" and data.labels is None:
        raise ValueError("balance='labels' needs labels_key (the obs column of cell types)")
    if settings.balance == "batch" and len(data.batch_categories) <= 1:
        raise ValueError("balance='batch' needs batch_key with at least two batches")
    if settings.balance is not None and data.backed:
        raise NotImplementedError(
            "balance= is not supported for disk-backed data yet; load the cells "
            "with adata.to_memory() to balance them"
        )
