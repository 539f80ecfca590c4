"""SR3 (Saharia et al. 2021, "Image Super-Resolution via Iterative Refinement") and
SR3++ (SR3 + the image quality loss of ECDP eq. 19 through SR3's own sampler; ECDP
appendix C.2, Table 7) with the suite's method interface.

* Images live in [-1, 1] inside; the condition is the MATLAB-bicubic upsampled LR
  image, concatenated to the noisy HR image (6 input channels).
* Training (SR3 Sec. 2.4): ``t ~ U{1..T}``, ``gamma ~ U(gamma_t, gamma_{t-1})`` with
  ``gamma = alpha_bar`` of a linear schedule (T = 2000, beta 1e-6 -> 1e-2),
  ``y = sqrt(gamma) x + sqrt(1 - gamma) eps``, loss ``|f(up(y_lr), y, sqrt(gamma)) -
  eps|_1``.  The network sees the continuous noise level ``sqrt(gamma)``, so any
  inference schedule works (``sampler.steps`` re-spaces the training schedule,
  ``sampler.schedule`` replaces it).  gamma is uniform as in the paper (the SR3
  re-implementation draws sqrt(gamma) uniformly instead: an O(beta_t) difference),
  one t per image (that code draws one per batch).
* Sampling: the full ancestral chain by default (2000 NFE); ``steps: N`` and
  ``name: ddim`` as options.  Defaults follow the SR3 code (posterior variance,
  x0 clamped to [-1, 1]); ``variance: beta, clip_denoised: false`` is the paper's
  Algorithm 2.

Stages: ``score`` (the denoising loss, named "score" as for every method) and
``quality`` (``quality.mode: add | only``; sampler ``quality.sampler``, per-step
checkpointing, ``quality.truncate``; see :func:`baselines.ddpm.sample`).

Config: ``model.arch`` one of :data:`ARCHS` (``sr3-div2k``, ``sr3-celeba``,
``sr3-imagenet``; bare dataset names are aliases) or ``custom``; model keys
``inner_channels``, ``channel_mults``, ``res_blocks``, ``attn_stages``, ``dropout``,
``norm_groups``, ``resample``, ``noise_level_scale`` override the preset.
``diffusion: {schedule, T, beta_start, beta_end}``.
"""
from __future__ import annotations

import copy

import torch
from torch import Tensor

from ecdp.distributed import batch_rand, batch_randint, batch_randn
from ecdp.imresize import bicubic_upsample

from . import ddpm
from .nets import SR3UNet

# Sizes (parameters of the U-Net, the whole model):
# * div2k / celeba: the SR3 code's published FFHQ->CelebA setting: 97.807M (paper 97.8M);
# * imagenet: SR3 paper's 64->256 ImageNet model (channel 128, multipliers
#   {1,2,4,4,8,8}, 3 res blocks) with BigGAN resampling blocks and attention at
#   16x16 and 8x8 (stages 4, 5 for 256 px): 633.99M (paper 625M, +1.4%).
ARCHS: dict[str, dict] = {
    "sr3-div2k": {"inner_channels": 64, "channel_mults": [1, 2, 4, 8, 8], "res_blocks": 2, "attn_stages": [3],
                  "dropout": 0.2, "norm_groups": 32, "resample": "conv", "noise_level_scale": 1.0},
    "sr3-imagenet": {"inner_channels": 128, "channel_mults": [1, 2, 4, 4, 8, 8], "res_blocks": 3,
                     "attn_stages": [4, 5], "dropout": 0.0, "norm_groups": 32, "resample": "resblock",
                     "noise_level_scale": 1.0},
}
ARCHS["sr3-celeba"] = copy.deepcopy(ARCHS["sr3-div2k"])
PAPER_PARAMS_M = {"sr3-div2k": 97.8, "sr3-imagenet": 625.0, "sr3-celeba": 97.8}

DIFFUSION = {"schedule": "linear", "T": 2000, "beta_start": 1e-6, "beta_end": 1e-2}
SAMPLER = {"name": "ancestral", "steps": None, "eta": 0.0, "variance": "posterior", "clip_denoised": True}


def model_config(model: dict) -> dict:
    """The preset named by ``model.arch`` overridden by the SR3 keys given."""
    return ddpm.preset_model_config(model, ARCHS, "sr3", "SR3")


def build_unet(m: dict) -> SR3UNet:
    return SR3UNet(int(m["inner_channels"]), tuple(m["channel_mults"]), int(m["res_blocks"]),
                   tuple(m["attn_stages"] or ()), float(m["dropout"]), int(m["norm_groups"]),
                   resample=m["resample"], noise_level_scale=float(m["noise_level_scale"]))


class SR3(ddpm.DiscreteDiffusionSR):
    CONFIG_KEYS = ddpm.config_keys(ARCHS, "sr3-div2k", DIFFUSION)

    def __init__(self, cfg: dict, meta: dict):
        super().__init__(cfg, meta)
        self.model_cfg = model_config(cfg.get("model", {}))
        self.unet = build_unet(self.model_cfg)
        self.diffusion = {**DIFFUSION, **cfg.get("diffusion", {})}
        self.schedule = ddpm.make_schedule(self.diffusion["schedule"], **self.diffusion)
        self.sampler_defaults = dict(SAMPLER)
        self.mu_kernel = "matlab"

    @property
    def denoiser_net(self):
        return self.unet

    # --- pieces ---------------------------------------------------------------
    def prepare(self, lr: Tensor) -> dict:
        """The condition: bicubic-upsampled LR in [-1, 1]."""
        return {"up": bicubic_upsample(lr, self.scale, self.mu_kernel) * 2 - 1, "device": lr.device}

    def eps(self, x: Tensor, up: Tensor, sqrt_gamma: Tensor) -> Tensor:
        return self.unet(torch.cat([up, x], 1), sqrt_gamma)

    def score_loss(self, hr: Tensor, ctx: dict) -> Tensor:
        x0 = hr * 2 - 1
        b = x0.shape[0]
        ab = self.schedule.alpha_bar.to(torch.float32)
        ab_prev = torch.cat([ab.new_ones(1), ab[:-1]])
        t = batch_randint(len(self.schedule), (b,))          # per-sample draws (ecdp.distributed)
        u = batch_rand((b,))
        gamma = (ab[t] + u * (ab_prev[t] - ab[t])).to(x0.device)
        eps = batch_randn(x0.shape, device=x0.device, dtype=x0.dtype)
        g = gamma.view(-1, 1, 1, 1)
        x_noisy = g.sqrt() * x0 + (1 - g).sqrt() * eps
        return (self.eps(x_noisy, ctx["up"], gamma.sqrt()) - eps).abs().mean()

    def eps_at(self, x: Tensor, t: Tensor, process, ctx: dict) -> Tensor:
        """The noise prediction at continuous time t: SR3 conditions on sqrt(alpha(t))."""
        return self.eps(x, ctx["up"], process.alpha(t).sqrt().to(x.dtype).expand(x.shape[0]))

    def to_image(self, x: Tensor, ctx: dict) -> Tensor:
        return (x + 1) / 2

    def sampling_schedule(self, opts: dict) -> ddpm.Schedule:
        sched = self.schedule
        if opts.get("schedule"):
            sched = ddpm.make_schedule(**{"kind": "linear", **dict(opts["schedule"])})
        return sched.respace(opts.get("steps"))

    def generate(self, ctx: dict, shape, opts: dict, generator, checkpoint_steps: bool = False,
                 truncate: int | None = None):
        """Image in [0, 1] (not clamped) and stats, by the configured DDPM sampler."""
        sched = self.sampling_schedule(opts)
        up = ctx["up"]
        levels = sched.alpha_bar.sqrt().to(device=up.device, dtype=up.dtype)

        def eps_fn(x: Tensor, i: int) -> Tensor:
            return self.eps(x, up, levels[i].expand(x.shape[0]))

        x_T = batch_randn(shape, generator=generator, device=up.device, dtype=up.dtype)
        x, stats = ddpm.sample(eps_fn, sched, x_T, method=opts["name"], generator=generator,
                               variance=opts["variance"], clip=1.0 if opts["clip_denoised"] else None,
                               eta=float(opts["eta"]), checkpoint_steps=checkpoint_steps, truncate=truncate)
        return (x + 1) / 2, stats
