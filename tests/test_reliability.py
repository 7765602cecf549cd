"""Bad numbers, interrupted work and killed saves: the model and the user's data survive."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

import scvae
from scvae._train import loop as _train
from scvae._train.loop import NonFiniteLossError


@pytest.fixture
def cells():
    """80 cells (no validation split: training is a fixed sequence of steps per epoch)."""
    return scvae.datasets.simulate(80, 30, n_groups=2, n_batches=2, seed=7)


def fit(adata, **options):
    # kl_warmup fixed: its default depends on max_epochs, and tests compare runs of
    # different lengths step by step.
    settings = {"batch_size": 16, "n_hidden": 32, "progress": False, "seed": 3, "kl_warmup": 1}
    settings.update(options)
    return scvae.fit(adata, **settings)


def same_parameters(a: scvae.SCVAE, b: scvae.SCVAE) -> bool:
    sa, sb = a.module.state_dict(), b.module.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def fail_at_step(monkeypatch, n: int, error: type[BaseException] | None = None):
    """From the ``n``-th training step on, corrupt a parameter (NaN) or raise ``error``."""
    calls = {"n": 0}
    step_loss = _train._step_loss

    def patched(module, batch, kl_weight, exact):
        calls["n"] += 1
        if calls["n"] == n:
            if error is not None:
                raise error
            with torch.no_grad():
                module.gene_logits.bias.fill_(float("nan"))
        return step_loss(module, batch, kl_weight, exact)

    monkeypatch.setattr(_train, "_step_loss", patched)


def test_non_finite_loss_names_the_step_and_keeps_the_last_finite_state(cells, monkeypatch):
    # 80 cells / 16 = 5 steps per epoch: step 13 (1-based) is epoch 2, step 2 (0-based).
    reference = fit(cells.copy(), max_epochs=2)
    adata = cells.copy()
    fail_at_step(monkeypatch, 13)
    with pytest.raises(
        NonFiniteLossError, match=r"epoch 2, step 2 \(loss nan.*end of epoch 1"
    ) as info:
        fit(adata, max_epochs=4)
    error = info.value
    assert (error.epoch, error.step, len(error.cells)) == (2, 2, 16)
    assert "lower lr" in str(error)
    # The parameters are those at the end of epoch 1, bit for bit: a 2-epoch fit.
    assert same_parameters(error.model, reference)
    assert np.isfinite(error.model.embed(cells)).all()
    assert "X_scvae" not in adata.obsm and "scvae" not in adata.uns  # nothing was written


def test_a_huge_learning_rate_is_caught(cells):
    adata = cells.copy()
    with pytest.raises(FloatingPointError, match=r"non-finite|ELBO became") as info:
        fit(adata, lr=1e4, max_epochs=5)
    assert np.isfinite(info.value.model.embed(cells)).all()
    assert "X_scvae" not in adata.obsm


def test_keyboard_interrupt_keeps_a_usable_model(cells, monkeypatch, tmp_path):
    reference = fit(cells.copy(), max_epochs=2)
    adata = cells.copy()
    fail_at_step(monkeypatch, 12, KeyboardInterrupt())  # epoch 2, step 1
    with pytest.warns(RuntimeWarning, match=r"interrupted during epoch 2.*last complete"):
        model = fit(adata, max_epochs=50)
    assert model.history["interrupted_at_epoch"] == [2.0]
    assert len(model.history["train_loss"]) == len(model.history["epoch_seconds"]) == 2
    assert same_parameters(model, reference)
    np.testing.assert_array_equal(adata.obsm["X_scvae"], model.embed(cells))
    assert list(adata.uns["scvae"]["history"]["interrupted_at_epoch"]) == [2.0]
    model.save(tmp_path / "model")
    assert scvae.load(tmp_path / "model").history["interrupted_at_epoch"] == [2.0]


def test_keyboard_interrupt_with_early_stopping_keeps_the_best_epoch(monkeypatch):
    adata = scvae.datasets.simulate(200, 30, seed=8)
    # Held-out ELBOs scripted so that epoch 1 is the best; the real ELBO is still computed,
    # so that the random stream is the same as in the reference fit.
    scripted = iter([-10.0, -5.0, -8.0, -9.0, -7.0, -6.0])
    evaluate = _train.evaluate_elbo

    def scripted_elbo(module, source, **kwargs):
        evaluate(module, source, **kwargs)
        return next(scripted)

    monkeypatch.setattr(_train, "evaluate_elbo", scripted_elbo)
    reference = fit(adata.copy(), max_epochs=2, early_stopping=False)
    steps = 180 // 16 + 1  # 180 training cells / 16 per batch, and the validation pass
    fail_at_step(monkeypatch, 6 * steps + 2, KeyboardInterrupt())  # epoch 6, step 1
    scripted = iter([-10.0, -5.0, -8.0, -9.0, -7.0, -6.0])
    with pytest.warns(RuntimeWarning, match="keeping the parameters of the best epoch"):
        model = fit(adata, max_epochs=50)
    assert model.history["validation_elbo"] == [-10.0, -5.0, -8.0, -9.0, -7.0, -6.0]
    assert same_parameters(model, reference)


@pytest.mark.parametrize(("batch_key", "kept_epoch", "n_epochs"), [(None, 1, 4), ("batch", 4, 7)])
def test_early_stopping_with_batch_alignment_keeps_the_latest_epoch_near_the_best(
    monkeypatch, batch_key, kept_epoch, n_epochs
):
    # The alignment term goes on mixing batches on the ELBO's plateau: with batch_key the
    # fit keeps the latest epoch within 0.5 % of the best held-out ELBO (epoch 4: -904 is
    # within 4.5 of -900), without it the best epoch (1); each stops after 2 epochs of
    # patience.
    adata = scvae.datasets.simulate(200, 30, n_batches=2, seed=8)
    elbos = [-1000.0, -900.0, -903.0, -950.0, -904.0, -960.0, -970.0]
    evaluate = _train.evaluate_elbo
    scripted = iter(elbos)

    def scripted_elbo(module, source, **kwargs):
        evaluate(module, source, **kwargs)
        return next(scripted)

    monkeypatch.setattr(_train, "evaluate_elbo", scripted_elbo)
    model = fit(adata.copy(), batch_key=batch_key, max_epochs=50, patience=2)
    assert model.history["validation_elbo"] == elbos[:n_epochs]
    scripted = iter(elbos)
    reference = fit(
        adata.copy(), batch_key=batch_key, max_epochs=kept_epoch + 1, early_stopping=False
    )
    assert same_parameters(model, reference)


def test_same_seed_gives_bitwise_identical_results_on_cpu(cells):
    x = cells.X.toarray()
    x[np.random.default_rng(0).random(x.shape) < 0.05] = np.nan
    a, b = cells.copy(), cells.copy()
    a.X = x
    b.X = x.copy()
    model_a = fit(a, batch_key="batch", max_epochs=3, seed=11)
    model_b = fit(b, batch_key="batch", max_epochs=3, seed=11)
    np.testing.assert_array_equal(a.obsm["X_scvae"], b.obsm["X_scvae"])
    assert model_a.history["train_loss"] == model_b.history["train_loss"]
    assert same_parameters(model_a, model_b)
    scvae.impute(a, model_a, interval=0.8, n_samples=20, seed=5)
    scvae.impute(b, model_b, interval=0.8, n_samples=20, seed=5)
    for key in ("scvae_imputed", "scvae_lower", "scvae_upper"):
        np.testing.assert_array_equal(a.layers[key], b.layers[key])
    np.testing.assert_array_equal(
        model_a.log_likelihood(a, n_samples=10, seed=2),
        model_b.log_likelihood(b, n_samples=10, seed=2),
    )


FIT_AND_HASH = textwrap.dedent(
    """
    import hashlib
    import numpy as np
    import scvae

    complete = scvae.datasets.simulate(3000, 1000, n_groups=6, n_batches=2, seed=0)
    x = complete.X.toarray()
    x[np.random.default_rng(0).random(x.shape) < 0.1] = np.nan
    complete.X = x
    model = scvae.fit(complete, batch_key="batch", max_epochs=2, progress=False, seed=3)
    print(hashlib.sha1(b"".join(p.detach().numpy().tobytes() for p in model.module.parameters()))
          .hexdigest())
    """
)


def test_same_seed_gives_bitwise_identical_models_in_separate_processes():
    """Large enough minibatches that torch runs its kernels on several threads: no sum may
    depend on the threads' order (a scatter-add of the dispersion's gradient once did)."""
    hashes = {
        subprocess.run(
            [sys.executable, "-c", FIT_AND_HASH], capture_output=True, text=True, check=True
        ).stdout.split()[-1]
        for _ in range(3)
    }
    assert len(hashes) == 1


# -- a kill during save -------------------------------------------------------------------
SAVER = textwrap.dedent(
    """
    import os, shutil, sys, time
    from pathlib import Path

    import torch
    import scvae
    from scvae._utils import atomic as _atomic

    target, stage, ready = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    model = scvae.load(target)
    with torch.no_grad():
        for p in model.module.parameters():
            p.add_(1.0)  # the new model differs from the saved one

    def hang(*args, **kwargs):
        ready.write_text(stage)
        time.sleep(120)

    if stage == "writing":  # first fsync: weights.pt half way to the disk
        _atomic.os.fsync = hang
    elif stage == "complete":  # every file written, the folder not yet swapped in
        _atomic._move_into_place = hang
    elif stage == "swapped":  # the new folder is in place, the old one not yet deleted
        _atomic.shutil.rmtree = hang
    model.save(target, overwrite=True)
    ready.write_text("finished")
    """
)


@pytest.mark.parametrize("stage", ["writing", "complete", "swapped"])
def test_a_kill_during_save_leaves_a_loadable_model(cells, tmp_path, stage):
    target = tmp_path / "model"
    old = fit(cells.copy(), max_epochs=1)
    old.save(target)
    expected_old = old.embed(cells)
    ready = tmp_path / "ready"
    process = subprocess.Popen(
        [sys.executable, "-c", SAVER, str(target), stage, str(ready)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 120
    while not ready.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ready.exists(), process.communicate()[0].decode()
    assert ready.read_text() == stage
    process.kill()  # SIGKILL: no cleanup runs
    process.wait()
    loaded = scvae.load(target)
    embedding = loaded.embed(cells)
    if stage == "swapped":
        # The swap is one step: the new model is complete and the old one is gone from target.
        assert not np.array_equal(embedding, expected_old)
        assert np.isfinite(embedding).all()
    else:
        np.testing.assert_array_equal(embedding, expected_old)
    # A later save over the same path works despite the leftovers of the killed one.
    old.save(target, overwrite=True)
    np.testing.assert_array_equal(scvae.load(target).embed(cells), expected_old)
