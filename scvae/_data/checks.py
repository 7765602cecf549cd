"""Every check of the user's values while reading, each with the message it raises.

Counts must be finite non-negative integers that float32 holds exactly; no cell may be empty
or entirely missing; genes are matched by unique name; obs columns of covariates give known
categories. The readers (:mod:`scvae._data.memory`, :mod:`scvae._data.backed`) call these.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .counts import CountData

logger = logging.getLogger(__name__)

__all__ = [
    "align_genes",
    "check_block",
    "covariate_codes",
    "missing_genes",
    "obs_codes",
]

# The largest integer float32 holds exactly (counts are float32 tensors in training).
_MAX_COUNT = 2**24


def missing_genes(data: CountData) -> list[str]:
    """Genes with every entry missing: nothing can be learnt about them."""
    if data.missing is None:
        return []
    n_missing = np.asarray(data.missing.sum(axis=0)).ravel()
    return [data.gene_names[i] for i in np.flatnonzero(n_missing == data.n_cells)]


def align_genes(
    var_names: pd.Index, gene_names: list[str], *, allow_absent: bool = False
) -> np.ndarray:
    """Column positions of ``gene_names`` in ``var_names``; error naming any absent gene
    (with ``allow_absent``, -1 for them, unless no gene at all is present)."""
    _check_unique_genes(pd.Index(var_names))
    # Names as strings, as a model records them: integer-like var names (0, 1, ...) match too.
    position = pd.Index([str(g) for g in var_names]).get_indexer(gene_names)
    absent = [g for g, p in zip(gene_names, position, strict=True) if p < 0]
    if allow_absent and len(absent) == len(gene_names):
        raise ValueError(
            f"none of the model's {len(gene_names)} genes is in adata.var_names (e.g. "
            f"{list(gene_names[:3])} vs {[str(g) for g in var_names[:3]]}): genes are matched "
            "by name; use the same gene identifiers (symbols or Ensembl IDs) as the reference"
        )
    if absent and not allow_absent:
        shown = ", ".join(map(repr, absent[:10])) + (" ..." if len(absent) > 10 else "")
        raise ValueError(
            f"{len(absent)} of the model's {len(gene_names)} genes are missing from "
            f"adata.var_names: {shown}. adata may hold other genes and any order (genes "
            "are matched by name), but every gene the model was trained on must be present"
            + (
                "; none is: use the same gene identifiers (symbols or Ensembl IDs) as the "
                "model's data"
                if len(absent) == len(gene_names)
                else ""
            )
        )
    extra = len(var_names) - int((position >= 0).sum())
    if extra > 0 and allow_absent:
        logger.warning("dropping %d genes of adata that the model does not know", extra)
    elif extra > 0:
        logger.info("ignoring %d genes that the model was not trained on", extra)
    return position


def _check_unique_genes(var_names: pd.Index) -> None:
    if not var_names.is_unique:
        duplicated = list(dict.fromkeys(var_names[var_names.duplicated()]))
        raise ValueError(
            f"adata.var_names are not unique (e.g. {duplicated[:5]}): genes are matched by "
            "name; call adata.var_names_make_unique()"
        )


def _sparse_position(counts: sp.csr_matrix, flat: int) -> tuple[int, int]:
    row = int(np.searchsorted(counts.indptr, flat, side="right") - 1)
    return row, int(counts.indices[flat])


def _dense_position(flat: int, *, start: int, n_genes: int) -> tuple[int, int]:
    row, col = divmod(flat, n_genes)
    return start + row, col


def _above(values: np.ndarray, limit: float) -> np.ndarray:
    """``values > limit``, without casting ``limit`` to a dtype that cannot hold it."""
    if values.dtype.kind == "f" and float(np.finfo(values.dtype).max) < limit:
        return np.zeros(values.shape, dtype=bool)  # float16: nothing can exceed it
    return values > limit


def _check_values(
    values: np.ndarray, where: str, cells, genes, locate: Callable[[int], tuple[int, int]]
) -> None:
    """Raise on inf, negative or non-integer ``values``; ``locate`` maps a flat position
    to (cell, gene) for the message. NaN is allowed: it marks a missing entry."""
    problems = (
        (np.isinf(values), "infinite values", "remove or fix them"),
        (values < 0, "negative values", "scvae models raw counts"),
        (
            ~np.isnan(values) & (values != np.round(values)),
            "non-integer values",
            "scvae models raw counts (not normalised or log-transformed data): "
            "pass the raw counts layer, e.g. layer='counts', or, where the counts are in "
            "adata.raw, adata.raw.to_adata()",
        ),
        (
            _above(values, _MAX_COUNT),
            "counts above 2**24",
            "float32 cannot store them exactly; are these raw counts of one gene in one cell?",
        ),
    )
    for bad, what, advice in problems:
        hits = np.flatnonzero(bad)
        if hits.size:
            row, col = locate(int(hits[0]))
            raise ValueError(
                f"{where} holds {what} (e.g. {values[hits[0]]:g} at cell "
                f"{cells[row]!r}, gene {genes[col]!r}); {advice}"
            )


def _check_cells(library, missing, cells, n_genes: int, where: str) -> None:
    if missing is not None:
        n_missing = np.asarray(missing.sum(axis=1)).ravel()
        all_missing = np.flatnonzero(n_missing == n_genes)
        if all_missing.size:
            raise ValueError(
                f"{all_missing.size} cells have every entry missing in {where} (e.g. "
                f"{cells[all_missing[0]]!r}); remove them before fitting"
            )
    empty = np.flatnonzero(library <= 0)
    if empty.size:
        names = ", ".join(repr(cells[i]) for i in empty[:5])
        raise ValueError(
            f"{empty.size} cells have zero total counts in {where} (e.g. {names}); remove "
            "them first, e.g. sc.pp.filter_cells(adata, min_counts=1)"
        )


def covariate_codes(
    obs: pd.DataFrame,
    batch_key: str | None,
    batch_categories: list[str] | None,
    labels_key: str | None,
) -> tuple[np.ndarray, list[str], np.ndarray | None, list[str]]:
    """Batch codes and categories, and label codes (``None`` without ``labels_key``; -1 where
    unlabelled) and categories: what both readers take from ``obs``."""
    batch_index, batch_cats = obs_codes(obs, batch_key, batch_categories, "batch_key")
    labels, label_cats = (None, [])
    if labels_key is not None:
        labels, label_cats = obs_codes(obs, labels_key, None, "labels_key", allow_nan=True)
    return batch_index, batch_cats, labels, label_cats


def obs_codes(
    obs: pd.DataFrame,
    key: str | None,
    categories: list[str] | None,
    argument: str,
    *,
    allow_nan: bool = False,
) -> tuple[np.ndarray, list[str]]:
    """Integer codes of an obs column (-1 for NaN where allowed) and its categories."""
    if key is None:
        return np.zeros(len(obs), dtype=np.int64), []
    if key not in obs.columns:
        raise KeyError(
            f"{argument}={key!r} is not a column of adata.obs (available: {list(obs.columns)})"
        )
    column = obs[key]
    is_nan = column.isna().to_numpy()
    if is_nan.any() and not allow_nan:
        raise ValueError(f"adata.obs[{key!r}] has {int(is_nan.sum())} missing values")
    values = column.astype(str).to_numpy()
    if categories is None:
        if isinstance(column.dtype, pd.CategoricalDtype):
            categories = [str(c) for c in column.cat.categories if (values == str(c)).any()]
            unused = len(column.cat.categories) - len(categories)
            if unused:
                logger.info("adata.obs[%r]: ignoring %d unused categories", key, unused)
        else:
            categories = sorted(set(values[~is_nan]))
        _warn_of_odd_values(key, argument, categories, values)
    codes = pd.Index(categories).get_indexer(values)
    unknown = (codes < 0) & ~is_nan
    if unknown.any():
        raise ValueError(
            f"adata.obs[{key!r}] has categories the model does not know: "
            f"{sorted(set(values[unknown]))[:10]} (known: {categories})"
        )
    codes[is_nan] = -1
    return codes.astype(np.int64), list(categories)


#: Values that are a string but read as "no value" (what ``astype(str)`` makes of NaN, None).
_LOOKS_MISSING = frozenset({"nan", "NaN", "None", "none", "NA", "<NA>", "N/A", ""})


def _warn_of_odd_values(key: str, argument: str, categories: list[str], values) -> None:
    """Warn of a batch or label column whose values are likely a mistake: strings that read
    as "missing" (``astype(str)`` turns NaN into ``"nan"``), or as many batches as cells."""
    odd = [c for c in categories if c.strip() in _LOOKS_MISSING]
    if odd:
        n_cells = int(np.isin(values, odd).sum())
        what = "a label" if argument == "labels_key" else "a batch"
        fix = (
            "; store unlabelled cells as missing (NaN), which the label head leaves out"
            if argument == "labels_key"
            else ""
        )
        logger.warning(
            "adata.obs[%r] holds %s in %d cells: a string, taken as %s like any other%s",
            key,
            odd,
            n_cells,
            what,
            fix,
        )
    if argument == "batch_key" and len(categories) > max(20, len(values) // 2):
        logger.warning(
            "adata.obs[%r] has %d distinct values for %d cells, each taken as a batch: a "
            "value that varies from cell to cell (a depth, a score) belongs in "
            "continuous_covariate_keys",
            key,
            len(categories),
            len(values),
        )


def check_block(block: sp.csr_matrix, start: int, where: str, cells, genes) -> None:
    """Raise on NaN, infinite, negative or non-integer counts in rows ``start:`` of ``where``."""
    locate = partial(_sparse_position, block)

    def shifted(flat: int) -> tuple[int, int]:
        row, col = locate(flat)
        return start + row, col

    nan = np.isnan(block.data)
    if nan.any():
        row, col = shifted(int(np.flatnonzero(nan)[0]))
        raise ValueError(
            f"{where} holds NaN (e.g. at cell {cells[row]!r}, gene {genes[col]!r}): missing "
            "values are supported for in-memory data only; load it with adata.to_memory()"
        )
    _check_values(block.data, where, cells, genes, shifted)
