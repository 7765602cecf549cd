"""Our NB / ZINB / Poisson log-probabilities against torch.distributions and scipy.stats."""

import numpy as np
import pytest
import torch
from scipy import stats

from scvae._vae.distributions import (
    CountDistribution,
    nb_log_prob,
    poisson_log_prob,
    zinb_log_prob,
)
from scvae._vae.objective import (
    CountRows,
    digamma,
    lgamma,
    nb_logits_rows_log_prob,
    nb_rows_log_prob,
)


def _random_inputs(seed: int, n: int = 4000):
    rng = np.random.default_rng(seed)
    mu = np.exp(rng.uniform(np.log(1e-4), np.log(1e4), n))
    theta = np.exp(rng.uniform(np.log(1e-2), np.log(1e3), n))
    x = rng.poisson(rng.gamma(theta, mu / theta)).astype(np.float64)
    x[:200] = 0.0  # plenty of zeros
    x[200:220] = rng.integers(10**5, 10**7, 20)  # huge counts, far in the tail
    zi = rng.normal(0, 2, n)
    return x, mu, theta, zi


def _t(a):
    return torch.as_tensor(a, dtype=torch.float64)


@pytest.mark.parametrize("seed", [0, 1])
def test_nb_matches_scipy_and_torch(seed):
    x, mu, theta, _ = _random_inputs(seed)
    ours = nb_log_prob(_t(x), _t(np.log(mu)), _t(np.log(theta))).numpy()
    reference = stats.nbinom.logpmf(x, theta, theta / (theta + mu))
    np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-5)
    torch_nb = torch.distributions.NegativeBinomial(
        total_count=_t(theta), probs=_t(mu / (theta + mu))
    ).log_prob(_t(x))
    np.testing.assert_allclose(ours, torch_nb.numpy(), rtol=1e-5, atol=1e-5)


def test_nb_float32_close_to_float64():
    """With float32 inputs (what training uses) the exact likelihood matches float64 for the
    same float32-rounded inputs, huge counts included."""
    x, mu, theta, _ = _random_inputs(3)
    x32, log_mu32, log_theta32 = (
        torch.tensor(a, dtype=torch.float32) for a in (x, np.log(mu), np.log(theta))
    )
    ours = nb_log_prob(x32, log_mu32, log_theta32).double().numpy()
    mu64, theta64 = np.exp(log_mu32.double().numpy()), np.exp(log_theta32.double().numpy())
    ref = stats.nbinom.logpmf(x32.double().numpy(), theta64, theta64 / (theta64 + mu64))
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("seed", [0, 1])
def test_zinb_matches_mixture(seed):
    x, mu, theta, zi = _random_inputs(seed)
    pi = 1.0 / (1.0 + np.exp(-zi))
    nb = stats.nbinom.pmf(x, theta, theta / (theta + mu))
    log_nb = stats.nbinom.logpmf(x, theta, theta / (theta + mu))
    reference = np.where(x == 0, np.log(pi + (1 - pi) * nb), np.log1p(-pi) + log_nb)
    ours = zinb_log_prob(_t(x), _t(np.log(mu)), _t(np.log(theta)), _t(zi)).numpy()
    np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-5)


def test_poisson_matches_scipy():
    x, mu, _, _ = _random_inputs(0)
    ours = poisson_log_prob(_t(x), _t(np.log(mu))).numpy()
    np.testing.assert_allclose(ours, stats.poisson.logpmf(x, mu), rtol=1e-5, atol=1e-5)


def test_training_objective_drops_only_the_constant():
    x, mu, theta, zi = _random_inputs(2)
    args = (_t(x), _t(np.log(mu)), _t(np.log(theta)))
    for fn, extra in ((nb_log_prob, ()), (zinb_log_prob, (_t(zi),))):
        exact = fn(*args, *extra)
        training = fn(*args, *extra, include_constant=False)
        expected = torch.lgamma(_t(x) + 1)
        if fn is zinb_log_prob:
            expected = torch.where(_t(x) == 0, torch.zeros_like(expected), expected)
        np.testing.assert_allclose((training - exact).numpy(), expected.numpy(), rtol=1e-8)


def test_per_gene_dispersion_broadcasts():
    log_mu = torch.randn(5, 3, dtype=torch.float64)
    log_theta = torch.randn(3, dtype=torch.float64)
    x = torch.poisson(log_mu.exp())
    full = nb_log_prob(x, log_mu, log_theta.expand(5, 3))
    np.testing.assert_allclose(nb_log_prob(x, log_mu, log_theta).numpy(), full.numpy())


@pytest.mark.parametrize("zero_inflated", [False, True])
def test_samples_match_mean_and_variance(zero_inflated):
    torch.manual_seed(0)
    log_mu = torch.log(torch.tensor([0.5, 5.0, 50.0]))
    log_theta = torch.log(torch.tensor([2.0, 0.5, 10.0]))
    zi = torch.tensor([-1.0, 0.0, 1.0]) if zero_inflated else None
    d = CountDistribution(log_mu, log_theta, zi)
    draws = d.sample((200_000,))
    np.testing.assert_allclose(draws.mean(0).numpy(), d.mean.numpy(), rtol=0.03)
    np.testing.assert_allclose(draws.var(0).numpy(), d.variance.numpy(), rtol=0.08)


def test_sparse_training_objective_equals_dense():
    """The CPU fast path (x-dependent terms on nonzeros only) gives the same values and
    gradients as the dense formula."""
    torch.manual_seed(0)
    x = torch.poisson(torch.rand(64, 50) * 0.3)  # mostly zeros
    assert (x > 0).float().mean() < 0.5
    for log_theta_shape in [(50,), (64, 50)]:
        log_mu = torch.randn(64, 50, dtype=torch.float64, requires_grad=True)
        log_theta = torch.randn(*log_theta_shape, dtype=torch.float64, requires_grad=True)
        fast = nb_log_prob(x.double(), log_mu, log_theta, include_constant=False)
        grads_fast = torch.autograd.grad(fast.sum(), (log_mu, log_theta))
        exact = nb_log_prob(x.double(), log_mu, log_theta) + torch.lgamma(x.double() + 1)
        grads_exact = torch.autograd.grad(exact.sum(), (log_mu, log_theta))
        np.testing.assert_allclose(fast.detach().numpy(), exact.detach().numpy(), atol=1e-10)
        for a, b in zip(grads_fast, grads_exact, strict=True):
            np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-10)


def test_exact_likelihood_on_the_sparse_route_matches_scipy():
    """2-d, mostly-zero float32 counts take the nonzeros-only route; still exact to 1e-4."""
    x, mu, theta, _ = _random_inputs(5)
    x[np.argsort(mu)[: len(mu) * 3 // 5]] = 0  # ~60 % zeros, huge counts among the rest
    x2, lm, lt = (
        torch.tensor(a, dtype=torch.float32).reshape(40, 100)
        for a in (x, np.log(mu), np.log(theta))
    )
    ours = nb_log_prob(x2, lm, lt).double().numpy().ravel()
    mu64, theta64 = np.exp(lm.double().numpy().ravel()), np.exp(lt.double().numpy().ravel())
    ref = stats.nbinom.logpmf(x2.double().numpy().ravel(), theta64, theta64 / (theta64 + mu64))
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-4)


def test_pyro_plates_keep_the_dispersion_per_gene():
    """Pyro expands every sample site's distribution to its plates' shape; the per-gene
    dispersion must stay per gene (expanded, its exp/lgamma terms ran once per entry and made
    a step up to 40 % slower), and the expanded distribution must give the same values."""
    import pyro
    from pyro import poutine

    from scvae._vae.module import SCVAEModule

    module = SCVAEModule(30, library_scale=100.0)
    x = torch.poisson(torch.full((8, 30), 2.0))
    library = x.sum(-1)
    trace = poutine.trace(module.model).get_trace(x, library, torch.zeros(8, dtype=torch.long))
    counts = trace.nodes["counts"]["fn"].counts
    assert counts.log_theta.shape == (30,)
    log_mu, log_theta = torch.randn(8, 30), torch.randn(30)
    wide = CountDistribution(log_mu[:1], log_theta).expand((4, 8, 30))
    assert wide.batch_shape == (4, 8, 30) and wide.log_theta.shape == (30,)
    x4 = torch.poisson(torch.full((4, 8, 30), 2.0))
    expected = nb_log_prob(x4, log_mu[:1].expand(4, 8, 30), log_theta.expand(4, 8, 30))
    torch.testing.assert_close(wide.log_prob(x4), expected)
    assert len(pyro.get_param_store()) == 0


@pytest.mark.parametrize("per_cell_dispersion", [False, True], ids=["gene", "gene-batch"])
def test_rows_objective_equals_masked_sum_of_the_elementwise_one(per_cell_dispersion):
    """The training objective from the minibatch's stored entries (no elementwise output)
    has the value and the gradients of the elementwise objective, masked and summed per
    cell: with missing entries (held as stored zeros), huge counts and both dispersions."""
    x, mu, theta, _ = _random_inputs(5, 60 * 50)
    x = x.reshape(60, 50)
    mask = torch.from_numpy(np.random.default_rng(1).random((60, 50)) > 0.2)
    x[~mask.numpy()] = 0.0
    stored = (x > 0) | ~mask.numpy()  # missing entries are stored zeros in the CSR counts
    rows, cols = (torch.from_numpy(i) for i in np.nonzero(stored))
    x = _t(x)
    log_mu = _t(np.log(mu).reshape(60, 50)).requires_grad_()
    theta = np.log(theta[:50]) if not per_cell_dispersion else np.log(theta).reshape(60, 50)
    log_theta = _t(theta).requires_grad_()

    fast = nb_rows_log_prob(x, log_mu, log_theta, (rows, cols, x[rows, cols]), mask)
    elementwise = nb_log_prob(x, log_mu, log_theta, include_constant=False)
    slow = elementwise.masked_fill(~mask, 0.0).sum(-1)
    torch.testing.assert_close(fast, slow, rtol=1e-10, atol=1e-8)
    weights = _t(np.random.default_rng(2).uniform(0.5, 2.0, 60))
    fast_grads = torch.autograd.grad((weights * fast).sum(), (log_mu, log_theta))
    slow_grads = torch.autograd.grad((weights * slow).sum(), (log_mu, log_theta))
    for a, b in zip(fast_grads, slow_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-8)
    # CountRows takes this route only for the NB training objective; otherwise the masked sum
    # of the elementwise log-probability, constants included.
    exact = CountDistribution(log_mu, log_theta, include_constant=True)
    rows_exact = CountRows(exact, mask, (rows, cols, x[rows, cols])).log_prob(x)
    torch.testing.assert_close(rows_exact, exact.log_prob(x).masked_fill(~mask, 0.0).sum(-1))


def test_fused_objective_from_logits_equals_the_elementwise_one():
    """The fused objective (from the decoder's logits, analytic backward) has the value and
    the gradients (logits, dispersion, library) of the elementwise objective summed per cell:
    with a cell without stored entries, stored zeros, huge counts and extreme dispersions."""
    rng = np.random.default_rng(3)
    n_cells, n_genes = 40, 70
    logits = _t(rng.normal(0, 3, (n_cells, n_genes))).requires_grad_()
    log_theta = _t(rng.uniform(np.log(1e-2), np.log(1e3), n_genes)).requires_grad_()
    library = rng.uniform(10, 1e5, n_cells)
    share = np.exp(logits.detach().numpy())
    share /= share.sum(-1, keepdims=True)
    mu, theta = share * library[:, None], np.exp(log_theta.detach().numpy())
    x = rng.poisson(rng.gamma(theta, mu / theta)).astype(np.float64)
    x[3] = 0.0  # a cell with no stored entry
    x[5, :4] = rng.integers(10**5, 10**7, 4)
    stored = x > 0
    stored[7, :10] = True  # stored zeros add nothing
    rows, cols = (torch.from_numpy(i) for i in np.nonzero(stored))
    x = _t(x)
    log_library = _t(np.log(library)).requires_grad_()
    nonzeros = (rows, cols, x[rows, cols])

    fused = nb_logits_rows_log_prob(logits, log_library, log_theta, nonzeros)
    log_mu = torch.log_softmax(logits, -1) + log_library.unsqueeze(-1)
    slow = nb_log_prob(x, log_mu, log_theta, include_constant=False).sum(-1)
    torch.testing.assert_close(fused, slow, rtol=1e-10, atol=1e-8)
    assert fused[3] != 0.0
    weights = _t(rng.uniform(0.5, 2.0, n_cells))
    inputs = (logits, log_theta, log_library)
    fused_grads = torch.autograd.grad((weights * fused).sum(), inputs)
    slow_grads = torch.autograd.grad((weights * slow).sum(), inputs)
    for a, b in zip(fused_grads, slow_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-7)
    # The model's counts site takes this route for per-gene NB without a mask.
    counts = CountDistribution(
        None, log_theta, logits=logits, log_library=log_library, include_constant=False
    )
    torch.testing.assert_close(CountRows(counts, None, nonzeros).log_prob(x), fused)
    torch.testing.assert_close(counts.log_mu, log_mu)
    with pytest.raises(ValueError, match="either log_mu, or logits and log_library"):
        CountDistribution(log_mu, log_theta, logits=logits, log_library=log_library)
    with pytest.raises(ValueError, match="either log_mu, or logits and log_library"):
        CountDistribution(None, log_theta, logits=logits)


def test_our_digamma_matches_torch_over_the_range_of_counts_and_dispersions():
    """The digamma behind the objective's gradient, from 1e-4 (tiny dispersions) to 1e7
    (huge counts): float64 to 1e-10, float32 as close to the truth as torch's own."""
    y = torch.cat([torch.logspace(-4, 7, 5000, dtype=torch.float64), torch.rand(5000) * 30])
    y = y.double()
    truth = torch.digamma(y)
    scale = truth.abs().clamp(min=1.0)
    assert ((digamma(y) - truth).abs() / scale).max() < 1e-10
    ours32 = (digamma(y.float()).double() - truth).abs() / scale
    torch32 = (torch.digamma(y.float()).double() - truth).abs() / scale
    assert ours32.max() <= 2 * torch32.max()
    y.requires_grad_()
    (grad,) = torch.autograd.grad(lgamma(y).sum(), y)
    torch.testing.assert_close(grad, truth, rtol=1e-10, atol=1e-10)
