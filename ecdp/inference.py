"""``ecdp sr``: super-resolve a user's own images with a trained checkpoint.

Accepts any size and mode ``ecdp.imageio.load_image`` reads (RGB, RGBA, grayscale,
palette, 16-bit).  Alpha is upscaled bicubically and re-attached; grayscale inputs
are processed as RGB and written as RGB.  Every input is validated before any work
starts: a file that is not an image stops the command with a one-line error and
nothing is written.  Outputs are written atomically (``OUTDIR/<stem>.png``).

Nothing is overwritten without ``--overwrite``, and nothing ever over an input: before
any work the command refuses two inputs with the same stem (``a.png a.jpg``), an output
that is one of the inputs, an ``OUTDIR`` that is a file, an output name that is a
folder, and (without ``--overwrite``) an output file that exists.  An SR image that is
not finite (NaN / Inf) stops the command before it is written.
"""
from __future__ import annotations

from pathlib import Path

import torch
from .progress import bar as tqdm

from .checkpoint import add_speed_args, load_method, speed_options
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
    p.add_argument("--overwrite", action="store_true", help="replace existing output files (never an input)")
    add_speed_args(p)


def output_paths(inputs: list[str], outdir: str | Path, overwrite: bool = False) -> list[Path]:
    """``OUTDIR/<stem>.png`` for each input, or ``ValueError`` naming the first conflict."""
    out = Path(outdir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"-o {out} is a file, not a folder")
    ins = {Path(p).resolve(): p for p in inputs}
    seen: dict[Path, str] = {}
    paths = []
    for p in inputs:
        target = out / f"{Path(p).stem}.png"
        key = target.resolve()
        if key in seen:
            raise ValueError(f"{seen[key]} and {p} would both be written to {target}; rename one or run them apart")
        if key in ins:
            raise ValueError(f"{target} is an input: choose another -o folder (inputs are never overwritten)")
        if target.is_dir():
            raise ValueError(f"{target} is a folder")
        if target.exists() and not overwrite:
            raise ValueError(f"{target} exists; pass --overwrite to replace it")
        seen[key] = p
        paths.append(target)
    return paths


def run_cli(args) -> int:
    from .cli import CLIError, sampler_option

    opts = sampler_option(args.sampler)   # before any work: a typo fails fast
    try:
        targets = output_paths(args.inputs, args.outdir, args.overwrite)
        images = [(Path(p), *load_image(p, with_alpha=True)) for p in args.inputs]
    except (ImageReadError, ValueError) as e:
        raise CLIError(str(e)) from None
    try:
        method, _ = load_method(args.checkpoint, args.device, sampler=opts, **speed_options(args))
    except (FileNotFoundError, ValueError) as e:
        raise CLIError(str(e)) from None
    for (path, img, alpha), target in zip(tqdm(images, desc="sr", unit="img"), targets):
        sr, stats = super_resolve_image(method, img, args.seed, args.device, **opts)
        if not bool(torch.isfinite(sr).all()):
            raise CLIError(f"{path}: the model's output is not finite (NaN / Inf); nothing written for it")
        a = imresize(alpha[None], size=sr.shape[-2:])[0].clamp(0, 1) if alpha is not None else None
        save_image(sr, target, alpha=a)
        print(f"{path} -> {target}  ({sr.shape[-1]}x{sr.shape[-2]}, NFE {stats['nfe']})")
    return 0
