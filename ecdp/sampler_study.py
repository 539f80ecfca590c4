"""The sampler study: several samplers of one trained model scored on a test set, LPIPS /
PSNR / SSIM (and the distance to an accurate solver's image) against NFE and seconds per
image -- a quality evaluation, run by the workflow's ``sampler_study`` rule
(``workflow/scripts/sampler_study.py``) and laid out by :func:`ecdp.report.tables.sampler_table`
and the LPIPS-vs-NFE / -seconds figures.  Each call is timed with the suite's one timing
harness, :func:`ecdp.timing.sampler_call`; metrics follow :mod:`ecdp.metrics`.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time

import torch

from .timing import method_device, sampler_call, sampler_label


def sampler_family(stats: dict, options: dict) -> str:
    """The sampler without its step count or tolerance (one line of the LPIPS-vs-NFE
    figure): ``ode-dopri5``, ``dpmpp_2m``, ``dpmpp_2m-edm``."""
    family = str(stats.get("sampler") or options.get("name") or "default")
    return family + (f"-{stats['grid']}" if stats.get("grid") else "")


#: The ODE's accurate solution a fitted grid is fitted to (the shipped studies' accurate solver).
FIT_REFERENCE = {"name": "ode", "method": "dopri5", "atol": 1e-6, "rtol": 1e-6}
#: Defaults of a fit (``fit`` options of a sampler entry ``grid: fitted``, ``ecdp fit-grid``):
#: two training images, 16x16 LR centre crops, at most 100 solves per image.
FIT_DEFAULTS = {"images": 2, "lr_crop": 16, "max_evals": 100}


def fit_grid(method, dataset_root: str | os.PathLike, sampler: dict, *, seed: int = 0,
             images: int = FIT_DEFAULTS["images"], lr_crop: int | None = FIT_DEFAULTS["lr_crop"],
             max_evals: int = FIT_DEFAULTS["max_evals"], reference: dict | None = None) -> dict:
    """Fit ``sampler``'s time grid (a fixed-step sampler with ``steps``) to a trained model
    on the first ``images`` *training* images (never the test set the study scores):
    :func:`ecdp.sampling.fit_time_grid` minimising the mean RMS distance, in 8-bit levels,
    of the sampler's image from the accurate ODE solution (``reference``, default
    :data:`FIT_REFERENCE`) of the same x(T) (image i: seed + i).  Returns a record:
    ``sampler`` (the options with ``grid`` = the fitted fractions), ``error_uniform`` /
    ``error_fitted`` (levels, on the fitting images), ``evaluations``, and what it was
    fitted on."""
    from .data import PairedImages, read_meta
    from .sampling import fit_time_grid

    if isinstance(method, (str, os.PathLike)):
        from .checkpoint import load_method

        method, _ = load_method(method, "cuda" if torch.cuda.is_available() else "cpu")
    method.eval()
    dev = method_device(method)
    scale = int(read_meta(dataset_root)["scale"])
    train = PairedImages(dataset_root, "train", limit=images)
    pairs = [_center_crop(lr, hr, lr_crop, scale)[0] for hr, lr, _ in (train[i] for i in range(len(train)))]
    if not pairs:
        raise ValueError(f"{dataset_root}: no training images to fit a grid on")
    base = {k: v for k, v in sampler.items() if k not in ("grid", "fit")}
    if "steps" not in base:
        raise ValueError(f"grid: fitted needs a fixed-step sampler with steps, got {sampler}")
    ref = reference or FIT_REFERENCE
    with torch.no_grad():
        exact = [sampler_call(method, lr[None].to(dev), ref, seed + i)()[0].double() for i, lr in enumerate(pairs)]

    def error(fractions) -> float:
        opts = {**base, **({"grid": fractions} if fractions else {})}
        with torch.no_grad():
            return sum(255 * float((sampler_call(method, lr[None].to(dev), opts, seed + i)()[0].double() - e)
                                   .pow(2).mean().sqrt()) for i, (lr, e) in enumerate(zip(pairs, exact))) / len(pairs)

    fractions, info = fit_time_grid(error, int(base["steps"]), max_evals=max_evals)
    return {"sampler": {**base, **({"grid": fractions} if fractions else {})}, **info,
            "fitted_on": {"split": "train", "images": len(pairs), "lr_crop": lr_crop, "seed": seed, "reference": ref}}


def resolve_fitted(method, dataset_root, samplers: list[dict], seed: int = 0) -> list[dict]:
    """``samplers`` with every ``grid: fitted`` entry replaced by its fitted grid
    (:func:`fit_grid` on this model's training images; options ``fit: {images, lr_crop,
    max_evals}``, defaults :data:`FIT_DEFAULTS`); each fit's outcome goes to stderr."""
    out = []
    for opts in samplers:
        if opts.get("grid") == "fitted":
            rec = fit_grid(method, dataset_root, opts, seed=seed, **{**FIT_DEFAULTS, **(opts.get("fit") or {})})
            print(f"fitted grid of {rec['sampler']['name']}-{rec['sampler']['steps']}: {rec['error_uniform']:.3f} -> "
                  f"{rec['error_fitted']:.3f} levels on {rec['fitted_on']['images']} training images "
                  f"({rec['evaluations']} solves)", file=sys.stderr)
            opts = rec["sampler"]
        out.append(opts)
    return out


def _center_crop(lr: torch.Tensor, hr: torch.Tensor, lr_crop: int | None, scale: int):
    if not lr_crop:
        return lr, hr
    h, w = lr.shape[-2:]
    c = min(lr_crop, h, w)
    top, left = (h - c) // 2, (w - c) // 2
    return (lr[..., top:top + c, left:left + c],
            hr[..., top * scale:(top + c) * scale, left * scale:(left + c) * scale])


def sampler_study(method, dataset_root: str | os.PathLike, samplers: list[dict], limit: int | None = 10,
                  lr_crop: int | None = None, seed: int = 0, convention: str = "ecdp", device: str | None = None,
                  per_image: bool = False, accurate: int | None = 0, students: dict | None = None):
    """LPIPS / PSNR / SSIM against NFE and seconds per image for each sampler of one model.

    ``method``: an ``nn.Module`` with ``super_resolve`` or a checkpoint path.
    ``dataset_root``: a prepared dataset folder (``meta.json``, ``test/HR``, ``test/LR``).
    ``samplers``: sampler option dicts, e.g. ``[{"name": "ode", "atol": 1e-4, "rtol": 1e-4},
    {"name": "dpmpp_2m", "steps": 10}]`` (``{}`` = the model's configured sampler).
    ``limit``: first N test images; ``lr_crop``: centre-crop the LR image to this side
    (and the HR image accordingly) to keep CPU runs short.  Image ``i`` uses seed
    ``seed + i`` for x(T) under every sampler, so samplers are compared on the same noise.

    ``accurate``: index in ``samplers`` of the solver taken as the ODE's solution (the
    shipped configs: dopri5 at atol = rtol = 1e-6); it runs first, and every sampler's
    SR image is compared with its SR image of the same noise: ``solver_rmse`` (RMSE of
    the unquantized images in 8-bit levels, i.e. x 255 on [0, 1]), ``psnr_vs_accurate``
    and ``lpips_vs_accurate`` (metric convention applied).  That is how far the solver
    is from the ODE's solution, as opposed to how far from the HR image.  ``None``
    skips it.

    ``students``: label -> a distilled student of this model (``nn.Module`` or checkpoint
    path; issue 17), each run after the samplers with its own K-step sampler on the same
    images and the same x(T) (its prior is the teacher's), so its ``solver_rmse`` is its
    distance to the teacher's ODE solution; rows ``student:<label>``, family ``student``.

    Returns a ``pandas.DataFrame`` with one row per sampler and image (``per_image=True``)
    or, through :func:`summarize_sampler_study`, one row per sampler: sampler, options,
    accurate, state (what an adaptive ODE solver integrated, ``""`` for the others), nfe, seconds_per_image, lpips, psnr, ssim, solver_rmse, psnr_vs_accurate,
    lpips_vs_accurate, n_images, convention, device.
    """
    import pandas as pd

    from .data import PairedImages, read_meta
    from .metrics import score
    from .provenance import device_name

    if isinstance(method, (str, os.PathLike)):
        from .checkpoint import load_method

        method, _ = load_method(method, device or ("cuda" if torch.cuda.is_available() else "cpu"))
    method.eval()
    dev = method_device(method)
    samplers = resolve_fitted(method, dataset_root, samplers, seed)
    scale = int(read_meta(dataset_root)["scale"])
    test = PairedImages(dataset_root, "test", limit=limit)
    images = [_center_crop(lr, hr, lr_crop, scale) + (stem,) for hr, lr, stem in (test[i] for i in range(len(test)))]
    rows = []
    if images and samplers:  # one untimed run: first-call overheads (allocator, kernels) stay out of the timings
        with torch.no_grad():
            sampler_call(method, images[0][0][None].to(dev), samplers[0], seed)()
    order = list(range(len(samplers)))
    if accurate is not None:  # the accurate solver runs first so the others can be compared with it
        accurate = int(accurate)
        if not 0 <= accurate < len(samplers):
            raise ValueError(f"accurate={accurate} is not an index of the {len(samplers)} samplers")
        order.remove(accurate)
        order.insert(0, accurate)
    exact: dict = {}
    runs = [(k, method, dict(samplers[k]), None) for k in order]
    for j, (label, student) in enumerate((students or {}).items()):
        if isinstance(student, (str, os.PathLike)):
            from .checkpoint import load_method

            student, _ = load_method(student, dev)
        runs.append((len(samplers) + j, student.eval(), {}, str(label)))
    for k, model, opts, student in runs:
        for i, (lr, hr, stem) in enumerate(images):
            call = sampler_call(model, lr[None].to(dev), opts, seed + i)
            with torch.no_grad():
                t0 = time.perf_counter()
                sr, stats = call()
                seconds = time.perf_counter() - t0
            sr = sr[0].cpu()
            m = score(sr, hr, convention=convention, scale=scale)
            if k == accurate:
                exact[i] = sr
            vs = score(sr, exact[i], convention=convention, scale=scale) if i in exact else {}
            rmse = 255 * float((sr.double() - exact[i].double()).pow(2).mean().sqrt()) if i in exact else math.nan
            name = sampler_label(stats, opts)
            rows.append({"k": k, "sampler": f"student:{student} ({name})" if student else name,
                         "options": json.dumps({"student": student} if student else opts, sort_keys=True),
                         "accurate": k == accurate, "image": stem, "state": stats.get("state", ""),
                         "family": "student" if student else sampler_family(stats, opts),
                         "nfe": int(stats.get("nfe", -1)), "seconds_per_image": seconds,
                         "lpips": m["lpips"], "psnr": m["psnr"], "ssim": m["ssim"], "solver_rmse": rmse,
                         "psnr_vs_accurate": vs.get("psnr", math.nan), "lpips_vs_accurate": vs.get("lpips", math.nan),
                         "convention": m["convention"], "device": device_name(dev)})
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    df = df.sort_values("k", kind="stable").drop(columns="k").reset_index(drop=True)  # the caller's order
    return df if per_image else summarize_sampler_study(df)


def summarize_sampler_study(per_image):
    """Per-image rows of :func:`sampler_study` -> one row per sampler (means over images;
    ``n_images`` counts them), in the order the samplers first appear."""
    return (per_image.groupby(["sampler", "options"], sort=False)
            .agg(accurate=("accurate", "first"), state=("state", "first"), family=("family", "first"), nfe=("nfe", "mean"), seconds_per_image=("seconds_per_image", "mean"),
                 lpips=("lpips", "mean"), psnr=("psnr", "mean"), ssim=("ssim", "mean"),
                 solver_rmse=("solver_rmse", "mean"), psnr_vs_accurate=("psnr_vs_accurate", "mean"),
                 lpips_vs_accurate=("lpips_vs_accurate", "mean"), n_images=("image", "count"),
                 convention=("convention", "first"), device=("device", "first"))
            .reset_index())


# ------------------------------------------------------------------ ecdp fit-grid
def grids_path(checkpoint: str | os.PathLike):
    """Where the fitted grids of a checkpoint are stored: beside it, ``<stem>.grids.json``."""
    from pathlib import Path

    p = Path(checkpoint)
    return p.with_name(p.stem + ".grids.json")


def add_cli(p):
    p.description = ("Fit a fixed-step sampler's time grid to a trained ECDP on a few training images "
                     "(minimising the solver error against dopri5 at 1e-6) and store it beside the checkpoint "
                     "(<stem>.grids.json); use it with --sampler '{\"name\": ..., \"steps\": N, \"grid\": [...]}'.")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True, help="prepared dataset folder (its train split is used)")
    p.add_argument("--sampler", required=True, help='JSON, e.g. \'{"name": "unipc", "steps": 5}\'')
    p.add_argument("--images", type=int, default=FIT_DEFAULTS["images"])
    p.add_argument("--lr-crop", type=int, default=FIT_DEFAULTS["lr_crop"])
    p.add_argument("--max-evals", type=int, default=FIT_DEFAULTS["max_evals"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="replace a stored grid of the same sampler and steps")


def run_cli(args) -> int:
    from .cli import CLIError, sampler_option
    from .evaluation import atomic_write_text
    from .timing import sampler_label

    opts = sampler_option(args.sampler)
    if "steps" not in opts:
        raise CLIError("--sampler: a fixed-step sampler with steps, e.g. '{\"name\": \"unipc\", \"steps\": 5}'")
    out = grids_path(args.checkpoint)
    stored = json.loads(out.read_text()) if out.exists() else {}
    key = sampler_label({"sampler": opts.get("name"), "steps": opts["steps"]}, opts)
    if key in stored and not args.force:
        raise CLIError(f"{out} already holds a grid for {key} (--force replaces it)")
    try:
        rec = fit_grid(args.checkpoint, args.data, opts, seed=args.seed, images=args.images,
                       lr_crop=args.lr_crop or None, max_evals=args.max_evals)
    except (ValueError, FileNotFoundError) as e:
        raise CLIError(str(e)) from None
    from .provenance import record

    stored[key] = {**rec, "provenance": record(seed=args.seed, device="cuda" if torch.cuda.is_available() else "cpu")}
    atomic_write_text(out, json.dumps(stored, indent=2, default=str) + "\n")
    print(f"{key}: solver error {rec['error_uniform']:.3f} -> {rec['error_fitted']:.3f} levels on "
          f"{rec['fitted_on']['images']} training images ({rec['evaluations']} solves); "
          f"grid {json.dumps(rec['sampler'].get('grid'))} -> {out}")
    return 0
