"""Eqs. 14, 15, 18: the three parametrizations agree when their heads are consistent."""
import pytest
import torch

from ecdp.parametrization import Parametrization, score_matching_loss, score_to_x0
from ecdp.sde import ConditionalVPSDE

SDE = ConditionalVPSDE()


@pytest.fixture
def consistent_heads():
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 3, 8, 8, generator=g)
    mu = x0 + 0.1 * torch.randn(x0.shape, generator=g)
    eps = torch.randn(x0.shape, generator=g)
    sigma2 = 0.02
    t = torch.tensor([0.05, 0.3, 0.6, 0.95])
    x = SDE.perturb(x0, mu, sigma2, t, eps)
    return x, mu, sigma2, t, eps, x0


def test_consistent_heads_give_one_score(consistent_heads):
    x, mu, sigma2, t, eps, x0 = consistent_heads
    true_score = -eps / SDE.var(sigma2, t, like=x).sqrt()  # grad log p_0t(x_t | x_0)
    for kind, c in (("eps", 1.0), ("x0", 1.0), ("hybrid", 0.5), ("hybrid", 1.0), ("hybrid", 1.5)):
        s = Parametrization(kind, c).score(SDE, x, mu, sigma2, t, eps, x0)
        torch.testing.assert_close(s, true_score, rtol=1e-4, atol=1e-3)


def test_hybrid_endpoints(consistent_heads):
    x, mu, sigma2, t, _, _ = consistent_heads
    g = torch.Generator().manual_seed(1)
    eps_hat, x0_hat = torch.randn(x.shape, generator=g), torch.rand(x.shape, generator=g)  # inconsistent heads
    s_eps = Parametrization("eps").score(SDE, x, mu, sigma2, t, eps_hat, x0_hat)
    s_x0 = Parametrization("x0").score(SDE, x, mu, sigma2, t, eps_hat, x0_hat)
    assert not torch.allclose(s_eps, s_x0)
    # lambda = alpha^c: c = 0 gives lambda = 1 (eps); c -> infinity gives lambda -> 0 (x0)
    torch.testing.assert_close(Parametrization("hybrid", 0.0).score(SDE, x, mu, sigma2, t, eps_hat, x0_hat), s_eps)
    torch.testing.assert_close(Parametrization("hybrid", 1e4).score(SDE, x, mu, sigma2, t, eps_hat, x0_hat), s_x0)
    # and in between it is the convex blend of eq. 18
    p = Parametrization("hybrid", 1.0)
    lam = SDE.alpha(t).view(-1, 1, 1, 1)
    torch.testing.assert_close(p.score(SDE, x, mu, sigma2, t, eps_hat, x0_hat), lam * s_eps + (1 - lam) * s_x0)


def test_denoised_inverts_the_score(consistent_heads):
    x, mu, sigma2, t, eps, x0 = consistent_heads
    p = Parametrization("hybrid", 1.0)
    torch.testing.assert_close(p.denoised(SDE, x, mu, sigma2, t, eps, x0), x0, atol=2e-4, rtol=1e-4)
    s = p.score(SDE, x, mu, sigma2, t, eps, x0)
    torch.testing.assert_close(score_to_x0(SDE, x, mu, sigma2, t, s), x0, atol=2e-4, rtol=1e-4)


def test_score_matching_loss_heads():
    e, e_hat = torch.zeros(2, 3, 4, 4), torch.ones(2, 3, 4, 4)
    x, x_hat = torch.zeros(2, 3, 4, 4), torch.full((2, 3, 4, 4), 2.0)
    n = 3 * 4 * 4   # eq. 16 is a squared norm: summed over C, H, W per sample (released code)
    assert float(score_matching_loss(e_hat, x_hat, e, x)) == pytest.approx(n * (1 + 4))  # heads summed 1:1
    assert float(score_matching_loss(e_hat, x_hat, e, x, reduction="mean")) == pytest.approx(1 + 4)
    assert float(score_matching_loss(e_hat, x_hat, e, x, heads="used", kind="eps")) == pytest.approx(n * 1)
    assert float(score_matching_loss(e_hat, x_hat, e, x, heads="used", kind="x0", reduction="mean")) == pytest.approx(4)
    with pytest.raises(ValueError):
        Parametrization("v")
