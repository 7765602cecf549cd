"""Data-parallel training with PyTorch's own ``torch.distributed`` and DistributedDataParallel.

scvae does not start processes: ``torchrun`` (or the user) does, and calls
``torch.distributed.init_process_group``. Everything here is a no-op in a single process, so
the same code path trains on one CPU, one GPU or many. Each rank reads its own share of the
data; DDP all-reduces the gradients in ``backward``; per-epoch numbers that decide anything
(validation ELBO for early stopping) are all-reduced so that every rank decides the same.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from .device import cuda_devices

logger = logging.getLogger(__name__)

__all__ = [
    "LossModule",
    "all_reduce_sum",
    "init_from_environment",
    "is_distributed",
    "rank_world",
]


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_world() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` outside a process group."""
    if not is_distributed():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def _reduce_device() -> torch.device:
    # NCCL reduces CUDA tensors only; gloo reduces CPU tensors.
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(*arrays: np.ndarray) -> list[np.ndarray]:
    """Element-wise sums of each array over all ranks (the arrays themselves outside DDP).

    Examples
    --------
    >>> (total,) = all_reduce_sum(np.ones(3))
    >>> total
    array([1., 1., 1.])
    """
    if not is_distributed():
        return list(arrays)
    device = _reduce_device()
    flat = torch.from_numpy(np.concatenate([np.ravel(a).astype(np.float64) for a in arrays]))
    flat = flat.to(device)
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat = flat.cpu().numpy()
    out, offset = [], 0
    for a in arrays:
        out.append(flat[offset : offset + a.size].reshape(a.shape))
        offset += a.size
    return out


def all_gather_rows(part: np.ndarray, rows: np.ndarray, n_rows: int) -> np.ndarray:
    """Assemble a ``(n_rows, ...)`` array from each rank's ``part`` for its ``rows``."""
    if not is_distributed():
        full = np.zeros((n_rows, *part.shape[1:]), dtype=part.dtype)
        full[rows] = part
        return full
    full = np.zeros((n_rows, *part.shape[1:]), dtype=np.float64)
    full[rows] = part
    (full,) = all_reduce_sum(full)
    return full.astype(part.dtype)


class LossModule(nn.Module):
    """``forward(batch, kl_weight)`` returns the training loss of ``module`` on ``batch``.

    DistributedDataParallel synchronises the gradients of what runs inside its wrapped
    module's ``forward``; the Pyro model and guide are methods, not ``forward``, so this thin
    wrapper routes the whole loss through one ``forward`` call.
    """

    def __init__(self, module: nn.Module, loss_fn) -> None:
        super().__init__()
        self.module = module
        self.loss_fn = loss_fn

    def forward(self, batch, kl_weight: float) -> torch.Tensor:
        return self.loss_fn(self.module, batch, kl_weight, False)


def wrap_for_training(module: nn.Module, loss_fn) -> nn.Module:
    """The loss module, wrapped in DistributedDataParallel inside a process group.

    DDP copies rank 0's parameters to every rank here, so all ranks start equal.
    """
    wrapper = LossModule(module, loss_fn)
    if not is_distributed():
        return wrapper
    device = next(module.parameters()).device
    return nn.parallel.DistributedDataParallel(wrapper, device_ids=cuda_devices(device) or None)


def assert_in_sync(module: nn.Module) -> None:
    """Raise unless every rank holds exactly the same parameters (DDP keeps them equal: a
    difference means the ranks fell out of step, and no rank's model can be trusted)."""
    if not is_distributed():
        return
    device = _reduce_device()
    flat = torch.cat([p.detach().reshape(-1) for p in module.parameters()]).to(device)
    high, low = flat.clone(), flat.clone()
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    if not torch.equal(high, low):
        raise RuntimeError("the ranks' parameters differ after training: ranks out of step")
    logger.info("parameters identical on all %d ranks", dist.get_world_size())


def init_from_environment() -> bool:
    """Join the process group that ``torchrun`` describes in the environment, if any.

    Backend ``nccl`` when CUDA is available (each rank on GPU ``LOCAL_RANK``), else ``gloo``.
    Returns whether a group of more than one process was joined.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or is_distributed():
        return is_distributed()
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend=backend)
    logger.info("rank %d of %d joined the %s process group", dist.get_rank(), world, backend)
    return True


def local_device() -> torch.device:
    """This rank's GPU under torchrun with CUDA, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def barrier() -> None:
    if is_distributed():
        dist.barrier()
