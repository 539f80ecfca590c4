"""MATLAB-compatible bicubic resize (placeholder until the exact port lands).

API: ``imresize(x, scale=None, size=None, antialias=True)`` on (C, H, W) or
(B, C, H, W) float tensors; returns float tensors (no clamping, no rounding).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def imresize(x: torch.Tensor, scale: float | None = None, size: tuple[int, int] | None = None,
             antialias: bool = True) -> torch.Tensor:
    squeeze = x.dim() == 3
    if squeeze:
        x = x[None]
    if size is None:
        import math
        size = (math.ceil(x.shape[-2] * scale), math.ceil(x.shape[-1] * scale))
    out = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=antialias)
    return out[0] if squeeze else out


def bicubic_upsample(lr: torch.Tensor, scale: int, kernel: str = "matlab") -> torch.Tensor:
    """mu(y) (placeholder)."""
    if kernel == "torch":
        return F.interpolate(lr, scale_factor=scale, mode="bicubic", align_corners=False)
    return imresize(lr, scale=scale)
