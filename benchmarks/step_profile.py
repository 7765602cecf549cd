"""Where a training step's time goes, and what the Pyro layer and SCVI's trainer add to it.

On the training cells of pbmc4k (protocol split, 2000 genes, 1 x 128 hidden, 10 latent, NB),
one process, the same minibatches for every variant, timed in turn round after round (each
round >= 24 steps), median of ``--repeats`` rounds:

- ``scvae``: the step as ``scvae.fit`` runs it (Pyro model and guide, ``mean_field_loss``);
- ``plain torch``: the same module and loss written without Pyro (encoder, reparametrised
  sample, analytic KL, decoder, count log-probability), checked to give the same loss;
- segments of the plain step, timed one after the other (the device is synchronised at each
  boundary): minibatch, encoder, sample + KL, decoder, log-probability, backward, Adam;
- ``SCVI module``: scvi-tools' ``VAE`` module with the same architecture, its loss, backward
  and Adam on the same dense minibatches, without Lightning or its data loader;
- ``SCVI trainer``: ``SCVI.train`` as users run it (epochs 2.., from an epoch timer), per
  ``batch_size`` cells (its epochs end with a partial minibatch).

    python benchmarks/step_profile.py --batch-sizes 128 512 2048
"""

from __future__ import annotations

import argparse
import logging
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyro
import torch
from _common import prepare, report, scvi_epoch_timer
from torch.distributions import Normal, kl_divergence

from scvae._batches.rows import MinibatchSource
from scvae._data.memory import prepare_counts
from scvae._train.heap import steady_heap
from scvae._train.loop import _step_loss, adam
from scvae._vae.module import SCVAEModule
from scvae._vae.objective import CountRows

logger = logging.getLogger("benchmark")


class SegmentClock:
    """Adds the time since the last call to a named segment (synchronising a GPU first)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.totals: dict[str, float] = defaultdict(float)
        self.last = time.perf_counter()

    def __call__(self, segment: str | None) -> None:
        if self.cuda:
            torch.cuda.synchronize()
        now = time.perf_counter()
        if segment is not None:
            self.totals[segment] += now - self.last
        self.last = now


def plain_loss(module: SCVAEModule, batch, clock=None) -> torch.Tensor:
    """The training loss of ``_step_loss`` (KL weight 1) in plain torch."""
    tick = clock or (lambda _: None)
    tick(None)
    loc, scale = module.encode(batch.x, batch.library, batch.batch_index, batch.observed)
    tick("encoder")
    q = Normal(loc, scale)
    z = q.rsample()
    kl = kl_divergence(q, Normal(torch.zeros_like(loc), torch.ones_like(scale))).sum()
    tick("sample + KL")
    counts = module.decode(
        z, batch.library, batch.batch_index, batch.observed, include_constant=False
    )
    tick("decoder")
    log_px = CountRows(counts, batch.observed, batch.nonzeros).log_prob(batch.x)
    loss = (kl - log_px.sum()) / batch.x.shape[0]
    tick("log-probability")
    return loss


def time_round(source, step, min_steps: int = 24) -> float:
    """Seconds per step over whole epochs of ``source`` (at least ``min_steps`` steps)."""
    started, steps = time.perf_counter(), 0
    while steps < min_steps:
        for batch in source:
            step(batch)
            steps += 1
    if source.device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / steps


def time_interleaved(source, steps: dict, repeats: int) -> dict[str, float]:
    """Median seconds per step of each step function, timed in turn round after round (the
    machine's noise then hits all alike), after one warm-up round."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for round_ in range(repeats + 1):
        for name, step in steps.items():
            seconds = time_round(source, step)
            if round_ > 0:
                times[name].append(seconds)
    return {name: float(np.median(t)) for name, t in times.items()}


def updater(module: torch.nn.Module, loss_fn, optimizer=adam):
    """A training step: ``loss_fn(batch)``, backward, Adam (``scvae``'s fused one unless
    another ``optimizer(parameters, lr=...)`` is given)."""
    optimizer = optimizer(module.parameters(), lr=1e-3)

    def step(batch) -> None:
        loss = loss_fn(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def scvae_module(data, device: torch.device, source) -> SCVAEModule:
    """The module, after checking that the plain loss equals the Pyro one."""
    torch.manual_seed(0)
    module = SCVAEModule(data.n_genes, library_scale=float(np.median(data.library))).to(device)
    batch = next(iter(source))
    torch.manual_seed(1)
    with pyro.validation_enabled(False):
        pyro_value = float(_step_loss(module, batch, 1.0, False).detach())
    torch.manual_seed(1)
    plain_value = float(plain_loss(module, batch).detach())
    if not np.isclose(pyro_value, plain_value, rtol=1e-5):
        raise AssertionError(f"plain loss {plain_value} != scvae loss {pyro_value}")
    return module


def scvi_module_step(n_genes: int, device: torch.device):
    """scvi-tools' VAE (same architecture): its loss, backward and Adam on our minibatches."""
    from scvi.module import VAE

    torch.manual_seed(0)
    module = VAE(n_input=n_genes, n_hidden=128, n_latent=10, n_layers=1, gene_likelihood="nb")

    def loss(batch) -> torch.Tensor:
        n = batch.x.shape[0]
        zeros = batch.x.new_zeros(n, 1)
        tensors = {"X": batch.x, "batch": zeros, "labels": zeros}
        return module(tensors, loss_kwargs={"kl_weight": 1.0})[2].loss

    # SCVI's training plan uses torch's default Adam.
    return updater(module.to(device), loss, torch.optim.Adam)


def segments(module, source, device: torch.device, repeats: int) -> dict[str, float]:
    """Seconds per step of each segment of the plain step."""
    optimizer = adam(module.parameters(), lr=1e-3)
    clock = SegmentClock(device)
    epochs = repeats * -(-24 // len(source))
    for _ in range(epochs):
        clock(None)
        for batch in source:  # the source's own time is the "minibatch" segment
            clock("minibatch")
            loss = plain_loss(module, batch, clock)  # ticks encoder .. log-probability
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            clock("backward")
            optimizer.step()
            clock("Adam")
    return {name: total / (epochs * len(source)) for name, total in clock.totals.items()}


def scvi_trainer_step(adata, batch_size: int, device: torch.device, repeats: int) -> float:
    """Seconds per batch_size cells of ``SCVI.train`` (median epoch after the first)."""
    import scvi

    scvi.settings.seed = 0
    train = adata.copy()
    scvi.model.SCVI.setup_anndata(train)
    model = scvi.model.SCVI(train, n_hidden=128, n_latent=10, n_layers=1, gene_likelihood="nb")
    timer = scvi_epoch_timer()
    steps_per_epoch = -(-train.n_obs // batch_size)
    model.train(
        max_epochs=1 + repeats * -(-24 // steps_per_epoch),
        batch_size=batch_size,
        train_size=1.0,
        early_stopping=False,
        accelerator="gpu" if device.type == "cuda" else "cpu",
        plan_kwargs={"lr": 1e-3},
        callbacks=[timer],
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    # Seconds per batch_size cells (its last minibatch of an epoch is a partial one).
    return float(np.median(timer.seconds[1:])) * batch_size / train.n_obs


def profile_rows(adata, data, batch_size: int, args) -> list[dict]:
    device = torch.device(args.device)
    # Full minibatches only, so that every timed step is of batch_size cells.
    full = np.arange(data.n_cells // batch_size * batch_size)
    source = MinibatchSource(data, full, batch_size=batch_size, shuffle=True, device=device)
    module = scvae_module(data, device, source)
    steps = {
        "scvae (Pyro)": updater(module, lambda b: _step_loss(module, b, 1.0, False)),
        "plain torch, same model": updater(module, lambda b: plain_loss(module, b)),
    }
    if not args.no_scvi:
        steps["SCVI module, same minibatches"] = scvi_module_step(data.n_genes, device)
    with pyro.validation_enabled(False):
        seconds = time_interleaved(source, steps, args.repeats)
    plain = seconds["plain torch, same model"]
    for name, value in segments(module, source, device, args.repeats).items():
        seconds[f"  {name}"] = value
    if not args.no_scvi:
        seconds["SCVI trainer (Lightning)"] = scvi_trainer_step(
            adata, batch_size, device, args.repeats
        )
    ours = seconds["scvae (Pyro)"]
    rows = []
    for name, value in seconds.items():
        row = {"batch_size": batch_size, "variant": name, "ms": 1e3 * value}
        row["cells_per_s"] = batch_size / value
        row["share"] = value / plain if name.startswith(" ") else None
        if name.startswith("SCVI"):
            row["note"] = f"{value / ours:.2f}x the scvae step"
        rows.append(row)
    rows[0]["note"] = f"Pyro adds {100 * (ours / plain - 1):.0f} % to the plain step"
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="pbmc4k_scdcc")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128])
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed rounds (>= 24 steps) per variant"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-scvi", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    adata, train_idx, _ = prepare(args.dataset, seed=0)
    train = adata[train_idx].copy()
    data = prepare_counts(train)
    rows = []
    # Every variant runs with freed memory kept for reuse, as scvae.fit trains (scvae._train.heap),
    # so that the comparison is of the arithmetic, not of page faults.
    with steady_heap():
        for batch_size in args.batch_sizes:
            rows += profile_rows(train, data, batch_size, args)
    columns = [
        ("batch_size", "batch", ""),
        ("variant", "step", ""),
        ("ms", "ms per step", ".2f"),
        ("share", "share of plain step", ".0%"),
        ("cells_per_s", "cells/s", ".0f"),
        ("note", "", ""),
    ]
    report(rows, columns, args.out / "step_profile.json", args)


if __name__ == "__main__":
    main()
