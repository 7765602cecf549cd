"""Covariates beyond the batch: categorical and continuous ``obs`` columns as one design matrix.

``fit(categorical_covariate_keys=[...], continuous_covariate_keys=[...])`` reads these columns
into one float32 matrix per cell, ``(cells, width)``: a one-hot block per categorical column
(its categories in the order the fit saw them) and one column per continuous one, standardised
with the training cells' mean and standard deviation. The model keeps the
:class:`CovariateLayout` (keys, categories, means, deviations), so new cells are read into the
same columns; a category it never saw, a missing column or a non-finite value is refused with a
message that names it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from .checks import obs_codes

__all__ = ["CovariateLayout", "covariate_matrix"]


@dataclass(frozen=True)
class CovariateLayout:
    """Which ``obs`` columns make the covariate matrix, and how.

    Attributes
    ----------
    categorical_keys, continuous_keys
        The ``obs`` columns, in the order their blocks appear in the matrix.
    categories
        Per categorical key, its categories (the one-hot columns), as the fit saw them.
    means, scales
        Per continuous key, the training cells' mean and standard deviation (1 where the
        column was constant); new values are standardised with these.
    typical
        The training cells' mean row of the matrix (each category's frequency, 0 for the
        standardised continuous columns): the covariates of generated cells.

    Examples
    --------
    >>> layout = CovariateLayout(("donor",), ("pct_mito",), (("d1", "d2"),), (2.0,), (0.5,))
    >>> layout.width, layout.names()
    (3, ['donor=d1', 'donor=d2', 'pct_mito'])
    """

    categorical_keys: tuple[str, ...] = ()
    continuous_keys: tuple[str, ...] = ()
    categories: tuple[tuple[str, ...], ...] = ()
    means: tuple[float, ...] = ()
    scales: tuple[float, ...] = ()
    typical: tuple[float, ...] = ()

    @property
    def width(self) -> int:
        """Columns of the matrix: every category of every categorical key, and the
        continuous keys."""
        return sum(len(c) for c in self.categories) + len(self.continuous_keys)

    def names(self) -> list[str]:
        """A name per column: ``key=category`` for one-hot columns, the key otherwise."""
        one_hot = [
            f"{key}={category}"
            for key, categories in zip(self.categorical_keys, self.categories, strict=True)
            for category in categories
        ]
        return one_hot + list(self.continuous_keys)

    def to_dict(self) -> dict[str, Any]:
        """Plain lists, for the model's JSON config."""
        record = asdict(self)
        record["categories"] = [list(c) for c in self.categories]
        return {k: list(v) for k, v in record.items()}

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> CovariateLayout:
        return cls(
            tuple(record["categorical_keys"]),
            tuple(record["continuous_keys"]),
            tuple(tuple(c) for c in record["categories"]),
            tuple(float(m) for m in record["means"]),
            tuple(float(s) for s in record["scales"]),
            tuple(float(t) for t in record.get("typical", ())),
        )


def covariate_matrix(
    obs: pd.DataFrame,
    categorical_keys: tuple[str, ...] | list[str] = (),
    continuous_keys: tuple[str, ...] | list[str] = (),
    layout: CovariateLayout | None = None,
) -> tuple[np.ndarray | None, CovariateLayout | None]:
    """The covariate matrix of the cells of ``obs`` and its layout (``None, None`` without
    covariates).

    At fit time (``layout=None``) the categories, means and deviations come from ``obs``;
    for a trained model's ``layout`` the columns are read into its categories and scaled
    with its statistics, and the keys must be the layout's.

    Examples
    --------
    >>> obs = pd.DataFrame({"donor": ["a", "b", "a"], "mito": [1.0, 2.0, 3.0]})
    >>> matrix, layout = covariate_matrix(obs, ["donor"], ["mito"])
    >>> matrix.round(3).tolist()
    [[1.0, 0.0, -1.225], [0.0, 1.0, 0.0], [1.0, 0.0, 1.225]]
    """
    categorical_keys = tuple(categorical_keys)
    continuous_keys = tuple(continuous_keys)
    if layout is not None:
        categorical_keys, continuous_keys = layout.categorical_keys, layout.continuous_keys
    if not categorical_keys and not continuous_keys:
        return None, None
    blocks, categories = [], []
    for i, key in enumerate(categorical_keys):
        known = None if layout is None else list(layout.categories[i])
        codes, names = obs_codes(obs, key, known, "categorical_covariate_keys")
        blocks.append(np.eye(len(names), dtype=np.float32)[codes])
        categories.append(tuple(names))
    means, scales = [], []
    for i, key in enumerate(continuous_keys):
        values = _continuous_column(obs, key)
        if layout is None:
            mean, scale = float(values.mean()), float(values.std())
            scale = scale if scale > 0 else 1.0
        else:
            mean, scale = layout.means[i], layout.scales[i]
        blocks.append(((values - mean) / scale).astype(np.float32)[:, None])
        means.append(mean)
        scales.append(scale)
    matrix = np.ascontiguousarray(np.concatenate(blocks, axis=1))
    if layout is None:
        typical = tuple(float(v) for v in matrix.mean(axis=0))
        layout = CovariateLayout(
            categorical_keys,
            continuous_keys,
            tuple(categories),
            tuple(means),
            tuple(scales),
            typical,
        )
    return matrix, layout


def _continuous_column(obs: pd.DataFrame, key: str) -> np.ndarray:
    if key not in obs.columns:
        raise KeyError(
            f"continuous_covariate_keys: {key!r} is not a column of adata.obs "
            f"(available: {list(obs.columns)})"
        )
    column = obs[key]
    if (
        isinstance(column.dtype, pd.CategoricalDtype)
        or not pd.api.types.is_numeric_dtype(column.dtype)
        or pd.api.types.is_bool_dtype(column.dtype)
    ):
        raise TypeError(
            f"adata.obs[{key!r}] is {column.dtype}, not numbers: a continuous covariate must "
            "be a numeric column (pass a categorical one in categorical_covariate_keys)"
        )
    values = column.to_numpy(dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        raise ValueError(
            f"adata.obs[{key!r}] has {bad.size} missing or infinite values (e.g. at cell "
            f"{obs.index[bad[0]]!r}); a continuous covariate needs a finite value per cell"
        )
    return values
