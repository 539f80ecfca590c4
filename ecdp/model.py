"""ECDP as one ``nn.Module`` with the suite's method interface (DESIGN.md):

* ``training_losses(hr, lr) -> dict[str, Tensor]`` for the current stage,
* ``super_resolve(lr, generator=None, **sampler_options) -> (sr, stats)``.

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
  fine-tune), config ``quality.mode: add | only``.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn
import torch.nn.functional as F

from .imresize import bicubic_upsample
from .losses import build_quality_loss
from .nets import RRDB_HEADS, UNet
from .parametrization import Parametrization, reduce_loss, score_matching_loss
from .sampling import get_sampler
from .sde import ConditionalVPSDE


def pad_to_multiple(lr: Tensor, multiple: int) -> tuple[Tensor, tuple[int, int]]:
    """Replicate-pad an LR batch on the bottom/right so H and W are multiples of ``multiple``."""
    h, w = lr.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        lr = F.pad(lr, (0, pw, 0, ph), mode="replicate")
    return lr, (h, w)


class ECDP(nn.Module):
    def __init__(self, cfg: dict, sigma2: float, scale: int):
        super().__init__()
        self.cfg = cfg
        m, s = cfg["model"], cfg["sde"]
        self.scale = int(scale)
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
        kind = stage["kind"]
        if kind not in ("pretrain", "score", "quality"):
            raise ValueError(f"ECDP has no stage kind {kind!r} (pretrain, score, quality)")
        self.stage = kind
        self.stage_cfg = stage
        if kind == "quality" and not self._quality:
            self._quality.append(build_quality_loss(self.cfg["quality"]))

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
        t = torch.rand(hr.shape[0], device=hr.device)
        eps = torch.randn_like(hr)
        x_t = self.sde.perturb(hr, mu, self.sigma2, t, eps)
        sigma = self.sigma2.sqrt()
        out = self.unet((x_t - mu) / sigma, t, cond)
        return score_matching_loss(out[:, :3], out[:, 3:], eps, (hr - mu) / sigma, self.heads, self.param.kind,
                                   self.reduction)

    def training_losses(self, hr: Tensor, lr: Tensor) -> dict[str, Tensor]:
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
