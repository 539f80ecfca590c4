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

Samplers (``SAMPLERS``): ``ode`` (torchdiffeq, the paper's adaptive dopri5),
``ddpm_chain`` (the released ancestral chain of the "without probability flow"
ablation), ``reverse_sde`` (Euler-Maruyama), and fixed-step probability-flow samplers with
``steps`` intervals, uniform in log-SNR unless ``grid`` says otherwise (:func:`time_grid`):
``dpmpp_1`` and ``dpmpp_2m`` (exponential
integrators of eq. 13 in data prediction, derived below; N NFE), ``heun`` (2N NFE)
and ``rk4`` (4N NFE).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor
from torchdiffeq import odeint, odeint_adjoint

from .distributed import batch_randn
from .sde import ConditionalVPSDE, _bc

Denoiser = Callable[[Tensor, Tensor], Tensor]


def score_from_denoised(sde: ConditionalVPSDE, x: Tensor, mu: Tensor, sigma2, t: Tensor, d: Tensor) -> Tensor:
    """Eq. 15 with the data prediction D in place of x0_theta."""
    return -(x - sde.mean(d, mu, t)) / sde.var(sigma2, t, like=x)


class NFECounter:
    """Wraps a network function (a denoiser ``D(x, t)``, an ``eps_fn(x, i)``) and counts
    its calls: the NFE every sampler reports (the baselines' chains use it too)."""

    def __init__(self, fn):
        self.fn, self.nfe = fn, 0

    def __call__(self, *args):
        self.nfe += 1
        return self.fn(*args)


class ProbabilityFlow(torch.nn.Module):
    """Right-hand side of eq. 13 as an ``nn.Module`` (what ``odeint_adjoint`` wants).

    ``state="normalized"`` (default, the released code) integrates
    ``z = (x - mu) / sigma``: ``dz/dt = f(mu + sigma z, t) / sigma``, so a tolerance is
    relative to z; ``state="pixel"`` integrates x itself (``scale = 1``, ``shift = 0``).
    """

    def __init__(self, denoiser: Denoiser, mu: Tensor, sigma2, sde: ConditionalVPSDE, state: str = "normalized"):
        super().__init__()
        if state not in STATES:
            raise ValueError(f"sampler state must be one of {STATES}, got {state!r}")
        self.denoiser, self.mu, self.sigma2, self.sde = NFECounter(denoiser), mu, sigma2, sde
        if state == "normalized":
            self.shift, self.scale = mu, _bc(torch.as_tensor(sigma2, dtype=mu.dtype, device=mu.device), mu).sqrt()
        else:
            self.shift, self.scale = 0.0, 1.0

    @property
    def nfe(self) -> int:
        return self.denoiser.nfe

    def to_state(self, x: Tensor) -> Tensor:
        return (x - self.shift) / self.scale

    def from_state(self, z: Tensor) -> Tensor:
        return self.shift + self.scale * z

    def forward(self, t: Tensor, z: Tensor) -> Tensor:
        # Every accepted step ends on [t_eps, T] (``jump_t`` in :func:`sample_ode`), but
        # dopri5's initial-step probe may evaluate beyond it, where alpha(t) > 1 would make
        # sigma_hat^2 negative; the clamp extends the drift constantly there.
        x = self.from_state(z)
        tb = t.clamp(self.sde.t_eps, self.sde.T).expand(x.shape[0])
        d = self.denoiser(x, tb)
        score = score_from_denoised(self.sde, x, self.mu, self.sigma2, tb, d)
        return self.sde.ode_drift(x, self.mu, self.sigma2, tb, score) / self.scale


#: ODE states of :func:`sample_ode` (``state`` option); ``normalized`` is the default.
STATES = ("normalized", "pixel")


def sample_ode(denoiser: Denoiser, x_T: Tensor, mu: Tensor, sigma2, sde: ConditionalVPSDE, *,
               method: str = "dopri5", atol: float = 1e-4, rtol: float = 1e-4, step_size: float | None = None,
               state: str = "normalized", adjoint: bool = False, adjoint_params=None, adjoint_seminorm: bool = True,
               t_end: float | None = None, generator=None, **_) -> tuple[Tensor, dict]:
    """Probability-flow sampling (eq. 13) with a torchdiffeq solver, from t = T to t_eps.

    Paper: "a standard Runge-Kutta ODE solver with absolute and relative error
    tolerance of 1e-4" (dopri5); the released code uses 1e-3.

    End point: adaptive solvers get both ends as torchdiffeq's ``jump_t`` (the released
    code's ``generate()``), so the last accepted step lands exactly on t_eps (forward)
    and on T (the adjoint's backward solve) and the value returned there is an
    error-controlled step, not the interpolant of a step that overshot it.  ``jump_t`` re-evaluates the drift at the end point: one NFE more than
    a plain step, as in the released code.

    ``state``: what the solver integrates, hence what ``atol`` / ``rtol`` are relative
    to.  ``normalized`` (default; the released code's ``z = 5 (x - bicubic(y))``):
    ``z = (x - mu) / sigma``; ``pixel``: x in [0, 1] units, 1/sigma times looser at the
    same tolerance.  The paper does not say which.  The fixed-step samplers below are
    affine-equivariant, so the state does not change them.

    ``adjoint=True`` integrates with ``odeint_adjoint`` (memory O(1) in the number of
    steps, used by the image-quality loss, eq. 19); ``adjoint_params`` are the tensors it
    differentiates (the released code: U-Net parameters only); ``adjoint_seminorm``
    leaves the parameter-gradient channels out of the backward solve's error control
    (Kidger et al. 2021, torchdiffeq's ``norm="seminorm"``), which cuts its NFE
    several-fold at the same state accuracy.  Fixed-step methods (``euler``,
    ``midpoint``, ``rk4``) take ``step_size``.  ``t_end`` stops early (default ``sde.t_eps``).
    """
    times = [sde.T, sde.t_eps if t_end is None else t_end]
    xs, stats = ode_trajectory(denoiser, x_T, mu, sigma2, sde, times, method=method, atol=atol, rtol=rtol,
                               step_size=step_size, state=state, adjoint=adjoint, adjoint_params=adjoint_params,
                               adjoint_seminorm=adjoint_seminorm)
    return xs[-1], stats


def ode_trajectory(denoiser: Denoiser, x_T: Tensor, mu: Tensor, sigma2, sde: ConditionalVPSDE, times, *,
                   method: str = "dopri5", atol: float = 1e-4, rtol: float = 1e-4, step_size: float | None = None,
                   state: str = "normalized", adjoint: bool = False, adjoint_params=None,
                   adjoint_seminorm: bool = True) -> tuple[Tensor, dict]:
    """Eq. 13 solved from ``times[0]`` (x_T) through every time of ``times`` (decreasing):
    ``(xs, stats)`` with ``xs[k]`` the solution at ``times[k]`` (``xs[0]`` is ``x_T``).

    :func:`sample_ode` is its two-point case ``[T, t_eps]``.  Adaptive solvers get every
    time as torchdiffeq's ``jump_t``, so each output is the end of an error-controlled
    step, never an interpolant (the end-point rule of :func:`sample_ode`, applied to each
    time); the options are :func:`sample_ode`'s.  Used for the per-interval targets of
    a distilled student (the teacher's solution at the student's grid points)."""
    func = ProbabilityFlow(denoiser, mu, sigma2, sde, state)
    ts = torch.as_tensor([float(t) for t in times], dtype=x_T.dtype, device=x_T.device)
    if ts.numel() < 2 or not bool((ts[1:] < ts[:-1]).all()):
        raise ValueError(f"ode_trajectory needs at least two strictly decreasing times, got {ts.tolist()}")
    if step_size is not None:
        options = {"step_size": step_size}
    elif method in _TORCHDIFFEQ_ADAPTIVE:
        options = {"jump_t": ts.clone()}
    else:
        options = None
    z_T = func.to_state(x_T)
    if adjoint:
        params = tuple(adjoint_params) if adjoint_params is not None else ()
        adjoint_options = dict(options or {})
        if adjoint_seminorm and step_size is None:
            adjoint_options["norm"] = "seminorm"
        out = odeint_adjoint(func, z_T, ts, method=method, atol=atol, rtol=rtol, options=options,
                             adjoint_params=params, adjoint_options=adjoint_options or None)
    else:
        out = odeint(func, z_T, ts, method=method, atol=atol, rtol=rtol, options=options)
    stats = {"nfe": func.nfe, "sampler": f"ode-{method}", "atol": atol, "rtol": rtol, "state": state}
    return func.from_state(out), stats


#: torchdiffeq's adaptive Runge-Kutta solvers (they accept ``jump_t``).
_TORCHDIFFEQ_ADAPTIVE = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")


def _chain(step, x: Tensor, steps: int, noise_at, checkpoint: bool) -> Tensor:
    """Run ``x = step(x, i, z_i)`` for ``i < steps``; ``z_i = noise_at(i)`` is drawn from the
    generator step by step (never all up front), outside the checkpointed step so that
    recomputation in the backward pass reuses it."""
    for i in range(steps):
        z = noise_at(i)
        if checkpoint and torch.is_grad_enabled():
            x = torch.utils.checkpoint.checkpoint(step, x, i, z, use_reentrant=False)
        else:
            x = step(x, i, z)
    return x


def sample_reverse_sde(denoiser: Denoiser, x_T: Tensor, mu: Tensor, sigma2, sde: ConditionalVPSDE, *,
                       steps: int = 300, generator: torch.Generator | None = None, checkpoint: bool = False,
                       **_) -> tuple[Tensor, dict]:
    """Euler-Maruyama on the reverse SDE (eq. 2 with eq. 5's drift and diffusion).

    An option for the "without probability flow" ablation of Table 7 (whose default,
    as released, is :func:`sample_ddpm_chain`).  Uniform steps from T to t_eps; no noise
    is added on the last step.  The noise of step i is drawn from ``generator`` when step
    i runs (memory: one noise tensor, not ``steps - 1``; the numbers are those of drawing
    them all up front in order).  ``checkpoint=True`` recomputes each step in the
    backward pass so memory stays flat in ``steps``.
    """
    ts = torch.linspace(sde.T, sde.t_eps, steps + 1, dtype=x_T.dtype, device=x_T.device)
    counter = NFECounter(denoiser)

    def noise_at(i):
        if i >= steps - 1:
            return None
        return batch_randn(x_T.shape, generator=generator, device=x_T.device, dtype=x_T.dtype)

    def step(x, i, z):
        t, dt = ts[i].expand(x.shape[0]), ts[i] - ts[i + 1]
        score = score_from_denoised(sde, x, mu, sigma2, t, counter(x, t))
        x = x - sde.reverse_drift(x, mu, sigma2, t, score) * dt
        if z is not None:
            x = x + _bc(sde.diffusion(sigma2, t), x) * dt.sqrt() * z
        return x

    x = _chain(step, x_T, int(steps), noise_at, checkpoint)
    return x, {"nfe": counter.nfe, "sampler": "reverse-sde", "steps": steps}


def ddpm_chain_schedule(sde: ConditionalVPSDE, steps: int) -> tuple[Tensor, Tensor]:
    """The released code's discretisation of eq. 5 into a DDPM chain of ``steps`` steps:
    step ``i`` (0-based) sits at time ``(i + 1) / steps``, ``alpha_bar_i = alpha((i+1)/steps)``
    (eq. 11) and ``beta_i = 1 - alpha_bar_i / alpha_bar_{i-1}`` with ``alpha_bar_{-1} = 1``.
    Returns (times, alpha_bar), float64."""
    t = torch.arange(int(steps) + 1, dtype=torch.float64) / int(steps)
    ab = sde.alpha(t)
    return t[1:], ab[1:]


def sample_ddpm_chain(denoiser: Denoiser, x_T: Tensor, mu: Tensor, sigma2, sde: ConditionalVPSDE, *,
                      steps: int = 300, stop: int = 5, generator: torch.Generator | None = None,
                      checkpoint: bool = False, **_) -> tuple[Tensor, dict]:
    """Ancestral DDPM chain of the released "without probability flow" ablation (Table 7).

    In the normalised image ``z = (x - mu) / sigma`` (eqs. 5-12 with mu = 0, sigma = 1) and
    the chain of :func:`ddpm_chain_schedule`, steps ``i = steps-1 .. stop+1`` are

        z <- (z - beta_i / sqrt(1 - alpha_bar_i) eps_i) / sqrt(1 - beta_i) + sqrt(beta_i) n_i

    (variance beta_i, not the posterior variance; ``eps_i`` is the noise prediction
    implied by the blended score, eq. 14 inverted), and step ``stop`` jumps to the
    data prediction ``z0 = (z - sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar)``, i.e.
    ``D(x, (stop + 1)/steps)``.  So ``steps - stop`` NFE (released: 300 steps, stop 5:
    295 NFE, last time 6/300 = 0.02).  ``n_i`` is drawn from ``generator`` step by step;
    ``checkpoint=True`` recomputes each step in the backward pass (released: per-step
    gradient checkpointing).  The result is in pixels, ``x = mu + sigma z``.
    """
    steps, stop = int(steps), int(stop)
    if not 0 <= stop < steps:
        raise ValueError(f"ddpm_chain needs 0 <= stop < steps, got stop={stop}, steps={steps}")
    times, ab = ddpm_chain_schedule(sde, steps)
    ab_prev = torch.cat([torch.ones(1, dtype=ab.dtype), ab[:-1]])
    beta = 1 - ab / ab_prev
    sigma = _bc(torch.as_tensor(sigma2, dtype=x_T.dtype, device=x_T.device), x_T).sqrt()
    counter = NFECounter(denoiser)
    order = list(range(steps - 1, stop - 1, -1))          # chain indices, noise to data

    def noise_at(k):
        if order[k] == stop:
            return None
        return batch_randn(x_T.shape, generator=generator, device=x_T.device, dtype=x_T.dtype)

    def step(z, k, n):
        i = order[k]
        t = torch.full((z.shape[0],), float(times[i]), dtype=z.dtype, device=z.device)
        d = (counter(mu + sigma * z, t) - mu) / sigma       # data prediction in z
        a, b = float(ab[i]), float(beta[i])
        if n is None:                                       # step `stop`: the x0 jump
            return d
        eps = (z - math.sqrt(a) * d) / math.sqrt(1 - a)
        return (z - b / math.sqrt(1 - a) * eps) / math.sqrt(1 - b) + math.sqrt(b) * n

    z = _chain(step, (x_T - mu) / sigma, len(order), noise_at, checkpoint)
    return mu + sigma * z, {"nfe": counter.nfe, "sampler": "ddpm-chain", "steps": steps, "stop": stop}


# --- fixed-step fast samplers for eq. 13 -------------------------------------------
#
# Derivation (the exponential-integrator form of eq. 13 for this SDE).  Write
# u = x - mu, a_t = sqrt(alpha(t)) (the mean scale of eq. 9) and
# sig_t = sqrt((1 - alpha(t)) sigma2) (the noise std of eq. 10), so that eq. 17 is
# u_t = a_t (x0 - mu) + sig_t eps: a VP process in u with per-pixel noise scale.  With
# the score written through the data prediction D (eq. 15 applied to D),
#
#     s = -(u - a_t (D - mu)) / sig_t^2,
#
# eq. 13 becomes (beta = -d log alpha / dt)
#
#     du/dt = -1/2 beta u + 1/2 beta (u - a_t (D - mu)) / (1 - alpha)
#           = 1/2 beta alpha/(1 - alpha) u - 1/2 beta a_t/(1 - alpha) (D - mu).      (*)
#
# It is semi-linear: linear in u, nonlinear only through D.  Take the log-SNR
#
#     lambda(t) = 1/2 log(alpha / (1 - alpha))   (decreasing in t; in the normalised
#                                                 space z = u / sqrt(sigma2) it is
#                                                 exactly log(a_t / sig_t))
#
# so that d lambda/dt = -1/2 beta / (1 - alpha) and d log sig_t/dt = 1/2 beta alpha/(1 - alpha).
# The linear coefficient of (*) is d log sig_t/dt, hence it is removed exactly by the
# integrating factor 1/sig_t:
#
#     d(u/sig_t)/dt = -1/2 beta a_t / ((1 - alpha) sig_t) (D - mu)
#                   = (a_t / sig_t) (D - mu) d lambda/dt
#
#     =>  u_t / sig_t = u_s / sig_s + int_{lambda_s}^{lambda_t} (a/sig)(lambda) (D - mu) d lambda.
#
# Since a/sig = e^lambda / sqrt(sigma2) (lambda as defined above; the constant shift by
# log sqrt(sigma2) cancels in every step), with h = lambda_t - lambda_s > 0 (sampling
# goes from noise to data, lambda increases):
#
#     u_t = (sig_t / sig_s) u_s + sig_t / sqrt(sigma2) int_{lambda_s}^{lambda_t} e^lambda (D - mu) d lambda.
#
# This is DPM-Solver++ (Lu et al. 2022) for the affine image u = x - mu with the
# variance-preserving scaling by sigma2: freezing D at its value D_s gives
#
#     x_t = mu + (sig_t / sig_s)(x_s - mu) + a_t (1 - e^{-h}) (D_s - mu)      ("dpmpp_1")
#
# (sig_t e^{lambda_t} / sqrt(sigma2) = a_t), the DDIM step of this SDE, first order.
# Expanding D linearly in lambda with the previous step's prediction (multistep, no
# extra evaluation), r = h_prev / h:
#
#     D' = (1 + 1/(2r)) D_i - 1/(2r) D_{i-1},   then the same update with D' ("dpmpp_2m",
#     second order; the first step has no history and uses D_0).
#
# ``heun`` (explicit trapezoid) and ``rk4`` (classical Runge-Kutta) integrate eq. 13 as
# written (in t) on the same grid.  Every fixed-step sampler uses N = ``steps``
# intervals whose end points are by default uniform in lambda between lambda(T) and
# lambda(t_eps), mapped back with alpha = sigmoid(2 lambda) and ``sde.t_from_log_alpha``
# (``grid`` picks another spacing, :func:`time_grid`; the sampler study compares them).
#
# NFE: dpmpp_1 and dpmpp_2m use exactly N evaluations (one per step; 2M reuses the
# stored D_{i-1}); heun uses 2N (the final step is corrected too: the ODE is regular at
# t_eps > 0, so EDM's 2N - 1, which skips the correction at sigma = 0, does not apply);
# rk4 uses 4N.


def log_snr(sde: ConditionalVPSDE, t: Tensor) -> Tensor:
    """lambda(t) = 1/2 log(alpha / (1 - alpha)): the log-SNR of the normalised image (x - mu)/sigma."""
    la = sde.log_alpha(t)
    return 0.5 * (la - torch.log(-torch.expm1(la)))


def t_from_log_snr(sde: ConditionalVPSDE, lam: Tensor) -> Tensor:
    """Inverse of :func:`log_snr`: alpha = sigmoid(2 lambda), then ``sde.t_from_log_alpha``."""
    return sde.t_from_log_alpha(-torch.nn.functional.softplus(-2.0 * lam))


#: Time grids of the fixed-step samplers (``grid`` option); ``logsnr`` is the default.
#: Besides these names, ``grid`` may be a list of ``steps - 1`` increasing fractions in
#: (0, 1): the interior grid points' positions in log-SNR between T and t_eps (a grid
#: fitted to a trained model by :func:`fit_time_grid`, ``ecdp fit-grid``).
GRIDS = ("logsnr", "time_uniform", "time_quadratic", "edm")


def check_fractions(fractions, steps: int) -> list[float]:
    """A fitted grid (``grid`` as a list) as floats, or ``ValueError`` saying what is wrong."""
    try:
        fr = [float(f) for f in fractions]
    except (TypeError, ValueError):
        raise ValueError(f"sampler option grid: a name of {GRIDS} or a list of fractions, got {fractions!r}") from None
    if len(fr) != int(steps) - 1:
        raise ValueError(f"sampler option grid: a fitted grid of {steps} steps has {int(steps) - 1} interior "
                         f"fractions, got {len(fr)}")
    if not all(a < b for a, b in zip([0.0] + fr, fr + [1.0])):
        raise ValueError(f"sampler option grid: fractions must increase strictly inside (0, 1), got {fr}")
    return fr


def time_grid(sde: ConditionalVPSDE, steps: int, dtype=torch.float32, device=None, grid: str = "logsnr",
              rho: float = 7.0) -> Tensor:
    """``steps + 1`` times from T down to t_eps (end points exact).

    ``grid``: ``logsnr`` uniform in lambda (the default, as DPM-Solver++), ``time_uniform``
    uniform in t, ``time_quadratic`` uniform in sqrt(t) (DPM-Solver's option for
    high-resolution images), ``edm`` uniform in sigma^(1/rho) with sigma = e^{-lambda}
    (Karras et al. 2022, rho = 7)."""
    if int(steps) < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    n = int(steps) + 1
    ends = torch.tensor([sde.T, sde.t_eps], dtype=torch.float64)
    lam0, lam1 = float(log_snr(sde, ends[0])), float(log_snr(sde, ends[1]))
    if not isinstance(grid, str):   # a fitted grid: interior points as fractions of the log-SNR span
        u = torch.tensor([0.0, *check_fractions(grid, steps), 1.0], dtype=torch.float64)
        ts = t_from_log_snr(sde, lam0 + u * (lam1 - lam0))
    elif grid == "logsnr":
        ts = t_from_log_snr(sde, torch.linspace(lam0, lam1, n, dtype=torch.float64))
    elif grid == "time_uniform":
        ts = torch.linspace(sde.T, sde.t_eps, n, dtype=torch.float64)
    elif grid == "time_quadratic":
        ts = torch.linspace(math.sqrt(sde.T), math.sqrt(sde.t_eps), n, dtype=torch.float64) ** 2
    elif grid == "edm":
        s0, s1 = math.exp(-lam0 / rho), math.exp(-lam1 / rho)
        sig = torch.linspace(s0, s1, n, dtype=torch.float64) ** rho
        ts = t_from_log_snr(sde, -torch.log(sig))
    else:
        raise ValueError(f"unknown grid {grid!r}; choose from {GRIDS}")
    ts[0], ts[-1] = sde.T, sde.t_eps
    return ts.to(dtype=dtype, device=device)


def _fixed_stats(name: str, nfe: int, steps: int, grid) -> dict:
    if not isinstance(grid, str):
        return {"nfe": nfe, "sampler": name, "steps": int(steps), "grid": "fitted",
                "grid_fractions": [round(float(f), 6) for f in grid]}
    return {"nfe": nfe, "sampler": name, "steps": int(steps), **({} if grid == "logsnr" else {"grid": grid})}


def fit_time_grid(error: Callable[[list], float], steps: int, *, max_evals: int = 100) -> tuple[list[float], dict]:
    """The interior points of a ``steps``-interval grid that minimise ``error(fractions)``
    (issue 17: a time grid chosen on a trained model, beyond the fixed spacings of
    :func:`time_grid`).

    ``error``: fractions -> a number; the suite's is the RMS distance (8-bit levels) of a
    fixed-step sampler's image from the ODE's accurate solution of the same x(T), on a
    few *training* images (``ecdp fit-grid``, :func:`ecdp.sampler_study.fit_grid`):
    the quantity the sampler study's solver error measures, so the fit minimises the
    global error of the whole solve, not a per-step local estimate.  Parametrisation:
    ``steps`` unconstrained logits z (the last fixed at 0), the grid's log-SNR increments
    are softmax(z), so every candidate is a valid increasing grid; z = 0 is the uniform
    log-SNR grid, the start.  Optimiser: Nelder-Mead (derivative-free: each evaluation is
    a full solve) with at most ``max_evals`` evaluations; the uniform grid is kept unless
    a candidate beats it.  Returns (fractions, {"error_uniform", "error_fitted",
    "evaluations"})."""
    import numpy as np
    from scipy.optimize import minimize

    steps = int(steps)
    if steps < 2:
        return [], {"error_uniform": float(error([])), "error_fitted": None, "evaluations": 1}

    def fractions(z) -> list[float]:
        w = np.exp(np.append(np.asarray(z, dtype=np.float64), 0.0))
        return [float(f) for f in np.cumsum(w / w.sum())[:-1]]

    seen = {"n": 0}

    def objective(z) -> float:
        seen["n"] += 1
        return float(error(fractions(z)))

    z0 = np.zeros(steps - 1)
    e0 = objective(z0)
    res = minimize(objective, z0, method="Nelder-Mead",
                   options={"maxfev": max(1, int(max_evals) - 1), "xatol": 1e-3, "fatol": 1e-4 * max(e0, 1e-12),
                            "initial_simplex": np.vstack([z0] + [z0 + 0.5 * np.eye(steps - 1)[i]
                                                                 for i in range(steps - 1)])})
    best = fractions(res.x) if float(res.fun) < e0 else fractions(z0)
    return best, {"error_uniform": e0, "error_fitted": min(float(res.fun), e0), "evaluations": seen["n"]}


def _dpmpp(denoiser: Denoiser, x_T: Tensor, mu: Tensor, sigma2, sde: ConditionalVPSDE, steps: int,
           order: int, grid: str) -> tuple[Tensor, int]:
    ts = time_grid(sde, steps, x_T.dtype, x_T.device, grid)
    lam = log_snr(sde, ts.double())              # step sizes h in float64
    counter = NFECounter(denoiser)
    x, d_prev, h_prev = x_T, None, None
    for i in range(int(steps)):
        t, t_next = ts[i].expand(x.shape[0]), ts[i + 1].expand(x.shape[0])
        d = counter(x, t)
        h = float(lam[i + 1] - lam[i])
        if order == 2 and d_prev is not None:
            r = h_prev / h
            d_use = (1 + 1 / (2 * r)) * d - (1 / (2 * r)) * d_prev
        else:
            d_use = d
        x = exp_step(x, d_use, mu, sigma2, sde, t, t_next, h)
        d_prev, h_prev = d, h
    return x, counter.nfe


def exp_step(x: Tensor, d: Tensor, mu: Tensor, sigma2, sde: ConditionalVPSDE, t: Tensor, t_next: Tensor,
             h) -> Tensor:
    """One first-order exponential-integrator step of eq. 13 from ``t`` to ``t_next``
    with the data prediction ``d`` (the step of :func:`sample_dpmpp_1`, derivation above):
    ``x_t = mu + (sig_t / sig_s)(x_s - mu) + sqrt(alpha_t) (1 - e^{-h}) (d - mu)``,
    ``h = lambda(t_next) - lambda(t)``.  ``t``, ``t_next`` are per-sample (B,) times; ``h``
    a float (the samplers' float64 step) or a (B,) tensor (the distilled student's
    per-interval steps, :meth:`ecdp.model.ECDP.distill_loss`)."""
    ratio = (sde.var(sigma2, t_next, like=x) / sde.var(sigma2, t, like=x)).sqrt()   # sig_t / sig_s
    a_next = _bc(sde.alpha(t_next).sqrt(), x)
    gain = -math.expm1(-h) if isinstance(h, float) else _bc(-torch.expm1(-h), x)
    return mu + ratio * (x - mu) + a_next * gain * (d - mu)


def sample_dpmpp_1(denoiser: Denoiser, x_T: Tensor, mu: Tensor, sigma2, sde: ConditionalVPSDE, *,
                   steps: int = 50, grid: str = "logsnr", **_) -> tuple[Tensor, dict]:
    """First-order exponential integrator of eq. 13 in data prediction (DDIM-like); N NFE.

    ``x_t = mu + (sig_t/sig_s)(x_s - mu) + sqrt(alpha_t) (1 - e^{-h}) (D(x_s, s) - mu)``,
    steps uniform in log-SNR (derivation above).
    """
    x, nfe = _dpmpp(denoiser, x_T, mu, sigma2, sde, steps, 1, grid)
    return x, _fixed_stats("dpmpp_1", nfe, steps, grid)


def sample_dpmpp_2m(denoiser: Denoiser, x_T: Tensor, mu: Tensor, sigma2, sde: ConditionalVPSDE, *,
                    steps: int = 20, grid: str = "logsnr", **_) -> tuple[Tensor, dict]:
    """Second-order multistep exponential integrator (DPM-Solver++(2M)) of eq. 13; N NFE.

    Like :func:`sample_dpmpp_1` with ``D`` replaced by the linear extrapolation
    ``(1 + 1/(2r)) D_i - 1/(2r) D_{i-1}``, ``r = h_{i-1}/h_i`` (first step: ``D_0``).
    """
    x, nfe = _dpmpp(denoiser, x_T, mu, sigma2, sde, steps, 2, grid)
    return x, _fixed_stats("dpmpp_2m", nfe, steps, grid)


# Exponential Adams methods (dpmpp_3m, unipc).  Between lambda_s and lambda_t = lambda_s + h
# the exact flow of the update above is, with u = x - mu and the data prediction D(lambda),
#
#     u_t = (sig_t / sig_s) u_s + sqrt(alpha_t) int_0^h e^{-(h - tau)} (D(lambda_s + tau) - mu) d tau.
#
# Replacing D by the polynomial through p stored predictions at offsets tau_j and
# integrating it exactly gives weights w_j = sum_k (V^-T)_{jk} I_k with the moments
# I_k = int_0^h e^{-(h - tau)} tau^k d tau (I_0 = 1 - e^{-h}, I_k = h^k - k I_{k-1}) and the
# Vandermonde matrix V of the offsets (solved in units of h, float64):
#
#     x_t = mu + (sig_t / sig_s)(x_s - mu) + sqrt(alpha_t) sum_j w_j (D_j - mu).
#
# ``dpmpp_3m``: the explicit (Adams-Bashforth) form with the last three predictions
# (offsets 0, -h_1, -h_1 - h_2), lower order while the history is shorter (first step:
# dpmpp_1, second: the linear interpolant); order 3, one NFE per step, the structure of
# DPM-Solver++(3M) (Lu et al. 2022) with its coefficients from the exact moments.
# ``unipc``: a predictor-corrector in the manner of UniPC (Zhao et al. 2023): the
# explicit step of order p (``order``: 1-3) predicts x_t, the network is evaluated
# there, and the implicit (Adams-Moulton) step with that new prediction added (offsets
# h, 0, -h_1, ...) corrects x_t, raising the order by one; the evaluation at the
# predicted point is the one the next step uses, so the corrector costs no NFE (and the
# last step, after which nothing is evaluated, is not corrected).  N steps = N NFE.


def adams_weights(offsets, h: float) -> list[float]:
    """Weights w_j of sum_j w_j D_j = int_0^h e^{-(h - tau)} P(tau) d tau for the
    polynomial P through values D_j at ``offsets`` tau_j (derivation above); their sum is
    1 - e^{-h} (constants are integrated exactly)."""
    p = len(offsets)
    moments = [-math.expm1(-h)]
    for k in range(1, p):
        moments.append(h**k - k * moments[-1])
    scaled = torch.tensor([moments[k] / h**k for k in range(p)], dtype=torch.float64)
    s = torch.tensor([float(o) / h for o in offsets], dtype=torch.float64)
    vander = s[:, None] ** torch.arange(p, dtype=torch.float64)[None, :]          # V[j, k] = s_j^k
    return torch.linalg.solve(vander.T, scaled).tolist()


def _adams_step(x: Tensor, mu: Tensor, ratio: Tensor, a_next: Tensor, lam_s: float, h: float,
                history: list[tuple[float, Tensor]]) -> Tensor:
    """One exponential Adams step from lambda_s over h with (lambda_j, D_j) pairs."""
    w = adams_weights([lj - lam_s for lj, _ in history], h)
    acc = sum(wj * (dj - mu) for wj, (_, dj) in zip(w, history))
    return mu + ratio * (x - mu) + a_next * acc


def _adams(denoiser: Denoiser, x_T: Tensor, mu: Tensor, sigma2, sde: ConditionalVPSDE, steps: int, order: int,
           grid: str, correct: bool) -> tuple[Tensor, int]:
    ts = time_grid(sde, steps, x_T.dtype, x_T.device, grid)
    lam = log_snr(sde, ts.double()).tolist()
    counter = NFECounter(denoiser)
    x = x_T
    history = [(lam[0], counter(x, ts[0].expand(x.shape[0])))]       # newest first
    for i in range(int(steps)):
        t, t_next = ts[i].expand(x.shape[0]), ts[i + 1].expand(x.shape[0])
        h = lam[i + 1] - lam[i]
        ratio = (sde.var(sigma2, t_next, like=x) / sde.var(sigma2, t, like=x)).sqrt()
        a_next = _bc(sde.alpha(t_next).sqrt(), x)
        pred = _adams_step(x, mu, ratio, a_next, lam[i], h, history[:order])
        if i == int(steps) - 1:
            return pred, counter.nfe
        d_next = counter(pred, t_next)
        if correct:
            x = _adams_step(x, mu, ratio, a_next, lam[i], h, [(lam[i + 1], d_next)] + history[:order])
        else:
            x = pred
        history = [(lam[i + 1], d_next)] + history[:3]
    return x, counter.nfe


def sample_dpmpp_3m(denoiser: Denoiser, x_T: Tensor, mu: Tensor, sigma2, sde: ConditionalVPSDE, *,
                    steps: int = 10, grid: str = "logsnr", **_) -> tuple[Tensor, dict]:
    """Third-order multistep exponential integrator of eq. 13 (exponential Adams-Bashforth,
    DPM-Solver++(3M) structure; derivation above); lower order for the first two steps;
    N NFE."""
    x, nfe = _adams(denoiser, x_T, mu, sigma2, sde, steps, 3, grid, correct=False)
    return x, _fixed_stats("dpmpp_3m", nfe, steps, grid)


def sample_unipc(denoiser: Denoiser, x_T: Tensor, mu: Tensor, sigma2, sde: ConditionalVPSDE, *,
                 steps: int = 5, order: int = 2, grid: str = "logsnr", **_) -> tuple[Tensor, dict]:
    """Predictor-corrector exponential integrator of eq. 13 in the manner of UniPC: an
    explicit step of ``order`` (1-3) corrected by the implicit one with the prediction at
    the new point (order + 1), no extra NFE (derivation above); N NFE."""
    if order not in (1, 2, 3):
        raise ValueError(f"sampler option order: 1, 2 or 3, got {order!r}")
    x, nfe = _adams(denoiser, x_T, mu, sigma2, sde, steps, order, grid, correct=True)
    return x, {**_fixed_stats("unipc", nfe, steps, grid), **({} if order == 2 else {"order": order})}


def _fixed_step(denoiser: Denoiser, x_T: Tensor, mu: Tensor, sigma2, sde: ConditionalVPSDE, steps: int,
                tableau: str, grid: str) -> tuple[Tensor, int]:
    counter = NFECounter(denoiser)

    def f(x: Tensor, t: Tensor) -> Tensor:                   # right-hand side of eq. 13
        tb = t.expand(x.shape[0])
        score = score_from_denoised(sde, x, mu, sigma2, tb, counter(x, tb))
        return sde.ode_drift(x, mu, sigma2, tb, score)

    ts = time_grid(sde, steps, x_T.dtype, x_T.device, grid)
    x = x_T
    for i in range(int(steps)):
        t, t_next = ts[i], ts[i + 1]
        dt = t_next - t
        if tableau == "heun":
            k1 = f(x, t)
            k2 = f(x + dt * k1, t_next)
            x = x + dt * 0.5 * (k1 + k2)
        else:  # classical RK4
            t_mid = t + 0.5 * dt
            k1 = f(x, t)
            k2 = f(x + 0.5 * dt * k1, t_mid)
            k3 = f(x + 0.5 * dt * k2, t_mid)
            k4 = f(x + dt * k3, t_next)
            x = x + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return x, counter.nfe


def sample_heun(denoiser: Denoiser, x_T: Tensor, mu: Tensor, sigma2, sde: ConditionalVPSDE, *,
                steps: int = 20, grid: str = "logsnr", **_) -> tuple[Tensor, dict]:
    """Heun's method (explicit trapezoid, 2nd order) on eq. 13 in t; 2N NFE (last step corrected too)."""
    x, nfe = _fixed_step(denoiser, x_T, mu, sigma2, sde, steps, "heun", grid)
    return x, _fixed_stats("heun", nfe, steps, grid)


def sample_rk4(denoiser: Denoiser, x_T: Tensor, mu: Tensor, sigma2, sde: ConditionalVPSDE, *,
               steps: int = 10, grid: str = "logsnr", **_) -> tuple[Tensor, dict]:
    """Classical 4th-order Runge-Kutta on eq. 13 in t; 4N NFE."""
    x, nfe = _fixed_step(denoiser, x_T, mu, sigma2, sde, steps, "rk4", grid)
    return x, _fixed_stats("rk4", nfe, steps, grid)


SAMPLERS: dict[str, Callable[..., tuple[Tensor, dict]]] = {
    "ode": sample_ode,
    "reverse_sde": sample_reverse_sde,
    "ddpm_chain": sample_ddpm_chain,
    "dpmpp_1": sample_dpmpp_1,
    "dpmpp_2m": sample_dpmpp_2m,
    "dpmpp_3m": sample_dpmpp_3m,
    "unipc": sample_unipc,
    "heun": sample_heun,
    "rk4": sample_rk4,
}


#: Options no user gives (the method passes them).
_INTERNAL = {"generator", "adjoint_params", "_"}


def check_options(options: dict) -> None:
    """``ValueError`` naming the option for anything a sampler would ignore or reject:
    an unknown ``name``, a key the named sampler does not take (``nmae``), ``steps`` not a
    positive integer, a tolerance not a positive number, an unknown ``state`` / ``grid``."""
    import inspect

    name = options.get("name", "ode")
    fn = get_sampler(name)
    sig = inspect.signature(fn).parameters
    params = list(sig)[5:]
    allowed = {"name"} | {p for p in params if p not in _INTERNAL}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(f"sampler {name!r} has no option(s) {unknown}; its options: {sorted(allowed)}")
    for key in ("steps", "stop"):
        if key in options and (not isinstance(options[key], int) or isinstance(options[key], bool)
                               or options[key] < (1 if key == "steps" else 0)):
            raise ValueError(f"sampler option {key}: must be a {'positive' if key == 'steps' else 'non-negative'} "
                             f"integer, got {options[key]!r}")
    for key in ("atol", "rtol", "step_size"):
        v = options.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0):
            raise ValueError(f"sampler option {key}: must be a positive number, got {v!r}")
    if "state" in options and options["state"] not in STATES:
        raise ValueError(f"sampler option state: one of {STATES}, got {options['state']!r}")
    if "order" in options and options["order"] not in (1, 2, 3):
        raise ValueError(f"sampler option order: 1, 2 or 3, got {options['order']!r}")
    if "grid" in options and isinstance(options["grid"], (list, tuple)):
        check_fractions(options["grid"], options.get("steps", sig["steps"].default if "steps" in sig else 1))
    elif "grid" in options and options["grid"] not in GRIDS:
        raise ValueError(f"sampler option grid: one of {GRIDS} or a list of fractions, got {options['grid']!r}")


def get_sampler(name: str):
    try:
        return SAMPLERS[name]
    except KeyError:
        raise ValueError(f"unknown sampler {name!r}; choose from {sorted(SAMPLERS)}") from None
