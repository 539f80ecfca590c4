"""Seconds per image and NFE of any method's sampler (Table 3): the suite's one timing harness.

* :func:`time_sampler` times ``method.super_resolve`` (the suite's one method
  contract, docs/ARCHITECTURE.md), so ECDP, SR3, SRDiff and every variant are timed by the same
  code: ``warmup`` untimed runs, then ``repeats`` timed runs, each bracketed by
  ``torch.cuda.synchronize`` on CUDA; the median run divided by the batch size is
  ``seconds_per_image``.  Each run draws x(T) from the same seeded generator, so every
  repeat does the same work (same NFE for adaptive solvers).
* ``ecdp time`` (:func:`add_cli` / :func:`run_cli`) does that for a checkpoint and writes
  one CSV row: the workflow's Table 3 rule.  Table 3 is "time to generate a single
  256 x 256 HR image": ``--size 64`` (the LR side) at 4x.
* :func:`sync` is the suite's one device sync, :func:`sampler_call` its one timed unit
  (also used by the sampler study, :mod:`ecdp.sampler_study`, and ``tests/benchmarks``).
"""
from __future__ import annotations

import csv
import io
import json
import os
import statistics
import time

import torch

TIME_COLUMNS = ["method", "sampler", "sampler_options", "nfe", "seconds_per_image", "seconds_runs", "lr_size",
                "hr_size", "scale", "batch", "repeats", "warmup", "device", "threads", "seed", "checkpoint",
                "git_commit", "time_utc", "precision", "channels_last", "compile"]


def method_device(method: torch.nn.Module) -> torch.device:
    """The device of a method's parameters (else buffers; CPU for a method with neither)."""
    for p in method.parameters():
        return p.device
    for b in method.buffers():
        return b.device
    return torch.device("cpu")


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA) before a clock is read; no-op on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def method_name(method: torch.nn.Module) -> str:
    cfg = getattr(method, "cfg", None)
    if isinstance(cfg, dict) and cfg.get("method"):
        return str(cfg["method"])
    return type(method).__name__.lower()


def sampler_label(stats: dict, options: dict) -> str:
    """e.g. ``ode-dopri5-tol1e-04``, ``dpmpp_2m-10``, ``dpmpp_2m-10-time_quadratic``, ``ddpm-ancestral-100``."""
    label = str(stats.get("sampler") or options.get("name") or "default")
    if stats.get("steps") is not None:
        label = f"{label}-{stats['steps']}"
    if stats.get("grid"):
        label += f"-{stats['grid']}"
    atol, rtol = stats.get("atol"), stats.get("rtol")
    if atol is not None and stats.get("steps") is None:
        label += f"-tol{atol:.0e}" if atol == rtol else f"-atol{atol:.0e}-rtol{rtol:.0e}"
    return label


@torch.no_grad()
def sampler_call(method: torch.nn.Module, lr: torch.Tensor, sampler_options: dict | None = None, seed: int = 0):
    """The timed unit of every speed measurement of the suite (``ecdp time``, the Table 3
    rule and ``tests/benchmarks``): a function that draws x(T) from a generator seeded
    with ``seed``, runs ``method.super_resolve(lr, **sampler_options)`` and waits for the
    device, returning ``(sr, stats)``.  ``lr`` is (B, 3, h, w) on the method's device."""
    opts = dict(sampler_options or {})
    device = method_device(method)

    def call():
        g = torch.Generator(device).manual_seed(seed)
        sync(device)
        sr, stats = method.super_resolve(lr, generator=g, **opts)
        sync(device)
        return sr, stats

    return call


def time_sampler(method: torch.nn.Module, lr: torch.Tensor, sampler_options: dict | None = None, repeats: int = 3,
                 warmup: int = 1, seed: int = 0) -> dict:
    """Time ``method.super_resolve(lr, **sampler_options)``.

    ``lr``: (B, 3, h, w) or (3, h, w) in [0, 1].  Returns ``seconds_per_image`` (median
    of ``repeats`` timed runs / B), ``seconds_runs`` (every timed run, whole batch),
    ``nfe`` (of the last run; ``nfe_runs`` lists all), ``sampler`` (from the sampler's
    stats), ``stats`` (last run's stats), ``device``, ``threads``, ``lr_size``,
    ``hr_size``, ``batch``.
    """
    from .provenance import device_name

    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    opts = dict(sampler_options or {})
    device = method_device(method)
    if lr.dim() == 3:
        lr = lr[None]
    lr = lr.to(device)
    was_training = method.training
    method.eval()

    call = sampler_call(method, lr, opts, seed)

    def run():
        t0 = time.perf_counter()
        sr, stats = call()
        return time.perf_counter() - t0, sr, stats

    try:
        for _ in range(max(0, int(warmup))):
            run()
        runs, nfes = [], []
        for _ in range(int(repeats)):
            dt, sr, stats = run()
            runs.append(dt)
            nfes.append(int(stats.get("nfe", -1)))
    finally:
        method.train(was_training)
    batch = lr.shape[0]
    return {
        "method": method_name(method),
        "sampler": sampler_label(stats, opts),
        "sampler_options": json.dumps(opts, sort_keys=True),
        "nfe": nfes[-1],
        "nfe_runs": nfes,
        "seconds_per_image": statistics.median(runs) / batch,
        "seconds_runs": runs,
        "lr_size": f"{lr.shape[-2]}x{lr.shape[-1]}",
        "hr_size": f"{sr.shape[-2]}x{sr.shape[-1]}",
        "scale": sr.shape[-1] // lr.shape[-1],
        "batch": batch,
        "repeats": int(repeats),
        "warmup": int(warmup),
        "device": device_name(device),
        "threads": torch.get_num_threads(),
        "seed": seed,
        "stats": stats,
    }


def photo_lr(size: int) -> torch.Tensor:
    """A deterministic real LR photo (scikit-image's astronaut) of ``size`` x ``size``, 8-bit values."""
    import numpy as np
    from skimage import data as skdata

    from .imageio import quantize
    from .imresize import imresize

    img = torch.from_numpy(np.asarray(skdata.astronaut(), dtype=np.float32) / 255.0).permute(2, 0, 1)
    return quantize(imresize(img, size=(size, size)).clamp(0, 1))


# --------------------------------------------------------------------------- CLI

def add_cli(p):
    p.add_argument("--checkpoint", required=True, help="final.pt written by `ecdp train` (any method)")
    p.add_argument("--size", type=int, default=64,
                   help="LR side in pixels (default 64: a 256x256 HR image at 4x, as in Table 3)")
    p.add_argument("--image", help="time on this LR image instead of the built-in test photo (--size is ignored)")
    p.add_argument("--batch", type=int, default=1, help="images per super_resolve call (default 1)")
    p.add_argument("--sampler", help="sampler options as JSON, e.g. '{\"name\": \"dpmpp_2m\", \"steps\": 20}'")
    p.add_argument("--repeats", type=int, default=3, help="timed runs; the median is reported (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs first (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of x(T)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", help="CSV file to write (one header line + one row); printed otherwise")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--outcome", metavar="FILE", help="the training job's outcome.json: if the training diverged, "
                   "write --out with no rows (the report says why) instead of timing")
    from .checkpoint import add_speed_args

    add_speed_args(p)


def write_rows(rows: list[dict], path: str | os.PathLike | None, columns: list[str] = TIME_COLUMNS) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in r.items()})
    text = buf.getvalue()
    if path:
        from .evaluation import atomic_write_text

        atomic_write_text(path, text)
    return text


def run_cli(args) -> int:
    from .checkpoint import load_method, speed_options
    from .cli import CLIError, sampler_option
    from .provenance import record

    opts = sampler_option(args.sampler)
    if args.repeats < 1 or args.warmup < 0 or args.batch < 1 or args.size < 1:
        raise CLIError("--repeats, --batch and --size must be >= 1 and --warmup >= 0")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise CLIError("--device cuda requested but CUDA is not available")
    if args.out:   # before any work
        from .checkpoint import check_writable

        try:
            check_writable(args.out, args.overwrite)
        except ValueError as e:
            raise CLIError(f"--out {e}") from None
    from .training import not_trained_reason

    try:
        why = not_trained_reason(args.outcome)
    except (FileNotFoundError, ValueError) as e:
        raise CLIError(f"--outcome: {e}") from None
    if why:
        text = write_rows([], args.out)
        print(f"{args.checkpoint}: not timed ({why})" + (f" -> {args.out}" if args.out else "\n" + text))
        return 0
    try:
        method, ck = load_method(args.checkpoint, args.device, sampler=opts, **speed_options(args))
    except (FileNotFoundError, ValueError) as e:
        raise CLIError(str(e)) from None
    if args.image:
        from .imageio import ImageReadError, load_image

        try:
            lr = load_image(args.image)
        except (ImageReadError, FileNotFoundError) as e:
            raise CLIError(str(e)) from None
    else:
        lr = photo_lr(args.size)
    lr = lr[None].expand(args.batch, -1, -1, -1).contiguous()
    try:
        res = time_sampler(method, lr, opts, args.repeats, args.warmup, args.seed)
    except (TypeError, ValueError) as e:  # e.g. an unknown sampler name or option
        raise CLIError(f"sampling failed: {e}") from None
    prov = record(args.seed, args.device)
    row = {**res, **speed_options(args), "checkpoint": str(args.checkpoint), "git_commit": prov["git_commit"],
           "time_utc": prov["time_utc"],
           "method": (ck.get("config") or {}).get("method", res["method"])}
    text = write_rows([row], args.out)
    if args.out:
        print(f"{row['method']} {row['sampler']}: {row['seconds_per_image']:.3f} s/image, NFE {row['nfe']}, "
              f"{row['hr_size']} on {row['device']} -> {args.out}")
    else:
        print(text, end="")
    return 0
