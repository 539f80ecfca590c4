"""``ecdp sr``: super-resolve a user's own images with a trained checkpoint.

Accepts any size and mode ``ecdp.imageio.load_image`` reads (RGB, RGBA, grayscale,
palette, 16-bit).  Alpha is upscaled bicubically and re-attached; grayscale inputs
are processed as RGB and written as RGB.  Every input is validated before any work
starts: a file that is not an image stops the command with a one-line error and
nothing is written.  Outputs are written atomically (``OUTDIR/<stem>.png``).
"""
from __future__ import annotations

from pathlib import Path

import torch
from tqdm import tqdm

from .checkpoint import load_method
from .imageio import ImageReadError, load_image, save_image
from .imresize import imresize


def super_resolve_image(method, img: torch.Tensor, seed: int = 0, device="cpu", **sampler_options):
    g = torch.Generator(device).manual_seed(seed)
    sr, stats = method.super_resolve(img[None].to(device), generator=g, **sampler_options)
    return sr[0].cpu(), stats


def add_cli(p):
    p.add_argument("--checkpoint", required=True, help="final.pt written by `ecdp train`")
    p.add_argument("inputs", nargs="+", help="LR image files")
    p.add_argument("-o", "--outdir", required=True)
    p.add_argument("--seed", type=int, default=0, help="seed of x(T) (eq. 12)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--sampler", help="sampler options as JSON, e.g. '{\"atol\": 1e-3}'")


def run_cli(args) -> int:
    from .cli import CLIError, sampler_option

    opts = sampler_option(args.sampler)   # before any work: a typo fails fast
    try:
        images = [(Path(p), *load_image(p, with_alpha=True)) for p in args.inputs]
    except ImageReadError as e:
        raise CLIError(str(e)) from None
    try:
        method, _ = load_method(args.checkpoint, args.device)
    except (FileNotFoundError, ValueError) as e:
        raise CLIError(str(e)) from None
    out = Path(args.outdir)
    for path, img, alpha in tqdm(images, desc="sr", unit="img"):
        sr, stats = super_resolve_image(method, img, args.seed, args.device, **opts)
        a = imresize(alpha[None], size=sr.shape[-2:])[0].clamp(0, 1) if alpha is not None else None
        save_image(sr, out / f"{path.stem}.png", alpha=a)
        print(f"{path} -> {out / (path.stem + '.png')}  ({sr.shape[-1]}x{sr.shape[-2]}, NFE {stats['nfe']})")
    return 0
