"""Score U-Net with two output heads (eps and x0), conditioned on RRDB LR features.

Built as the released ECDP code builds it (docs/ARCHITECTURE.md, "ECDP's recipe"), which
reproduces Table 6's parameter counts; the paper calls the residual blocks "BigGAN
blocks".

* input: the noisy image only (3 channels, network-normalised space); conditioning
  is through LR features added in every residual block;
* stages with channels ``ch`` (Table 6: [64, 128, 256, 256]) and ``blocks[i]``
  residual blocks on the way down, ``blocks[i] + 1`` on the way up with skip
  concatenation; stride-2 3x3 conv downsampling after every stage but the last,
  nearest x2 + 3x3 conv upsampling; two middle blocks; no attention;
* time embedding: 128-dim sinusoidal of ``t * time_scale`` (300), frequencies
  ``exp(-log(1e4) k / 63)`` (released) -> Linear 512 -> SiLU -> Linear 512 -> SiLU;
  every block adds Linear(512 -> C_out);
* initialisation as released: PyTorch's default, every conv bias 0, Linear biases
  left at PyTorch's init;
* ResBlock: GN -> SiLU -> conv3x3 -> (+ time + LR features) -> GN -> SiLU ->
  conv3x3, GN groups min(C/4, 32), second conv initialised x1e-3, 1x1 skip x0.1;
  LR features are bilinearly resized to the block's resolution and projected by
  a 1x1 conv;
* output: GN -> SiLU -> conv3x3 to 6 channels = (eps head, x0 head).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn
import torch.nn.functional as F


def group_norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(c // 4, 32), c)


def timestep_embedding(t: Tensor, dim: int = 128) -> Tensor:
    """[sin, cos] of ``t`` at frequencies ``exp(-log(1e4) k / (half - 1))``, k < half (released)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / (half - 1))
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, temb: int, cond: int):
        super().__init__()
        self.norm1, self.conv1 = group_norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.temb = nn.Linear(temb, cout)
        self.cond = nn.Conv2d(cond, cout, 1)
        self.norm2, self.conv2 = group_norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()
        with torch.no_grad():
            self.conv2.weight.mul_(1e-3)
            for m in (self.conv1, self.conv2, self.cond):   # conv biases 0; Linear keeps torch's init
                nn.init.zeros_(m.bias)
            if isinstance(self.skip, nn.Conv2d):
                self.skip.weight.mul_(0.1)
                nn.init.zeros_(self.skip.bias)

    def forward(self, x: Tensor, temb: Tensor, cond: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        if cond.shape[-2:] != h.shape[-2:]:
            cond = F.interpolate(cond, size=h.shape[-2:], mode="bilinear", align_corners=False)
        h = h + self.temb(temb)[:, :, None, None] + self.cond(cond)
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class UNet(nn.Module):
    def __init__(self, channels=(64, 128, 256, 256), blocks=(2, 2, 2, 2), cond_channels: int = 256,
                 in_ch: int = 3, out_ch: int = 6, temb_dim: int = 512, time_scale: float = 300.0):
        super().__init__()
        if len(channels) != len(blocks):
            raise ValueError("channels and blocks need one entry per stage")
        self.time_scale = time_scale
        self.temb = nn.Sequential(nn.Linear(128, temb_dim), nn.SiLU(), nn.Linear(temb_dim, temb_dim), nn.SiLU())
        self.conv_in = nn.Conv2d(in_ch, channels[0], 3, padding=1)
        block = lambda a, b: ResBlock(a, b, temb_dim, cond_channels)  # noqa: E731
        self.down = nn.ModuleList()
        skips, c = [channels[0]], channels[0]
        for i, (ch, n) in enumerate(zip(channels, blocks)):
            for _ in range(n):
                self.down.append(block(c, ch))
                c = ch
                skips.append(c)
            if i < len(channels) - 1:
                self.down.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
                skips.append(c)
        self.mid = nn.ModuleList([block(c, c), block(c, c)])
        self.up = nn.ModuleList()
        for i in reversed(range(len(channels))):
            for _ in range(blocks[i] + 1):
                self.up.append(block(c + skips.pop(), channels[i]))
                c = channels[i]
            if i > 0:
                self.up.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c, c, 3, padding=1)))
        self.norm_out = group_norm(c)
        self.conv_out = nn.Conv2d(c, out_ch, 3, padding=1)
        self.downsample_factor = 2 ** (len(channels) - 1)
        with torch.no_grad():  # released: every conv bias starts at 0 (Linear biases keep torch's init)
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.zeros_(m.bias)

    def forward(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        temb = self.temb(timestep_embedding(t * self.time_scale).to(x.dtype))
        h = self.conv_in(x)
        hs = [h]
        for m in self.down:
            h = m(h, temb, cond) if isinstance(m, ResBlock) else m(h)
            hs.append(h)
        for m in self.mid:
            h = m(h, temb, cond)
        for m in self.up:
            h = m(torch.cat([h, hs.pop()], 1), temb, cond) if isinstance(m, ResBlock) else m(h)
        return self.conv_out(F.silu(self.norm_out(h)))
