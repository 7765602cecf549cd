"""Plots, in scanpy's habits: each takes ``ax=``, ``show=`` and ``save=`` and returns the axes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["loss", "ppc"]


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


def ppc(
    check: Any,
    *,
    axes=None,
    show: bool | None = None,
    save: str | Path | None = None,
):
    """Posterior predictive check: observed vs model-drawn per-gene statistics.

    Four panels: per-gene mean, variance and zero fraction of the observed cells (x) against
    the drawn cells (y), each with the identity line (points on it: the model reproduces the
    statistic) and its Pearson r; then the mean-variance relation of both, where
    overdispersion shows as variance above the mean (the dashed Poisson line).

    Parameters
    ----------
    check
        The result of :func:`scvae.posterior_predictive_check`.
    axes
        Four axes to draw on; a new figure otherwise.
    show, save
        As in :func:`loss`.

    Returns
    -------
    The four axes.

    Examples
    --------
    >>> scvae.pl.ppc(scvae.posterior_predictive_check(model, adata))  # doctest: +SKIP
    """
    import matplotlib.pyplot as plt

    genes, summary = check.genes, check.summary
    if axes is None:
        fig, axes = plt.subplots(1, 4, figsize=(16, 3.8))
        fig.subplots_adjust(wspace=0.35)
    panels = [
        ("mean", "per-gene mean", "r_mean", True),
        ("variance", "per-gene variance", "r_variance", True),
        ("zero_fraction", "per-gene fraction of zeros", "r_zero_fraction", False),
    ]
    for ax, (stat, title, r_key, log) in zip(axes, panels, strict=False):
        x, y = genes[f"{stat}_observed"].to_numpy(), genes[f"{stat}_generated"].to_numpy()
        if log:
            floor = _positive_floor(np.concatenate([x, y]))
            x, y = np.maximum(x, floor), np.maximum(y, floor)
            ax.set_xscale("log")
            ax.set_yscale("log")
        ax.scatter(x, y, s=4, alpha=0.5, linewidths=0, color="tab:blue")
        low, high = np.nanmin([x.min(), y.min()]), np.nanmax([x.max(), y.max()])
        ax.plot([low, high], [low, high], color="black", lw=0.8)
        ax.set_xlabel("observed")
        ax.set_ylabel("drawn from the model")
        ax.set_title(f"{title}\nr = {summary.get(r_key, np.nan):.3f}")
    ax = axes[3]
    for which, color in (("observed", "tab:gray"), ("generated", "tab:orange")):
        mean = genes[f"mean_{which}"].to_numpy()
        variance = genes[f"variance_{which}"].to_numpy()
        keep = (mean > 0) & (variance > 0)
        label = "observed" if which == "observed" else "drawn"
        ax.scatter(
            mean[keep], variance[keep], s=4, alpha=0.5, linewidths=0, color=color, label=label
        )
    means = genes[["mean_observed", "mean_generated"]].to_numpy()
    means = means[means > 0]
    if means.size:
        line = np.array([means.min(), means.max()])
        ax.plot(line, line, color="black", lw=0.8, ls="--", label="Poisson (var = mean)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("per-gene mean")
    ax.set_ylabel("per-gene variance")
    ax.set_title("mean-variance relation")
    ax.legend(frameon=False, markerscale=3, fontsize=8)
    auc = summary.get("auc", np.nan)
    if np.isfinite(auc):
        axes[0].figure.suptitle(
            f"{check.kind} predictive check; classifier two-sample AUC = {auc:.3f} "
            "(0.5: drawn cells indistinguishable from observed)",
            y=1.04,
        )
    _finish(axes[0], show, save)
    return axes


def _positive_floor(values: np.ndarray) -> float:
    positive = values[np.isfinite(values) & (values > 0)]
    return float(positive.min()) / 2 if positive.size else 1e-6


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
