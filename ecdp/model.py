"""ECDP as a method of the benchmark (the contract of :mod:`ecdp.method`): its process
(:mod:`ecdp.sde`), parametrization (:mod:`ecdp.parametrization`), samplers
(:mod:`ecdp.sampling`), networks (:mod:`ecdp.nets`) and here its config defaults,
Table 6 architecture presets and ``protocol: paper | official`` presets.

Network space.  The U-Net sees the noisy image normalised by the prior,
``z = (x - mu(y)) / sigma(y)``, and its two heads predict ``eps`` and
``(x0 - mu) / sigma``.  This is the released code's ``z = 5 (x - bicubic(y))`` with
sigma = 0.2, and it is eq. 5-18 applied to the affine image ``z`` (for which mu = 0,
sigma = 1), so eq. 16's ``||x0_theta - x||^2`` is taken literally in ``z``.
Images are [0, 1] RGB at the interface.

Stages (set by the training loop through :meth:`set_stage`):

* ``pretrain``: the RRDB encoder trained as the released RRDBNet with an L1 regression
  loss (summed per sample like eq. 16, config ``loss.reduction``);
* ``score``: eq. 16 (score matching with both heads; ``loss.reduction: sum`` (default,
  released) or ``mean``);
* ``quality``: eq. 19 on a probability-flow sample drawn with ``odeint_adjoint``
  (or reverse-SDE sampling for the "without prob. flow" ablation), either *added* to
  eq. 16 (paper: "we use only the standard score matching loss in early stages of
  training, and then add our image quality loss") or *alone* (released code's
  fine-tune), config ``quality.mode: add | only``;
* ``distill``: the distilled few-step student (issue 17, :meth:`ECDP.distill_loss`): the
  trained ECDP's probability flow (eq. 13, dopri5 at 1e-4) distilled into the K-step
  sampler ``sampler: {name: dpmpp_1, steps: K}``, the student initialised from the
  teacher.  Progressive distillation's per-interval objective (Salimans & Ho 2022) with
  the teacher's interval solved exactly instead of by halving rounds; for K = 1 it is
  Luhman & Luhman's (2021) direct distillation.
"""
from __future__ import annotations

import copy
import math

import torch
from torch import Tensor
import torch.nn.functional as F

from .imresize import bicubic_upsample
from .distributed import batch_rand, batch_randn
from .losses import build_quality_loss, quality_run_info
from .method import Method, StagePlan
from .nets import RRDB_HEADS, UNet
from .parametrization import KINDS, Parametrization, reduce_loss, score_matching_loss
from .sampling import check_options, exp_step, get_sampler, log_snr, ode_trajectory, time_grid
from .sde import ConditionalVPSDE

ARCHS = {
    # Table 6 (paper_architectures.csv); rrdb_taps as in the released code
    "div2k": {"channels": [64, 128, 256, 256], "blocks": [2, 2, 2, 2], "rrdb_blocks": 23, "rrdb_taps": [1, 8, 15, 22]},
    "imagenet": {"channels": [64, 128, 256, 256], "blocks": [2, 2, 2, 2], "rrdb_blocks": 16, "rrdb_taps": [1, 5, 10, 15]},
    "celeba": {"channels": [64, 128, 256, 256], "blocks": [3, 3, 3, 3], "rrdb_blocks": 8, "rrdb_taps": [1, 3, 5, 7]},
}
PAPER_PARAMS_M = {"div2k": 42.6, "imagenet": 37.6, "celeba": 40.0}

#: ECDP's own defaults (merged over ecdp.config.BASE): the paper-scale DIV2K model.
DEFAULTS: dict = {
    # rrdb_head: the RRDB pretraining network, `released` (head on the last block) or `esrgan`
    "model": {"arch": "div2k", "nf": 64, "gc": 32, "rrdb_head": "released"},
    "sde": {"beta_min": 0.1, "beta_max": 20.0, "t_eps": 1.0 / 3000.0},
    "parametrization": {"kind": "hybrid", "c": 1.0, "heads": "both"},
    # state: what dopri5 integrates (atol / rtol are relative to it): the normalised image
    # z = (x - mu) / sigma as the released code (z = 5 (x - bicubic)), or `pixel`
    "sampler": {"name": "ode", "method": "dopri5", "state": "normalized"},
    # eq. 16 as a squared norm: summed over C, H, W per sample, batch mean (released);
    # `mean` per element is the alternative (see README, "Loss reduction")
    "loss": {"reduction": "sum"},
    "quality": {"weight": 0.5, "feature_net": "auto"},
    # Stages run in order; lengths/lrs/batches: the released DF2K recipe
    # (docs/ARCHITECTURE.md, "ECDP's recipe"); the paper gives none of them.
    "train": {
        "ema_decay": 0.999,
        "clip": {"kind": "value", "max": 10.0},   # released code: value clipping at 10
        "warmup": 500,                            # linear warm-up steps (released code)
        "checkpoint_every": 1000,
        "log_every": 50,
        "validate": {"every": 0, "patches": 8},
        "stages": [
            {"name": "pretrain", "kind": "pretrain", "steps": 53750, "batch": 32, "lr": 2e-4,
             "milestones": [32250, 43000, 48375]},
            {"name": "score", "kind": "score", "steps": 107500, "batch": 16, "lr": 1e-4, "encoder_lr": 1e-5,
             "milestones": [64500, 86000]},
            # released fine-tune: lr_warmup_steps 1 (no warm-up)
            {"name": "quality", "kind": "quality", "steps": 1000, "batch": 12, "lr": 1e-5, "encoder_lr": 1e-5,
             "warmup": 1},
        ],
    },
}

# Where the paper and the released code differ (README, "Paper vs released code"); each key is
# also an ordinary config option, so a discrepancy can be toggled alone.
PROTOCOLS: dict = {
    "paper": {
        "sampler": {"atol": 1e-4, "rtol": 1e-4},          # "absolute and relative error tolerance of 1e-4"
        "sde": {"sigma": "empirical", "mu_kernel": "matlab"},  # empirical Var[x - mu(y)]; "bicubic interpolation"
        "quality": {"mode": "add", "init_from_ema": False,     # "then add our image quality loss"
                    "sampler": {"name": "ode", "method": "dopri5", "atol": 1e-4, "rtol": 1e-4, "adjoint": True,
                                "state": "normalized"}},
        "celeba_blocks": [3, 3, 3, 3],                       # Table 6
    },
    "official": {
        "sampler": {"atol": 1e-3, "rtol": 1e-3},
        "sde": {"sigma": 0.2, "mu_kernel": "torch"},
        "quality": {"mode": "only", "init_from_ema": True, "ema_decay": 0.9,
                    "sampler": {"name": "ode", "method": "dopri5", "atol": 1e-3, "rtol": 1e-3, "adjoint": True,
                                "state": "normalized"}},
        "celeba_blocks": [2, 2, 2, 2],                       # hard-coded in the released U-Net
    },
}
#: The paper's sampler (Sec. "Probability flow sampling", eq. 13): dopri5 at
#: atol = rtol = 1e-4 in the normalised state; ``ECDP.SAMPLER_PRESETS["paper"]``.
PAPER_SAMPLER = {"name": "ode", "method": "dopri5", "atol": 1e-4, "rtol": 1e-4, "state": "normalized"}
#: The distilled student's teacher solve (config ``distill.teacher_sampler``, options of
#: :func:`ecdp.sampling.ode_trajectory`): the paper's sampler without its name.
DISTILL_TEACHER_SAMPLER = {k: v for k, v in PAPER_SAMPLER.items() if k != "name"}


def teacher_solve_options(cfg: dict) -> dict:
    """The distilled student's teacher solve of a run config: :data:`DISTILL_TEACHER_SAMPLER`
    with ``distill.teacher_sampler`` on top (options of :func:`ecdp.sampling.ode_trajectory`)."""
    return {**DISTILL_TEACHER_SAMPLER, **((cfg.get("distill") or {}).get("teacher_sampler") or {})}
#: The one sampler a distilled student samples with (its ``sampler.name``).
STUDENT_SAMPLER = "dpmpp_1"

DISCREPANCIES = {
    # name -> (config path, paper value, official value): the rows of the protocol table
    "ode_tolerance": ("sampler.atol,sampler.rtol", 1e-4, 1e-3),
    "sigma": ("sde.sigma", "empirical", 0.2),
    "mu_kernel": ("sde.mu_kernel", "matlab", "torch"),
    # the released quality stage is one choice of three settings: a separate fine-tune
    # (score loss dropped) that starts from the EMA weights and keeps an EMA of decay 0.9
    "quality_stage": ("quality", {"mode": "add", "init_from_ema": False},
                      {"mode": "only", "init_from_ema": True, "ema_decay": 0.9}),
    "celeba_blocks": ("model.blocks", [3, 3, 3, 3], [2, 2, 2, 2]),
}




def resolve_sigma2(cfg: dict, meta: dict) -> float:
    """sigma^2(y): the dataset's empirical Var[x - mu(y)] (paper) or a fixed sigma^2."""
    sigma = cfg["sde"].get("sigma", "empirical")
    if sigma == "empirical":
        by_kernel = meta.get("sigma2_by_kernel") or {}
        value = by_kernel.get(cfg["sde"].get("mu_kernel", "matlab"), meta.get("sigma2"))
        if value is None:
            raise ValueError("sde.sigma is 'empirical' but the dataset meta has no sigma2; re-run `ecdp data prepare`")
        return float(value)
    return float(sigma) ** 2


def is_student(cfg: dict) -> bool:
    """A run config with a ``distill`` stage: a distilled few-step student."""
    return any(st.get("kind") == "distill" for st in (cfg.get("train") or {}).get("stages") or [])


def load_teacher(cfg: dict, student: "ECDP", device) -> "ECDP":
    """The teacher of a distill stage: ``distill.teacher``, a stage state
    (``stages/stage<k>.pt``: its EMA weights, what the teacher's final.pt evaluates) or
    a ``final.pt``, loaded with ``weights_only=True``; its prior N(mu(y), sigma^2 I) must
    be the student's (the student's x(T) is the teacher's), and it may not itself be a
    student.  One-line errors otherwise."""
    from pathlib import Path

    from .checkpoint import load_method

    path = (cfg.get("distill") or {}).get("teacher")
    if not path or path == "init":
        raise ValueError("distill.teacher: give the teacher's stages/stage<k>.pt or final.pt "
                         "(`init` is filled in by the workflow grid: the state this run starts from)")
    if not Path(path).exists():
        raise FileNotFoundError(f"distill.teacher: {path}: no such file")
    teacher, ck = load_method(path, device, quiet=True)   # a stage state is a training checkpoint
    tcfg = ck["config"]
    if not isinstance(teacher, ECDP) or is_student(tcfg):
        raise ValueError(f"distill.teacher: {path} is not a trained ECDP teacher (a distilled student or "
                         "another method)")
    if tcfg.get("sde") != cfg.get("sde") or float(teacher.sigma2) != float(student.sigma2):
        raise ValueError(f"distill.teacher: {path} has another prior (sde section or sigma^2) than the student")
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def pad_to_multiple(lr: Tensor, multiple: int) -> tuple[Tensor, tuple[int, int]]:
    """Replicate-pad an LR batch on the bottom/right so H and W are multiples of ``multiple``."""
    h, w = lr.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        lr = F.pad(lr, (0, pw, 0, ph), mode="replicate")
    return lr, (h, w)


class ECDP(Method):
    DEFAULTS = DEFAULTS
    PROTOCOLS = PROTOCOLS
    STAGE_KINDS = ("pretrain", "score", "quality", "distill")
    STAGE_SECTIONS = {"quality": ("quality",), "distill": ("distill", "sampler")}   # a student's sampler is its grid
    #: ``ecdp sr / evaluate / time --sampler NAME``.  ``paper``: eq. 13 with dopri5 at
    #: atol = rtol = 1e-4 (the tables' sampler).  ``fast``: the fewest-NFE sampler of the
    #: committed sampler study (results/tables/samplers.md, ECDP hybrid c = 1.0, seed 0,
    #: embedded-div2k) whose LPIPS is within 0.002 of dopri5-1e-4's, the study's LPIPS
    #: target (no sampler at <= 1/4 of dopri5's NFE met its solver-error target); of the
    #: two at 10 NFE (EDM and time-quadratic grids) the one with the smaller solver
    #: error (0.74 against 0.83 8-bit levels).
    SAMPLER_PRESETS = {"paper": PAPER_SAMPLER,
                       "fast": {"name": "dpmpp_2m", "steps": 10, "grid": "edm"}}
    STAGE_KEYS = ("encoder_lr",)
    #: keys without a default here: the architecture's (``model.arch: custom`` gives them)
    #: and the protocols' (``sde.sigma`` is "empirical" or a number)
    CONFIG_KEYS = {"model": {"channels": [], "blocks": [], "rrdb_blocks": 0, "rrdb_taps": None},
                   "sde": {"sigma": None, "mu_kernel": "matlab"},
                   "quality": {"mode": "add", "init_from_ema": False, "ema_decay": None, "sampler": {}},
                   # the distilled student (stage kind distill): no defaults here, so ECDP's
                   # own run configs carry no distill section (DISTILL_TEACHER_SAMPLER)
                   "distill": {"teacher": None, "teacher_sampler": None}}

    @classmethod
    def presets(cls, user: dict) -> dict:
        """The Table 6 architecture named by ``model.arch`` (``custom``: none), then the
        ``protocol`` preset (its CelebA U-Net blocks applied to the ``celeba`` arch)."""
        preset = super().presets(user)   # the protocol preset (checked, a copy)
        celeba_blocks = preset.pop("celeba_blocks")
        arch = (user.get("model") or {}).get("arch", DEFAULTS["model"]["arch"])
        if arch in ARCHS:
            model = copy.deepcopy(ARCHS[arch])
            if arch == "celeba":
                model["blocks"] = celeba_blocks
            preset = {"model": model, **preset}
        elif arch != "custom":
            raise ValueError(f"model.arch must be one of {sorted(ARCHS) + ['custom']}, got {arch!r}")
        return preset

    @classmethod
    def check_config(cls, cfg: dict) -> None:
        kind = cfg["parametrization"]["kind"]
        if kind not in KINDS:
            raise ValueError(f"parametrization.kind must be eps, x0 or hybrid, got {kind!r}")
        if not is_student(cfg):
            return
        kinds = [st.get("kind") for st in cfg["train"]["stages"]]
        if kinds.count("distill") != 1 or kinds[-1] != "distill":
            raise ValueError("train.stages: a distilled student has one distill stage, the last")
        s = cfg.get("sampler") or {}
        if s.get("name") != STUDENT_SAMPLER or not isinstance(s.get("steps"), int) or s["steps"] < 1:
            raise ValueError(f"sampler: a distilled student samples with the sampler it is distilled for, "
                             f"{{name: {STUDENT_SAMPLER}, steps: K[, grid: ...]}}; got {s}")
        check_options(s)
        if not (cfg.get("distill") or {}).get("teacher"):
            raise ValueError("distill.teacher: a distilled student needs its teacher (a stages/stage<k>.pt or "
                             "final.pt; `init` in a workflow grid)")
        teacher = cfg["distill"].get("teacher_sampler") or {}
        unknown = sorted(set(teacher) - set(DISTILL_TEACHER_SAMPLER) - {"step_size"})
        if unknown:   # the options of ode_trajectory, the teacher's solve
            raise ValueError(f"distill.teacher_sampler: no option(s) {unknown}; its options: "
                             f"{sorted(set(DISTILL_TEACHER_SAMPLER) | {'step_size'})}")
        check_options({"name": "ode", **teacher_solve_options(cfg)})

    @classmethod
    def check_sampler(cls, cfg: dict, options: dict) -> None:
        """The user's options for the sampler they name, else the config's
        (:func:`ecdp.sampling.check_options`)."""
        if is_student(cfg):   # only its own K-step sampler: any other is not what it was trained for
            own = {"grid": "logsnr", **cfg["sampler"]}
            changed = sorted(k for k, v in options.items() if own.get(k) != v)
            if changed:
                raise ValueError(f"a distilled student samples only with the sampler it was distilled for "
                                 f"({cfg['sampler']}); sampler option(s) {changed} cannot change it")
        check_options({"name": cfg.get("sampler", {}).get("name", "ode"), **options})

    def __init__(self, cfg: dict, meta: dict):
        super().__init__(cfg, meta)
        sigma2 = resolve_sigma2(cfg, meta)
        m, s = cfg["model"], cfg["sde"]
        self.sde = ConditionalVPSDE(s["beta_min"], s["beta_max"], 1.0, s["t_eps"])
        self.param = Parametrization(cfg["parametrization"]["kind"], float(cfg["parametrization"]["c"]))
        self.heads = cfg["parametrization"].get("heads", "both")
        self.reduction = (cfg.get("loss") or {}).get("reduction", "sum")
        self.mu_kernel = s["mu_kernel"]
        self.register_buffer("sigma2", torch.tensor(float(sigma2)))
        head = m.get("rrdb_head", "released")
        if head not in RRDB_HEADS:
            raise ValueError(f"model.rrdb_head must be one of {sorted(RRDB_HEADS)}, got {head!r}")
        kw = {} if head == "released" else {"init": "released"}
        self.rrdb = RRDB_HEADS[head](self.scale, m["rrdb_blocks"], m["nf"], m["gc"], m.get("rrdb_taps"), **kw)
        self.unet = UNet(m["channels"], m["blocks"], cond_channels=self.rrdb.encoder.out_channels)
        self.stage = "score"
        self._quality = []  # built lazily; kept out of the state dict
        self._teacher = []  # the distill stage's teacher: built lazily, kept out of the state dict

    # --- pieces ----------------------------------------------------------------
    @property
    def encoder(self):
        return self.rrdb.encoder

    def mu(self, lr: Tensor) -> Tensor:
        """mu(y): bicubic upsampling of the LR image (MATLAB kernel or torch's, see config)."""
        return bicubic_upsample(lr, self.scale, self.mu_kernel)

    def heads_out(self, x: Tensor, t: Tensor, mu: Tensor, cond: Tensor) -> tuple[Tensor, Tensor]:
        """(eps_hat, x0_hat in pixel space) from one network evaluation."""
        sigma = self.sigma2.sqrt()
        out = self.unet((x - mu) / sigma, t, cond)
        return out[:, :3], mu + sigma * out[:, 3:]

    def denoiser(self, mu: Tensor, cond: Tensor):
        """``D(x, t)``: the data prediction implied by the (hybrid) score, for the samplers."""
        def d(x: Tensor, t: Tensor) -> Tensor:
            eps_hat, x0_hat = self.heads_out(x, t, mu, cond)
            return self.param.denoised(self.sde, x, mu, self.sigma2, t, eps_hat, x0_hat)
        return d

    def parameter_count(self) -> int:
        """U-Net + LR encoder (the RRDBNet upsampling head is only used for pretraining)."""
        return sum(p.numel() for p in self.unet.parameters()) + sum(p.numel() for p in self.encoder.parameters())

    # --- training ----------------------------------------------------------------
    def set_stage(self, stage: dict) -> None:
        super().set_stage(stage)
        if self.stage == "quality" and not self._quality:
            self._quality.append(build_quality_loss(self.cfg["quality"]))
        if self.stage == "distill" and not self._teacher:
            with torch.random.fork_rng(devices=[]):   # building it draws nothing from the run's RNG (exact resume)
                self._teacher.append(load_teacher(self.cfg, self, self.sigma2.device))

    def stage_plan(self, stage: dict) -> StagePlan:
        """``pretrain`` and ``score`` start a new EMA (they train other parameters than the
        stage before); ``quality`` carries the score stage's EMA on (training continues,
        paper protocol) or, with ``quality.init_from_ema`` (released fine-tune), starts
        from the EMA weights, which is the same EMA start; its decay is ``ema_decay`` of the
        stage, else ``quality.ema_decay`` (released: 0.9), else ``train.ema_decay``.
        ``distill`` starts from the previous stage's EMA weights (= the teacher, which is
        what the teacher's final.pt evaluates) and a new EMA.  Validation (Figure 8) runs
        in the diffusion stages only (a student's with its own K-step sampler)."""
        if stage["kind"] == "distill":   # the student starts as its teacher: the EMA weights
            return StagePlan(ema=stage.get("ema", "restart"), ema_decay=stage.get("ema_decay"), init_from_ema=True)
        if stage["kind"] != "quality":
            return StagePlan(ema=stage.get("ema", "restart"), ema_decay=stage.get("ema_decay"),
                             validate=stage["kind"] != "pretrain")
        q = self.cfg.get("quality", {})
        return StagePlan(ema=stage.get("ema", "carry"), ema_decay=stage.get("ema_decay", q.get("ema_decay")),
                         init_from_ema=bool(q.get("init_from_ema")))

    def run_info(self) -> dict:
        """The feature network of the image-quality loss, once a quality stage has run."""
        return quality_run_info(self._quality, self.stage_cfg) if self.stage == "quality" else {}

    def param_groups(self, stage: dict) -> list[dict]:
        lr = float(stage["lr"])
        if stage["kind"] == "pretrain":
            return [{"params": list(self.rrdb.parameters()), "lr": lr}]
        enc_lr = float(stage.get("encoder_lr", lr))
        groups = [{"params": list(self.unet.parameters()), "lr": lr}]
        if enc_lr > 0:
            groups.append({"params": list(self.encoder.parameters()), "lr": enc_lr})
        return groups

    def score_loss(self, hr: Tensor, mu: Tensor, cond: Tensor) -> Tensor:
        """Eq. 16 on x_t of eq. 17, t ~ U[0, 1) (released code)."""
        t = batch_rand((hr.shape[0],), device=hr.device)     # per-sample draws (ecdp.distributed)
        eps = batch_randn(hr.shape, device=hr.device, dtype=hr.dtype)
        x_t = self.sde.perturb(hr, mu, self.sigma2, t, eps)
        sigma = self.sigma2.sqrt()
        out = self.unet((x_t - mu) / sigma, t, cond)
        return score_matching_loss(out[:, :3], out[:, 3:], eps, (hr - mu) / sigma, self.heads, self.param.kind,
                                   self.reduction)

    def distill_loss(self, hr: Tensor, lr: Tensor) -> Tensor:
        """The distilled student's loss (stage kind ``distill``): one student step per
        interval of its K-interval grid (``sampler.steps``, ``sampler.grid``; log-SNR
        uniform by default) must land where the teacher's probability flow goes.

        The teacher (:func:`load_teacher`) solves eq. 13 from x(T) ~ N(mu(y), sigma^2 I)
        (eq. 12, the student's own prior) through every grid time t_0 = T > ... > t_K =
        t_eps with :func:`ecdp.sampling.ode_trajectory` (``distill.teacher_sampler``,
        default dopri5 at 1e-4, the paper's sampler; every grid time an error-controlled
        step).  From the teacher's x(t_i) the student takes the :func:`exp_step` of
        ``dpmpp_1`` with its own data prediction; the loss is the squared error to the
        teacher's x(t_{i+1}) in the normalised image z = x / sigma (eq. 16's norm,
        ``loss.reduction``: summed per sample, the released code's), averaged over the
        batch and over all K intervals (every interval of every sample each step: the
        teacher's solve, ~97 % of the step's cost, gives them all).

        Progressive distillation (Salimans & Ho 2022) trains the same per-interval target
        but reaches 1 step by log2(NFE) halving rounds; here the teacher's interval is
        solved exactly, one round (for K = 1 Luhman & Luhman 2021).  Consistency
        distillation was not chosen: it needs a target network and many rounds, and its
        one-step quality at a fixed budget is the weaker in the literature.  The adaptive
        solver controls its error over the whole batch (torchdiffeq's norm), so a
        target depends slightly on its batch."""
        teacher = self._teacher[0]   # loaded by set_stage
        s = self.cfg["sampler"]
        k, b = int(s["steps"]), hr.shape[0]
        mu = self.mu(lr)
        with torch.no_grad():
            x_T = self.sde.prior_sample(mu, self.sigma2)
            ts = time_grid(self.sde, k, x_T.dtype, x_T.device, s.get("grid", "logsnr"))
            xs, _ = ode_trajectory(teacher.denoiser(mu, teacher.encoder(lr)), x_T, mu, self.sigma2, teacher.sde,
                                   ts, **teacher_solve_options(self.cfg))
            lam = log_snr(self.sde, ts.double())
        x_in, target = xs[:-1].flatten(0, 1), xs[1:].flatten(0, 1)      # interval-major: (K B, C, H, W)
        t, t_next = ts[:-1].repeat_interleave(b), ts[1:].repeat_interleave(b)
        h = (lam[1:] - lam[:-1]).to(x_T.dtype).repeat_interleave(b)
        mu_k, cond_k = mu.repeat(k, 1, 1, 1), self.encoder(lr).repeat(k, 1, 1, 1)
        pred = exp_step(x_in, self.denoiser(mu_k, cond_k)(x_in, t), mu_k, self.sigma2, self.sde, t, t_next, h)
        return reduce_loss(((pred - target) / self.sigma2.sqrt()).pow(2), self.reduction)

    def training_losses(self, hr: Tensor, lr: Tensor) -> dict[str, Tensor]:
        if self.stage == "distill":
            return {"distill": self.distill_loss(hr, lr)}
        if self.stage == "pretrain":
            return {"l1": reduce_loss((self.rrdb(lr) - hr).abs(), self.reduction)}
        mu, cond = self.mu(lr), self.encoder(lr)
        losses = {}
        if self.stage == "score" or self.cfg["quality"].get("mode", "add") == "add":
            losses["score"] = self.score_loss(hr, mu, cond)
        if self.stage == "quality":
            sr, stats = self.sample(mu, cond.detach(), self.cfg["quality"]["sampler"], train=True)
            losses["quality"] = self._quality[0](sr, hr)
        return losses

    # --- sampling ----------------------------------------------------------------
    def sample(self, mu: Tensor, cond: Tensor, sampler_cfg: dict, generator=None, train: bool = False):
        opts = dict(sampler_cfg)
        sampler = get_sampler(opts.pop("name", "ode"))
        x_T = self.sde.prior_sample(mu, self.sigma2, generator)
        if train and opts.get("adjoint"):
            opts["adjoint_params"] = list(self.unet.parameters())
        return sampler(self.denoiser(mu, cond), x_T, mu, self.sigma2, self.sde, generator=generator, **opts)

    @torch.no_grad()
    def super_resolve(self, lr: Tensor, generator: torch.Generator | None = None, **sampler_options):
        """SR images (B, 3, scale H, scale W) in [0, 1] (clamped) from LR (B, 3, H, W).

        The sampler defaults to the config's ``sampler`` section (paper: probability flow,
        dopri5, atol = rtol = 1e-4), overridden by ``sampler_options``.  x(T) is drawn
        from N(mu(y), sigma^2 I) (eq. 12) with ``generator``.
        """
        cfg = {**self.cfg["sampler"], **sampler_options}
        multiple = self.unet.downsample_factor // math.gcd(self.unet.downsample_factor, self.scale)
        lr_p, (h, w) = pad_to_multiple(lr, multiple)
        mu, cond = self.mu(lr_p), self.encoder(lr_p)
        sr, stats = self.sample(mu, cond, cfg, generator=generator)
        return sr[..., : h * self.scale, : w * self.scale].clamp(0, 1), stats
