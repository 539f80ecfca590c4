"""MATLAB-compatible bicubic ``imresize`` and the bicubic upsampling mu(y) of the paper.

The SR community degrades HR images with MATLAB's ``imresize(x, 1/s, 'bicubic')``
(DIV2K's official X4 LR, SRDiff's ``utils/matlab_resize.py``, the released ECDP
code).  This module reproduces MATLAB's algorithm (``imresize.m``, function
``contributions``):

* cubic kernel with a = -0.5 (Keys 1981),
* when downscaling (scale < 1) with antialiasing, the kernel is stretched by
  1 / scale: ``h(x) = scale * cubic(scale * x)``, width ``4 / scale``,
* output pixel ``i`` (1-based) samples the input at ``u = i / scale + 0.5 (1 - 1 / scale)``,
* the taps ``floor(u - width / 2) + (0 .. ceil(width) + 1)`` are normalised to sum
  to 1, and indices outside ``1..n`` are mirrored symmetrically
  (``aux = [1:n, n:-1:1]``, the edge pixel repeated),
* output size ``ceil(scale * n)``; with an explicit size, ``scale = out / in`` per
  dimension,
* the dimension with the smallest scale is resized first (ties: height first).

Each 1-D resize is a dense (out, in) weight matrix built once (cached) in float64
and contracted with the image: ``W_h @ x @ W_w^T``.  Batched, any device, any float
dtype (float16/bfloat16 are computed in float32 and cast back).  No clamping and
no rounding (MATLAB rounds only for uint8 inputs; quantise with
:func:`ecdp.imageio.quantize` when saving).
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["imresize", "bicubic_upsample", "resize_weights", "cubic"]

_KERNEL_WIDTH = 4.0


def cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5 (MATLAB ``imresize`` 'bicubic')."""
    ax = np.abs(x)
    ax2, ax3 = ax * ax, ax * ax * ax
    return ((1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1)
            + (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1) & (ax <= 2)))


@lru_cache(maxsize=128)
def _weights(in_len: int, out_len: int, scale: float, antialias: bool) -> torch.Tensor:
    """Cached float64 CPU weight matrix; never modify it in place (public: :func:`resize_weights`)."""
    if scale < 1 and antialias:
        width = _KERNEL_WIDTH / scale
        def kernel(d):
            return scale * cubic(scale * d)
    else:
        width = _KERNEL_WIDTH
        kernel = cubic
    x = np.arange(1, out_len + 1, dtype=np.float64)[:, None]
    u = x / scale + 0.5 * (1.0 - 1.0 / scale)
    left = np.floor(u - width / 2.0)
    taps = int(math.ceil(width)) + 2
    idx = left + np.arange(taps, dtype=np.float64)[None, :]          # (out, taps), 1-based
    w = kernel(u - idx)
    w = w / w.sum(axis=1, keepdims=True)
    # MATLAB: aux = [1:n, n:-1:1]; idx = aux(mod(idx - 1, 2n) + 1)  -> 0-based here
    aux = np.concatenate([np.arange(in_len), np.arange(in_len - 1, -1, -1)])
    idx0 = aux[np.mod(idx.astype(np.int64) - 1, 2 * in_len)]
    mat = np.zeros((out_len, in_len), dtype=np.float64)
    np.add.at(mat, (np.repeat(np.arange(out_len), taps), idx0.ravel()), w.ravel())
    return torch.from_numpy(mat)


@lru_cache(maxsize=256)
def _weights_on(in_len: int, out_len: int, scale: float, antialias: bool, device: torch.device,
                dtype: torch.dtype) -> torch.Tensor:
    """:func:`_weights` moved to ``device``/``dtype`` once (repeated calls at training time)."""
    return _weights(in_len, out_len, scale, antialias).to(device=device, dtype=dtype)


def resize_weights(in_len: int, out_len: int, scale: float | None = None, antialias: bool = True,
                   dtype: torch.dtype = torch.float64, device: torch.device | str | None = None) -> torch.Tensor:
    """The (out_len, in_len) matrix ``W`` of a 1-D MATLAB bicubic resize (``y = W @ x``).

    ``scale`` defaults to ``out_len / in_len`` (MATLAB's rule for an explicit size)."""
    if scale is None:
        scale = out_len / in_len
    mat = _weights(int(in_len), int(out_len), float(scale), bool(antialias))
    return mat.to(device=device, dtype=dtype, copy=True)


def _out_len(n: int, s: float) -> int:
    # ceil(scale * n) as MATLAB, tolerant to float noise such as 0.1 * 30 = 3.0000000000000004
    return max(1, math.ceil(s * n - 1e-9))


def _plan(h: int, w: int, scale, size) -> tuple[tuple[int, float], tuple[int, float]]:
    """((out_h, scale_h), (out_w, scale_w)) following MATLAB's size/scale rules."""
    if (scale is None) == (size is None):
        raise ValueError("imresize: give exactly one of scale or size")
    if scale is not None:
        sh, sw = (scale, scale) if np.isscalar(scale) else tuple(scale)
        if sh <= 0 or sw <= 0:
            raise ValueError(f"imresize: scale must be positive, got {scale}")
        return (_out_len(h, sh), float(sh)), (_out_len(w, sw), float(sw))
    oh, ow = size
    if oh is None and ow is None:
        raise ValueError("imresize: size (None, None)")
    if oh is None:              # MATLAB [NaN, W]: keep the aspect ratio
        s = ow / w
        return (_out_len(h, s), s), (int(ow), s)
    if ow is None:
        s = oh / h
        return (int(oh), s), (_out_len(w, s), s)
    return (int(oh), oh / h), (int(ow), ow / w)


def imresize(x: torch.Tensor, scale: float | tuple[float, float] | None = None,
             size: tuple[int | None, int | None] | None = None, antialias: bool = True) -> torch.Tensor:
    """MATLAB ``imresize(x, scale, 'bicubic')`` (or ``imresize(x, [H W], 'bicubic')``).

    ``x``: (C, H, W) or (B, C, H, W) (any leading dims) float tensor.  Returns the
    same layout and dtype on the same device, unclamped.
    """
    if x.dim() < 2:
        raise ValueError(f"imresize: expected (..., H, W), got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    (oh, sh), (ow, sw) = _plan(h, w, scale, size)
    out_dtype = x.dtype
    work = x if x.dtype in (torch.float32, torch.float64) else x.to(torch.float32)
    steps = [(-2, h, oh, sh), (-1, w, ow, sw)]
    steps.sort(key=lambda s: s[3])        # stable: smallest scale first, height first on ties
    for dim, n_in, n_out, s in steps:
        if n_in == n_out and s == 1.0:
            continue
        mat = _weights_on(n_in, n_out, float(s), bool(antialias), work.device, work.dtype)
        if dim == -2:
            work = torch.matmul(mat, work)
        else:
            work = torch.matmul(work, mat.transpose(0, 1))
    return work if work.dtype == out_dtype else work.to(out_dtype)


def bicubic_upsample(lr: torch.Tensor, scale: int, kernel: str = "matlab") -> torch.Tensor:
    """mu(y) of the paper (eq. 5): the bicubic upsampling of the LR image by ``scale``.

    * ``"matlab"``: :func:`imresize` (a = -0.5, MATLAB boundary handling),
    * ``"torch"``: ``F.interpolate(mode="bicubic", align_corners=False)`` (a = -0.75,
      edge-clamped), unclamped output: what the released ECDP code uses
      (torchvision bicubic resize, the released ECDP code).

    Output size is exactly ``scale * (H, W)`` for both kernels.
    """
    if kernel not in ("matlab", "torch"):
        raise ValueError(f"bicubic_upsample: kernel must be 'matlab' or 'torch', got {kernel!r}")
    h, w = lr.shape[-2:]
    size = (int(round(h * scale)), int(round(w * scale)))
    if kernel == "matlab":
        return imresize(lr, scale=scale)
    squeeze = lr.dim() == 3
    x = lr[None] if squeeze else lr
    lead = x.shape[:-3]
    x = x.reshape(-1, *x.shape[-3:])
    work = x if x.dtype in (torch.float32, torch.float64) else x.float()
    out = F.interpolate(work, size=size, mode="bicubic", align_corners=False).to(lr.dtype)
    out = out.reshape(*lead, *out.shape[-3:])
    return out[0] if squeeze else out
