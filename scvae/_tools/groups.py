"""The groups a differential expression compares: the column, the cells, the shared batches.

Every check of :func:`~scvae.differential_expression`'s and
:func:`~scvae.rank_genes_groups`' inputs is here, each error naming the option or value.
"""

from __future__ import annotations

import zlib

import numpy as np
import pandas as pd
from anndata import AnnData

from .._data.counts import CountData
from .._model.scvae import SCVAE
from .._utils.options import check_flag, check_int, check_seed

__all__ = [
    "MIN_CELLS",
    "MIN_SAMPLES",
    "as_list",
    "check_options",
    "group_labels",
    "group_rows",
    "group_seed",
    "shared_batches",
]

#: Fewest cells a compared group may have: below this, the bootstrap over cells has too
#: few cells to say anything about a population.
MIN_CELLS = 10
#: Fewest posterior draws: each gene's posterior is summarised by the draws' mean and spread.
MIN_SAMPLES = 10


def check_options(**options) -> None:
    """Refuse option values outside their range, naming the option."""
    delta, fdr, pseudocount = options["delta"], options["fdr"], options["pseudocount"]
    for name, value in (("delta", delta), ("fdr", fdr), ("pseudocount", pseudocount)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not np.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
    if delta < 0:
        raise ValueError(f"delta must be at least 0, got {delta!r}")
    if not 0 < fdr < 1:
        raise ValueError(f"fdr must be between 0 and 1, got {fdr!r}")
    if pseudocount <= 0:
        raise ValueError(f"pseudocount must be positive, got {pseudocount!r}")
    check_flag("batch_correction", options["batch_correction"])
    check_int("n_samples", options["n_samples"], minimum=MIN_SAMPLES)
    for name in ("max_cells", "batch_size"):
        check_int(name, options[name])
    check_seed(options["seed"])


def group_labels(adata: AnnData, groupby: str) -> pd.Series:
    """The ``groupby`` column as strings (NaN stays NaN), or a clear error."""
    if not isinstance(groupby, str) or groupby not in adata.obs.columns:
        raise KeyError(
            f"groupby={groupby!r} is not a column of adata.obs "
            f"(columns: {list(adata.obs.columns)[:20]})"
        )
    column = adata.obs[groupby]
    return (
        column.astype(object)
        .where(column.notna())
        .map(lambda v: v if v is None or (isinstance(v, float) and np.isnan(v)) else str(v))
    )


def group_rows(labels: pd.Series, group, groupby: str, name: str) -> np.ndarray:
    """Rows of the cells whose label is ``group`` (or one of a list), or a clear error."""
    wanted = [str(g) for g in as_list(group)]
    if not wanted:
        raise ValueError(f"{name} is empty")
    known = set(labels.dropna())
    unknown = [g for g in wanted if g not in known]
    if unknown:
        raise ValueError(
            f"{name}: {unknown} not among the values of {groupby!r} (known: {sorted(known)[:20]})"
        )
    rows = np.flatnonzero(labels.isin(wanted).to_numpy())
    if len(rows) < MIN_CELLS:
        raise ValueError(
            f"{name} ({group!r}) has {len(rows)} cells: at least {MIN_CELLS} are needed"
        )
    return rows


def as_list(group) -> list:
    """One group value, or a list of them, as a list."""
    return list(group) if isinstance(group, list | tuple | np.ndarray | pd.Index) else [group]


def shared_batches(
    model: SCVAE, data: CountData, rows1: np.ndarray, rows2: np.ndarray, correct: bool
) -> list[int] | None:
    """The model's batch codes both groups have cells in (``None``: no correction)."""
    if not correct or not model.batch_categories:
        return None
    shared = np.intersect1d(data.batch_index[rows1], data.batch_index[rows2])
    if len(shared) == 0:
        names = model.batch_categories
        one = sorted({names[c] for c in data.batch_index[rows1]})
        two = sorted({names[c] for c in data.batch_index[rows2]})
        raise ValueError(
            f"the two groups share no batch (group1 in {one[:10]}, group2 in {two[:10]}): a "
            "difference between them cannot be told from a batch effect. Compare groups "
            "measured in a common batch, or pass batch_correction=False to compare them as "
            "measured (the batch effect then counts as a difference)"
        )
    return [int(c) for c in shared]


def group_seed(seed: int, rows: np.ndarray) -> int:
    """The seed of one group's posterior draws: ``seed`` and the group's cells, so that a
    group gets the same draws whichever side of a comparison it is on and whichever other
    groups are ranked with it.

    Examples
    --------
    >>> group_seed(0, np.array([3, 1, 2])) == group_seed(0, np.array([1, 2, 3]))
    True
    """
    cells = np.sort(np.asarray(rows, dtype=np.int64))
    return (int(seed) + zlib.crc32(cells.tobytes())) % 2**64
