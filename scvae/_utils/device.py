"""Which device to compute on, and which CUDA devices a random-state fork must cover."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["cuda_devices", "resolve_device", "seeded"]


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> ``cuda`` when available, else ``cpu``; other values as given."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(
            f"device={device!r} is not a device: use 'auto', 'cpu', 'cuda' or 'cuda:0'"
        ) from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"device={str(device)!r} was asked for but CUDA is not available: "
            "use device='cpu' (or 'auto')"
        )
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device={str(device)!r} is not supported: use 'cpu' or 'cuda'")
    return device


def cuda_devices(device: torch.device) -> list[int]:
    """The CUDA devices whose random state ``torch.random.fork_rng`` must save for ``device``."""
    return [device.index or 0] if device.type == "cuda" else []


@contextlib.contextmanager
def seeded(seed: int, device: torch.device | str = "cpu") -> Iterator[None]:
    """Run the block with torch's random state seeded by ``seed`` (CPU and ``device``), and
    give the caller's random state back afterwards.

    Examples
    --------
    >>> with seeded(0):
    ...     a = torch.rand(2)
    >>> with seeded(0):
    ...     b = torch.rand(2)
    >>> bool((a == b).all())
    True
    """
    with torch.random.fork_rng(devices=cuda_devices(torch.device(device))):
        torch.manual_seed(seed)
        yield
