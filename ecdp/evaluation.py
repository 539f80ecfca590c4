"""``ecdp evaluate``: super-resolve a prepared test set with a checkpoint and score it.

One image at a time (batch 1, full images, as the released evaluation), each with its
own generator seeded from ``(seed, image name)`` so a result does not depend on which
other images were evaluated or in what order.  Metrics come from
:func:`ecdp.metrics.score` under a named convention (default ``ecdp``: RGB, 8-bit,
Gaussian SSIM, LPIPS-Alex v0.1).

Outputs in ``--out``::

    sr/<stem>.png        SR images (atomic writes)
    crops/<stem>_{lr,sr,hr}.png
                         a fixed centre crop of the first few images, for the visual
                         comparison grids (LR shown with nearest-neighbour upscaling)
    progress.jsonl       one line per finished image (metrics, NFE, seconds); what a
                         killed evaluation resumes from
    metrics.csv          per image: image, lpips, psnr, ssim, nfe, seconds
    summary.json         method, variant, dataset, profile, seed, git commit, NFE (mean),
                         seconds per image, device, convention, lpips, psnr, ssim, and the
                         provenance record (:func:`ecdp.provenance.record`)
    summary.csv          the same as one CSV row (without the nested provenance)

Resumable: an image whose SR file and progress line exist is skipped, provided the
progress line was written with the same checkpoint (sha256), sampler, seed and metric
convention; anything else is recomputed.  The three result files are written last,
atomically, so a file under its final name is always complete.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import statistics
import time
import zlib
from pathlib import Path

import torch

from .checkpoint import sha256_file
from .timing import sync

SUMMARY_COLUMNS = ["method", "variant", "dataset", "split", "profile", "seed", "n_images", "lpips", "psnr", "ssim",
                   "lpips_std", "psnr_std", "ssim_std", "nfe", "seconds_per_image", "device", "convention",
                   "lpips_net", "sampler", "params", "train_steps", "git_commit", "checkpoint", "checkpoint_sha256"]
METRIC_COLUMNS = ["image", "lpips", "psnr", "ssim", "nfe", "seconds"]


# --------------------------------------------------------------------------- small helpers

def image_seed(seed: int, name: str) -> int:
    """The seed of one image's generator: a function of the run seed and the image name only."""
    return (int(seed) * 1_000_003 + zlib.crc32(name.encode())) % (2**63 - 1)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` through :func:`ecdp.checkpoint.atomic_open` (temp file, fsync, rename)."""
    from .checkpoint import atomic_open

    with atomic_open(path, "w") as f:
        f.write(text)


def centre_crop_box(h: int, w: int, size: int, scale: int) -> tuple[int, int, int]:
    """(top, left, side) in HR pixels of a centre crop aligned to the LR grid."""
    side = max(scale, min(size, h, w) // scale * scale)
    top = (h - side) // 2 // scale * scale
    left = (w - side) // 2 // scale * scale
    return top, left, side


def save_crops(folder: Path, stem: str, lr: torch.Tensor, sr: torch.Tensor, hr: torch.Tensor, scale: int,
               size: int) -> None:
    """The same centre crop of LR (nearest upscaled), SR and HR: the tiles of a Figure 4 style grid."""
    from .imageio import save_image

    top, left, side = centre_crop_box(hr.shape[-2], hr.shape[-1], size, scale)
    hr_c = hr[:, top:top + side, left:left + side]
    sr_c = sr[:, top:top + side, left:left + side]
    lr_c = lr[:, top // scale:(top + side) // scale, left // scale:(left + side) // scale]
    lr_up = torch.nn.functional.interpolate(lr_c[None], scale_factor=scale, mode="nearest")[0]
    save_image(lr_up, folder / f"{stem}_lr.png")
    save_image(hr_c, folder / f"{stem}_hr.png")
    save_image(sr_c, folder / f"{stem}_sr.png")


def read_progress(path: Path, fingerprint: str) -> dict[str, dict]:
    """Finished images of a previous (killed) run with the same fingerprint; a torn last
    line or a line of another configuration is ignored."""
    done: dict[str, dict] = {}
    if not path.exists():
        return done
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec.get("fingerprint") == fingerprint and "image" in rec:
            done[rec["image"]] = rec
    return done


def _mean(values):
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(statistics.fmean(values)) if values else float("nan")


def _std(values):
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(statistics.stdev(values)) if len(values) > 1 else 0.0


# --------------------------------------------------------------------------- evaluate

def evaluate(checkpoint: str | Path, data: str | Path, out: str | Path, *, split: str = "test",
             limit: int | None = None, sampler: dict | None = None, seed: int = 0, convention: str = "ecdp",
             lpips_net: str | None = "alex", device: str = "cpu", variant: str | None = None,
             profile: str = "custom", crops: int = 3, crop_size: int = 96, weights_dir: str | None = None,
             progress: bool = True, speed: dict | None = None, log=print) -> dict:
    """Evaluate ``checkpoint`` on ``data``/``split`` into ``out``; returns the summary dict.
    ``speed``: ``ecdp.checkpoint.SPEED`` settings (fp32, no channels_last / compile by
    default); a non-default one is part of the resume fingerprint and the summary."""
    import pandas as pd
    from .progress import bar as tqdm

    from .checkpoint import SPEED, load_method
    from .data import PairedImages
    from .imageio import save_image
    from .metrics import get_convention, score
    from .provenance import device_name, record
    from .registry import count_params

    out, data = Path(out), Path(data)
    sampler = dict(sampler or {})
    conv = get_convention(convention).name
    dataset = PairedImages(data, split, limit)
    if len(dataset) == 0:
        raise FileNotFoundError(f"{data}/{split} has no images")
    dev = torch.device(device)
    speed = {k: v for k, v in (speed or {}).items() if v != SPEED[k]}
    method, ck = load_method(checkpoint, dev, sampler=sampler, **speed)
    model_scale = int((ck.get("meta") or {}).get("scale", dataset.scale))
    if model_scale != int(dataset.scale):
        raise ValueError(f"{checkpoint} is a {model_scale}x model but {data} is a {dataset.scale}x dataset")
    ck_sha = sha256_file(checkpoint)
    cfg = ck.get("config", {})
    fingerprint = hashlib.sha256(json.dumps(
        {"checkpoint": ck_sha, "sampler": sampler, "seed": int(seed), "convention": conv, "lpips_net": lpips_net,
         "dataset": str(dataset.meta.get("name")), "split": split, **({"speed": speed} if speed else {})},
        sort_keys=True).encode()).hexdigest()[:16]

    out.mkdir(parents=True, exist_ok=True)
    prog_path = out / "progress.jsonl"
    done = read_progress(prog_path, fingerprint)
    sr_dir, crop_dir = out / "sr", out / "crops"
    rows: list[dict] = []
    skipped = 0
    with open(prog_path, "a") as prog:
        items = range(len(dataset))
        bar = tqdm(items, desc=f"evaluate {variant or cfg.get('method', '')}", unit="img", disable=not progress)
        for i in bar:
            hr_path, _ = dataset.pairs[i]
            stem = hr_path.stem
            rec = done.get(stem)
            need_crop = i < crops and not (crop_dir / f"{stem}_sr.png").exists()
            if rec is not None and (sr_dir / f"{stem}.png").exists() and not need_crop:
                rows.append(rec)
                skipped += 1
                continue
            hr, lr, _ = dataset[i]
            g = torch.Generator(dev).manual_seed(image_seed(seed, stem))
            sync(dev)
            t0 = time.perf_counter()
            sr, stats = method.super_resolve(lr[None].to(dev), generator=g, **sampler)
            sync(dev)
            seconds = time.perf_counter() - t0
            if not bool(torch.isfinite(sr).all()):
                raise ValueError(f"{stem}: the model's output is not finite (NaN / Inf); nothing written for it")
            sr = sr[0].detach().float().cpu().clamp(0, 1)
            save_image(sr, sr_dir / f"{stem}.png")
            if i < crops:
                save_crops(crop_dir, stem, lr, sr, hr, dataset.scale, crop_size)
            m = score(sr, hr, convention=conv, lpips_net=lpips_net, device=dev, scale=dataset.scale,
                      weights_dir=weights_dir)
            rec = {"image": stem, "lpips": m["lpips"], "psnr": m["psnr"], "ssim": m["ssim"],
                   "nfe": int(stats.get("nfe", 0)), "seconds": seconds, "fingerprint": fingerprint}
            prog.write(json.dumps(rec) + "\n")
            prog.flush()
            os.fsync(prog.fileno())
            rows.append(rec)
            bar.set_postfix(lpips=f"{m['lpips']:.3f}", psnr=f"{m['psnr']:.2f}", nfe=rec["nfe"])
    if skipped:
        log(f"resumed: {skipped} of {len(rows)} images were already done in {out}")

    df = pd.DataFrame(rows)[METRIC_COLUMNS]
    prov = record(int(seed), dev, checkpoint=str(checkpoint), checkpoint_sha256=ck_sha,
                  training=ck.get("provenance"), speed={**SPEED, **speed})
    summary = {
        **({"speed": speed} if speed else {}),   # non-default sampling speed settings, in view of the report
        "method": cfg.get("method", "unknown"),
        "variant": variant or cfg.get("method", "unknown"),
        "dataset": str(dataset.meta.get("name", data.name)),
        "split": split,
        "profile": profile,
        "seed": int(seed),
        "n_images": len(rows),
        **{k: _mean(r[k] for r in rows) for k in ("lpips", "psnr", "ssim")},
        **{f"{k}_std": _std(r[k] for r in rows) for k in ("lpips", "psnr", "ssim")},
        "nfe": _mean(r["nfe"] for r in rows),
        "seconds_per_image": _mean(r["seconds"] for r in rows),
        "device": device_name(dev),
        "convention": conv,
        "lpips_net": lpips_net or "",
        "sampler": json.dumps({**cfg.get("sampler", {}), **sampler}, sort_keys=True),
        "params": int(count_params(method)),
        "train_steps": (ck.get("provenance") or {}).get("global_step"),
        "git_commit": prov["git_commit"],
        "checkpoint": str(checkpoint),
        "checkpoint_sha256": ck_sha,
    }
    atomic_write_text(out / "metrics.csv", df.to_csv(index=False))
    atomic_write_text(out / "summary.csv", pd.DataFrame([summary])[SUMMARY_COLUMNS].to_csv(index=False))
    atomic_write_text(out / "summary.json", json.dumps({**summary, "provenance": prov}, indent=2, default=str) + "\n")
    return summary


def write_not_computed(out: str | Path, reason: str, *, variant: str | None = None, dataset: str = "",
                       seed: int = 0, profile: str = "custom", split: str = "test") -> dict:
    """The outputs of an evaluation that cannot run because the cell has no model (its
    training diverged): ``metrics.csv`` with no rows, ``summary.json`` / ``summary.csv``
    with ``status: not computed`` and the reason, so the report shows the cell empty and
    says why (docs/ARCHITECTURE.md, "A cell that fails")."""
    import pandas as pd

    from .provenance import record

    import shutil

    out = Path(out)
    # an earlier evaluation's images and per-image records of this folder are of a model
    # that no longer exists: removed so that nothing (visual grids, resume) reads them
    for name in ("sr", "crops"):
        shutil.rmtree(out / name, ignore_errors=True)
    (out / "progress.jsonl").unlink(missing_ok=True)
    summary = {"variant": variant or "", "dataset": dataset, "split": split, "profile": profile, "seed": int(seed),
               "n_images": 0, "status": "not computed", "reason": reason}
    atomic_write_text(out / "metrics.csv", ",".join(METRIC_COLUMNS) + "\n")
    atomic_write_text(out / "summary.csv", pd.DataFrame([summary]).reindex(
        columns=SUMMARY_COLUMNS + ["status", "reason"]).to_csv(index=False))
    atomic_write_text(out / "summary.json",
                      json.dumps({**summary, "provenance": record(int(seed))}, indent=2, default=str) + "\n")
    return summary


# --------------------------------------------------------------------------- CLI

def add_cli(p):
    from .checkpoint import add_speed_args
    from .metrics import CONVENTIONS, LPIPS_NETS

    p.add_argument("--checkpoint", required=True, help="final.pt written by `ecdp train`")
    p.add_argument("--data", required=True, help="prepared dataset folder ROOT/NAME (see `ecdp data prepare`)")
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=int, default=None, help="only the first N images (sorted by name)")
    p.add_argument("--sampler", default=None, help="sampler options as JSON, e.g. '{\"atol\": 1e-3}'")
    p.add_argument("--seed", type=int, default=0, help="run seed; image i uses a generator seeded from (seed, name)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--convention", default="ecdp", choices=list(CONVENTIONS), help="metric convention")
    p.add_argument("--lpips-net", default="alex", choices=[*LPIPS_NETS, "none"], help="LPIPS trunk")
    p.add_argument("--weights-dir", default=None, help="LPIPS weights folder (see `ecdp weights fetch`)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--variant", default=None, help="name of the variant, recorded in the summary")
    p.add_argument("--profile", default="custom", help="profile name recorded in the summary (embedded, paper)")
    p.add_argument("--crops", type=int, default=3, help="save centre crops of the first N images (0: none)")
    p.add_argument("--crop-size", type=int, default=96, help="side of the crops in HR pixels")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--outcome", metavar="FILE", help="the training job's outcome.json (`ecdp train --outcome`): "
                   "if it says the training diverged, write a 'not computed' summary with its reason instead")
    add_speed_args(p)


def run_cli(args) -> int:
    from .checkpoint import speed_options
    from .cli import CLIError, sampler_option
    from .imageio import ImageReadError

    if args.threads:
        torch.set_num_threads(args.threads)
    sampler = sampler_option(args.sampler)
    from .training import not_trained_reason

    try:
        why = not_trained_reason(args.outcome)
    except (FileNotFoundError, ValueError) as e:
        raise CLIError(f"--outcome: {e}") from None
    if why:
        write_not_computed(args.out, why, variant=args.variant, dataset=Path(args.data).name, seed=args.seed,
                           profile=args.profile, split=args.split)
        print(f"{args.variant or args.checkpoint}: not computed ({why}) -> {args.out}")
        return 0
    try:
        s = evaluate(args.checkpoint, args.data, args.out, split=args.split, limit=args.limit, sampler=sampler,
                     seed=args.seed, convention=args.convention,
                     lpips_net=None if args.lpips_net == "none" else args.lpips_net, device=args.device,
                     variant=args.variant, profile=args.profile, crops=args.crops, crop_size=args.crop_size,
                     weights_dir=args.weights_dir, progress=not args.no_progress, speed=speed_options(args))
    except (FileNotFoundError, ValueError, ImageReadError) as e:
        raise CLIError(str(e)) from None
    print(f"{s['variant']} on {s['dataset']}: LPIPS {s['lpips']:.4f}  PSNR {s['psnr']:.2f}  SSIM {s['ssim']:.4f}  "
          f"NFE {s['nfe']:.1f}  {s['seconds_per_image']:.2f} s/img  ({s['n_images']} images, {s['convention']}) "
          f"-> {args.out}")
    return 0
