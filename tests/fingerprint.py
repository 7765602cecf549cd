"""Hashes of every part of an AnnData, to check what a public call changed."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData


def _array_hash(values) -> str:
    h = hashlib.sha256()
    if values is None:
        return "None"
    if sp.issparse(values):
        h.update(f"{values.format}{values.shape}{values.dtype}".encode())
        for part in ("data", "indices", "indptr"):
            h.update(np.ascontiguousarray(getattr(values, part)).tobytes())
        return h.hexdigest()
    if isinstance(values, pd.DataFrame):
        return _frame_hash(values)
    values = np.asarray(values)
    h.update(f"{values.shape}{values.dtype}".encode())
    h.update(
        np.ascontiguousarray(values).tobytes()
        if values.dtype != object
        else repr(values.tolist()).encode()
    )
    return h.hexdigest()


def _frame_hash(frame: pd.DataFrame) -> str:
    h = hashlib.sha256()
    h.update(repr(list(frame.columns)).encode())
    h.update(repr(frame.dtypes.astype(str).tolist()).encode())
    h.update(repr(list(frame.index)).encode())
    for column in frame.columns:
        series = frame[column]
        if isinstance(series.dtype, pd.CategoricalDtype):
            h.update(repr(list(series.cat.categories)).encode())
        h.update(pd.util.hash_pandas_object(series, index=False).to_numpy().tobytes())
    return h.hexdigest()


def _uns_hash(value) -> str:
    if isinstance(value, dict):
        return repr({k: _uns_hash(v) for k, v in sorted(value.items())})
    if isinstance(value, np.ndarray | pd.DataFrame) or sp.issparse(value):
        return _array_hash(value)
    return repr(value)


def fingerprint(adata: AnnData) -> dict[str, str]:
    """One hash per part: ``X``, ``layers/<k>``, ``obs``, ``var``, ``obsm/<k>``, ``varm/<k>``,
    ``obsp/<k>``, ``varp/<k>``, ``uns/<k>``, ``obs_names``, ``var_names``, ``shape``."""
    parts = {
        "X": _array_hash(adata.X),
        "obs": _frame_hash(adata.obs),
        "var": _frame_hash(adata.var),
        "obs_names": repr(list(adata.obs_names)),
        "var_names": repr(list(adata.var_names)),
        "shape": repr(adata.shape),
    }
    for name in ("layers", "obsm", "varm", "obsp", "varp"):
        for key, value in getattr(adata, name).items():
            parts[f"{name}/{key}"] = _array_hash(value)
    for key, value in adata.uns.items():
        parts[f"uns/{key}"] = _uns_hash(value)
    return parts


def changed(before: dict[str, str], after: dict[str, str]) -> set[str]:
    """Parts added, removed or different."""
    return {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
