"""Reading and writing images: the one place that turns files into [0, 1] RGB tensors.

Every public function of the suite takes and returns images as float tensors in
[0, 1], RGB, shape (3, H, W) (or (B, 3, H, W)).  :func:`load_image` accepts what
users have on disk: RGB, RGBA (alpha composited on black is *not* done: alpha is
dropped and returned separately), grayscale (replicated to 3 channels), palette,
and 8- or 16-bit PNG/TIFF.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm"}


class ImageReadError(ValueError):
    """A file that is not a readable image."""


def _to_float_array(img: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """(H, W, 3) float64 in [0, 1] and the alpha channel (H, W) or None."""
    alpha = None
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        arr = arr / (65535.0 if arr.max() > 255 or mode.startswith("I;16") else 255.0)
        arr = np.repeat(arr[..., None], 3, axis=2)
        return np.clip(arr, 0, 1), None
    if mode == "F":
        arr = np.clip(np.asarray(img, dtype=np.float64), 0, 1)
        return np.repeat(arr[..., None], 3, axis=2), None
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        alpha = np.asarray(rgba, dtype=np.float64)[..., 3] / 255.0
        img = rgba.convert("RGB")
    elif mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.float64) / 255.0, alpha


def load_image(path: str | os.PathLike, with_alpha: bool = False):
    """Load an image file as a (3, H, W) float32 tensor in [0, 1].

    Raises :class:`ImageReadError` with a one-line message for anything that is not
    a readable image (missing, truncated, wrong format).
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            arr, alpha = _to_float_array(img)
    except FileNotFoundError:
        raise ImageReadError(f"{path}: no such file") from None
    except Image.DecompressionBombError as e:   # a header claiming billions of pixels
        raise ImageReadError(f"{path}: refused, {e.args[0].split(', could be')[0]}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageReadError(f"{path}: not a readable image ({e.__class__.__name__}: {e})") from None
    x = torch.from_numpy(arr.astype(np.float32)).permute(2, 0, 1).contiguous()
    if with_alpha:
        return x, (None if alpha is None else torch.from_numpy(alpha.astype(np.float32)))
    return x


def quantize(x: torch.Tensor) -> torch.Tensor:
    """Clamp to [0, 1] and round to the 8-bit grid (still float in [0, 1])."""
    return torch.round(x.clamp(0, 1) * 255.0) / 255.0


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(3, H, W) in [0, 1] -> (H, W, 3) uint8 (clamp, x255, round)."""
    return torch.round(x.detach().clamp(0, 1) * 255.0).to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def save_image(x: torch.Tensor, path: str | os.PathLike, alpha: torch.Tensor | None = None) -> None:
    """Save a (3, H, W) [0, 1] tensor atomically (temp file + rename): a file that
    exists is always complete.  Format from the suffix (PNG recommended)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = to_uint8(x)
    img = Image.fromarray(arr, "RGB")
    if alpha is not None:
        a = torch.round(alpha.clamp(0, 1) * 255).to(torch.uint8).cpu().numpy()
        img = img.convert("RGBA")
        img.putalpha(Image.fromarray(a, "L"))
    from .checkpoint import atomic_open   # the one atomic writer (temp name within 255 bytes, umask)

    with atomic_open(path, "wb") as f:
        img.save(f, format=Image.registered_extensions().get(path.suffix.lower(), "PNG"))


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name."""
    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
