"""Discrete-time DDPM machinery shared by SR3 and SRDiff (and their "++" variants).

Conventions (Ho et al. 2020; the SRDiff code's 0-based indexing):

* a :class:`Schedule` holds ``betas[i]`` for steps ``i = 0 .. N-1`` (DDPM's
  ``t = i + 1``), ``alpha_bar[i] = prod_{j <= i} (1 - betas[j])``, and
  ``timesteps[i]``: the index of step ``i`` in the *training* chain (``i`` itself
  for a full schedule; a subset after :meth:`Schedule.respace`).  Values are float64;
  they are cast to the data's dtype when used.
* forward process ``x_i = sqrt(alpha_bar[i]) x_0 + sqrt(1 - alpha_bar[i]) eps``;
* the reverse step ``i -> i - 1`` (``i = N-1 .. 0``) uses the network's noise
  prediction; step 0 returns the mean (no noise), so a chain of ``N`` steps costs
  ``N`` network evaluations (NFE).

Everything here is a small pure function of tensors except :func:`sample`, which runs
a whole chain (ancestral or DDIM) with optional per-step gradient checkpointing and
truncated backpropagation, and :class:`DiscreteDiffusionSR`, the stage / quality-loss
/ sampler-option scaffolding the two baselines share (the method interface of
docs/ARCHITECTURE.md).
"""
from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from ecdp.distributed import batch_randn
from ecdp import external
from ecdp.losses import build_quality_loss, quality_run_info
from ecdp.method import Method
from ecdp.sampling import NFECounter

EpsFn = Callable[[Tensor, int], Tensor]


# ------------------------------------------------------------------ schedules
def preset_model_config(model: dict, archs: dict[str, dict], family: str, label: str) -> dict:
    """A baseline's network settings: the preset ``model.arch`` names (``div2k`` or
    ``<family>-div2k``; ``custom`` starts from the DIV2K preset) overridden by the keys of
    ``model`` that the presets define.  ``label`` names the method in the error."""
    default = f"{family}-div2k"
    arch = model.get("arch", default)
    if arch != "custom" and not arch.startswith(f"{family}-"):
        arch = f"{family}-{arch}"
    if arch != "custom" and arch not in archs:
        raise ValueError(f"{label} model.arch must be one of {sorted(archs) + ['custom']}, got {model.get('arch')!r}")
    out = copy.deepcopy(archs[default if arch == "custom" else arch])
    out.update({k: v for k, v in model.items() if k in archs[default]})
    return out


def config_keys(archs: dict, default: str, diffusion: dict) -> dict:
    """The run-config keys of a baseline without a default in its DEFAULTS: ``model``
    (``arch`` and every key of its presets), ``diffusion``, ``sampler``, ``quality``."""
    return {"model": {"arch": default, **{k: None for k in archs[default]}}, "diffusion": {k: None for k in diffusion},
            "sampler": {}, "quality": {"sampler": {}, "truncate": None}}


def linear_betas(T: int, start: float = 1e-4, end: float = 2e-2) -> Tensor:
    """``linspace(start, end, T)`` (SR3: T = 2000, 1e-6 -> 1e-2)."""
    return torch.linspace(start, end, T, dtype=torch.float64)


def cosine_alpha_bar(t: Tensor, T: int, s: float = 0.008) -> Tensor:
    """Nichol & Dhariwal (2021) eq. 17: ``f(t) / f(0)``, ``f(t) = cos^2((t/T + s)/(1 + s) pi/2)``."""
    f = lambda u: torch.cos((u / T + s) / (1 + s) * math.pi / 2) ** 2
    return f(t.to(torch.float64)) / f(torch.zeros((), dtype=torch.float64))


def cosine_betas(T: int, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """``beta_t = min(1 - alpha_bar(t) / alpha_bar(t - 1), max_beta)``, t = 1 .. T.

    SRDiff's code evaluates it on ``linspace(0, T+1, T+1) / (T+1)``, which is the same
    grid k/T (k = 0 .. T) written differently (equal to 6e-15 at T = 100).
    """
    ab = cosine_alpha_bar(torch.arange(T + 1, dtype=torch.float64), T, s)
    return (1 - ab[1:] / ab[:-1]).clamp(max=max_beta)


@dataclass(frozen=True, eq=False)
class Schedule:
    betas: Tensor       # (N,) float64
    timesteps: Tensor   # (N,) int64: position of each step in the training chain

    def __post_init__(self):
        if self.betas.dim() != 1 or len(self.betas) != len(self.timesteps):
            raise ValueError("betas and timesteps must be 1-D of equal length")
        alphas = 1.0 - self.betas
        ab = torch.cumprod(alphas, 0)
        # derived vectors, computed once (the dataclass is frozen)
        object.__setattr__(self, "alphas", alphas)
        object.__setattr__(self, "alpha_bar", ab)
        abp = torch.cat([torch.ones(1, dtype=ab.dtype), ab[:-1]])
        object.__setattr__(self, "alpha_bar_prev", abp)
        object.__setattr__(self, "_coef", {
            "sqrt_ab": ab.sqrt(), "sqrt_1m_ab": (1 - ab).sqrt(),
            "sqrt_recip_ab": (1 / ab).sqrt(), "sqrt_recipm1_ab": (1 / ab - 1).sqrt(),
            "post_c0": self.betas * abp.sqrt() / (1 - ab), "post_ct": (1 - abp) * alphas.sqrt() / (1 - ab),
            "post_var": self.betas * (1 - abp) / (1 - ab),
        })

    def coef(self, name: str) -> Tensor:
        return self._coef[name]

    def __len__(self) -> int:
        return len(self.betas)

    def respace(self, steps: int | None) -> Schedule:
        """A chain of ``steps`` steps visiting ``steps`` evenly spaced training steps
        (first and last included), with ``alpha_bar`` kept at the visited steps and
        ``beta_i = 1 - alpha_bar_i / alpha_bar_{i-1}`` (improved-DDPM re-spacing).
        ``None`` or ``len(self)``: the schedule itself."""
        if steps is None or int(steps) == len(self):
            return self
        steps = int(steps)
        if not 1 <= steps <= len(self):
            raise ValueError(f"steps must be in 1..{len(self)}, got {steps}")
        idx = torch.linspace(0, len(self) - 1, steps, dtype=torch.float64).round().long()
        ab = self.alpha_bar[idx]
        ab_prev = torch.cat([torch.ones(1, dtype=ab.dtype), ab[:-1]])
        return Schedule(1.0 - ab / ab_prev, self.timesteps[idx])


def make_schedule(kind: str = "linear", T: int = 1000, beta_start: float = 1e-4, beta_end: float = 2e-2,
                  cosine_s: float = 0.008, **_) -> Schedule:
    """``kind``: ``linear`` (beta_start, beta_end) or ``cosine`` (cosine_s)."""
    T = int(T)
    if kind == "linear":
        betas = linear_betas(T, float(beta_start), float(beta_end))
    elif kind == "cosine":
        betas = cosine_betas(T, float(cosine_s))
    else:
        raise ValueError(f"unknown beta schedule {kind!r} (linear, cosine)")
    return Schedule(betas, torch.arange(T))


# ------------------------------------------------------- process and posterior
def _at(v: Tensor, i, x: Tensor):
    """``v[i]``: a Python float for an integer step (no device transfer per step), or for
    a (B,) index tensor a tensor cast to ``x`` and shaped to broadcast over it."""
    if isinstance(i, Tensor) and i.dim() > 0:
        out = v.to(x.device)[i.to(x.device)].to(x.dtype)
        return out.reshape(-1, *([1] * (x.dim() - 1)))
    return float(v[int(i)])


def q_sample(s: Schedule, x0: Tensor, i, noise: Tensor) -> Tensor:
    """``x_i ~ q(x_i | x_0)``: ``sqrt(ab_i) x0 + sqrt(1 - ab_i) noise``."""
    return _at(s.coef("sqrt_ab"), i, x0) * x0 + _at(s.coef("sqrt_1m_ab"), i, x0) * noise


def predict_x0(s: Schedule, x_t: Tensor, i, eps: Tensor) -> Tensor:
    return _at(s.coef("sqrt_recip_ab"), i, x_t) * x_t - _at(s.coef("sqrt_recipm1_ab"), i, x_t) * eps


def predict_eps(s: Schedule, x_t: Tensor, i, x0: Tensor) -> Tensor:
    return (_at(s.coef("sqrt_recip_ab"), i, x_t) * x_t - x0) / _at(s.coef("sqrt_recipm1_ab"), i, x_t)


def posterior_mean_variance(s: Schedule, x0: Tensor, x_t: Tensor, i) -> tuple[Tensor, Tensor]:
    """Mean and variance of ``q(x_{i-1} | x_i, x_0)`` (Ho et al. eq. 6-7):
    ``beta_i sqrt(ab_{i-1}) / (1 - ab_i) x0 + (1 - ab_{i-1}) sqrt(alpha_i) / (1 - ab_i) x_i`` and
    ``beta_i (1 - ab_{i-1}) / (1 - ab_i)``."""
    mean = _at(s.coef("post_c0"), i, x_t) * x0 + _at(s.coef("post_ct"), i, x_t) * x_t
    return mean, _at(s.coef("post_var"), i, x_t)


def ancestral_step(s: Schedule, x_t: Tensor, i: int, eps: Tensor, noise: Tensor | None, *,
                   variance: str = "posterior", clip: float | None = None) -> Tensor:
    """One DDPM reverse step ``x_i -> x_{i-1}`` from a noise prediction.

    Mean: the posterior mean at ``x0_hat = predict_x0(eps)`` (optionally clamped to
    ``[-clip, clip]``, the SR3 / SRDiff codes' ``clip_denoised``; without clamping this
    is Ho et al.'s ``(x - beta/sqrt(1 - ab) eps) / sqrt(alpha)``).  Variance:
    ``posterior`` (beta tilde, floored at 1e-20 as both codes do) or ``beta``
    (SR3 paper, Algorithm 2).  No noise on step 0.
    """
    x0 = predict_x0(s, x_t, i, eps)
    if clip is not None:
        x0 = x0.clamp(-clip, clip)
    mean, var = posterior_mean_variance(s, x0, x_t, int(i))
    if int(i) == 0 or noise is None:
        return mean
    if variance == "beta":
        var = float(s.betas[int(i)])
    elif variance != "posterior":
        raise ValueError(f"variance must be 'posterior' or 'beta', got {variance!r}")
    return mean + math.sqrt(max(var, 1e-20)) * noise


def ddim_step(s: Schedule, x_t: Tensor, i: int, eps: Tensor, noise: Tensor | None = None, *,
              eta: float = 0.0, clip: float | None = None) -> Tensor:
    """DDIM (Song et al. 2021, eq. 12): ``x_{i-1} = sqrt(ab') x0 + sqrt(1 - ab' - sigma^2) eps
    + sigma z`` with ``sigma = eta sqrt((1 - ab')/(1 - ab)) sqrt(1 - ab/ab')``; ``eta = 0``
    is deterministic, ``eta = 1`` the ancestral sampler's posterior variance.  With
    ``clip`` the noise is re-derived from the clamped x0."""
    x0 = predict_x0(s, x_t, i, eps)
    if clip is not None:
        x0 = x0.clamp(-clip, clip)
        eps = predict_eps(s, x_t, i, x0)
    ab, abp = float(s.alpha_bar[int(i)]), float(s.alpha_bar_prev[int(i)])
    sigma = eta * math.sqrt(max((1 - abp) / (1 - ab) * (1 - ab / abp), 0.0))
    out = math.sqrt(abp) * x0 + math.sqrt(max(1 - abp - sigma ** 2, 0.0)) * eps
    if sigma > 0 and int(i) > 0 and noise is not None:
        out = out + sigma * noise
    return out


# ---------------------------------------------------------------- the chain
def sample(eps_fn: EpsFn, s: Schedule, x_T: Tensor, *, method: str = "ancestral",
           generator: torch.Generator | None = None, variance: str = "posterior", clip: float | None = None,
           eta: float = 0.0, checkpoint_steps: bool = False, truncate: int | None = None) -> tuple[Tensor, dict]:
    """Run the reverse chain ``i = N-1 .. 0`` from ``x_T``; returns ``(x_0, stats)``.

    ``eps_fn(x, i)`` is the noise prediction at step ``i`` of ``s`` (the model maps ``i``
    to its own conditioning: SR3 ``sqrt(alpha_bar[i])``, SRDiff ``s.timesteps[i]``).
    Step ``i``'s noise comes from its own seed; the ``N`` seeds are drawn from
    ``generator`` up front, so the chain is fixed by ``generator`` and is the same
    whatever the gradient options.

    Gradients (the "++" quality loss):

    * ``checkpoint_steps``: every step runs under ``torch.utils.checkpoint``
      (``use_reentrant=False``); the backward pass recomputes one step at a time, so
      the network activations of only one step are alive at once.  What stays alive
      per step is the step's input ``x_i`` (one image; the noise is regenerated from
      the step's seed), against the whole U-Net activation stack per step without it.
      Cost: one extra network evaluation per step in the backward pass.
    * ``truncate = K``: only the last ``K`` steps (``i < K``) are differentiated; the
      earlier ``N - K`` run under ``no_grad``.  Memory and backward time scale with
      ``K`` instead of ``N``; the gradient ignores how the early steps depend on the
      weights (a biased estimate; ``K = N`` is exact).

    ``stats``: ``nfe`` (network evaluations of the forward chain; recomputation in the
    backward pass is not counted), ``sampler``, ``steps``.
    """
    n = len(s)
    if method not in ("ancestral", "ddim"):
        raise ValueError(f"unknown DDPM sampler {method!r} (ancestral, ddim)")
    if truncate is not None and not 1 <= int(truncate) <= n:
        raise ValueError(f"truncate must be in 1..{n}, got {truncate}")
    counter = NFECounter(eps_fn)
    needs_noise = method == "ancestral" or eta > 0
    seeds: list[int] = []
    if needs_noise:  # one seed per step, drawn in step order from `generator`
        gen_device = generator.device if generator is not None else torch.device("cpu")
        seeds = torch.randint(0, 2**62, (n,), generator=generator, device=gen_device).tolist()

    def step(x: Tensor, i: int) -> Tensor:
        # a pure function of (x, i): checkpointing recomputes it exactly and keeps only x
        z = None
        if needs_noise and i > 0:
            g = torch.Generator(x.device).manual_seed(seeds[i])
            z = batch_randn(x.shape, generator=g, device=x.device, dtype=x.dtype)
        eps = counter(x, i)
        if method == "ancestral":
            return ancestral_step(s, x, i, eps, z, variance=variance, clip=clip)
        return ddim_step(s, x, i, eps, z, eta=eta, clip=clip)

    x = x_T
    for i in reversed(range(n)):
        if truncate is not None and i >= int(truncate):
            with torch.no_grad():
                x = step(x, i)
        elif checkpoint_steps and torch.is_grad_enabled():
            x = checkpoint(step, x, i, use_reentrant=False)
        else:
            x = step(x, i)
    stats = {"nfe": int(counter.nfe), "sampler": f"ddpm-{method}", "steps": n}
    if method == "ddim":
        stats["eta"] = float(eta)
    return x, stats


# ------------------------------------------------------ method scaffolding
SAMPLER_KEYS = {"name", "steps", "eta", "clip_denoised", "variance", "checkpoint", "schedule", "grid"}
#: The method's own chains; the samplers of ecdp.external serve it too (``name: dpmpp_2m`` ...).
CHAINS = ("ancestral", "ddim")


def sampler_options(base: dict, *overrides: dict) -> dict:
    """Merge DDPM sampler options; reject unknown ones."""
    out = dict(base)
    for over in overrides:
        for k, v in (over or {}).items():
            if k not in SAMPLER_KEYS:
                raise ValueError(f"unknown DDPM sampler option {k!r}; known: {sorted(SAMPLER_KEYS)}")
            out[k] = v
    return out


class DiscreteDiffusionSR(Method):
    """What SR3 and SRDiff share (a :class:`ecdp.method.Method`): stages (``score``,
    ``quality``, SRDiff's ``pretrain``), the quality loss through the method's own
    sampler, sampler options, padding.  Subclasses set ``self.schedule``,
    ``self.sampler_defaults``, ``self.denoiser_net`` (has ``downsample_factor``) and
    implement ``score_loss``, ``prepare`` and ``generate``.
    """

    STAGE_KINDS = ("score", "quality")
    STAGE_SECTIONS = {"quality": ("quality",)}
    #: The reference trainers' settings (LeiaLi/SRDiff, Janspiry's SR3): no EMA, no
    #: gradient clipping (SRDiff's ``clip_grad_norm`` is never read), no warm-up (the
    #: generic ``train`` defaults); the "++" quality stage adds eq. 19 to the method's
    #: own loss by default, weight 0.5, through the method's own sampler.
    DEFAULTS = {"train": {"ema_decay": 0.0, "clip": None, "warmup": 0},
                "quality": {"weight": 0.5, "feature_net": "auto", "mode": "add"}}
    #: keys without a default in DEFAULTS (subclasses add ``model`` and ``diffusion``)
    CONFIG_KEYS = {"sampler": {}, "quality": {"sampler": {}, "truncate": None}}

    def __init__(self, cfg: dict, meta: dict):
        super().__init__(cfg, meta)
        self.stage, self.stage_cfg = "score", {"kind": "score"}
        self._quality: list = []  # kept out of the state dict

    # --- stages ---------------------------------------------------------------
    def set_stage(self, stage: dict) -> None:
        super().set_stage(stage)
        if self.stage == "quality" and not self._quality:
            self._quality.append(build_quality_loss(self.cfg.get("quality", {})))

    @classmethod
    def check_sampler(cls, cfg: dict, options: dict) -> None:
        opts = sampler_options({"name": "ancestral"}, cfg.get("sampler"), options)   # unknown keys
        if opts["name"] not in CHAINS + external.SAMPLERS:
            raise ValueError(f"{cls.__name__} samples with {CHAINS + external.SAMPLERS}, got {opts['name']!r}")
        if opts["name"] in external.SAMPLERS:
            from ecdp.sampling import check_options
            check_options({k: v for k, v in opts.items() if k in ("name", "steps", "grid") and v is not None})
        steps = opts.get("steps")
        if steps is not None and (not isinstance(steps, int) or isinstance(steps, bool) or steps < 1):
            raise ValueError(f"sampler option steps: must be a positive integer or null, got {steps!r}")

    def stage_plan(self, stage: dict):
        plan = super().stage_plan(stage)
        return dataclasses.replace(plan, validate=stage["kind"] != "pretrain")

    def run_info(self) -> dict:
        return quality_run_info(self._quality, self.stage_cfg) if self.stage == "quality" else {}

    def param_groups(self, stage: dict) -> list[dict]:
        return [{"params": list(self.denoiser_net.parameters()), "lr": float(stage["lr"])}]

    def quality_mode(self) -> str:
        mode = self.cfg.get("quality", {}).get("mode", "add")
        if mode not in ("add", "only"):
            raise ValueError(f"quality.mode must be 'add' or 'only', got {mode!r}")
        return mode

    def training_losses(self, hr: Tensor, lr: Tensor) -> dict[str, Tensor]:
        ctx = self.prepare(lr)
        losses = {}
        if self.stage == "score" or self.quality_mode() == "add":
            losses["score"] = self.score_loss(hr, ctx)
        if self.stage == "quality":
            losses["quality"] = self._quality[0](self.quality_sample(ctx, hr.shape), hr)
        return losses

    def quality_sample(self, ctx: dict, shape) -> Tensor:
        """An SR batch drawn by the method's own sampler, differentiable w.r.t. the
        denoiser.  The chain's noise comes from a generator seeded by one draw of the
        global RNG (which the training loop reseeds every step): reproducible."""
        q = self.cfg.get("quality", {})
        opts = sampler_options(self.sampler_defaults, q.get("sampler"))
        device = ctx["device"]
        seed = int(torch.randint(0, 2**62, (1,)))
        g = torch.Generator(device).manual_seed(seed)
        x, _ = self.generate(ctx, shape, opts, g, checkpoint_steps=bool(opts.get("checkpoint", True)),
                             truncate=q.get("truncate"))
        return x

    # --- sampling -------------------------------------------------------------
    @torch.no_grad()
    def super_resolve(self, lr: Tensor, generator: torch.Generator | None = None, **sampler_opts):
        """SR (B, 3, scale H, scale W) in [0, 1] (clamped) from LR (B, 3, H, W) in [0, 1].

        Options (config ``sampler`` section, overridden by ``sampler_opts``): ``name``
        (``ancestral`` | ``ddim``), ``steps`` (re-spaced chain; default: the full
        training chain), ``eta`` (DDIM), ``variance`` (``posterior`` | ``beta``),
        ``clip_denoised``.  ``generator`` draws x_T and every step's noise.
        """
        opts = sampler_options(self.sampler_defaults, self.cfg.get("sampler"), sampler_opts)
        f = self.denoiser_net.downsample_factor
        multiple = f // math.gcd(f, self.scale)
        h, w = lr.shape[-2:]
        ph, pw = (-h) % multiple, (-w) % multiple
        if ph or pw:
            lr = torch.nn.functional.pad(lr, (0, pw, 0, ph), mode="replicate")
        ctx = self.prepare(lr)
        shape = (lr.shape[0], 3, lr.shape[-2] * self.scale, lr.shape[-1] * self.scale)
        if opts["name"] in external.SAMPLERS:
            sr, stats = self.generate_external(ctx, shape, opts, generator)
        else:
            sr, stats = self.generate(ctx, shape, opts, generator)
        return sr[..., : h * self.scale, : w * self.scale].clamp(0, 1), stats

    def generate_external(self, ctx: dict, shape, opts: dict, generator):
        """A sampler of :mod:`ecdp.external` on the training chain's schedule (eps model at
        continuous time, :meth:`eps_at`); the image in [0, 1] via :meth:`to_image`."""
        process = external.DiscreteVP(alpha_bar=self.schedule.alpha_bar)
        device, dtype = ctx["device"], torch.float32
        x_T = torch.randn(shape, generator=generator, device=device, dtype=dtype)
        kw = {k: opts[k] for k in ("steps", "grid") if opts.get(k) is not None}
        x, stats = external.sample(lambda x, t: self.eps_at(x, t, process, ctx), process, x_T, opts["name"], **kw)
        return self.to_image(x, ctx), {**stats, "chain": "external"}
