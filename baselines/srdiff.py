"""SRDiff (Li et al. 2021/2022, "SRDiff: Single image super-resolution with diffusion
probabilistic models") and SRDiff++ (SRDiff + ECDP's image quality loss through
SRDiff's own 100-step sampler; ECDP appendix C.2, Table 7), with the suite's method
interface.  Built after the released code (LeiaLi/SRDiff: ``models/diffusion.py``,
``models/diffsr_modules.py``, ``configs/diffsr_base.yaml``):

* residual prediction: images in [-1, 1], ``x_res = (x - up(y)) * res_rescale`` with
  ``res_rescale = 2`` and ``up`` the MATLAB bicubic upsampling (``img_lr_up``), i.e.
  ``x_res = 4 (hr - up(lr))`` in [0, 1] units; ``clip_input: true`` clamps x_res to
  [-1, 1] in training and before converting a sample back (``img2res`` / ``res2img``);
* T = 100, cosine schedule (s = 0.008); L1 loss on the noise, t ~ U{0..T-1};
* the denoiser sees the integer step index and the features of an RRDB LR encoder
  (outputs of every third RRDB block and the trunk sum, ``cond[2::3]``);
* the encoder is an ESRGAN RRDBNet (gc = nf / 2) pretrained alone with an L1
  regression loss (stage kind ``pretrain``) and then frozen (``fix_rrdb: true``):
  later stages run it under ``no_grad`` and leave it out of the optimiser;
* sampling: 100 ancestral steps, x0 clamped to [-1, 1], posterior variance (the
  code's ``p_sample``); ``steps`` / ``name: ddim`` as options.

Stages: ``pretrain``, ``score`` (SRDiff's denoising loss), ``quality``
(``quality.mode: add | only``, ``quality.sampler``, ``quality.truncate``).

Config: ``model.arch`` one of :data:`ARCHS` (``srdiff-div2k``, ``srdiff-imagenet``,
``srdiff-celeba``; bare dataset names are aliases) or ``custom``; model keys
``unet_dim``, ``dim_mults``, ``rrdb_blocks``, ``rrdb_nf``, ``rrdb_gc`` override the
preset.  ``diffusion: {schedule, T, cosine_s, res_rescale, clip_input}``.
"""
from __future__ import annotations

import copy

import torch
from torch import Tensor

from ecdp.distributed import batch_randint, batch_randn
from ecdp.imresize import bicubic_upsample
from ecdp.nets import RRDBNet

from . import ddpm
from .nets import SRDiffUNet

# Sizes.  Counted (parameter_count): U-Net + the RRDB layers that produce the
# condition (conv_first, RRDB blocks, trunk conv); the RRDBNet upsampling head is
# only used by the pretraining stage (ECDP's convention for its own encoder).
# * celeba: configs/diffsr_base.yaml + celeb_a.yaml (x8): U-Net dim 64, mults
#   1|2|2|4; RRDB 8 blocks, nf 32, gc 16  -> 11.996M (paper 12.0M);
# * div2k / imagenet: configs/diffsr_df2k4x.yaml (mults 1|2|3|4) with the RRDB of
#   configs/rrdb/df2k4x_pretrain.yaml (17 blocks, nf 64, gc 32; the checkpoint the
#   README's DIV2K command loads)  -> 25.20M.  ECDP reports 37.6M; no released
#   SRDiff configuration gives it (diffsr_base's 8-block nf-32 RRDB gives 13.2M).
ARCHS: dict[str, dict] = {
    "srdiff-div2k": {"unet_dim": 64, "dim_mults": [1, 2, 3, 4], "rrdb_blocks": 17, "rrdb_nf": 64, "rrdb_gc": 32},
    "srdiff-celeba": {"unet_dim": 64, "dim_mults": [1, 2, 2, 4], "rrdb_blocks": 8, "rrdb_nf": 32, "rrdb_gc": 16},
}
ARCHS["srdiff-imagenet"] = copy.deepcopy(ARCHS["srdiff-div2k"])
ARCH_SCALES = {"srdiff-div2k": 4, "srdiff-imagenet": 4, "srdiff-celeba": 8}
PAPER_PARAMS_M = {"srdiff-div2k": 37.6, "srdiff-imagenet": 37.6, "srdiff-celeba": 12.0}

DIFFUSION = {"schedule": "cosine", "T": 100, "cosine_s": 0.008, "res_rescale": 2.0, "clip_input": True}
SAMPLER = {"name": "ancestral", "steps": None, "eta": 0.0, "variance": "posterior", "clip_denoised": True}


def model_config(model: dict) -> dict:
    """The preset named by ``model.arch`` overridden by the SRDiff keys given (a custom
    ``rrdb_nf`` without ``rrdb_gc`` gets gc = nf / 2, the RRDB convention)."""
    out = ddpm.preset_model_config(model, ARCHS, "srdiff", "SRDiff")
    if "rrdb_nf" in model and "rrdb_gc" not in model:
        out["rrdb_gc"] = int(model["rrdb_nf"]) // 2
    return out


def cond_channels(m: dict) -> int:
    return int(m["rrdb_nf"]) * ((int(m["rrdb_blocks"]) + 1) // 3)


def rrdb_condition(net: RRDBNet, lr: Tensor) -> Tensor:
    """SRDiff's ``RRDBNet(get_fea=True)`` features ``feas[2::3]`` concatenated, where
    ``feas`` = the output of every RRDB block, then ``conv_first + trunk_conv(last)``."""
    enc = net.encoder
    first = h = enc.conv_first(lr)
    feats = []
    for block in enc.blocks:
        h = block(h)
        feats.append(h)
    feats.append(first + net.trunk_conv(h))
    return torch.cat(feats[2::3], 1)


class SRDiff(ddpm.DiscreteDiffusionSR):
    CONFIG_KEYS = ddpm.config_keys(ARCHS, "srdiff-div2k", DIFFUSION)
    STAGE_KEYS = ("encoder_lr",)   # accepted to refuse it with a reason (the encoder is frozen)
    STAGE_KINDS = ("pretrain", "score", "quality")

    def __init__(self, cfg: dict, meta: dict):
        super().__init__(cfg, meta)
        m = self.model_cfg = model_config(cfg.get("model", {}))
        self.rrdb = RRDBNet(self.scale, int(m["rrdb_blocks"]), int(m["rrdb_nf"]), int(m["rrdb_gc"]))
        self.unet = SRDiffUNet(int(m["unet_dim"]), tuple(m["dim_mults"]), cond_channels(m), self.scale)
        self.diffusion = {**DIFFUSION, **cfg.get("diffusion", {})}
        self.schedule = ddpm.make_schedule(self.diffusion["schedule"], **self.diffusion)
        self.sampler_defaults = dict(SAMPLER)

    @property
    def denoiser_net(self):
        return self.unet

    def parameter_count(self) -> int:
        """U-Net + the conditioning RRDB layers (not the pretraining-only upsampling head)."""
        used = [self.rrdb.encoder.conv_first, self.rrdb.encoder.blocks, self.rrdb.trunk_conv, self.unet]
        return sum(p.numel() for mod in used for p in mod.parameters())

    # --- stages ---------------------------------------------------------------
    def param_groups(self, stage: dict) -> list[dict]:
        if stage["kind"] == "pretrain":
            return [{"params": list(self.rrdb.parameters()), "lr": float(stage["lr"])}]
        if float(stage.get("encoder_lr", 0) or 0) > 0:
            raise ValueError("SRDiff keeps its pretrained RRDB encoder frozen (fix_rrdb); remove encoder_lr")
        return super().param_groups(stage)

    def training_losses(self, hr: Tensor, lr: Tensor) -> dict[str, Tensor]:
        if self.stage == "pretrain":
            return {"l1": (self.rrdb(lr) - hr).abs().mean()}
        return super().training_losses(hr, lr)

    # --- pieces ---------------------------------------------------------------
    def prepare(self, lr: Tensor) -> dict:
        """Bicubic-upsampled LR in [-1, 1] and the frozen encoder's features."""
        with torch.no_grad():
            cond = rrdb_condition(self.rrdb, lr)
        return {"up": bicubic_upsample(lr, self.scale, "matlab") * 2 - 1, "cond": cond, "device": lr.device}

    def img2res(self, x: Tensor, up: Tensor) -> Tensor:
        r = (x - up) * float(self.diffusion["res_rescale"])
        return r.clamp(-1, 1) if self.diffusion["clip_input"] else r

    def res2img(self, r: Tensor, up: Tensor) -> Tensor:
        if self.diffusion["clip_input"]:
            r = r.clamp(-1, 1)
        return r / float(self.diffusion["res_rescale"]) + up

    def score_loss(self, hr: Tensor, ctx: dict) -> Tensor:
        x0 = self.img2res(hr * 2 - 1, ctx["up"])
        t = batch_randint(len(self.schedule), (x0.shape[0],))   # per-sample draws (ecdp.distributed)
        noise = batch_randn(x0.shape, device=x0.device, dtype=x0.dtype)
        x_t = ddpm.q_sample(self.schedule, x0, t, noise)
        return (self.unet(x_t, t.to(x0.device), ctx["cond"]) - noise).abs().mean()

    def eps_at(self, x: Tensor, t: Tensor, process, ctx: dict) -> Tensor:
        """The noise prediction at continuous time t: SRDiff's step embedding of ``t N - 1``."""
        return self.unet(x, process.step_of(t).to(x.dtype).expand(x.shape[0]), ctx["cond"])

    def to_image(self, r: Tensor, ctx: dict) -> Tensor:
        return (self.res2img(r, ctx["up"]) + 1) / 2

    def generate(self, ctx: dict, shape, opts: dict, generator, checkpoint_steps: bool = False,
                 truncate: int | None = None):
        """Image in [0, 1] (not clamped) and stats."""
        if opts.get("schedule"):
            raise ValueError("SRDiff is conditioned on the integer training step: use `steps`, not `schedule`")
        sched = self.schedule.respace(opts.get("steps"))
        up, cond = ctx["up"], ctx["cond"]
        ts = sched.timesteps.to(up.device)

        def eps_fn(x: Tensor, i: int) -> Tensor:
            return self.unet(x, ts[i].expand(x.shape[0]), cond)

        x_T = batch_randn(shape, generator=generator, device=up.device, dtype=up.dtype)
        r, stats = ddpm.sample(eps_fn, sched, x_T, method=opts["name"], generator=generator,
                               variance=opts["variance"], clip=1.0 if opts["clip_denoised"] else None,
                               eta=float(opts["eta"]), checkpoint_steps=checkpoint_steps, truncate=truncate)
        return (self.res2img(r, up) + 1) / 2, stats
