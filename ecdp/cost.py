"""What a paper-scale run costs, before it runs (issue 13): FLOPs, memory, GPU-hours.

Used by ``workflow/scripts/fullsize.py`` (full-size DIV2K evaluation: memory and time
per NFE) and ``workflow/scripts/gpu_hours.py`` (the paper grid per rule).  Small pure
functions; the networks are built on PyTorch's ``meta`` device wherever only shapes
matter, so a 634M-parameter SR3 or a 2040x1356 image costs no memory and no time.

* :func:`count_flops`: FLOPs of a callable by :class:`torch.utils.flop_counter.FlopCounterMode`
  (matmuls and convolutions, 2 FLOPs per multiply-add; norms, activations and other
  element-wise ops are not counted: they are a few per cent of a conv net's work);
* :func:`image_flops`: per image, the conditioning computed once (ECDP's and SRDiff's
  RRDB encoder, mu(y)) and one network evaluation (one NFE), at any LR size;
* :func:`train_step_flops`: forward + backward of one training step of a non-quality
  stage (:meth:`ecdp.method.Method.training_losses`), at the stage's batch and patch;
* :func:`quality_step_flops`: the quality stage (eq. 19) from the NFE of its sampler,
  by a stated model (see there);
* :class:`PeakLiveBytes`: peak bytes of live tensors of an eager no-grad run (a model
  of activation memory that runs on ``meta`` tensors);
* :func:`linear_fit`: least squares ``y = a x + b`` and its relative residuals.
"""
from __future__ import annotations

import math
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode


def count_flops(fn, *args, **kwargs) -> int:
    """FLOPs (matmul / conv, forward and any backward run inside ``fn``) of ``fn(*args)``."""
    with FlopCounterMode(display=False) as counter:
        fn(*args, **kwargs)
    return int(counter.get_total_flops())


def meta_method(cfg: dict, scale: int, sigma2: float = 0.01):
    """The method of a resolved run config, built on the ``meta`` device (no memory, no init cost)."""
    from .registry import build_method

    with torch.device("meta"):
        method = build_method(cfg, {"scale": int(scale), "sigma2": float(sigma2)})
    if getattr(method, "schedule", None) is not None and hasattr(method, "diffusion"):
        from baselines import ddpm   # the DDPM baselines index their (CPU) schedule with CPU steps

        method.schedule = ddpm.make_schedule(method.diffusion["schedule"], **method.diffusion)
    return method.eval()


def _padded(method, h: int, w: int) -> tuple[int, int]:
    """LR size after the replicate padding of ``super_resolve`` (a multiple of the U-Net's
    downsampling factor divided by its gcd with the scale)."""
    net = getattr(method, "unet", None)
    f = getattr(net, "downsample_factor", 1)
    m = f // math.gcd(f, method.scale)
    return h + (-h) % m, w + (-w) % m


def nfe_parts(method):
    """``(prepare(lr) -> ctx, step(ctx, x) -> out)``: what a sampler of ``method`` runs
    once per image and once per NFE.  ECDP: mu(y) and the RRDB encoder, then the
    U-Net's two heads; SR3: the bicubic condition, then its U-Net on [up, x]; SRDiff: the
    frozen RRDB condition, then its U-Net; the regression floor: its RRDBNet as one NFE;
    the bicubic floor: nothing."""
    from baselines.floors import Bicubic, Regression
    from baselines.sr3 import SR3
    from baselines.srdiff import SRDiff

    from .model import ECDP

    def t_of(x):
        return torch.full((x.shape[0],), 0.5, device=x.device)

    if isinstance(method, ECDP):
        return (lambda lr: (method.mu(lr), method.encoder(lr)),
                lambda ctx, x: method.heads_out(x, t_of(x), ctx[0], ctx[1]))
    if isinstance(method, SR3):
        return (method.prepare, lambda ctx, x: method.eps(x, ctx["up"], t_of(x)))
    if isinstance(method, SRDiff):
        return (method.prepare, lambda ctx, x: method.unet(x, t_of(x), ctx["cond"]))
    if isinstance(method, Regression):
        return (lambda lr: lr, lambda ctx, x: method.rrdb(ctx))
    if isinstance(method, Bicubic):
        return (lambda lr: None, None)
    raise ValueError(f"no FLOP model for {type(method).__name__}")


@torch.no_grad()
def image_flops(method, lr_hw: tuple[int, int], batch: int = 1) -> dict:
    """``{"per_image", "per_nfe"}`` FLOPs of super-resolving ``batch`` LR images of size
    ``lr_hw`` (padded as :meth:`super_resolve` pads), on the method's device."""
    h, w = _padded(method, *lr_hw)
    dev = next(method.parameters()).device if any(True for _ in method.parameters()) else torch.device("cpu")
    lr = torch.zeros(batch, 3, h, w, device=dev)
    x = torch.zeros(batch, 3, h * method.scale, w * method.scale, device=dev)
    prepare, step = nfe_parts(method)
    with FlopCounterMode(display=False) as counter:
        ctx = prepare(lr)
    per_image = int(counter.get_total_flops())
    per_nfe = count_flops(step, ctx, x) if step is not None else 0
    return {"per_image": per_image, "per_nfe": per_nfe}


def train_step_flops(method, stage: dict, batch: int, patch: int) -> int:
    """FLOPs of one step (``training_losses`` forward and backward) of a ``pretrain`` or
    ``score`` stage at ``batch`` HR patches of side ``patch``; the optimiser update
    (a few FLOPs per parameter) is not counted."""
    if stage["kind"] == "quality":
        raise ValueError("the quality stage samples: use quality_step_flops")
    dev = next(method.parameters()).device
    method.train()
    method.set_stage(stage)
    hr = torch.zeros(batch, 3, patch, patch, device=dev)
    lr = torch.zeros(batch, 3, patch // method.scale, patch // method.scale, device=dev)

    def step():
        losses = method.training_losses(hr, lr)
        sum(losses.values()).backward()

    try:
        return count_flops(step)
    finally:
        method.eval()


def quality_step_flops(*, score_step: int, per_image: int, per_nfe: int, batch: int, nfe: int,
                       adjoint: bool, checkpoint: bool = True, add_score: bool = True,
                       nfe_backward: int | None = None) -> int:
    """FLOPs of one quality-stage step (eq. 19; paper section 4.3) by this model:

    * the sample: ``nfe`` network evaluations of the batch forward, then the backward:
      with the adjoint method (ECDP, ``odeint_adjoint``) as many backward NFE as forward
      ones (ASSUMPTION: dopri5 takes about the same number of steps backward), each a
      forward plus a vector-Jacobian product = 3 forward costs; through a discrete chain
      (SR3++, SRDiff++, ECDP without prob. flow) the usual 2 forward costs per step for
      the backward, plus 1 for the recomputation when steps are checkpointed, through
      the last ``nfe_backward`` steps only when the chain is truncated;
    * the conditioning once per batch (forward only: ECDP detaches it);
    * the score loss of eq. 16 as well when the quality loss is added to it
      (``add_score``; ``score_step`` = :func:`train_step_flops` of the score stage);
    * not counted: the feature network of the quality loss (VGG on the batch).
    """
    fwd = batch * (per_image + nfe * per_nfe)
    nb = nfe if nfe_backward is None else min(int(nfe_backward), nfe)
    back = 3 * nfe * batch * per_nfe if adjoint else (2 + int(checkpoint)) * nb * batch * per_nfe
    return int(fwd + back + (score_step if add_score else 0))


def sampler_nfe(sampler: dict, measured: dict | None = None, chain_length: int | None = None) -> int:
    """NFE of one image with ``sampler``.  Fixed-step samplers by their definition
    (:mod:`ecdp.sampling`: dpmpp_1 / dpmpp_2m / dpmpp_3m / unipc ``steps``, heun 2 ``steps``, rk4 4 ``steps``,
    reverse_sde ``steps``, ddpm_chain ``steps - stop``; DDPM chains ``steps`` or the whole
    training chain ``chain_length``); adaptive ODE solvers from ``measured``, a dict
    ``(method, tolerance) -> NFE`` (taken from a committed sampler study)."""
    name = sampler.get("name", "ode")
    steps = sampler.get("steps")
    if name == "ode":
        key = (sampler.get("method", "dopri5"), float(sampler.get("rtol", sampler.get("atol"))))
        if not measured or key not in measured:
            raise ValueError(f"no measured NFE for the ODE solver {key}")
        return int(round(measured[key]))
    if name in ("dpmpp_1", "dpmpp_2m", "dpmpp_3m", "unipc", "reverse_sde"):   # unipc: the corrector reuses the next NFE
        return int(steps)
    if name == "heun":
        return 2 * int(steps)
    if name == "rk4":
        return 4 * int(steps)
    if name == "ddpm_chain":
        return int(steps) - int(sampler.get("stop", 5))
    if name in ("ancestral", "ddim"):
        if steps is None and chain_length is None:
            raise ValueError("a full DDPM chain needs chain_length")
        return int(steps if steps is not None else chain_length)
    raise ValueError(f"no NFE rule for sampler {name!r}")


class PeakLiveBytes(TorchDispatchMode):
    """Peak bytes of the tensors alive at once while the mode is active (eager, no grad).

    Every tensor an op creates is counted from its creation until it is freed; views and
    in-place results are not counted again (they share storage).  Works on ``meta``
    tensors, so it models the activation memory of a network at any size without
    running it.  It is the memory the tensors need, not what an allocator holds (no
    caching, fragmentation, cuDNN / oneDNN workspaces); tensors created before the mode
    (weights, the input) are not counted.
    """

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._storages: dict[int, list[int]] = {}   # storage id -> [bytes, tensors alive on it]

    def _drop(self, key: int) -> None:
        entry = self._storages.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.live -= entry[0]
            del self._storages[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        leaves = torch.utils._pytree.tree_leaves
        inputs = {a.untyped_storage()._cdata for a in leaves((args, kwargs)) if isinstance(a, torch.Tensor)}
        for t in leaves(out):
            if not isinstance(t, torch.Tensor):
                continue
            key = t.untyped_storage()._cdata
            if key in self._storages:          # a view of (or in place on) a tensor counted already
                self._storages[key][1] += 1
            elif key in inputs:                # a view of a tensor from before the mode (weights, input)
                continue
            else:
                n = t.untyped_storage().nbytes()
                self._storages[key] = [n, 1]
                self.live += n
                self.peak = max(self.peak, self.live)
            weakref.finalize(t, self._drop, key)
        return out


def linear_fit(x, y) -> dict:
    """Least-squares ``y = slope x + intercept`` with the relative residuals
    ``(y - fit) / y`` of each point and their largest magnitude."""
    n = len(x)
    if n < 2 or len(y) != n:
        raise ValueError("need two or more (x, y) pairs")
    mx, my = sum(x) / n, sum(y) / n
    sxx = sum((a - mx) ** 2 for a in x)
    if sxx == 0:
        raise ValueError("x values must differ")
    slope = sum((a - mx) * (b - my) for a, b in zip(x, y)) / sxx
    intercept = my - slope * mx
    rel = [(b - (slope * a + intercept)) / b if b else 0.0 for a, b in zip(x, y)]
    return {"slope": slope, "intercept": intercept, "rel_residuals": rel,
            "max_abs_rel_residual": max(abs(r) for r in rel)}


def predict(fit: dict, x: float) -> float:
    return fit["slope"] * x + fit["intercept"]
