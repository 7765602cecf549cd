"""Plots, in scanpy's habits: each takes ``ax=``, ``show=`` and ``save=`` and returns the axes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["loss"]


def loss(
    model_or_adata: Any,
    *,
    key: str = "scvae",
    ax=None,
    show: bool | None = None,
    save: str | Path | None = None,
):
    """Training loss and held-out ELBO per epoch.

    Parameters
    ----------
    model_or_adata
        A fitted :class:`~scvae.SCVAE`, or an AnnData with ``uns[key]["history"]``.
    key
        The ``key_added`` of the fit, when an AnnData is given.
    ax
        Axes to draw on; a new figure otherwise.
    show
        Show the figure (default: when neither ``ax`` nor ``save`` is given).
    save
        Write the figure to this path.

    Examples
    --------
    >>> scvae.pl.loss(model)  # doctest: +SKIP
    """
    import matplotlib.pyplot as plt

    history = getattr(model_or_adata, "history", None)
    if history is None:
        history = model_or_adata.uns[key]["history"]
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.5))
    curves = {"training objective (-ELBO, KL warm-up)": np.asarray(history["train_loss"])}
    if "validation_elbo" in history and len(history["validation_elbo"]):
        curves["held-out -ELBO"] = -np.asarray(history["validation_elbo"])
    for label, values in curves.items():
        ax.plot(np.arange(1, len(values) + 1), values, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss per cell (nats)")
    # The first epochs are far above the rest: zoom on where training settles.
    low, high = np.percentile(np.concatenate(list(curves.values())), [0, 80])
    ax.set_ylim(low - 0.05 * (high - low), high + 0.1 * (high - low))
    ax.legend(frameon=False, loc="upper right")
    return _finish(ax, show, save)


def _finish(ax, show: bool | None, save: str | Path | None):
    import matplotlib.pyplot as plt

    if save is not None:
        ax.figure.savefig(save, dpi=120, bbox_inches="tight")
    if show or (show is None and save is None and ax is not None and _interactive()):
        plt.show()
    return ax


def _interactive() -> bool:
    import matplotlib

    return matplotlib.get_backend().lower() not in {"agg", "pdf", "svg", "ps", "cairo"}
