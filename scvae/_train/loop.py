"""The training loop: plain PyTorch optimisation of the mean-field ELBO of the Pyro model.

One step: Pyro traces the guide, replays the model against it, and
:func:`~scvae._train.loss.mean_field_loss` adds the observed log-likelihood and the analytic
KL of each latent site; a torch optimiser updates the module's own parameters. No
``pyro.param`` store, no Lightning, no JIT. The loop works on any
:class:`~scvae._batches.minibatch.Source` (rows in memory or blocks of a file); what stops it
is in :mod:`scvae._train.guards`, what it writes to disk in :mod:`scvae._train.checkpoint`.
"""

from __future__ import annotations

import logging
import math
import time
import warnings

import numpy as np
import pyro
import torch
from tqdm.auto import tqdm

from .._batches.minibatch import Source
from .._utils import distributed as ddp
from .._vae.module import SCVAEModule
from .checkpoint import Checkpointing, TrainState
from .guards import (
    EarlyStopping,
    NonFiniteLossError,
    non_finite_error,
    parameters_finite,
    restored,
    snapshot,
)
from .heap import steady_heap
from .loss import evaluate_elbo, kl_weight_at, mean_field_loss
from .loss import step_loss as _step_loss

logger = logging.getLogger(__name__)

__all__ = [
    "NonFiniteLossError",
    "adam",
    "evaluate_elbo",
    "kl_weight_at",
    "mean_field_loss",
    "train",
]

HISTORY_KEYS = ("train_loss", "validation_elbo", "kl_weight", "epoch_seconds", "training_seconds")


def adam(parameters, *, lr: float) -> torch.optim.Adam:
    """Adam with its fused kernel where torch has one for the parameters' device (one pass
    over each parameter instead of about ten; ``docs/speed.md``), the usual implementation
    elsewhere."""
    parameters = list(parameters)
    try:
        return torch.optim.Adam(parameters, lr=lr, fused=True)
    except (RuntimeError, ValueError, TypeError):  # no fused kernel for this device or dtype
        return torch.optim.Adam(parameters, lr=lr)


def train(
    module: SCVAEModule,
    train_source: Source,
    validation_source: Source | None = None,
    *,
    max_epochs: int,
    lr: float = 1e-3,
    beta: float = 1.0,
    kl_warmup_epochs: float = 0.0,
    early_stopping: bool = True,
    patience: int = 20,
    elbo_tolerance: float = 0.0,
    progress: bool = True,
    checkpointing: Checkpointing | None = None,
) -> dict[str, list[float]]:
    """Fit ``module`` by stochastic variational inference; returns the per-epoch history.

    Early stopping watches the validation ELBO once the KL warm-up is over, stops after
    ``patience`` epochs without improvement, and restores the best parameters; with
    ``elbo_tolerance`` > 0, those of the latest epoch within that fraction of the best
    (:class:`~scvae._train.guards.EarlyStopping`).

    Guards: the loss of every step is kept on the device and checked once per epoch (no
    per-step host sync); a NaN or infinite loss or parameter restores the parameters of the
    end of the last finite epoch and raises :class:`NonFiniteLossError` naming the epoch, the
    step and the cells of its minibatch. A ``KeyboardInterrupt`` ends training early with a
    warning: the parameters of the best (early stopping) or last complete epoch are kept and
    the history gets ``interrupted_at_epoch``. With ``checkpointing``, the full training
    state is written every ``checkpointing.every`` epochs, and training continues from
    ``checkpointing.resume_state`` when one is given.

    Inside a ``torch.distributed`` process group the loss runs through DistributedDataParallel
    (gradients all-reduced each step); each rank's sources hold its own share of the cells and
    the same number of minibatches. The training loss and validation ELBO are all-reduced, so
    every rank makes the same early-stopping decision; only rank 0 shows progress.

    Returns
    -------
    History with ``train_loss`` (the training objective per cell, the negative beta-weighted
    ELBO), ``validation_elbo`` (exact ELBO per cell, if validating), ``kl_weight`` and
    ``epoch_seconds`` (training steps and validation) and ``training_seconds`` (the
    training steps alone), one entry per completed epoch; ``interrupted_at_epoch`` (one value)
    after an interrupt.
    """
    distributed = ddp.is_distributed()
    step_loss = ddp.wrap_for_training(module, _step_loss)
    # A query mapping trains its new batches only (``scvae._vae.surgery.freeze_reference``).
    optimizer = adam([p for p in module.parameters() if p.requires_grad], lr=lr)
    constant = train_source.log_factorial_per_cell()
    history: dict[str, list[float]] = {key: [] for key in HISTORY_KEYS}
    stopping = EarlyStopping(patience, kl_warmup_epochs, early_stopping, elbo_tolerance)
    start = 0
    resume = checkpointing.resume_state if checkpointing is not None else None
    if resume is not None:
        start = _resume(resume, module, optimizer, history, stopping, train_source)
    last_state = snapshot(module)
    bar = tqdm(
        range(start, max_epochs),
        initial=start,
        total=max_epochs,
        desc="scvae",
        unit="epoch",
        disable=not progress or ddp.rank_world()[0] > 0,
    )
    module.train()
    epoch = start
    try:
        with pyro.validation_enabled(False), steady_heap():
            for epoch in bar:
                started = time.perf_counter()
                losses, kl_weight = _train_epoch(
                    step_loss, optimizer, train_source, epoch, beta, kl_warmup_epochs
                )
                # The one host sync of the epoch (with DDP: one all-reduce, so that every
                # rank stops together).
                finite = bool(torch.isfinite(losses).all() & parameters_finite(module))
                training_seconds = time.perf_counter() - started  # steps done: just synced
                total = float(losses.sum())
                if distributed:
                    summed = ddp.all_reduce_sum(np.array([total, 0.0 if finite else 1.0]))[0]
                    total, finite = summed[0] / ddp.rank_world()[1], summed[1] == 0
                if not finite:
                    module.load_state_dict(last_state)
                    raise non_finite_error(train_source, losses, epoch, lr)
                record = {"train_loss": total / len(losses) + constant, "kl_weight": kl_weight}
                postfix = {"loss": f"{record['train_loss']:.1f}"}
                stop = False
                if validation_source is not None:
                    val = _validate(module, validation_source, epoch, lr, last_state)
                    record["validation_elbo"] = val
                    postfix["val_elbo"] = f"{val:.1f}"
                    stop = stopping.update(epoch, val, module)
                record["epoch_seconds"] = time.perf_counter() - started
                record["training_seconds"] = training_seconds
                for key, value in record.items():
                    history[key].append(value)
                last_state = snapshot(module)
                writes = checkpointing is not None and ddp.rank_world()[0] == 0
                if writes and checkpointing.due(epoch + 1):
                    state = TrainState(
                        epoch + 1,
                        last_state,
                        optimizer.state_dict(),
                        history,
                        stopping.best_elbo,
                        stopping.best_epoch,
                        stopping.stale,
                        stopping.best_state,
                        _random_state(train_source),
                        stopping.peak_elbo,
                    )
                    checkpointing.write(state)
                bar.set_postfix(postfix, refresh=False)
                if stop:
                    logger.info(
                        "early stopping at epoch %d: keeping epoch %d (validation ELBO %.2f, "
                        "best %.2f)",
                        epoch,
                        stopping.best_epoch,
                        stopping.best_elbo,
                        stopping.peak_elbo,
                    )
                    break
    except KeyboardInterrupt:
        kept = "best" if stopping.keeps_best() else "last complete"
        warnings.warn(
            f"training interrupted during epoch {epoch}: keeping the parameters of the "
            f"{kept} epoch ({len(history['train_loss'])} epochs completed); "
            "history['interrupted_at_epoch'] records it",
            RuntimeWarning,
            stacklevel=2,
        )
        history["interrupted_at_epoch"] = [float(epoch)]
        module.load_state_dict(last_state)
    finally:
        bar.close()
    if stopping.keeps_best():
        module.load_state_dict(stopping.best_state)
    ddp.assert_in_sync(module)
    module.eval()
    if not history["validation_elbo"]:
        del history["validation_elbo"]
    return history


def _train_epoch(
    step_loss: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    source: Source,
    epoch: int,
    beta: float,
    warmup_epochs: float,
) -> tuple[torch.Tensor, float]:
    """One pass of optimiser steps over ``source``; the losses stay on the device."""
    steps_per_epoch = max(len(source), 1)
    losses = torch.zeros(steps_per_epoch, device=source.device)
    kl_weight = beta
    for step, batch in enumerate(source):
        kl_weight = kl_weight_at(
            epoch + (step + 1) / steps_per_epoch, beta=beta, warmup_epochs=warmup_epochs
        )
        loss = step_loss(batch, kl_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses[step] = loss.detach()
    return losses, kl_weight


def _validate(
    module: SCVAEModule, source: Source, epoch: int, lr: float, last_state: dict
) -> float:
    """The held-out ELBO after ``epoch``; a non-finite one restores the last finite state."""
    val = evaluate_elbo(module, source, distributed=ddp.is_distributed())
    if not math.isfinite(val):
        module.load_state_dict(last_state)
        raise NonFiniteLossError(
            f"the held-out ELBO became {val} at epoch {epoch}; the parameters were restored "
            f"to {restored(epoch)}. Try a lower lr (now {lr:g}) and check the cells for "
            "extreme counts.",
            epoch=epoch,
            step=None,
            cells=[],
        )
    return val


def _resume(
    state: TrainState,
    module: SCVAEModule,
    optimizer: torch.optim.Optimizer,
    history: dict[str, list[float]],
    stopping: EarlyStopping,
    source: Source,
) -> int:
    """Put the module, optimiser, history, early stopping and random streams where the
    checkpoint left them; returns the epoch to continue from."""
    module.load_state_dict(state.module)
    optimizer.load_state_dict(state.optimizer)
    history.update({k: list(v) for k, v in state.history.items()})
    stopping.best_elbo, stopping.best_epoch = state.best_elbo, state.best_epoch
    stopping.stale, stopping.best_state = state.stale, state.best_state
    stopping.peak_elbo = max(state.peak_elbo, state.best_elbo)
    _set_random_state(state.random, source)
    return state.epoch


def _random_state(source: Source) -> dict:
    state = {**source.random_state(), "torch": torch.get_rng_state()}
    if source.device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(source.device)
    return state


def _set_random_state(state: dict, source: Source) -> None:
    source.set_random_state(state)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and source.device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], source.device)
