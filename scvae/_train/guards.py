"""What stops training: a loss or parameters that are no longer finite, and early stopping.

A NaN or infinite loss restores the parameters of the last finite epoch and raises
:class:`NonFiniteLossError`, naming the epoch, the step and the cells of its minibatch.
:class:`EarlyStopping` keeps the best held-out ELBO after the KL warm-up (or the latest
within a tolerance of it) and the parameters that gave it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .._batches.minibatch import Source

__all__ = [
    "EarlyStopping",
    "NonFiniteLossError",
    "non_finite_error",
    "parameters_finite",
    "restored",
    "snapshot",
]


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


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    # A fresh copy, assigned only once complete: an interrupt during the copy keeps the old one.
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def parameters_finite(module: torch.nn.Module) -> torch.Tensor:
    return torch.stack([torch.isfinite(p).all() for p in module.parameters()]).all()


def restored(epoch: int) -> str:
    return "their initial values" if epoch == 0 else f"the end of epoch {epoch - 1}"


def non_finite_error(
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
        f"minibatch of cells {shown}). The parameters were restored to {restored(epoch)}. "
        f"Try a lower lr (now {lr:g}) or a smaller beta, and check those cells for extreme "
        "counts."
    )
    return NonFiniteLossError(message, epoch=epoch, step=step, cells=cells)


@dataclass
class EarlyStopping:
    """The best held-out ELBO once the KL warm-up is over, and the patience left.

    With ``tolerance`` > 0 the epoch kept (:attr:`best_epoch`, :attr:`best_elbo`) is the
    latest whose held-out ELBO is within that fraction of the highest so far
    (:attr:`peak_elbo`), and patience counts epochs below that band: a fit whose objective
    has a term besides the ELBO (batch alignment) goes on improving it on a plateau of the
    ELBO. ``enabled=False`` still records the kept epoch but never asks to stop.
    :attr:`best_state` holds the parameters of :attr:`best_epoch`.
    """

    patience: int
    warmup_epochs: float
    enabled: bool
    tolerance: float = 0.0
    peak_elbo: float = -math.inf
    best_elbo: float = -math.inf
    best_epoch: int = -1
    stale: int = 0
    best_state: dict[str, torch.Tensor] | None = None

    def update(self, epoch: int, elbo: float, module: torch.nn.Module) -> bool:
        """Record the held-out ELBO after ``epoch``; True when training should stop."""
        if epoch + 1 >= self.warmup_epochs:
            self.peak_elbo = max(self.peak_elbo, elbo)
            if elbo >= self.peak_elbo - self.tolerance * abs(self.peak_elbo):
                self.best_elbo, self.best_epoch, self.stale = elbo, epoch, 0
                self.best_state = snapshot(module)
            else:
                self.stale += 1
        return self.enabled and self.stale >= self.patience

    def keeps_best(self) -> bool:
        """Whether training ends with the best epoch's parameters (else the last epoch's)."""
        return self.enabled and self.best_state is not None
