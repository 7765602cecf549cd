"""Checkpoints of a long fit on disk, and resuming from them.

A checkpoint holds everything the training loop needs to continue exactly where it was: the
parameters, the optimiser state, the history, the early-stopping state and the random states
(numpy shuffling, torch sampling). It is written atomically every ``every`` epochs and read
with ``torch.load(weights_only=True)`` (tensors and plain containers only). A fit resumed from
a checkpoint gives, on CPU, the same parameters bit for bit as one that was never stopped.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from .._utils.atomic import write_file

logger = logging.getLogger(__name__)

__all__ = ["Checkpointing", "TrainState", "fit_identity"]

FILE = "checkpoint.pt"


@dataclass
class TrainState:
    """Everything the training loop needs to continue exactly where it was, after ``epoch``
    completed epochs: what a checkpoint holds (besides the fit's identity)."""

    epoch: int
    module: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    history: dict[str, list[float]]
    best_elbo: float
    best_epoch: int
    stale: int
    best_state: dict[str, torch.Tensor] | None
    random: dict[str, Any]
    peak_elbo: float = -math.inf  # absent from checkpoints written before it existed

    def to_dict(self) -> dict[str, Any]:
        # Not dataclasses.asdict: that would deep-copy every tensor.
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> TrainState:
        return cls(**{f.name: state[f.name] for f in fields(cls) if f.name in state})


@dataclass
class Checkpointing:
    """Where and how often to checkpoint, what the fit is, and the state to resume from."""

    folder: Path
    every: int
    identity: dict[str, Any]
    resume_state: TrainState | None = None

    @property
    def path(self) -> Path:
        return Path(self.folder) / FILE

    def due(self, epochs_done: int) -> bool:
        return epochs_done % self.every == 0

    def write(self, state: TrainState) -> None:
        buffer = io.BytesIO()
        torch.save({"identity": self.identity, **state.to_dict()}, buffer)
        write_file(self.path, buffer.getvalue())
        logger.info("checkpoint after epoch %d written to %s", state.epoch, self.path)

    def read(self) -> TrainState | None:
        """The saved state of this same fit, ``None`` if there is none; an error if the
        checkpoint belongs to a fit with other data or options."""
        if not self.path.is_file():
            logger.warning("no checkpoint in %s: training starts from the beginning", self.folder)
            return None
        state = torch.load(self.path, map_location="cpu", weights_only=True)
        saved = state.get("identity", {})
        differ = sorted(
            k for k in self.identity.keys() | saved.keys() if saved.get(k) != self.identity.get(k)
        )
        if differ:
            raise ValueError(
                f"{self.path} is a checkpoint of another fit (differs in {differ}): resume "
                "with the same data and options (pass kl_warmup explicitly if max_epochs "
                "changed), or choose another checkpoint_dir"
            )
        logger.info("resuming from %s after epoch %d", self.path, state["epoch"])
        return TrainState.from_dict(state)


def fit_identity(gene_names: list[str], n_cells: int, settings: dict[str, Any]) -> dict[str, Any]:
    """What must match for a checkpoint to be resumed: the data's shape and genes, and every
    option that changes training (not ``max_epochs``, ``patience`` or the progress bar)."""
    free = {"max_epochs", "patience", "early_stopping", "progress", "checkpoint_dir"}
    free |= {"checkpoint_every", "resume", "device"}
    genes = hashlib.sha256("\n".join(gene_names).encode()).hexdigest()
    options = {k: v for k, v in settings.items() if k not in free}
    return {"n_cells": n_cells, "genes_sha256": genes, **{k: str(v) for k, v in options.items()}}
