"""ecdp.external: SR3's and SRDiff's discrete chains served by ECDP's fixed-step samplers
(issue 15, "samplers across methods").

Gaussian data x0 ~ N(m, s^2) per pixel in the method's sampling space (mu = 0, sigma^2 = 1):
with alpha = alpha(t) the noisy marginal is N(sqrt(alpha) m, v), v = alpha s^2 + 1 - alpha,
the exact noise prediction is eps = (x - sqrt(alpha) E[x0 | x]) / sqrt(1 - alpha) with
E[x0 | x] = m + sqrt(alpha) s^2 / v (x - sqrt(alpha) m), and the probability flow is the
affine map x(t_eps) = m_eps + sqrt(v_eps / v_T) (x(T) - m_T).
"""
from __future__ import annotations

import math

import pytest
import torch

from baselines import ddpm
from ecdp import config as config_mod
from ecdp.external import SAMPLERS, DiscreteVP, sample

M, S = 0.3, 0.2
SCHEDULES = {"sr3": ddpm.make_schedule("linear", T=2000, beta_start=1e-6, beta_end=1e-2),
             "srdiff": ddpm.make_schedule("cosine", T=100)}


def oracle(process):
    def eps(x, t):
        a = process.alpha(t).to(x.dtype).reshape(-1, 1, 1, 1)
        v = a * S**2 + (1 - a)
        x0 = M + a.sqrt() * S**2 / v * (x - a.sqrt() * M)
        return (x - a.sqrt() * x0) / (1 - a).sqrt()
    return eps


def exact(process, x_T):
    def marg(t):
        a = float(process.alpha(torch.tensor(t, dtype=torch.float64)))
        return math.sqrt(a) * M, a * S**2 + 1 - a
    (m_T, v_T), (m_e, v_e) = marg(process.T), marg(process.t_eps)
    return m_e + math.sqrt(v_e / v_T) * (x_T - m_T)


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_discrete_vp_is_the_chain(name):
    ab = SCHEDULES[name].alpha_bar
    p = DiscreteVP(alpha_bar=ab)
    n = len(ab)
    t = (torch.arange(n, dtype=torch.float64) + 1) / n
    torch.testing.assert_close(p.alpha(t), ab, rtol=1e-12, atol=0)               # alpha(t_i) = alpha_bar_i
    mid = torch.linspace(0.01, 0.99, 37, dtype=torch.float64) + 0.3 / n      # between the chain's steps
    torch.testing.assert_close(p.t_from_log_alpha(p.log_alpha(mid)), mid, rtol=0, atol=1e-9)
    h = 1e-7
    fd = -(p.log_alpha(mid + h) - p.log_alpha(mid - h)) / (2 * h)
    torch.testing.assert_close(p.beta(mid), fd, rtol=1e-5, atol=1e-6)          # beta = -d log alpha / dt
    assert p.T == 1.0 and p.t_eps == pytest.approx(1 / n)
    with pytest.raises(ValueError):
        DiscreteVP(alpha_bar=torch.tensor([0.5, 0.9]))                           # not decreasing


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_exponential_integrator_solves_the_discrete_flow(name):
    """dpmpp_2m on the interpolated chain converges to the exact probability flow at second order."""
    p = DiscreteVP(alpha_bar=SCHEDULES[name].alpha_bar)
    x_T = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = exact(p, x_T)
    errs = []
    for steps in (40, 80, 160):
        x, stats = sample(oracle(p), p, x_T, "dpmpp_2m", steps=steps)
        assert stats["nfe"] == steps
        errs.append(float((x - ref).abs().max()))
    order = math.log2(errs[0] / errs[-1]) / 2            # second order: errors / 4 per doubling
    assert errs[-1] < 5e-4 and order > 1.7, errs


@pytest.mark.parametrize("name", sorted(SCHEDULES))
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_maps_the_prior_to_the_data(name, sampler):
    p = DiscreteVP(alpha_bar=SCHEDULES[name].alpha_bar)
    x_T = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    steps = {"dpmpp_1": 200, "dpmpp_2m": 30, "dpmpp_3m": 30, "unipc": 30, "heun": 30, "rk4": 10}[sampler]
    x, _ = sample(oracle(p), p, x_T, sampler, steps=steps)
    assert abs(float(x.mean()) - M) < 0.01 and abs(float(x.std()) / S - 1) < 0.03


@pytest.mark.parametrize("method", ["sr3", "srdiff"])
def test_baselines_sample_with_ecdp_samplers(method, tiny_data):
    from baselines.sr3 import SR3
    from baselines.srdiff import SRDiff
    from pathlib import Path

    cfg = config_mod.load(Path(__file__).parent.parent / "config" / f"tiny-{method}.yaml")
    torch.manual_seed(0)
    model = {"sr3": SR3, "srdiff": SRDiff}[method](cfg, {"scale": 4}).eval()
    lr = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    a, st = model.super_resolve(lr, torch.Generator().manual_seed(3), name="dpmpp_2m", steps=4)
    b, _ = model.super_resolve(lr, torch.Generator().manual_seed(3), name="dpmpp_2m", steps=4)
    assert a.shape == (1, 3, 32, 32) and st["nfe"] == 4 and st["chain"] == "external" and torch.equal(a, b)
    _, st = model.super_resolve(lr, torch.Generator().manual_seed(3), name="rk4", steps=2, grid="time_uniform")
    assert st["nfe"] == 8
    type(model).check_sampler(cfg, {"name": "dpmpp_2m", "steps": 4})
    for bad, message in [({"name": "dpmpp_2m", "steps": 0}, "steps"), ({"name": "ode"}, "samples with"),
                         ({"name": "heun", "grid": "cosine"}, "grid")]:
        with pytest.raises(ValueError, match=message):
            type(model).check_sampler(cfg, bad)
