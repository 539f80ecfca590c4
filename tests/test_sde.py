"""Proposition 1 (eqs. 6-7), the transition kernel (eqs. 9-11) and the probability-flow
ODE (eq. 13) checked against simulation and closed forms."""
import math

import pytest
import torch

from ecdp.sampling import sample_ode
from ecdp.sde import ConditionalVPSDE

SDE = ConditionalVPSDE()


def euler_maruyama(x0, mu, sigma2, t_end, n_steps, gen):
    """Simulate the forward SDE (eq. 5) and return the path at a few times."""
    x, dt = x0.clone(), t_end / n_steps
    snapshots = {}
    for i in range(n_steps):
        t = torch.tensor(i * dt)
        x = x + SDE.drift(x, mu, t) * dt + SDE.diffusion(sigma2, t) * math.sqrt(dt) * torch.randn(x.shape, generator=gen)
        if (i + 1) % (n_steps // 4) == 0:
            snapshots[round((i + 1) * dt, 6)] = x.clone()
    return snapshots


def test_alpha_closed_form():
    t = torch.linspace(0, 1, 11)
    integral = 0.1 * t + 0.5 * (20 - 0.1) * t**2  # int_0^t beta
    torch.testing.assert_close(SDE.alpha(t), torch.exp(-integral))
    torch.testing.assert_close(SDE.t_from_log_alpha(SDE.log_alpha(t)), t, atol=1e-5, rtol=1e-5)


@pytest.mark.slow   # > 5 s: CI runs it (.ci/run), the fast suite stays under 3 min
def test_proposition1_mean_and_variance_preserved():
    """Non-Gaussian x(0) (a skewed two-point mixture) with mean mu, variance sigma^2."""
    gen = torch.Generator().manual_seed(0)
    n, mu, sigma2 = 200_000, 0.3, 0.04
    # two-point distribution: P(a)=0.8, P(b)=0.2, scaled to mean 0 and variance 1
    u = (torch.rand(n, generator=gen) < 0.2).float()
    z = (u - 0.2) / math.sqrt(0.2 * 0.8)
    x0 = mu + math.sqrt(sigma2) * z
    assert abs(float(((x0 - mu) ** 3).mean())) > 1e-3  # clearly non-Gaussian (skewed)
    snaps = euler_maruyama(x0, torch.tensor(mu), sigma2, 1.0, 2000, gen)
    for t, x in snaps.items():
        se_mean = math.sqrt(sigma2 / n)
        assert abs(float(x.mean()) - mu) < 5 * se_mean, (t, float(x.mean()))
        assert abs(float(x.var()) / sigma2 - 1) < 0.02, (t, float(x.var()))


@pytest.mark.slow   # > 5 s: CI runs it (.ci/run), the fast suite stays under 3 min
def test_transition_kernel_matches_simulation():
    """Conditioned on one x(0), x(t) ~ N(mu_hat, sigma_hat^2) (eqs. 9-11)."""
    gen = torch.Generator().manual_seed(1)
    n, mu, sigma2, x0_value = 200_000, -0.1, 0.09, 0.5
    x0 = torch.full((n,), x0_value)
    snaps = euler_maruyama(x0, torch.tensor(mu), sigma2, 0.5, 2000, gen)
    for t, x in snaps.items():
        tt = torch.tensor(t)
        m = float(SDE.mean(torch.tensor(x0_value), torch.tensor(mu), tt))
        v = float(SDE.var(sigma2, tt))
        assert abs(float(x.mean()) - m) < 5 * math.sqrt(v / n) + 2e-3, (t, float(x.mean()), m)
        assert abs(float(x.var()) / v - 1) < 0.03, (t, float(x.var()), v)


def gaussian_denoiser(m, s2, mu, sigma2):
    """Exact E[x0 | x_t] when x0 ~ N(m, s2) per pixel (Gaussian conditioning)."""
    def d(x, t):
        a = SDE.alpha(t).view(-1, *([1] * (x.dim() - 1)))
        mean_t = mu + a.sqrt() * (m - mu)
        var_t = a * s2 + (1 - a) * sigma2
        return m + a.sqrt() * s2 / var_t * (x - mean_t)
    return d


def test_probability_flow_carries_prior_to_gaussian_data():
    """With the exact score of N(m, s2) data, eq. 13 maps x(T) affinely onto the data
    distribution: x(0) = m0 + sqrt(v0 / vT) (x(T) - mT) (the Gaussian ODE flow is affine)."""
    gen = torch.Generator().manual_seed(2)
    m, s2, mu, sigma2 = 0.7, 0.01, 0.5, 0.04
    x_T = mu + math.sqrt(sigma2) * torch.randn(4096, 1, 1, 1, generator=gen)
    muT = torch.full_like(x_T, mu)
    x0, stats = sample_ode(gaussian_denoiser(m, s2, mu, sigma2), x_T, muT, sigma2, SDE, atol=1e-6, rtol=1e-6)
    assert stats["nfe"] > 0
    t_end, t_start = torch.tensor(SDE.t_eps), torch.tensor(SDE.T)

    def marg(t):
        a = SDE.alpha(t)
        return mu + a.sqrt() * (m - mu), a * s2 + (1 - a) * sigma2

    (m0, v0), (mT, vT) = marg(t_end), marg(t_start)
    expected = m0 + (v0 / vT).sqrt() * (x_T - mT)
    torch.testing.assert_close(x0, expected, atol=2e-4, rtol=0)
    assert abs(float(x0.mean()) - m) < 0.01
    assert abs(float(x0.var()) / s2 - 1) < 0.08
