"""What every tool that writes into a user's AnnData checks first, and how it says what it wrote.

A tool writes only to a real AnnData (not a view, whose writes anndata would put into a
copy), never onto the layers it reads, and logs each key it adds or replaces.
"""

from __future__ import annotations

import logging

from anndata import AnnData

logger = logging.getLogger(__name__)

__all__ = ["check_outputs_not_read", "check_writable", "log_written"]


def check_outputs_not_read(written: list[str], *, layer, mask_layer) -> None:
    """The layers a call writes must not be the layers it reads: ``key_added`` chosen so
    that the output lands on the counts (or the mask) would replace the user's data."""
    for role, read in (("layer", layer), ("mask_layer", mask_layer)):
        if read in written:
            raise ValueError(
                f"key_added would write adata.layers[{read!r}], the {role} this call reads: "
                "choose another key_added"
            )


def log_written(adata: AnnData, key: str) -> None:
    """Layers named ``<key_added>_imputed`` (``_lower``, ``_upper``, ``_denoised``) are
    scvae's outputs: an existing one, an earlier result, is replaced; say so."""
    if key in adata.layers:
        logger.info("replaced %r (adata.layers), the result of an earlier call", key)
    else:
        logger.info("added %r (adata.layers)", key)


def check_writable(adata: AnnData, function: str, writes: str = "layers") -> None:
    """Refuse anything but an AnnData, and a view: the layers would go into a copy anndata
    makes of it, and a call like ``impute(adata[cells], model)`` would lose them without a
    word."""
    if not isinstance(adata, AnnData):
        raise TypeError(f"expected an AnnData, got {type(adata).__name__}")
    if adata.is_view:
        raise ValueError(
            f"adata is a view (e.g. adata[cells]): {function} writes {writes}, which anndata "
            "would put into a copy of the view, and the result would be lost. Make the "
            f"subset an AnnData of its own first: sub = adata[cells].copy(); "
            f"scvae.{function}(sub, model)"
        )
