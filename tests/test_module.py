"""The Pyro model and guide, and our ELBO against Pyro's TraceMeanField_ELBO."""

import numpy as np
import pyro
import pytest
import torch
from pyro.infer import TraceMeanField_ELBO

from scvae._train.loop import kl_weight_at, mean_field_loss
from scvae._vae.module import SCVAEModule
from scvae._vae.networks import Dropout


def _batch(n=32, g=40, n_batches=2, seed=0, with_mask=True):
    gen = torch.Generator().manual_seed(seed)
    x = torch.poisson(torch.rand(n, g, generator=gen) * 3)
    mask = torch.rand(n, g, generator=gen) > 0.2 if with_mask else None
    if mask is not None:
        x = x * mask
    library = x.sum(-1).clamp(min=1)
    batch_index = torch.randint(0, n_batches, (n,), generator=gen)
    return {"x": x, "library": library, "batch_index": batch_index, "observed": mask}


@pytest.mark.parametrize("likelihood", ["nb", "zinb", "poisson"])
@pytest.mark.parametrize("with_mask", [False, True])
def test_our_elbo_equals_pyros_trace_mean_field_elbo(likelihood, with_mask):
    torch.manual_seed(0)
    module = SCVAEModule(40, 2, likelihood=likelihood, encode_mask=with_mask, n_hidden=16)
    module.eval()  # no dropout: both estimators see the same network
    batch = _batch(with_mask=with_mask)
    for kl_weight in (0.3, 1.0):
        torch.manual_seed(1)
        ours = mean_field_loss(module.model, module.guide, **batch, kl_weight=kl_weight)
        torch.manual_seed(1)
        with pyro.validation_enabled(False):
            theirs = TraceMeanField_ELBO().differentiable_loss(
                module.model, module.guide, **batch, kl_weight=kl_weight
            )
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-3)


def test_missing_entries_do_not_enter_the_likelihood():
    """Changing the counts of masked-out entries changes nothing in the ELBO."""
    torch.manual_seed(0)
    module = SCVAEModule(40, 2, encode_mask=True, n_hidden=16).eval()
    batch = _batch()
    changed = dict(batch, x=torch.where(batch["observed"], batch["x"], batch["x"] + 7.0))
    torch.manual_seed(1)
    a = mean_field_loss(module.model, module.guide, **batch)
    torch.manual_seed(1)
    # The encoder multiplies its input by the mask, so it sees the same thing too.
    b = mean_field_loss(module.model, module.guide, **changed)
    torch.testing.assert_close(a, b)


def test_gradients_reach_every_parameter():
    module = SCVAEModule(40, 2, likelihood="zinb", dispersion="gene-batch", n_hidden=16)
    loss = mean_field_loss(module.model, module.guide, **_batch())
    loss.backward()
    missing = [n for n, p in module.named_parameters() if p.grad is None or not p.grad.any()]
    assert missing == []


def test_kl_warmup_is_linear_and_positive():
    weights = [kl_weight_at(e, beta=2.0, warmup_epochs=10) for e in (0.5, 5, 10, 20)]
    np.testing.assert_allclose(weights, [0.1, 1.0, 2.0, 2.0])
    assert kl_weight_at(3, beta=1.0, warmup_epochs=0) == 1.0


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_drops_at_its_rate_keeps_the_mean_and_repeats_with_the_seed(p):
    """The encoder's dropout (16 random bits per entry) drops each entry with probability p,
    independently of its position, scales the rest by 1 / (1 - p), passes the same mask to
    the gradient, does nothing in eval mode and repeats with the seed."""
    layer = Dropout(p)
    h = torch.ones(1000, 1000, requires_grad=True)
    torch.manual_seed(0)
    out = layer(h)
    dropped = (out == 0).double()
    # 1e6 entries: the drop rate is within 5 standard errors, overall and at each of the
    # four 16-bit words of a 64-bit draw (a word whose sign bit never varied would fail).
    assert abs(dropped.mean().item() - p) < 5 * np.sqrt(p * (1 - p) / 1e6)
    by_word = dropped.reshape(-1, 4).mean(0)
    assert (by_word - p).abs().max() < 5 * np.sqrt(p * (1 - p) / 2.5e5)
    torch.testing.assert_close(
        out.mean().double(), torch.tensor(1.0, dtype=torch.float64), atol=5e-3, rtol=0
    )
    out.sum().backward()
    assert torch.equal(h.grad == 0, out == 0)
    torch.manual_seed(0)
    assert torch.equal(layer(h), out)
    layer.eval()
    assert torch.equal(layer(h), h)


def test_batch_mmd_matches_the_pairwise_definition_and_sees_separated_batches():
    """The vectorised MMD of every batch against the rest equals the textbook estimate
    computed batch by batch, and is large only when the batches sit apart."""
    from scvae._vae.alignment import MMD_KERNEL_WIDTHS, batch_mmd

    generator = torch.Generator().manual_seed(0)
    z = torch.randn(300, 4, generator=generator)
    batches = torch.randint(0, 3, (300,), generator=generator)

    def direct(a, b):
        points = torch.cat([a, b])
        squared = torch.cdist(points, points).square()
        scale = squared.median()
        kernel = sum(torch.exp(-squared / (w * scale)) for w in MMD_KERNEL_WIDTHS)
        n = len(a)
        return kernel[:n, :n].mean() + kernel[n:, n:].mean() - 2 * kernel[:n, n:].mean()

    shifted = z + batches[:, None].float()
    expected = sum(direct(shifted[batches == b], shifted[batches != b]) for b in range(3)) / 3
    torch.testing.assert_close(batch_mmd(shifted, batches, 3), expected)
    assert batch_mmd(shifted, batches, 3) > 10 * batch_mmd(z, batches, 3)
    # The kernels follow the latent scale: the same configuration, ten times wider, scores
    # the same (fixed bandwidths would see no pair as close and score it near zero).
    torch.testing.assert_close(batch_mmd(10 * shifted, batches, 3), batch_mmd(shifted, batches, 3))
    # A batch of one cell is left out rather than measured.
    lone = torch.zeros(300, dtype=torch.long)
    lone[0] = 1
    assert batch_mmd(shifted, lone, 2) == 0
