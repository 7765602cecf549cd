"""Checkpoints of a long fit: an interrupted fit resumed from disk equals an uninterrupted one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import scvae
from scvae._train import loop as _train


def fit(adata, **options):
    settings = {"batch_size": 32, "n_hidden": 32, "progress": False, "seed": 4, "kl_warmup": 2}
    settings.update(options)
    return scvae.fit(adata, **settings)


def test_resumed_fit_equals_an_uninterrupted_one_bitwise(monkeypatch, tmp_path, caplog):
    caplog.set_level("INFO", logger="scvae")
    adata = scvae.datasets.simulate(200, 30, n_batches=2, seed=9)  # 180 training, 20 held out
    reference = fit(adata.copy(), batch_key="batch", max_epochs=6)

    calls = {"n": 0}
    step_loss = _train._step_loss

    def interrupt_in_epoch_5(module, batch, kl_weight, exact):
        calls["n"] += 1
        # 6 training steps per epoch (5 full minibatches of 32 and one of 20); validation
        # computes its ELBO through scvae._train.loss, not through this training step
        if calls["n"] == 5 * 6 + 2:
            raise KeyboardInterrupt
        return step_loss(module, batch, kl_weight, exact)

    monkeypatch.setattr(_train, "_step_loss", interrupt_in_epoch_5)
    options = {"batch_key": "batch", "checkpoint_dir": tmp_path / "ckpt", "checkpoint_every": 2}
    with pytest.warns(RuntimeWarning, match="interrupted during epoch 5"):
        fit(adata.copy(), max_epochs=6, **options)
    assert (tmp_path / "ckpt" / "checkpoint.pt").is_file()
    monkeypatch.setattr(_train, "_step_loss", step_loss)

    resumed_adata = adata.copy()
    resumed = fit(resumed_adata, max_epochs=6, resume=True, **options)
    assert "checkpoint.pt after epoch 4" in caplog.text  # resumed, not trained afresh
    ref_state, state = reference.module.state_dict(), resumed.module.state_dict()
    assert all(torch.equal(ref_state[k], state[k]) for k in ref_state)
    for key in ("train_loss", "validation_elbo", "kl_weight"):
        assert resumed.history[key] == reference.history[key]
    np.testing.assert_array_equal(resumed_adata.obsm["X_scvae"], reference.embed(adata))
