"""Fixed-step samplers of eq. 13 (dpmpp_1, dpmpp_2m, dpmpp_3m, unipc, heun, rk4) on an exactly solvable case.

Data model: every pixel of x0 is N(m, s^2) given y, while the process is centred on
mu(y) = mu != m with prior variance sigma2 != s^2 (so the denoiser is not trivial).
With x_t = mu + sqrt(alpha)(x0 - mu) + sqrt((1 - alpha) sigma2) eps (eq. 17), x_t is
Gaussian with mean m_t = mu + sqrt(alpha)(m - mu) and variance
v_t = alpha s^2 + (1 - alpha) sigma2, and the exact data prediction is the Gaussian
posterior mean (Tweedie / linear regression of x0 on x_t):

    D(x, t) = E[x0 | x_t = x] = m + sqrt(alpha) s^2 / v_t (x - m_t).

The probability flow of a 1-D Gaussian family is the monotone affine map that matches
the marginals, so eq. 13 from T to t_eps has the closed-form solution

    x(t_eps) = m_eps + sqrt(v_eps / v_T) (x(T) - m_T),

which is the reference for the order test (torchdiffeq's dopri5 at tolerance 1e-6 is
only accurate to ~1e-4 here, not enough to resolve rk4's error at 64 steps; the test
checks that dopri5 at a tight tolerance agrees with the closed form).
"""
from __future__ import annotations

import math

import pytest
import torch

from ecdp.sampling import GRIDS, SAMPLERS, get_sampler, log_snr, sample_ode, time_grid
from ecdp.sde import ConditionalVPSDE, _bc

SDE = ConditionalVPSDE()
MU, SIGMA2, M, S = 0.3, 0.04, 0.45, 0.1
FAST = ("dpmpp_1", "dpmpp_2m", "dpmpp_3m", "unipc", "heun", "rk4")
NFE_PER_STEP = {"dpmpp_1": 1, "dpmpp_2m": 1, "dpmpp_3m": 1, "unipc": 1, "heun": 2, "rk4": 4}
MIN_ORDER = {"dpmpp_1": 0.8, "dpmpp_2m": 1.6, "dpmpp_3m": 2.6, "unipc": 2.6, "heun": 1.6, "rk4": 3.0}


def gaussian_denoiser(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    a = _bc(SDE.alpha(t), x)
    v = a * S**2 + (1 - a) * SIGMA2
    return M + a.sqrt() * S**2 / v * (x - MU - a.sqrt() * (M - MU))


def marginal(t: float) -> tuple[float, float]:
    a = math.exp(float(SDE.log_alpha(torch.tensor(t, dtype=torch.float64))))
    return MU + math.sqrt(a) * (M - MU), a * S**2 + (1 - a) * SIGMA2


def exact_flow(x_T: torch.Tensor) -> torch.Tensor:
    m_T, v_T = marginal(SDE.T)
    m_e, v_e = marginal(SDE.t_eps)
    return m_e + math.sqrt(v_e / v_T) * (x_T - m_T)


def prior(shape, dtype=torch.float64, seed=0):
    mu = torch.full(shape, MU, dtype=dtype)
    return SDE.prior_sample(mu, SIGMA2, torch.Generator().manual_seed(seed)), mu


def test_registered():
    for name in FAST:
        assert get_sampler(name) is SAMPLERS[name]


def test_log_snr_grid():
    ts = time_grid(SDE, 7, torch.float64)
    assert ts[0] == SDE.T and ts[-1] == SDE.t_eps
    assert (ts[1:] < ts[:-1]).all()
    lam = log_snr(SDE, ts)
    h = lam[1:] - lam[:-1]
    assert torch.allclose(h, h.mean().expand_as(h), rtol=1e-9)
    with pytest.raises(ValueError):
        time_grid(SDE, 0)


def test_other_time_grids():
    grids = {g: time_grid(SDE, 6, torch.float64, grid=g) for g in GRIDS}
    for g, ts in grids.items():
        assert ts[0] == SDE.T and ts[-1] == SDE.t_eps and (ts[1:] < ts[:-1]).all(), g
    dt = grids["time_uniform"][1:] - grids["time_uniform"][:-1]
    assert torch.allclose(dt, dt.mean().expand_as(dt), rtol=1e-9)
    root = grids["time_quadratic"].sqrt()
    assert torch.allclose(root[1:] - root[:-1], (root[1] - root[0]).expand(6), rtol=1e-9)
    s = torch.exp(-log_snr(SDE, grids["edm"]) / 7)  # sigma^(1/rho), sigma = e^{-lambda}
    assert torch.allclose(s[1:] - s[:-1], (s[1] - s[0]).expand(6), rtol=1e-6)
    assert not torch.allclose(grids["edm"], grids["logsnr"])
    with pytest.raises(ValueError, match="unknown grid"):
        time_grid(SDE, 3, grid="cosine")


def test_grid_option_reaches_the_samplers():
    x_T, mu = prior((1, 3, 4, 4))
    for name in FAST:
        a, sa = get_sampler(name)(gaussian_denoiser, x_T, mu, SIGMA2, SDE, steps=4)
        b, sb = get_sampler(name)(gaussian_denoiser, x_T, mu, SIGMA2, SDE, steps=4, grid="time_uniform")
        assert "grid" not in sa and sb["grid"] == "time_uniform"
        assert not torch.allclose(a, b), name
        err = [(get_sampler(name)(gaussian_denoiser, x_T, mu, SIGMA2, SDE, steps=n, grid="time_quadratic")[0]
                - exact_flow(x_T)).abs().max() for n in (8, 64)]
        assert err[1] < 0.2 * err[0], (name, err)   # another grid still converges to the flow


@pytest.mark.parametrize("name", FAST)
@pytest.mark.parametrize("steps", [1, 3, 10])
def test_nfe_accounting(name, steps):
    calls = []

    def d(x, t):
        calls.append(t)
        assert t.shape == (x.shape[0],)
        return gaussian_denoiser(x, t)

    x_T, mu = prior((2, 3, 4, 4), torch.float32)
    x, stats = SAMPLERS[name](d, x_T, mu, SIGMA2, SDE, steps=steps)
    assert stats == {"nfe": NFE_PER_STEP[name] * steps, "sampler": name, "steps": steps}
    assert len(calls) == stats["nfe"]
    assert x.shape == x_T.shape and x.dtype == torch.float32 and torch.isfinite(x).all()
    assert all(SDE.t_eps - 1e-7 <= float(t[0]) <= SDE.T + 1e-7 for t in calls)


@pytest.mark.parametrize("name,steps", [("dpmpp_1", 400), ("dpmpp_2m", 50), ("heun", 50), ("rk4", 20)])
def test_maps_prior_to_data_distribution(name, steps):
    """N(mu, sigma2) prior samples come out N(m, s^2) (Monte Carlo tolerance)."""
    x_T, mu = prior((4, 3, 64, 64), torch.float32, seed=1)
    x, _ = SAMPLERS[name](gaussian_denoiser, x_T, mu, SIGMA2, SDE, steps=steps)
    n = x.numel()
    # 5 standard errors + the prior's own mismatch with p_T (alpha(T) = 4e-5: ~1e-3 in the mean)
    assert abs(float(x.mean()) - M) < 5 * S / math.sqrt(n) + 2e-3
    assert abs(float(x.std()) / S - 1) < 5 * math.sqrt(0.5 / n) + 0.01
    # and the sample itself is close to the exact transport of the same noise
    assert float((x.double() - exact_flow(x_T.double())).abs().mean()) < 0.01 * S


def test_dopri5_agrees_with_closed_form():
    x_T, mu = prior((1, 1, 16, 16))
    ref, stats = sample_ode(gaussian_denoiser, x_T, mu, SIGMA2, SDE, atol=1e-10, rtol=1e-10)
    assert float((ref - exact_flow(x_T)).abs().max()) < 1e-7
    loose, _ = sample_ode(gaussian_denoiser, x_T, mu, SIGMA2, SDE, atol=1e-6, rtol=1e-6)
    assert float((loose - ref).abs().max()) < 1e-3


@pytest.mark.parametrize("name", FAST)
def test_convergence_order(name):
    """Max error vs. the exact flow falls like steps^-p; observed p (least squares over
    16, 32, 64 steps) above 0.8 / 1.6 / 1.6 / 3 for orders 1 / 2 / 2 / 4."""
    x_T, mu = prior((1, 1, 32, 32))
    exact = exact_flow(x_T)
    steps = [16, 32, 64]
    errs = []
    for n in steps:
        x, _ = SAMPLERS[name](gaussian_denoiser, x_T, mu, SIGMA2, SDE, steps=n)
        errs.append(float((x - exact).abs().max()))
    xs = torch.tensor([math.log(n) for n in steps], dtype=torch.float64)
    ys = torch.tensor([math.log(e) for e in errs], dtype=torch.float64)
    slope = float(((xs - xs.mean()) * (ys - ys.mean())).sum() / ((xs - xs.mean()) ** 2).sum())
    print(f"\n{name}: errors {['%.2e' % e for e in errs]} observed order {-slope:.2f}")
    assert errs[0] > errs[1] > errs[2]
    assert -slope > MIN_ORDER[name]


@pytest.fixture(scope="module")
def tiny_model(tiny_data):
    from helpers import tiny_config
    from ecdp.model import ECDP

    torch.manual_seed(0)
    return ECDP(tiny_config(tiny_data), {"scale": 4, "sigma2": 0.01}).eval()


@pytest.mark.parametrize("name", FAST)
def test_through_ecdp_super_resolve(tiny_model, name):
    """The registered names work as ``sampler`` options of a model."""
    lr = torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    sr, stats = tiny_model.super_resolve(lr, generator=torch.Generator().manual_seed(0), name=name, steps=1)
    assert sr.shape == (1, 3, 16, 16) and stats["nfe"] == NFE_PER_STEP[name]


def test_fast_sampler_differentiates_directly(tiny_model):
    """Direct backprop through a fixed-step sampler (e.g. a cheap eq. 19 quality loss)."""
    lr = torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    mu, cond = tiny_model.mu(lr), tiny_model.encoder(lr).detach()
    x, _ = tiny_model.sample(mu, cond, {"name": "dpmpp_2m", "steps": 2}, generator=torch.Generator().manual_seed(0),
                             train=True)
    x.mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in tiny_model.unet.parameters())


@pytest.mark.parametrize("offsets", [[0.0], [0.0, -0.3], [0.0, -0.3, -0.7], [0.4, 0.0, -0.3, -0.7]])
def test_adams_weights_integrate_polynomials_exactly(offsets):
    """sum_j w_j P(tau_j) = int_0^h e^{-(h - tau)} P(tau) d tau for P of degree < len(offsets)
    (checked against a 20000-point midpoint rule), and the weights sum to 1 - e^{-h}."""
    from ecdp.sampling import adams_weights

    h = 0.4
    w = adams_weights(offsets, h)
    assert sum(w) == pytest.approx(-math.expm1(-h), rel=1e-12)
    n = 20000
    taus = [(k + 0.5) * h / n for k in range(n)]
    for degree in range(len(offsets)):
        exact = sum(math.exp(-(h - t)) * (1 + t) ** degree for t in taus) * h / n
        assert sum(wj * (1 + o) ** degree for wj, o in zip(w, offsets)) == pytest.approx(exact, rel=1e-7)


def test_unipc_order_option():
    from ecdp.sampling import check_options

    x_T, mu = prior((1, 1, 8, 8))
    exact = exact_flow(x_T)
    errs = {o: float((SAMPLERS["unipc"](gaussian_denoiser, x_T, mu, SIGMA2, SDE, steps=8, order=o)[0]
                      - exact).abs().max()) for o in (1, 2, 3)}
    assert errs[3] < errs[1] and errs[2] < errs[1]          # higher order, smaller error at 8 steps
    with pytest.raises(ValueError, match="order: 1, 2 or 3"):
        check_options({"name": "unipc", "order": 4})


def test_fitted_grid_is_a_valid_grid_and_checked():
    ts = time_grid(SDE, 3, torch.float64, grid=[0.2, 0.7])
    lam = log_snr(SDE, ts)
    assert ts[0] == SDE.T and ts[-1] == SDE.t_eps and (ts[1:] < ts[:-1]).all()
    frac = (lam - lam[0]) / (lam[-1] - lam[0])
    assert torch.allclose(frac[1:-1], torch.tensor([0.2, 0.7], dtype=torch.float64), atol=1e-9)
    for bad in ([0.7, 0.2], [0.2], [0.0, 0.5], [0.5, 1.0], ["a", 0.5]):
        with pytest.raises(ValueError, match="grid"):
            time_grid(SDE, 3, grid=bad)
    from ecdp.sampling import check_options
    check_options({"name": "unipc", "steps": 3, "grid": [0.2, 0.7]})
    with pytest.raises(ValueError, match="grid"):
        check_options({"name": "unipc", "steps": 3, "grid": [0.2]})


def test_fit_time_grid_lowers_the_solver_error():
    """On the exactly solvable case, the grid fitted to dpmpp_2m at 3 steps is closer to
    the flow's exact solution than the uniform log-SNR grid it starts from; sampling
    with the fitted fractions reproduces the error the fit reports."""
    from ecdp.sampling import fit_time_grid

    x_T, mu = prior((1, 1, 8, 8))
    ref = exact_flow(x_T)

    def error(fr):
        x, _ = SAMPLERS["dpmpp_2m"](gaussian_denoiser, x_T, mu, SIGMA2, SDE, steps=3, **({"grid": fr} if fr else {}))
        return float((x - ref).pow(2).mean().sqrt())

    fr, info = fit_time_grid(error, 3, max_evals=60)
    assert len(fr) == 2 and 0 < fr[0] < fr[1] < 1
    assert info["error_fitted"] < 0.5 * info["error_uniform"]
    assert error(fr) == pytest.approx(info["error_fitted"])
    assert info["evaluations"] <= 60
