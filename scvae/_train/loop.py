"""The training loop: plain PyTorch optimisation of the mean-field ELBO of the Pyro model.

One step: Pyro traces the guide, replays the model against it, and :func:`mean_field_loss`
adds the observed log-likelihood and the analytic KL of each latent site; a torch optimiser
updates the module's own parameters. No ``pyro.param`` store, no Lightning, no JIT.
"""

from __future__ import annotations

import logging
import math
import time
import warnings

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.poutine.subsample_messenger import _Subsample
from torch.distributions import kl_divergence
from tqdm.auto import tqdm

from .._batches.minibatch import Source
from .._utils import distributed as ddp
from .._vae.module import SCVAEModule
from .checkpoint import Checkpointing
from .heap import steady_heap

logger = logging.getLogger(__name__)

__all__ = [
    "NonFiniteLossError",
    "adam",
    "evaluate_elbo",
    "kl_weight_at",
    "mean_field_loss",
    "train",
]


def kl_weight_at(epoch: float, *, beta: float, warmup_epochs: float) -> float:
    """KL weight after ``epoch`` epochs: linear warm-up from 0 to ``beta`` (beta-VAE).

    Pyro's ``poutine.scale`` needs a positive scale, so callers pass the epoch *after* the
    current step (never 0)."""
    if warmup_epochs <= 0:
        return beta
    return beta * min(1.0, epoch / warmup_epochs)


def mean_field_loss(model, guide, *args, **kwargs) -> torch.Tensor:
    """Negative ELBO with analytic KL terms: what ``pyro.infer.TraceMeanField_ELBO``'s
    ``differentiable_loss`` computes for one particle, without its bookkeeping.

    The guide is traced, the model replayed against the guide's samples; each observed site
    adds its (scaled, masked) log-probability and each latent site subtracts
    ``KL(q || p)`` scaled as in the guide. A test checks equality with Pyro's estimator.
    Pyro's bookkeeping around the same computation (score parts of every site, subsample
    pruning, NaN checks) costs about 10 % of a CPU step.
    """
    guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
        *args, **kwargs
    )
    elbo = 0.0
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample" or isinstance(site["fn"], _Subsample):
            continue
        if site["is_observed"]:
            log_p = site["fn"].log_prob(site["value"])
            elbo = elbo + scale_and_mask(log_p, site["scale"], site["mask"]).sum()
        else:
            q = guide_trace.nodes[name]
            kl = kl_divergence(q["fn"], site["fn"])
            elbo = elbo - scale_and_mask(kl, q["scale"], q["mask"]).sum()
    return -elbo


def _step_loss(module: SCVAEModule, batch, kl_weight: float, exact: bool) -> torch.Tensor:
    loss = mean_field_loss(
        module.model,
        module.guide,
        **batch._asdict(),
        kl_weight=kl_weight,
        include_constant=exact,
    )
    return loss / batch.x.shape[0]


@torch.no_grad()
def evaluate_elbo(module: SCVAEModule, source: Source, *, distributed: bool = False) -> float:
    """Mean ELBO per cell on ``source`` (exact likelihood, KL weight 1, one z sample).

    ``distributed``: each rank holds part of the cells; the mean is over all ranks' cells."""
    was_training = module.training
    module.eval()
    total, n = 0.0, 0
    with pyro.validation_enabled(False):
        for batch in source:
            total += float(_step_loss(module, batch, 1.0, True)) * batch.x.shape[0]
            n += batch.x.shape[0]
    module.train(was_training)
    if distributed:
        total, n = ddp.all_reduce_sum(np.array([total, n], dtype=np.float64))[0]
    return -total / max(n, 1)


class NonFiniteLossError(FloatingPointError):
    """The training loss (or the parameters) became NaN or infinite.

    Attributes
    ----------
    epoch, step
        Where it happened (0-based; ``step`` counts minibatches within the epoch, ``None``
        when the loss was finite but the parameters were not).
    cells
        Names of the cells of that minibatch.
    model
        The model at its last finite state (set by :func:`scvae.fit`), or ``None``.
    """

    def __init__(self, message: str, *, epoch: int, step: int | None, cells: list[str]) -> None:
        super().__init__(message)
        self.epoch, self.step, self.cells = epoch, step, cells
        self.model = None


def adam(parameters, *, lr: float) -> torch.optim.Adam:
    """Adam with its fused kernel where torch has one for the parameters' device (one pass
    over each parameter instead of about ten: on 2 CPU cores 0.25 ms against 1 ms per update
    of the default model's 0.5 M parameters), the usual implementation elsewhere."""
    parameters = list(parameters)
    try:
        return torch.optim.Adam(parameters, lr=lr, fused=True)
    except (RuntimeError, ValueError, TypeError):  # no fused kernel for this device or dtype
        return torch.optim.Adam(parameters, lr=lr)


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    # A fresh copy, assigned only once complete: an interrupt during the copy keeps the old one.
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _parameters_finite(module: torch.nn.Module) -> torch.Tensor:
    return torch.stack([torch.isfinite(p).all() for p in module.parameters()]).all()


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


def _restored(epoch: int) -> str:
    return "their initial values" if epoch == 0 else f"the end of epoch {epoch - 1}"


def _non_finite_error(
    source: Source, losses: torch.Tensor, epoch: int, lr: float
) -> NonFiniteLossError:
    bad = torch.nonzero(~torch.isfinite(losses)).flatten()
    step = int(bad[0]) if bad.numel() else None
    if step is None:  # finite loss, non-finite update: the last step's gradient was
        step_text, batch = "the update of the last step", len(losses) - 1
        value = "finite"
    else:
        step_text, batch, value = f"step {step}", step, f"{float(losses[step])}"
    names = source.data.cell_names
    cells = [names[i] for i in source.cells_of_step(batch)]
    shown = ", ".join(map(repr, cells[:5])) + (" ..." if len(cells) > 5 else "")
    message = (
        f"training became non-finite at epoch {epoch}, {step_text} (loss {value}; "
        f"minibatch of cells {shown}). The parameters were restored to {_restored(epoch)}. "
        f"Try a lower lr (now {lr:g}) or a smaller beta, and check those cells for extreme "
        "counts."
    )
    return NonFiniteLossError(message, epoch=epoch, step=step, cells=cells)


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
    progress: bool = True,
    checkpointing: Checkpointing | None = None,
) -> dict[str, list[float]]:
    """Fit ``module`` by stochastic variational inference; returns the per-epoch history.

    Early stopping watches the validation ELBO once the KL warm-up is over, stops after
    ``patience`` epochs without improvement, and restores the best parameters.

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
    optimizer = adam(module.parameters(), lr=lr)
    constant = train_source.log_factorial_per_cell()
    steps_per_epoch = max(len(train_source), 1)
    history: dict[str, list[float]] = {
        "train_loss": [],
        "validation_elbo": [],
        "kl_weight": [],
        "epoch_seconds": [],
        "training_seconds": [],
    }
    best_elbo, best_state, best_epoch, stale = -math.inf, None, -1, 0
    start = 0
    resume = checkpointing.resume_state if checkpointing is not None else None
    if resume is not None:
        module.load_state_dict(resume["module"])
        optimizer.load_state_dict(resume["optimizer"])
        history = {**history, **{k: list(v) for k, v in resume["history"].items()}}
        best_elbo, best_epoch, stale = resume["best_elbo"], resume["best_epoch"], resume["stale"]
        best_state, start = resume["best_state"], resume["epoch"]
        _set_random_state(resume["random"], train_source)
    last_state = _snapshot(module)
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
                losses = torch.zeros(steps_per_epoch, device=train_source.device)
                for step, batch in enumerate(train_source):
                    kl_weight = kl_weight_at(
                        epoch + (step + 1) / steps_per_epoch,
                        beta=beta,
                        warmup_epochs=kl_warmup_epochs,
                    )
                    loss = step_loss(batch, kl_weight)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    losses[step] = loss.detach()
                # The one host sync of the epoch (with DDP: one all-reduce, so that every
                # rank stops together).
                finite = bool(torch.isfinite(losses).all() & _parameters_finite(module))
                training_seconds = time.perf_counter() - started  # steps done: just synced
                total = float(losses.sum())
                if distributed:
                    summed = ddp.all_reduce_sum(np.array([total, 0.0 if finite else 1.0]))[0]
                    total, finite = summed[0] / ddp.rank_world()[1], summed[1] == 0
                if not finite:
                    module.load_state_dict(last_state)
                    raise _non_finite_error(train_source, losses, epoch, lr)
                record = {
                    "train_loss": total / steps_per_epoch + constant,
                    "kl_weight": kl_weight,
                }
                postfix = {"loss": f"{record['train_loss']:.1f}"}
                stop = False
                if validation_source is not None:
                    val = evaluate_elbo(module, validation_source, distributed=distributed)
                    if not math.isfinite(val):
                        module.load_state_dict(last_state)
                        raise NonFiniteLossError(
                            f"the held-out ELBO became {val} at epoch {epoch}; the parameters "
                            f"were restored to {_restored(epoch)}. Try a lower lr (now "
                            f"{lr:g}) and check the cells for extreme counts.",
                            epoch=epoch,
                            step=None,
                            cells=[],
                        )
                    record["validation_elbo"] = val
                    postfix["val_elbo"] = f"{val:.1f}"
                    warm = epoch + 1 >= kl_warmup_epochs
                    if warm and val > best_elbo:
                        best_elbo, best_epoch, stale = val, epoch, 0
                        best_state = _snapshot(module)
                    elif warm:
                        stale += 1
                    stop = early_stopping and stale >= patience
                record["epoch_seconds"] = time.perf_counter() - started
                record["training_seconds"] = training_seconds
                for key, value in record.items():
                    history[key].append(value)
                last_state = _snapshot(module)
                writes = checkpointing is not None and ddp.rank_world()[0] == 0
                if writes and checkpointing.due(epoch + 1):
                    checkpointing.write(
                        {
                            "epoch": epoch + 1,
                            "module": last_state,
                            "optimizer": optimizer.state_dict(),
                            "history": history,
                            "best_elbo": best_elbo,
                            "best_epoch": best_epoch,
                            "stale": stale,
                            "best_state": best_state,
                            "random": _random_state(train_source),
                        }
                    )
                bar.set_postfix(postfix, refresh=False)
                if stop:
                    logger.info(
                        "early stopping at epoch %d: best validation ELBO %.2f at epoch %d",
                        epoch,
                        best_elbo,
                        best_epoch,
                    )
                    break
    except KeyboardInterrupt:
        kept = "best" if early_stopping and best_state is not None else "last complete"
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
    if early_stopping and best_state is not None:
        module.load_state_dict(best_state)
    ddp.assert_in_sync(module)
    module.eval()
    if not history["validation_elbo"]:
        del history["validation_elbo"]
    return history
