"""Foreign discrete-time diffusion models for the samplers of :mod:`ecdp.sampling`
(the idea of k-diffusion's ``external.py``): SR3's and SRDiff's eps-prediction chains
served by the exponential integrators and the fixed-step Runge-Kutta samplers.

A DDPM with cumulative products ``alpha_bar_i`` (step i = 0 .. N-1) noises as
``x_i = sqrt(alpha_bar_i) x0 + sqrt(1 - alpha_bar_i) eps``: the transition kernel of
eqs. 9-10 with mu = 0 and sigma^2 = 1 in the method's own sampling space.
:class:`DiscreteVP` places step i at time ``t_i = (i + 1) / N`` and interpolates
``log alpha`` linearly in t between the steps (``log alpha(0) = 0``), so that
``alpha(t_i) = alpha_bar_i`` exactly and ``beta(t) = -d log alpha / dt`` is piecewise
constant: every sampler of :mod:`ecdp.sampling` that needs only alpha(t), its inverse
and beta(t) runs on it unchanged.  Sampling goes from T = 1 (step N-1) to
``t_eps = 1/N`` (step 0) with no final jump, like ECDP's.

:func:`eps_denoiser` turns a noise prediction into the data prediction the samplers
take, ``D = (x - sqrt(1 - alpha) eps) / sqrt(alpha)``.  The network is asked at the
continuous time of the solver's grid: SR3 conditions on the noise level sqrt(alpha(t))
(any value), SRDiff on the step index, given as the fractional ``t N - 1`` to its
sinusoidal step embedding.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

from .sde import ConditionalVPSDE

#: The samplers of ecdp.sampling a discrete DDPM can use (fixed steps on DiscreteVP).
SAMPLERS = ("dpmpp_1", "dpmpp_2m", "dpmpp_3m", "unipc", "heun", "rk4")


@dataclass(frozen=True, eq=False)
class DiscreteVP(ConditionalVPSDE):
    """A discrete schedule as a continuous-time VP process (module docstring)."""

    alpha_bar: Tensor = field(default=None)

    def __post_init__(self):
        ab = torch.as_tensor(self.alpha_bar, dtype=torch.float64)
        if ab.dim() != 1 or len(ab) < 2 or not bool(((ab > 0) & (ab < 1)).all()) or not bool((ab[1:] < ab[:-1]).all()):
            raise ValueError("alpha_bar must be a decreasing 1-D schedule in (0, 1) of at least 2 steps")
        n = len(ab)
        object.__setattr__(self, "alpha_bar", ab)
        object.__setattr__(self, "T", 1.0)
        object.__setattr__(self, "t_eps", 1.0 / n)
        object.__setattr__(self, "_t", torch.arange(n + 1, dtype=torch.float64) / n)
        object.__setattr__(self, "_la", torch.cat([torch.zeros(1, dtype=torch.float64), ab.log()]))

    @property
    def steps(self) -> int:
        return len(self.alpha_bar)

    def log_alpha(self, t) -> Tensor:
        t = torch.as_tensor(t)
        x = t.to(torch.float64).clamp(0, 1)
        k = torch.searchsorted(self._t.to(x.device), x.reshape(-1), right=True).clamp(1, self.steps).reshape(x.shape)
        t0, t1 = self._t.to(x.device)[k - 1], self._t.to(x.device)[k]
        l0, l1 = self._la.to(x.device)[k - 1], self._la.to(x.device)[k]
        out = l0 + (l1 - l0) * (x - t0) / (t1 - t0)
        return out.to(t.dtype) if t.is_floating_point() else out

    def beta(self, t) -> Tensor:
        """-d log alpha / dt on the interval of ``t`` (piecewise constant)."""
        t = torch.as_tensor(t)
        x = t.to(torch.float64).clamp(0, 1)
        k = torch.searchsorted(self._t.to(x.device), x.reshape(-1), right=False).clamp(1, self.steps).reshape(x.shape)
        slope = -(self._la.to(x.device)[k] - self._la.to(x.device)[k - 1]) * self.steps
        return slope.to(t.dtype) if t.is_floating_point() else slope

    def t_from_log_alpha(self, log_alpha) -> Tensor:
        la = torch.as_tensor(log_alpha)
        x = la.to(torch.float64)
        neg = -self._la.to(x.device)                              # increasing in t
        k = torch.searchsorted(neg, (-x).reshape(-1), right=True).clamp(1, self.steps).reshape(x.shape)
        l0, l1 = neg[k - 1], neg[k]
        t0, t1 = self._t.to(x.device)[k - 1], self._t.to(x.device)[k]
        out = t0 + (t1 - t0) * ((-x) - l0) / (l1 - l0)
        return out.to(la.dtype) if la.is_floating_point() else out

    def step_of(self, t: Tensor) -> Tensor:
        """The (fractional) chain step of time t: ``t N - 1``."""
        return t * self.steps - 1


def eps_denoiser(eps_fn: Callable[[Tensor, Tensor], Tensor], process: DiscreteVP):
    """``D(x, t)`` from a noise prediction ``eps_fn(x, t)`` (t: (B,) times of ``process``)."""
    def d(x: Tensor, t: Tensor) -> Tensor:
        a = process.alpha(t).to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
        return (x - (1 - a).sqrt() * eps_fn(x, t)) / a.sqrt()
    return d


def sample(eps_fn, process: DiscreteVP, x_T: Tensor, name: str, **options) -> tuple[Tensor, dict]:
    """Run the ECDP sampler ``name`` (one of :data:`SAMPLERS`) on a discrete eps model, in
    its sampling space (mu = 0, sigma^2 = 1), from ``x_T ~ N(0, I)``."""
    from .sampling import get_sampler

    if name not in SAMPLERS:
        raise ValueError(f"a discrete diffusion model can use the samplers {SAMPLERS}, not {name!r}")
    mu = torch.zeros_like(x_T)
    return get_sampler(name)(eps_denoiser(eps_fn, process), x_T, mu, 1.0, process, **options)
