"""PSNR, SSIM and LPIPS: every metric convention of the suite lives here and only here.

A *convention* says how an SR image is compared with its HR reference.  The default,
``"ecdp"``, is the released ECDP evaluation:

1. the SR image is cropped to the HR size (top-left), both are quantized to 8 bit
   (clamp to [0, 1], x255, round -- :func:`ecdp.imageio.quantize`);
2. PSNR on RGB, data range 1, no border shave (pyiqa's ``psnr``, i.e. piq's formula
   ``10 log10(1 / (mse + 1e-8))``; identical images therefore score 80 dB, not inf);
3. SSIM on RGB averaged over channels: Gaussian window 11x11, sigma 1.5, K1 = 0.01,
   K2 = 0.03, 'valid' filtering, no downsampling (piq's ``ssim(downsample=False)``);
4. LPIPS v0.1 with the AlexNet trunk, inputs in [0, 1] with ``normalize=True``.

Options, named in every result: the Y channel of ITU-R BT.601 YCbCr (BasicSR's
``test_y_channel``: Y = 16/255 + (65.481 R + 128.553 G + 24.966 B) / 255, not rounded;
:func:`to_y`) and a border crop of ``scale`` pixels, both for PSNR and SSIM only.
LPIPS is always computed on the full quantized RGB images.

SSIM is written here in torch rather than taken from pyiqa: pyiqa's ``ssim`` clamps the
contrast-structure term at zero (``F.relu(cs_map)``), which piq, skimage and the ECDP
code do not; on textures a generative model hallucinates (locally anti-correlated with
the reference) that raises the score.  Otherwise the computation is the same, in float64
(piq uses float32).  It agrees with skimage's ``structural_similarity(gaussian_weights=True,
sigma=1.5, use_sample_covariance=False, data_range=1)`` to 1e-10.

Large images are processed in pieces so that full-size DIV2K images (2040x1356) fit in
memory with any trunk: SSIM in row bands with a 5-pixel halo (exact); LPIPS in tiles
with a 128-pixel context margin aligned to the trunks' stride of 16, so every feature of
a tile's core equals the untiled one (exact up to float rounding, measured ~1e-9; see
``tests/test_metrics.py``).  AlexNet images up to 2304 px per side are not split at all.
"""
from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ecdp.imageio import quantize

# --------------------------------------------------------------------------- conventions

@dataclass(frozen=True)
class Convention:
    """How SR and HR images are compared.  ``crop_border``: crop ``scale`` pixels per side."""

    name: str
    description: str
    quantize: bool = True
    y_channel: bool = False
    crop_border: bool = False

    def crop(self, scale: int | None) -> int:
        """Pixels cropped from each border for PSNR/SSIM (requires ``scale`` if cropping)."""
        if not self.crop_border:
            return 0
        if not scale or scale < 1:
            raise ValueError(f"convention {self.name!r} crops `scale` border pixels: pass scale (e.g. 4)")
        return int(scale)


CONVENTIONS: dict[str, Convention] = {
    c.name: c for c in (
        Convention("ecdp", "released ECDP evaluation: RGB, 8-bit quantized, no border crop"),
        Convention("y", "Y channel (BT.601), 8-bit quantized, no border crop", y_channel=True),
        Convention("crop", "RGB, 8-bit quantized, `scale` px border crop", crop_border=True),
        Convention("y-crop", "Y channel (BT.601), 8-bit quantized, `scale` px border crop (BasicSR style)",
                   y_channel=True, crop_border=True),
    )
}
DEFAULT_CONVENTION = "ecdp"

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03
SSIM_BAND = 128  # output rows per SSIM band (bounded memory, cache friendly)

LPIPS_NETS = ("alex", "vgg")
LPIPS_VERSION = "0.1"
LPIPS_ALIGN = 16      # total stride of both trunks' deepest layer: tile offsets are multiples of it
LPIPS_MARGIN = 128    # context per tile side; > receptive-field reach (AlexNet conv5: 81 px, VGG16 conv5_3: 106 px)
#: core tile size per trunk (pixels); an image side up to TILE + 2 * MARGIN is not split.  AlexNet
#: needs < 1 GB on a full DIV2K image (2040x1356, left whole, as in the released evaluation);
#: VGG16 keeps full-resolution 64-channel maps and would need several GB, so it is tiled.
LPIPS_TILE = {"alex": 2048, "vgg": 512}
LPIPS_STRIDES = {"alex": (4, 8, 16, 16, 16), "vgg": (1, 2, 4, 8, 16)}


def get_convention(convention: str | Convention) -> Convention:
    """A :class:`Convention` from its name (or itself)."""
    if isinstance(convention, Convention):
        return convention
    try:
        return CONVENTIONS[convention]
    except KeyError:
        raise ValueError(f"unknown metric convention {convention!r}; known: {', '.join(CONVENTIONS)}") from None


# --------------------------------------------------------------------------- preparation

def _as_batch(x: torch.Tensor, what: str) -> torch.Tensor:
    """(3, H, W) or (1, 3, H, W) -> (1, 3, H, W)."""
    if x.dim() == 3:
        x = x[None]
    if x.dim() != 4 or x.shape[0] != 1 or x.shape[1] != 3:
        raise ValueError(f"{what}: expected a (3, H, W) RGB image tensor, got shape {tuple(x.shape)}")
    return x


#: An SR image may exceed its HR image by fewer pixels than the scale factor (an HR size
#: that is not a multiple of it); without a known scale, by at most this (largest scale 8).
MAX_SIZE_EXCESS = 7


def prepare(sr: torch.Tensor, hr: torch.Tensor, convention: str | Convention = DEFAULT_CONVENTION,
            scale: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop SR to the HR size and quantize both (per convention): (1, 3, H, W) float64 each.

    SR smaller than HR, or larger by ``scale`` pixels or more in a dimension
    (:data:`MAX_SIZE_EXCESS` + 1 without ``scale``), is an error: a wrong-scale model or a
    wrong pair of files, not something to crop away."""
    conv = get_convention(convention)
    sr, hr = _as_batch(sr, "sr"), _as_batch(hr, "hr")
    h, w = hr.shape[-2:]
    if sr.shape[-2] < h or sr.shape[-1] < w:
        raise ValueError(f"SR image {tuple(sr.shape[-2:])} is smaller than HR {tuple(hr.shape[-2:])}")
    limit = int(scale) - 1 if scale else MAX_SIZE_EXCESS
    if sr.shape[-2] - h > limit or sr.shape[-1] - w > limit:
        raise ValueError(f"SR image {tuple(sr.shape[-2:])} is larger than HR {tuple(hr.shape[-2:])} by more than "
                         f"{limit} px: a model of another scale, or images that do not belong together")
    sr = sr[..., :h, :w]
    if conv.quantize:
        sr, hr = quantize(sr), quantize(hr)
    return sr.to(torch.float64), hr.to(torch.float64)


def crop_border(x: torch.Tensor, pixels: int) -> torch.Tensor:
    """Remove ``pixels`` from each side."""
    if pixels == 0:
        return x
    if 2 * pixels >= min(x.shape[-2:]):
        raise ValueError(f"border crop of {pixels} px leaves nothing of a {tuple(x.shape[-2:])} image")
    return x[..., pixels:-pixels, pixels:-pixels]


#: ITU-R BT.601 RGB -> Y for [0, 1] inputs, as BasicSR's ``rgb2ycbcr(y_only=True)``.
BT601_Y = (65.481 / 255, 128.553 / 255, 24.966 / 255)
BT601_Y_OFFSET = 16 / 255


def to_y(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB [0, 1] -> (B, 1, H, W) BT.601 luma in [16/255, 235/255], not rounded.

    The same formula as pyiqa's ``to_y_channel(x, 1, "ycbcr")``, computed in float64 with
    the exact constants (pyiqa builds its matrix in float32, off by ~4e-8 relative).
    """
    r, g, b = x.to(torch.float64).unbind(1)
    return (BT601_Y_OFFSET + BT601_Y[0] * r + BT601_Y[1] * g + BT601_Y[2] * b)[:, None]


def _channels(x: torch.Tensor, conv: Convention) -> torch.Tensor:
    return to_y(x) if conv.y_channel else x


# --------------------------------------------------------------------------- PSNR

def psnr_prepared(sr: torch.Tensor, hr: torch.Tensor, conv: Convention, scale: int | None = None) -> float:
    """PSNR of already :func:`prepare`-d images (pyiqa's ``psnr``, data range 1, eps 1e-8)."""
    from pyiqa.archs.psnr_arch import psnr as pyiqa_psnr

    b = conv.crop(scale)
    sr, hr = crop_border(sr, b), crop_border(hr, b)
    return float(pyiqa_psnr(_channels(sr, conv), _channels(hr, conv), test_y_channel=False, data_range=1.0))


def psnr(sr: torch.Tensor, hr: torch.Tensor, convention: str | Convention = DEFAULT_CONVENTION,
         scale: int | None = None) -> float:
    """PSNR in dB of an SR image against its HR reference under ``convention``."""
    conv = get_convention(convention)
    return psnr_prepared(*prepare(sr, hr, conv, scale), conv, scale)


# --------------------------------------------------------------------------- SSIM

def gaussian_taps(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> list[float]:
    """Normalized 1-D Gaussian; the SSIM window is their outer product, which is exactly
    MATLAB's ``fspecial('gaussian', 11, 1.5)`` (the normalization factorizes)."""
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(r ** 2) / (2 * sigma ** 2))
    return (g / g.sum()).tolist()


def filter_valid(x: torch.Tensor, taps: list[float]) -> torch.Tensor:
    """Separable 'valid' correlation of the last two dims with ``taps`` x ``taps``.

    Written as shifted-slice accumulations: in float64 on CPU this is several times faster
    than ``F.conv2d`` (which has no fast float64 path), and exact to float rounding.
    """
    n = len(taps)
    h, w = x.shape[-2] - n + 1, x.shape[-1] - n + 1
    v = x[..., 0:h, :] * taps[0]
    for k in range(1, n):
        v.add_(x[..., k:k + h, :], alpha=taps[k])
    out = v[..., 0:w] * taps[0]
    for k in range(1, n):
        out.add_(v[..., k:k + w], alpha=taps[k])
    return out


def ssim_map(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-pixel SSIM of (B, C, H, W) images: Gaussian 11x11 window (sigma 1.5), 'valid'
    filtering, K1 = 0.01, K2 = 0.03, population (co)variances, no ReLU on the cs term.

    Output (B, C, H - 10, W - 10): the map piq's ``_ssim_per_channel`` and skimage's
    ``structural_similarity`` (after its 5-px crop) average.
    """
    if min(x.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW} px, got {tuple(x.shape[-2:])}")
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    mu_x, mu_y, e_xx, e_yy, e_xy = filter_valid(torch.stack([x, y, x * x, y * y, x * y]), gaussian_taps())
    mu_xx, mu_yy, mu_xy = mu_x * mu_x, mu_y * mu_y, mu_x * mu_y
    cs = (2 * (e_xy - mu_xy) + c2) / ((e_xx - mu_xx) + (e_yy - mu_yy) + c2)
    return (2 * mu_xy + c1) / (mu_xx + mu_yy + c1) * cs


def ssim_tiled(x: torch.Tensor, y: torch.Tensor, band: int | None = SSIM_BAND) -> float:
    """Mean SSIM over channels and pixels, computed in row bands of ``band`` output rows.

    Each band reads ``band + 10`` input rows (a 5-px halo on each side), so the bands'
    maps are exactly the rows of the full map; sums are accumulated in float64.
    """
    x, y = x.to(torch.float64), y.to(torch.float64)
    h_out = x.shape[-2] - SSIM_WINDOW + 1
    band = h_out if band is None else band
    total, count = 0.0, 0
    for r in range(0, max(h_out, 1), band):
        rows = slice(r, min(r + band, h_out) + SSIM_WINDOW - 1)
        m = ssim_map(x[..., rows, :], y[..., rows, :])
        total += float(m.sum())
        count += m.numel()
    return total / count


def ssim_prepared(sr: torch.Tensor, hr: torch.Tensor, conv: Convention, scale: int | None = None,
                  band: int | None = SSIM_BAND) -> float:
    """SSIM of already :func:`prepare`-d images under ``conv``."""
    b = conv.crop(scale)
    sr, hr = crop_border(sr, b), crop_border(hr, b)
    return ssim_tiled(_channels(sr, conv), _channels(hr, conv), band)


def ssim(sr: torch.Tensor, hr: torch.Tensor, convention: str | Convention = DEFAULT_CONVENTION,
         scale: int | None = None) -> float:
    """SSIM (Gaussian 11x11, sigma 1.5, no downsampling) of an SR image under ``convention``."""
    conv = get_convention(convention)
    return ssim_prepared(*prepare(sr, hr, conv, scale), conv, scale)


# --------------------------------------------------------------------------- LPIPS

def default_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@functools.lru_cache(maxsize=8)
def _cached_lpips(net: str, device: str, weights_dir: str) -> torch.nn.Module:
    from ecdp.weights import lpips_model

    return lpips_model(net, weights_dir).to(device)


def get_lpips(net: str = "alex", device: str | torch.device | None = None,
              weights_dir: str | os.PathLike | None = None) -> torch.nn.Module:
    """The LPIPS v0.1 model for ``net`` on ``device``, built once per (net, device, weights folder)."""
    from ecdp.weights import resolve_dir

    if net not in LPIPS_NETS:
        raise ValueError(f"LPIPS net must be one of {LPIPS_NETS}, got {net!r}")
    device = torch.device(device) if device is not None else default_device()
    return _cached_lpips(net, str(device), str(resolve_dir(weights_dir).resolve()))


def lpips_layer_maps(model: torch.nn.Module, x0: torch.Tensor, x1: torch.Tensor) -> list[torch.Tensor]:
    """LPIPS's per-layer distance maps (B, 1, h_l, w_l) for [0, 1] inputs (``normalize=True``).

    ``model(x0, x1, normalize=True)`` is the sum over layers of these maps' spatial means.
    """
    import lpips

    n = x0.shape[0]
    feats = model.net(model.scaling_layer(torch.cat([x0, x1]) * 2 - 1))
    maps = []
    for k in range(model.L):
        f = lpips.normalize_tensor(feats[k])
        maps.append(model.lins[k]((f[:n] - f[n:]) ** 2))
    return maps


def tile_cores(length: int, tile: int | None, margin: int = LPIPS_MARGIN) -> list[tuple[int, int]]:
    """Split [0, length) into core intervals at multiples of ``tile`` (one core if it fits)."""
    if tile is None or length <= tile + 2 * margin:
        return [(0, length)]
    if tile % LPIPS_ALIGN or margin % LPIPS_ALIGN:
        raise ValueError(f"LPIPS tile and margin must be multiples of {LPIPS_ALIGN}")
    starts = list(range(0, length, tile))
    if length - starts[-1] < tile // 2 and len(starts) > 1:  # fold a thin remainder into the previous core
        starts.pop()
    return [(a, b) for a, b in zip(starts, starts[1:] + [length])]


def lpips_tiled(model: torch.nn.Module, x0: torch.Tensor, x1: torch.Tensor, net: str,
                tile: int | None | str = "auto", margin: int = LPIPS_MARGIN) -> float:
    """LPIPS of (1, 3, H, W) [0, 1] images, tiled so memory stays bounded.

    ``tile``: core size in pixels (multiple of 16), ``"auto"`` for the trunk's default
    (:data:`LPIPS_TILE`), None for no tiling.

    Tiles start at multiples of 16 (the trunks' deepest stride) with ``margin`` pixels of
    context around a core; the per-layer distance map of each core is cut out of its tile
    (feature index = pixel / layer stride), summed, and divided by the full map size.
    """
    strides = LPIPS_STRIDES[net]
    tile = LPIPS_TILE[net] if tile == "auto" else tile
    h, w = x0.shape[-2:]
    rows, cols = tile_cores(h, tile, margin), tile_cores(w, tile, margin)
    sums = [0.0] * len(strides)
    counts = [0] * len(strides)
    for ra, rb in rows:
        r0, r1 = max(0, ra - margin), min(h, rb + margin)
        for ca, cb in cols:
            c0, c1 = max(0, ca - margin), min(w, cb + margin)
            maps = lpips_layer_maps(model, x0[..., r0:r1, c0:c1], x1[..., r0:r1, c0:c1])
            for k, (m, s) in enumerate(zip(maps, strides)):
                i0, i1 = (ra - r0) // s, (m.shape[-2] if rb == h else (rb - r0) // s)
                j0, j1 = (ca - c0) // s, (m.shape[-1] if cb == w else (cb - c0) // s)
                core = m[..., i0:i1, j0:j1]
                sums[k] += float(core.double().sum())
                counts[k] += core.numel()
    return sum(s / c for s, c in zip(sums, counts))


#: the smallest image side each LPIPS trunk accepts (its last feature map must keep a pixel)
LPIPS_MIN_SIDE = {"alex": 31, "vgg": 16}


def lpips_prepared(sr: torch.Tensor, hr: torch.Tensor, net: str = "alex", device=None, weights_dir=None,
                   tile: int | None | str = "auto") -> float:
    """LPIPS of already :func:`prepare`-d images (full RGB, no crop)."""
    side = min(sr.shape[-2:])
    if side < LPIPS_MIN_SIDE.get(net, 0):
        raise ValueError(f"LPIPS-{net} needs images of at least {LPIPS_MIN_SIDE[net]} px on each side, got "
                         f"{tuple(sr.shape[-2:])}; use --lpips-net none to skip it")
    model = get_lpips(net, device, weights_dir)
    dev = next(model.parameters()).device
    with torch.no_grad():
        return lpips_tiled(model, sr.to(dev, torch.float32), hr.to(dev, torch.float32), net, tile)


def lpips_distance(sr: torch.Tensor, hr: torch.Tensor, net: str = "alex",
                   convention: str | Convention = DEFAULT_CONVENTION, device: str | torch.device | None = None,
                   weights_dir: str | os.PathLike | None = None, tile: int | None | str = "auto") -> float:
    """LPIPS v0.1 distance (``net`` = alex or vgg) of an SR image to its HR reference.

    Images are cropped/quantized per ``convention``; Y channel and border crop never apply
    to LPIPS.  Weights come from the weights folder (``ecdp weights fetch``).
    """
    conv = get_convention(convention)
    return lpips_prepared(*prepare(sr, hr, conv), net, device, weights_dir, tile)


# --------------------------------------------------------------------------- all three

def score(sr: torch.Tensor, hr: torch.Tensor, convention: str | Convention = DEFAULT_CONVENTION,
          lpips_net: str | None = "alex", device: str | torch.device | None = None, scale: int | None = None,
          weights_dir: str | os.PathLike | None = None) -> dict:
    """PSNR, SSIM and LPIPS of an SR image (3, H, W) in [0, 1] against its HR reference.

    Returns ``{"psnr", "ssim", "lpips", "convention", "crop_border", "lpips_net"}``;
    ``lpips_net=None`` skips LPIPS (``lpips`` is NaN).  ``scale`` is needed by the
    conventions that crop the border.
    """
    conv = get_convention(convention)
    sr_q, hr_q = prepare(sr, hr, conv, scale)
    return {
        "psnr": psnr_prepared(sr_q, hr_q, conv, scale),
        "ssim": ssim_prepared(sr_q, hr_q, conv, scale),
        "lpips": math.nan if lpips_net is None else lpips_prepared(sr_q, hr_q, lpips_net, device, weights_dir),
        "convention": conv.name,
        "crop_border": conv.crop(scale),
        "lpips_net": lpips_net or "",
    }


def pair_folders(sr_dir: str | os.PathLike, hr_dir: str | os.PathLike) -> list[tuple[Path, Path]]:
    """(SR, HR) file pairs matched by file stem, in HR order; every HR image needs an SR one."""
    from ecdp.imageio import list_images

    hr_files = list_images(hr_dir)
    if not hr_files:
        raise ValueError(f"{hr_dir}: no images")
    sr_by_stem = {p.stem: p for p in list_images(sr_dir)}
    missing = [p.name for p in hr_files if p.stem not in sr_by_stem]
    if missing:
        more = f" (+{len(missing) - 3} more)" if len(missing) > 3 else ""
        raise ValueError(f"{sr_dir}: no SR image for {', '.join(missing[:3])}{more}")
    return [(sr_by_stem[p.stem], p) for p in hr_files]


def score_folders(sr_dir: str | os.PathLike, hr_dir: str | os.PathLike,
                  convention: str | Convention = DEFAULT_CONVENTION, lpips_net: str | None = "alex",
                  device: str | torch.device | None = None, scale: int | None = None,
                  weights_dir: str | os.PathLike | None = None, progress: bool = False):
    """Score same-named images of two folders: a ``pandas.DataFrame`` with one row per image
    (``image, psnr, ssim, lpips, convention, crop_border, lpips_net``) and a final ``mean`` row."""
    import pandas as pd

    from ecdp.imageio import load_image

    pairs = pair_folders(sr_dir, hr_dir)
    if progress:
        from .progress import bar as tqdm
        pairs = tqdm(pairs, desc="metrics", unit="img")
    rows = [{"image": h.name, **score(load_image(s), load_image(h), convention, lpips_net, device, scale,
                                       weights_dir)} for s, h in pairs]
    df = pd.DataFrame(rows)
    mean = {c: df[c].mean() for c in ("psnr", "ssim", "lpips")}
    mean.update(image="mean", **{c: rows[0][c] for c in ("convention", "crop_border", "lpips_net")})
    return pd.concat([df, pd.DataFrame([mean])], ignore_index=True)


# --------------------------------------------------------------------------- CLI

def add_cli(parser) -> None:
    """``ecdp metrics SR HR``: two images or two folders."""
    parser.add_argument("sr", help="super-resolved image, or folder of them")
    parser.add_argument("hr", help="reference HR image, or folder (files matched by name)")
    parser.add_argument("--convention", default=DEFAULT_CONVENTION, choices=list(CONVENTIONS),
                        help="; ".join(f"{c.name}: {c.description}" for c in CONVENTIONS.values()))
    parser.add_argument("--scale", type=int, default=None, help="SR scale (border crop of the *-crop conventions)")
    parser.add_argument("--lpips-net", default="alex", choices=[*LPIPS_NETS, "none"], help="LPIPS trunk")
    parser.add_argument("--weights-dir", default=None, help="weights folder (see `ecdp weights fetch`)")
    parser.add_argument("--device", default=None, help="torch device for LPIPS (default: cuda if available)")
    parser.add_argument("--csv", default=None, help="also write the results to this CSV file")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --csv file")


def _format_pair(r: dict) -> str:
    lp = "skipped" if r["lpips_net"] == "" else f"{r['lpips']:.6f} ({r['lpips_net']}, v{LPIPS_VERSION})"
    return "\n".join([f"PSNR   {r['psnr']:.4f} dB", f"SSIM   {r['ssim']:.6f}", f"LPIPS  {lp}"])


def run_cli(args) -> int:
    """Run ``ecdp metrics``; user errors become one-line :class:`ecdp.cli.CLIError`."""
    import pandas as pd

    from ecdp.cli import CLIError
    from ecdp.imageio import ImageReadError, load_image
    from ecdp.weights import WeightsError

    from ecdp.checkpoint import check_writable

    sr, hr = Path(args.sr), Path(args.hr)
    net = None if args.lpips_net == "none" else args.lpips_net
    conv = CONVENTIONS[args.convention]
    if args.csv:   # before any work
        try:
            check_writable(args.csv, args.overwrite)
        except ValueError as e:
            raise CLIError(f"--csv {e}") from None
    try:
        for p in (sr, hr):
            if not p.exists():
                raise CLIError(f"{p}: no such file or folder")
        if sr.is_dir() != hr.is_dir():
            raise CLIError("give two image files or two folders")
        if sr.is_dir():
            df = score_folders(sr, hr, conv, net, args.device, args.scale, args.weights_dir,
                               progress=os.isatty(2))
            print(df[["image", "psnr", "ssim", "lpips"]].to_string(
                index=False, formatters={"psnr": "{:.4f}".format, "ssim": "{:.6f}".format,
                                         "lpips": "{:.6f}".format}, na_rep="skipped"))
        else:
            r = score(load_image(sr), load_image(hr), conv, net, args.device, args.scale, args.weights_dir)
            print(_format_pair(r))
            df = pd.DataFrame([{"image": hr.name, **r}])
        crop = int(df["crop_border"].iloc[0])
        print(f"convention: {conv.name} ({conv.description}{f'; crop {crop} px' if crop else ''})")
    except WeightsError as e:
        raise CLIError(f"{e}; or skip LPIPS with --lpips-net none") from None
    except (ImageReadError, ValueError) as e:
        raise CLIError(str(e).splitlines()[0] if str(e) else e.__class__.__name__) from None
    if args.csv:
        from ecdp.checkpoint import atomic_open

        with atomic_open(args.csv, "w") as f:
            df.to_csv(f, index=False)
    return 0
