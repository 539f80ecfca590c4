"""Denoiser networks of the two discrete-time baselines.

``SR3UNet``: the SR3 U-Net as the widely used SR3 re-implementation builds it
(Janspiry/Image-Super-Resolution-via-Iterative-Refinement,
``model/sr3_modules/unet.py``; Saharia et al. did not release code).  That
implementation at its published FFHQ/CelebA setting (inner 64, multipliers
[1, 2, 4, 8, 8], 2 res blocks, attention in the stage at resolution 16) has 97.8M
parameters, ECDP's reported SR3 size, so it is the network ECDP's SR3 rows most
likely used.  Pieces:

* input: ``cat([bicubic_up(y), x_noisy])``, 6 channels, images in [-1, 1];
* noise-level embedding: sinusoidal encoding of the continuous ``sqrt(gamma)``
  (``gamma = alpha_bar``) times ``noise_level_scale`` (1 in that code), then
  Linear(C, 4C) -> Swish -> Linear(4C, C);
* ResBlock: [GN -> Swish -> conv3x3] -> + Linear(noise emb) -> [GN -> Swish ->
  dropout -> conv3x3], 1x1 skip when the width changes;
* single-head self-attention (GN, 1x1 qkv without bias, 1x1 out, residual) after
  every ResBlock of the stages listed in ``attn_stages`` and after the first middle
  block; stride-2 conv3x3 downsampling, nearest x2 + conv3x3 upsampling;
  ``res_blocks`` per stage down, ``res_blocks + 1`` up with skip concatenation;
* output: GN -> Swish -> conv3x3 to 3 channels (the noise).

The reference code places attention by absolute resolution (``attn_res`` against an
``image_size``); here it is by stage index (``attn_stages``) so that a net trained
on patches and applied to full images keeps the same architecture.

``SRDiffUNet``: the denoiser of SRDiff (LeiaLi/SRDiff, ``models/diffsr_modules.py``,
``models/commons.py``), built the same way:

* input: the noisy (scaled) residual, 3 channels; time ``t`` (integer step index)
  through SinusoidalPosEmb(dim) -> Linear(dim, 4 dim) -> Mish -> Linear(4 dim, dim);
* ResnetBlock: [reflect-pad conv3x3 -> Mish] -> + Linear(Mish(temb)) ->
  [reflect-pad conv3x3 -> Mish], no normalisation (``gn_groups: 0``), 1x1 skip;
* two ResnetBlocks per stage of widths ``dim * dim_mults``; reflect-pad stride-2
  conv downsampling, ConvTranspose(4, 2, 1) upsampling; two middle blocks (the
  optional linear attention is off in every released config);
* LR conditioning: the RRDB features (outputs of every third RRDB block and the
  trunk sum, ``cond[2::3]``) mapped to HR resolution by one ConvTranspose2d
  (kernel 2s, stride s, padding s/2) and added after the first stage;
* output: [reflect-pad conv3x3 -> Mish] -> conv1x1 to 3 channels.
"""
from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


# --------------------------------------------------------------------------- SR3
def noise_level_encoding(level: Tensor, dim: int) -> Tensor:
    """SR3's sinusoidal encoding of a continuous noise level (one value per image)."""
    count = dim // 2
    step = torch.arange(count, dtype=torch.float32, device=level.device) / count
    enc = level.float()[:, None] * torch.exp(-math.log(1e4) * step[None])
    return torch.cat([torch.sin(enc), torch.cos(enc)], dim=-1)


def _block(cin: int, cout: int, groups: int, dropout: float = 0.0) -> nn.Sequential:
    return nn.Sequential(nn.GroupNorm(groups, cin), nn.SiLU(), nn.Dropout(dropout) if dropout else nn.Identity(),
                         nn.Conv2d(cin, cout, 3, padding=1))


class SR3ResBlock(nn.Module):
    """ResBlock (+ optional self-attention).  ``resample="up"|"down"`` makes it the
    BigGAN-style resampling block (improved-DDPM ``resblock_updown``): the input and
    the residual branch are resampled (nearest x2 / 2x2 average pool) after the first
    GN + Swish and before the first conv."""

    def __init__(self, cin: int, cout: int, emb: int, groups: int, dropout: float, attn: bool = False,
                 resample: str | None = None):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(groups, cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.noise = nn.Linear(emb, cout)
        self.block2 = _block(cout, cout, groups, dropout)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()
        self.attn = SelfAttention(cout, groups) if attn else None
        self.resample = resample

    def _resample(self, x: Tensor) -> Tensor:
        if self.resample == "up":
            return F.interpolate(x, scale_factor=2, mode="nearest")
        if self.resample == "down":
            return F.avg_pool2d(x, 2)
        return x

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self._resample(F.silu(self.norm1(x)))
        x = self._resample(x)
        h = self.conv1(h) + self.noise(emb)[:, :, None, None]
        h = self.block2(h) + self.skip(x)
        return self.attn(h) if self.attn is not None else h


class ConvResample(nn.Module):
    """SR3 code's resampling: stride-2 conv3x3 down, nearest x2 + conv3x3 up."""

    def __init__(self, c: int, kind: str):
        super().__init__()
        self.kind = kind
        self.conv = nn.Conv2d(c, c, 3, stride=2 if kind == "down" else 1, padding=1)

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        if self.kind == "up":
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x)


class SelfAttention(nn.Module):
    """Single-head spatial self-attention with a residual connection (SR3 code)."""

    def __init__(self, c: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups, c)
        self.qkv = nn.Conv2d(c, 3 * c, 1, bias=False)
        self.out = nn.Conv2d(c, c, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).unbind(1)
        attn = torch.softmax(torch.einsum("bci,bcj->bij", q, k) / math.sqrt(c), dim=-1)
        out = torch.einsum("bij,bcj->bci", attn, v).reshape(b, c, h, w)
        return x + self.out(out)


class SR3UNet(nn.Module):
    """``resample="conv"`` (SR3 code) or ``"resblock"`` (BigGAN-style, the SR3 paper's
    "residual blocks from BigGAN" for up- and downsampling)."""

    def __init__(self, inner: int = 64, mults=(1, 2, 4, 8, 8), res_blocks: int = 2, attn_stages=(3,),
                 dropout: float = 0.0, groups: int = 32, in_ch: int = 6, out_ch: int = 3,
                 noise_level_scale: float = 1.0, resample: str = "conv"):
        super().__init__()
        if resample not in ("conv", "resblock"):
            raise ValueError(f"resample must be 'conv' or 'resblock', got {resample!r}")
        self.inner, self.noise_level_scale = inner, float(noise_level_scale)
        self.emb = nn.Sequential(nn.Linear(inner, 4 * inner), nn.SiLU(), nn.Linear(4 * inner, inner))
        attn_stages = set(attn_stages or ())
        block = lambda a, b, att=False, rs=None: SR3ResBlock(a, b, inner, groups, dropout, att, rs)
        resampler = (lambda c, kind: ConvResample(c, kind)) if resample == "conv" else \
            (lambda c, kind: block(c, c, rs=kind))
        self.conv_in = nn.Conv2d(in_ch, inner, 3, padding=1)
        self.down = nn.ModuleList()
        skips, c = [inner], inner
        n = len(mults)
        for i, m in enumerate(mults):
            for _ in range(res_blocks):
                self.down.append(block(c, inner * m, i in attn_stages))
                c = inner * m
                skips.append(c)
            if i < n - 1:
                self.down.append(resampler(c, "down"))
                skips.append(c)
        self.mid = nn.ModuleList([block(c, c, True), block(c, c, False)])
        self.up = nn.ModuleList()
        for i in reversed(range(n)):
            for _ in range(res_blocks + 1):
                self.up.append(block(c + skips.pop(), inner * mults[i], i in attn_stages))
                c = inner * mults[i]
            if i > 0:
                self.up.append(resampler(c, "up"))
        self.out = _block(c, out_ch, groups)
        self.downsample_factor = 2 ** (n - 1)

    def forward(self, x: Tensor, noise_level: Tensor) -> Tensor:
        emb = self.emb(noise_level_encoding(noise_level * self.noise_level_scale, self.inner))
        h = self.conv_in(x)
        hs = [h]
        for m in self.down:
            h = m(h, emb)
            hs.append(h)
        for m in self.mid:
            h = m(h, emb)
        for m in self.up:
            skip = isinstance(m, SR3ResBlock) and m.resample is None
            h = m(torch.cat([h, hs.pop()], 1) if skip else h, emb)
        return self.out(h)


# ------------------------------------------------------------------------ SRDiff
def sinusoidal_embedding(t: Tensor, dim: int) -> Tensor:
    """SRDiff's SinusoidalPosEmb (frequency spacing log(1e4) / (dim/2 - 1))."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, device=t.device, dtype=torch.float32) * -(math.log(10000.0) / (half - 1)))
    args = t.float()[:, None] * freqs[None]
    return torch.cat([args.sin(), args.cos()], dim=-1)


class _ReflectConv(nn.Sequential):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__(nn.ReflectionPad2d(1), nn.Conv2d(cin, cout, 3, stride=stride))


class SRDiffResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, temb: int):
        super().__init__()
        self.mlp = nn.Linear(temb, cout)
        self.conv1, self.conv2 = _ReflectConv(cin, cout), _ReflectConv(cout, cout)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        h = F.mish(self.conv1(x)) + self.mlp(F.mish(temb))[:, :, None, None]
        return F.mish(self.conv2(h)) + self.skip(x)


class SRDiffUNet(nn.Module):
    def __init__(self, dim: int = 64, dim_mults=(1, 2, 2, 4), cond_channels: int = 96, scale: int = 4,
                 in_ch: int = 3, out_ch: int = 3):
        super().__init__()
        dims = [in_ch, *[dim * m for m in dim_mults]]
        in_out = list(itertools.pairwise(dims))
        self.dim = dim
        self.cond_proj = nn.ConvTranspose2d(cond_channels, dim, scale * 2, scale, scale // 2)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.Mish(), nn.Linear(4 * dim, dim))
        n = len(in_out)
        self.downs = nn.ModuleList()
        for i, (a, b) in enumerate(in_out):
            self.downs.append(nn.ModuleList([SRDiffResBlock(a, b, dim), SRDiffResBlock(b, b, dim),
                                             _ReflectConv(b, b, stride=2) if i < n - 1 else nn.Identity()]))
        mid = dims[-1]
        self.mid = nn.ModuleList([SRDiffResBlock(mid, mid, dim), SRDiffResBlock(mid, mid, dim)])
        self.ups = nn.ModuleList()
        for a, b in reversed(in_out[1:]):
            self.ups.append(nn.ModuleList([SRDiffResBlock(2 * b, a, dim), SRDiffResBlock(a, a, dim),
                                           nn.ConvTranspose2d(a, a, 4, 2, 1)]))
        self.final = nn.Sequential(_ReflectConv(dim, dim), nn.Mish(), nn.Conv2d(dim, out_ch, 1))
        self.downsample_factor = 2 ** (n - 1)

    def forward(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        temb = self.mlp(sinusoidal_embedding(t, self.dim))
        cond = self.cond_proj(cond)
        hs = []
        for i, (b1, b2, down) in enumerate(self.downs):
            x = b2(b1(x, temb), temb)
            if i == 0:
                x = x + cond
            hs.append(x)
            x = down(x)
        for b in self.mid:
            x = b(x, temb)
        for b1, b2, up in self.ups:
            x = up(b2(b1(torch.cat([x, hs.pop()], 1), temb), temb))
        return self.final(x)


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
