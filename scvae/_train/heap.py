"""Keep freed memory in the process while training, so that steps do not page-fault (glibc).

Each training step allocates and frees the same large temporaries (a 512-cell minibatch by
2000 genes is 4 MB per tensor, dozens per step). glibc's ``malloc`` hands freed memory at
the top of its heap back to the system once it exceeds a threshold, and serves large
requests with fresh ``mmap`` pages; either way the next step touches new pages, and every
page is a fault the kernel must zero-fill, thousands per step at large batches
(``docs/speed.md``, measured building blocks).

:func:`steady_heap` raises both thresholds for the duration of training, so that freed
blocks are reused by the next step, then sets them to the values glibc's own adaptive
thresholds reach in a long-running process (32 MB for ``mmap``, 64 MB for trimming) and
returns the free memory to the system with ``malloc_trim``. Peak memory is unchanged: the
memory kept is memory the step allocates again. Elsewhere (macOS, Windows, musl) it does
nothing. Set the environment variable ``SCVAE_STEADY_HEAP=0`` to leave ``malloc`` alone.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["steady_heap"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_TRAINING = {_M_MMAP_THRESHOLD: 1 << 30, _M_TRIM_THRESHOLD: (1 << 31) - 1}
# Where glibc's dynamic thresholds saturate on 64-bit systems (DEFAULT_MMAP_THRESHOLD_MAX).
_AFTERWARDS = {_M_MMAP_THRESHOLD: 32 << 20, _M_TRIM_THRESHOLD: 64 << 20}


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux") or os.environ.get("SCVAE_STEADY_HEAP") == "0":
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 (present in glibc only)
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except (OSError, AttributeError):
        return None


def _set(libc: ctypes.CDLL, values: dict[int, int]) -> bool:
    return all(libc.mallopt(ctypes.c_int(k), ctypes.c_int(v)) == 1 for k, v in values.items())


@contextmanager
def steady_heap() -> Iterator[None]:
    """Within the block, ``malloc`` keeps freed memory for reuse (glibc only; see module).

    Examples
    --------
    >>> with steady_heap():
    ...     pass  # training steps
    """
    libc = _glibc()
    if libc is None or not _set(libc, _TRAINING):
        yield
        return
    try:
        yield
    finally:
        _set(libc, _AFTERWARDS)
        libc.malloc_trim(ctypes.c_size_t(0))
