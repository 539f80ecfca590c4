"""Samplers for ECDP: one flat list sharing one signature (k-diffusion style).

Every sampler is ``sample_NAME(denoiser, x_T, mu, sigma2, sde, **options) -> (x_0, stats)``
where ``denoiser(x, t) -> D`` is the model's data prediction at scalar time ``t``
(for ECDP the blend implied by the hybrid score, :meth:`Parametrization.denoised`).
Because every parametrization's score is linear in its heads, ``D`` alone fixes the
score (eq. 15 applied to D):

    s(x, t) = -(x - mu_hat(D, y, t)) / sigma_hat^2(y, t)

so the probability-flow ODE (eq. 13) reads

    dx/dt = -1/2 beta(t) [ (x - mu) - ((x - mu) - sqrt(alpha) (D - mu)) / (1 - alpha) ].

``stats`` carries at least ``nfe`` (network evaluations).  Time runs from T = 1 to
``sde.t_eps`` (1/3000, the released code's end point; no final denoising jump).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor
from torchdiffeq import odeint, odeint_adjoint

from .sde import ConditionalVPSDE, _bc

Denoiser = Callable[[Tensor, Tensor], Tensor]


def score_from_denoised(sde: ConditionalVPSDE, x: Tensor, mu: Tensor, sigma2, t: Tensor, d: Tensor) -> Tensor:
    """Eq. 15 with the data prediction D in place of x0_theta."""
    return -(x - sde.mean(d, mu, t)) / sde.var(sigma2, t, like=x)


class _Counter:
    def __init__(self, fn: Denoiser):
        self.fn, self.nfe = fn, 0

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        self.nfe += 1
        return self.fn(x, t)


class ProbabilityFlow(torch.nn.Module):
    """Right-hand side of eq. 13 as an ``nn.Module`` (what ``odeint_adjoint`` wants)."""

    def __init__(self, denoiser: Denoiser, mu: Tensor, sigma2, sde: ConditionalVPSDE):
        super().__init__()
        self.denoiser, self.mu, self.sigma2, self.sde = _Counter(denoiser), mu, sigma2, sde

    @property
    def nfe(self) -> int:
        return self.denoiser.nfe

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        tb = t.expand(x.shape[0])
        d = self.denoiser(x, tb)
        score = score_from_denoised(self.sde, x, self.mu, self.sigma2, tb, d)
        return self.sde.ode_drift(x, self.mu, self.sigma2, tb, score)


def sample_ode(denoiser: Denoiser, x_T: Tensor, mu: Tensor, sigma2, sde: ConditionalVPSDE, *,
               method: str = "dopri5", atol: float = 1e-4, rtol: float = 1e-4, step_size: float | None = None,
               adjoint: bool = False, adjoint_params=None, generator=None, **_) -> tuple[Tensor, dict]:
    """Probability-flow sampling (eq. 13) with a torchdiffeq solver, from t = T to t_eps.

    Paper: "a standard Runge-Kutta ODE solver with absolute and relative error
    tolerance of 1e-4" (dopri5); the released code uses 1e-3.  ``adjoint=True``
    integrates with ``odeint_adjoint`` (memory O(1) in the number of steps, used by the
    image-quality loss, eq. 19); ``adjoint_params`` are the tensors it differentiates
    (the released code: U-Net parameters only).  Fixed-step methods (``euler``,
    ``midpoint``, ``rk4``) take ``step_size``.
    """
    func = ProbabilityFlow(denoiser, mu, sigma2, sde)
    ts = torch.tensor([sde.T, sde.t_eps], dtype=x_T.dtype, device=x_T.device)
    options = {"step_size": step_size} if step_size is not None else None
    if adjoint:
        params = tuple(adjoint_params) if adjoint_params is not None else ()
        out = odeint_adjoint(func, x_T, ts, method=method, atol=atol, rtol=rtol, options=options,
                             adjoint_params=params, adjoint_options=options)
    else:
        out = odeint(func, x_T, ts, method=method, atol=atol, rtol=rtol, options=options)
    return out[-1], {"nfe": func.nfe, "sampler": f"ode-{method}", "atol": atol, "rtol": rtol}


def sample_reverse_sde(denoiser: Denoiser, x_T: Tensor, mu: Tensor, sigma2, sde: ConditionalVPSDE, *,
                       steps: int = 300, generator: torch.Generator | None = None, checkpoint: bool = False,
                       **_) -> tuple[Tensor, dict]:
    """Euler-Maruyama on the reverse SDE (eq. 2 with eq. 5's drift and diffusion).

    The "without probability flow" ablation of Table 7 (released code: a 300-step
    ancestral sampler with per-step gradient checkpointing).  Uniform steps from T to
    t_eps; no noise is added on the last step.  ``checkpoint=True`` recomputes each step
    in the backward pass so memory stays flat in ``steps``.
    """
    ts = torch.linspace(sde.T, sde.t_eps, steps + 1, dtype=x_T.dtype, device=x_T.device)
    counter = _Counter(denoiser)
    noise = [torch.randn(x_T.shape, generator=generator, device=x_T.device, dtype=x_T.dtype) for _ in range(steps - 1)]

    def step(x, i):
        t, dt = ts[i].expand(x.shape[0]), ts[i] - ts[i + 1]
        score = score_from_denoised(sde, x, mu, sigma2, t, counter(x, t))
        x = x - sde.reverse_drift(x, mu, sigma2, t, score) * dt
        if i < steps - 1:
            x = x + _bc(sde.diffusion(sigma2, t), x) * dt.sqrt() * noise[i]
        return x

    x = x_T
    for i in range(steps):
        if checkpoint and torch.is_grad_enabled():
            x = torch.utils.checkpoint.checkpoint(step, x, i, use_reentrant=False)
        else:
            x = step(x, i)
    return x, {"nfe": counter.nfe, "sampler": "reverse-sde", "steps": steps}


SAMPLERS: dict[str, Callable[..., tuple[Tensor, dict]]] = {
    "ode": sample_ode,
    "reverse_sde": sample_reverse_sde,
}


def get_sampler(name: str):
    try:
        return SAMPLERS[name]
    except KeyError:
        raise ValueError(f"unknown sampler {name!r}; choose from {sorted(SAMPLERS)}") from None
