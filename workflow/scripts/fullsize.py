"""Full-size DIV2K evaluation: memory and time per NFE of the paper's DIV2K ECDP (issue 13).

The paper evaluates DIV2K on the full validation images (0801-0900, about 2040x1356 HR,
510x339 LR at x4; section 5 and the released evaluation, batch 1).  This script measures,
for the DIV2K network of config/paper.yaml (Table 6: 42.6M parameters; random weights:
memory, FLOPs and time do not depend on the weights' values) and LR inputs of growing
size:

* peak memory of a 2-NFE ``super_resolve`` (dpmpp_1, 2 steps; no_grad), in a fresh
  subprocess per size: the peak resident set (VmHWM after resetting it once the model
  is built) minus the resident set before inference = CPU activation memory;
* the same peak by a model run on PyTorch's meta device (:class:`ecdp.cost.PeakLiveBytes`:
  bytes of live tensors), which needs no compute, so it also gives the full size;
* CPU seconds single-threaded (``torch.set_num_threads(1)``, process CPU time, so not
  inflated by other load) of the conditioning (mu(y), RRDB encoder) and per NFE;
* FLOPs of the conditioning and per NFE (:func:`ecdp.cost.image_flops`).

Memory and FLOPs are fitted linearly against the LR pixel count and extrapolated to the
full image and to dopri5 at 1e-4 (the paper's solver); then one real 2040x1356 image
(an embedded photo upscaled) goes through ``ecdp evaluate`` with a 2-NFE sampler if the
estimate fits this machine (``--max-gib``).  Writes results/rehearsal/fullsize.{csv,md}.

    python3 workflow/scripts/fullsize.py            # all of it
    python3 workflow/scripts/fullsize.py --no-evaluate --sizes 64 128
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

FULL_LR = (339, 510)          # DIV2K validation at x4: 2040x1356 HR (most images; a few are portrait)
GPU_GB = (24, 40, 80)
#: of a GPU's memory (24 / 40 / 80 GB cards hold 24 / 40 / 80 GiB), kept back for the CUDA
#: context, cuDNN workspaces and the allocator's caching (ASSUMPTION)
GPU_RESERVE_GIB = 1.5
SAMPLER = {"name": "dpmpp_1", "steps": 2}
#: dopri5 state held besides the network's activations: y, 7 stages, the new y and the
#: error estimate (torchdiffeq); ASSUMPTION: 12 image-sized (3-channel HR) tensors
ODE_STATE_TENSORS = 12


#: columns of a CPU measurement (child) and of the full-size run, for --reuse
MEASURED = ("lr_h", "lr_w", "nfe", "rss_before_gib", "rss_peak_gib", "activation_rss_gib", "cpu_s_total",
            "cpu_s_cond", "cpu_s_per_nfe")
EVALUATED = ("lr_h", "lr_w", "nfe", "rss_peak_gib", "cpu_s_process", "seconds_per_image", "wall_s", "psnr")


def paper_div2k_config() -> dict:
    """The resolved run config of config/paper.yaml's DIV2K ECDP (ecdp-hybrid-c1.0)."""
    from ecdp.grid import Grid, load_workflow_config

    grid = Grid(load_workflow_config(ROOT / "config" / "paper.yaml"), ROOT)
    return grid.cell("div2k", "ecdp-hybrid-c1.0").run_config(0)


def measured_dopri5_nfe(path: Path = ROOT / "results" / "tables" / "samplers_embedded-div2k-ecdp-hybrid-c1.0-seed0.csv") -> dict:
    """(method, tolerance) -> NFE of the committed sampler study (embedded DIV2K, CPU)."""
    import pandas as pd

    df = pd.read_csv(path)
    out = {}
    for _, r in df.iterrows():
        opts = json.loads(r["options"])
        if opts.get("name") == "ode":
            out[(opts.get("method", "dopri5"), float(opts.get("rtol", opts.get("atol"))))] = float(r["nfe"])
    return out


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def mem_available_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    return float("inf")


def child(h: int, w: int) -> dict:
    """One size in this (fresh) process: peak RSS of a 2-NFE super_resolve, then CPU times."""
    import torch

    from ecdp import cost
    from ecdp.registry import build_method

    torch.set_num_threads(1)
    torch.manual_seed(0)
    method = build_method(paper_div2k_config(), {"scale": 4, "sigma2": 0.01}).eval()
    lr = torch.rand(1, 3, h, w)
    rss0 = _status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")      # reset VmHWM to the current RSS
    g = torch.Generator().manual_seed(0)
    c0 = time.process_time()
    sr, stats = method.super_resolve(lr, generator=g, **SAMPLER)
    total = time.process_time() - c0
    peak = _status("VmHWM")
    prepare, _ = cost.nfe_parts(method)
    with torch.no_grad():
        c0 = time.process_time()
        prepare(torch.nn.functional.pad(lr, (0, (-w) % 8, 0, (-h) % 8), mode="replicate"))
        cond = time.process_time() - c0
    return {"lr_h": h, "lr_w": w, "nfe": int(stats["nfe"]), "rss_before_gib": rss0 / 2**30,
            "rss_peak_gib": peak / 2**30, "activation_rss_gib": (peak - rss0) / 2**30,
            "cpu_s_total": total, "cpu_s_cond": cond, "cpu_s_per_nfe": (total - cond) / int(stats["nfe"])}


def run_child(h: int, w: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, __file__, "--child", str(h), str(w)], env=env, check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def modelled(method, h: int, w: int) -> dict:
    """FLOPs and the meta-device memory model of one image at LR (h, w)."""
    import torch

    from ecdp import cost

    f = cost.image_flops(method, (h, w))
    ph, pw = cost._padded(method, h, w)
    lr = torch.zeros(1, 3, ph, pw, device="meta")
    x = torch.zeros(1, 3, ph * method.scale, pw * method.scale, device="meta")
    prepare, step = cost.nfe_parts(method)
    with torch.no_grad():
        with cost.PeakLiveBytes() as p1:
            ctx = prepare(lr)
        with cost.PeakLiveBytes() as p2:
            step(ctx, x)
    image = x.numel() * 4
    return {"flops_cond": f["per_image"], "flops_per_nfe": f["per_nfe"],
            "model_cond_gib": p1.peak / 2**30, "model_ctx_gib": p1.live / 2**30,
            "model_step_gib": p2.peak / 2**30,
            # the sampler's peak: conditioning kept + one step's activations + x, x0 and
            # the sampler's own image-sized tensors
            "model_peak_gib": max(p1.peak, p1.live + p2.peak + 3 * image) / 2**30,
            "ode_state_gib": ODE_STATE_TENSORS * image / 2**30}


def other_methods(cost) -> dict:
    """The tensor model at the full size for the other learned methods of the DIV2K table
    (config/paper.yaml, their paper-size presets): GiB of activations + weights."""
    from ecdp.grid import Grid, load_workflow_config

    grid = Grid(load_workflow_config(ROOT / "config" / "paper.yaml"), ROOT)
    out = {}
    for variant in ("sr3", "srdiff", "regression"):
        m = cost.meta_method(grid.cell("div2k", variant).run_config(0), 4)
        r = modelled(m, *FULL_LR)
        out[variant] = {"model_peak_gib": r["model_peak_gib"], "weights_gib": weights_gib(m),
                        "flops_per_nfe": r["flops_per_nfe"], "flops_cond": r["flops_cond"]}
    return out


def weights_gib(method) -> float:
    return sum(p.numel() * p.element_size() for p in method.parameters()) / 2**30


def make_fullsize_dataset(root: Path) -> Path:
    """A prepared dataset (ecdp.data.paired layout) of one 2040x1356 HR image: skimage's
    astronaut (512x512) resized with MATLAB-bicubic imresize, LR = imresize(HR, 1/4)."""
    import numpy as np
    import torch
    from skimage import data as skdata

    from ecdp.imageio import save_image
    from ecdp.imresize import imresize

    img = torch.from_numpy(np.asarray(skdata.astronaut(), dtype=np.float32) / 255.0).permute(2, 0, 1)
    hr = torch.round(imresize(img, size=(1356, 2040)).clamp(0, 1) * 255) / 255
    lr = torch.round(imresize(hr, scale=0.25).clamp(0, 1) * 255) / 255
    folder = root / "fullsize-div2k"
    save_image(hr, folder / "test" / "HR" / "0801.png")
    save_image(lr, folder / "test" / "LR" / "0801.png")
    save_image(hr[:, :64, :64], folder / "train" / "HR" / "0001.png")    # the layout has a train split
    save_image(lr[:, :16, :16], folder / "train" / "LR" / "0001.png")
    (folder / "meta.json").write_text(json.dumps({"name": "fullsize-div2k", "scale": 4, "sigma2": 0.01,
                                                  "protocol": "one upscaled photo (issue 13 rehearsal)"}))
    (folder / ".complete").write_text("")
    return folder


def evaluate_fullsize(work: Path) -> dict:
    """``ecdp evaluate`` of one 2040x1356 image with the paper DIV2K ECDP (random
    weights) and the 2-NFE sampler, one thread; peak RSS from wait4 of that process."""
    import torch

    from ecdp import checkpoint as ckpt
    from ecdp.registry import build_method

    data = make_fullsize_dataset(work)
    cfg = paper_div2k_config()
    torch.manual_seed(0)
    method = build_method(cfg, {"scale": 4, "sigma2": 0.01})
    ck = work / "final.pt"
    ckpt.save({"format": ckpt.FORMAT, "config": cfg, "meta": {"scale": 4, "sigma2": 0.01},
               "model": method.state_dict()}, ck)
    del method
    cmd = [sys.executable, "-m", "ecdp.cli", "evaluate", "--checkpoint", str(ck), "--data", str(data),
           "--out", str(work / "eval"), "--sampler", json.dumps(SAMPLER), "--lpips-net", "none",
           "--device", "cpu", "--threads", "1", "--crops", "0", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    t0 = time.time()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.time() - t0
    log = proc.stdout.read()
    if status != 0:
        raise RuntimeError(f"ecdp evaluate failed:\n{log[-2000:]}")
    summary = json.loads((work / "eval" / "summary.json").read_text())
    return {"lr_h": FULL_LR[0], "lr_w": FULL_LR[1], "nfe": summary["nfe"], "rss_peak_gib": usage.ru_maxrss / 2**20,
            "cpu_s_process": usage.ru_utime + usage.ru_stime, "seconds_per_image": summary["seconds_per_image"],
            "wall_s": wall, "psnr": summary["psnr"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--child", nargs=2, type=int, metavar=("H", "W"), help=argparse.SUPPRESS)
    p.add_argument("--sizes", nargs="+", type=int, default=[64, 128, 192, 256], help="square LR sides measured")
    p.add_argument("--no-evaluate", action="store_true", help="skip the full-size `ecdp evaluate` run")
    p.add_argument("--max-gib", type=float, default=18.0, help="run the full-size evaluation if it fits")
    p.add_argument("--out", default=str(ROOT / "results" / "rehearsal"))
    p.add_argument("--reuse", default=None, metavar="CSV",
                   help="take the CPU measurements (and the full-size run) from an earlier fullsize.csv; "
                        "recompute the model, fits and report")
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(*args.child)))
        return 0

    import pandas as pd

    from ecdp import cost
    from ecdp.registry import count_params

    cfg = paper_div2k_config()
    meta_m = cost.meta_method(cfg, 4)
    rows = []
    old = pd.read_csv(args.reuse).to_dict("records") if args.reuse else []
    measured = {(int(r["lr_h"]), int(r["lr_w"])): {k: r[k] for k in MEASURED if k in r}
                for r in old if str(r["source"]).startswith("measured (CPU) +")}
    for s in args.sizes:
        print(f"LR {s}x{s} ...", flush=True)
        r = dict(measured[(s, s)]) if (s, s) in measured else run_child(s, s)
        r.update(modelled(meta_m, s, s))
        r["source"] = "measured (CPU) + model"
        rows.append(r)
        print(json.dumps(r), flush=True)
    pix = [r["lr_h"] * r["lr_w"] for r in rows]
    fits = {k: cost.linear_fit(pix, [r[k] for r in rows])
            for k in ("activation_rss_gib", "model_peak_gib", "flops_per_nfe", "flops_cond", "cpu_s_per_nfe")}
    full = {"lr_h": FULL_LR[0], "lr_w": FULL_LR[1], "source": "model (meta device) + linear fit of the CPU rows"}
    full.update(modelled(meta_m, *FULL_LR))
    npx = FULL_LR[0] * FULL_LR[1]
    for k in ("activation_rss_gib", "cpu_s_per_nfe", "cpu_s_cond"):
        if k == "cpu_s_cond":
            fits[k] = cost.linear_fit(pix, [r[k] for r in rows])
        full[k] = cost.predict(fits[k], npx)
    rows.append(full)

    nfe = measured_dopri5_nfe()[("dopri5", 1e-4)]
    w_gib = weights_gib(meta_m)
    gpu_gib = full["model_peak_gib"] + full["ode_state_gib"] + w_gib
    gpu_gib_rss = full["activation_rss_gib"] + full["ode_state_gib"] + w_gib

    evaluated = next(({k: v for k, v in r.items() if k in EVALUATED} for r in old
                      if str(r["source"]).startswith("measured (CPU): ecdp evaluate")), None)
    if evaluated:
        evaluated["source"] = "measured (CPU): ecdp evaluate, one 2040x1356 image, 1 thread"
        rows.append(evaluated)
    need_gib = full["activation_rss_gib"] + rows[0]["rss_before_gib"] + full["ode_state_gib"]
    fits_here = need_gib <= min(args.max_gib, mem_available_gib() - 2.0)   # 2 GiB left to the rest
    if not args.no_evaluate and fits_here and evaluated is None:
        print("full-size ecdp evaluate ...", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            evaluated = evaluate_fullsize(Path(tmp))
        evaluated["source"] = "measured (CPU): ecdp evaluate, one 2040x1356 image, 1 thread"
        rows.append(evaluated)
        print(json.dumps(evaluated), flush=True)

    others = other_methods(cost)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(out / "fullsize.csv", index=False)
    summary = {
        "params_m": count_params(meta_m) / 1e6, "weights_gib": w_gib, "dopri5_1e-4_nfe": nfe,
        "full_activation_model_gib": full["model_peak_gib"], "full_activation_rss_fit_gib": full["activation_rss_gib"],
        "full_gpu_estimate_gib": gpu_gib, "full_gpu_estimate_rss_gib": gpu_gib_rss,
        "full_flops_per_nfe": full["flops_per_nfe"], "full_flops_cond": full["flops_cond"],
        "full_flops_dopri5": full["flops_cond"] + nfe * full["flops_per_nfe"],
        "full_cpu_s_per_nfe": full["cpu_s_per_nfe"],
        "full_cpu_s_dopri5": full["cpu_s_cond"] + nfe * full["cpu_s_per_nfe"],
        "fits": {str(g): max(gpu_gib, gpu_gib_rss) <= g - GPU_RESERVE_GIB for g in GPU_GB},
        "fit": {k: {"slope_per_lr_pixel": v["slope"], "intercept": v["intercept"],
                    "max_abs_rel_residual": v["max_abs_rel_residual"]} for k, v in fits.items()},
        "others": others,
        "evaluated": evaluated, "fits_here": fits_here, "needs_here_gib": need_gib,
    }
    (out / "fullsize.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
    (out / "fullsize.md").write_text(markdown(rows, summary))
    print((out / "fullsize.md").read_text())
    return 0


def markdown(rows: list[dict], s: dict) -> str:
    """The report: per-size table, fits, the full-size estimate and the GPU verdict."""
    lines = ["# Full-size DIV2K evaluation: memory and time per NFE (CPU measurements, estimates)", "",
             "Generated by `python3 workflow/scripts/fullsize.py`: the DIV2K ECDP of config/paper.yaml "
             "(random weights), x4, batch 1, a 2-NFE sampler (dpmpp_1, 2 steps), float32, no_grad.  "
             "`act. RSS`: peak resident set of a fresh process minus its resident set before inference (CPU); "
             "`model`: peak bytes of live tensors on the meta device (ecdp.cost.PeakLiveBytes); CPU seconds are "
             "process CPU time of one thread; FLOPs count matmuls and convolutions (FlopCounterMode).  "
             f"Parameters (`ecdp params`: U-Net + LR encoder): {s['params_m']:.1f}M (Table 6: 42.6M); weights held "
             f"(all parameters, float32): {s['weights_gib']:.2f} GiB.", "",
             "| LR | HR | source | act. RSS GiB | model GiB | CPU s cond | CPU s / NFE | GFLOP cond | GFLOP / NFE |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]

    def f(v, fmt):
        return "" if v is None or v != v else format(v, fmt)

    for r in rows:
        lines.append(f"| {r['lr_w']}x{r['lr_h']} | {4 * r['lr_w']}x{4 * r['lr_h']} | {r['source']} | "
                     f"{f(r.get('activation_rss_gib'), '.2f') or f(r.get('rss_peak_gib'), '.2f') + ' (whole process)'} | "
                     f"{f(r.get('model_peak_gib'), '.2f')} | {f(r.get('cpu_s_cond'), '.1f')} | "
                     f"{f(r.get('cpu_s_per_nfe'), '.1f')} | {f(r.get('flops_cond', float('nan')) / 1e9, '.0f')} | "
                     f"{f(r.get('flops_per_nfe', float('nan')) / 1e9, '.0f')} |")
    fa, fm = s["fit"]["activation_rss_gib"], s["fit"]["model_peak_gib"]
    lines += ["", "Linear fits (least squares, with intercept) against the LR pixel count, largest relative "
              "residual over the measured sizes (CPU times are the noisiest: cache effects): " +
              "; ".join(f"{k} {v['max_abs_rel_residual']:.1%}" for k, v in s["fit"].items()) + ".  "
              f"Activation memory grows by {fa['slope_per_lr_pixel'] * 2**30 / 16:,.0f} bytes per HR pixel "
              f"(CPU RSS; the tensor model: {fm['slope_per_lr_pixel'] * 2**30 / 16:,.0f}), FLOPs by "
              f"{s['fit']['flops_per_nfe']['slope_per_lr_pixel'] / 16 / 1e6:.2f} MFLOP per HR pixel and NFE.", ""]
    fits = ", ".join(f"{g} GB: {'yes' if ok else 'NO'}" for g, ok in s["fits"].items())
    lines += [f"**Full image (2040x1356 HR)**: {s['full_flops_per_nfe'] / 1e12:.1f} TFLOP per NFE, "
              f"{s['full_flops_cond'] / 1e12:.1f} TFLOP of conditioning; with dopri5 at 1e-4 "
              f"(ASSUMPTION: {s['dopri5_1e-4_nfe']:.0f} NFE, the embedded-DIV2K sampler study, results/tables/"
              f"samplers_embedded-div2k-ecdp-hybrid-c1.0-seed0.csv; NFE on full images of a trained model may differ) {s['full_flops_dopri5'] / 1e12:.0f} "
              f"TFLOP per image, about {s['full_cpu_s_dopri5'] / 3600:.1f} CPU-hours on one core here.", "",
              f"**GPU memory estimate** (float32, batch 1) = activations ({s['full_activation_model_gib']:.1f} GiB "
              f"by the model, {s['full_activation_rss_fit_gib']:.1f} GiB by the CPU fit) + dopri5 state + weights "
              f"({s['weights_gib']:.2f} GiB) = {s['full_gpu_estimate_gib']:.1f} / {s['full_gpu_estimate_rss_gib']:.1f}"
              f" GiB; not included: the CUDA context, cuDNN workspaces and allocator caching, for which "
              f"{GPU_RESERVE_GIB} GiB of each card is kept back (ASSUMPTION; a 24 / 40 / 80 GB card = 24 / 40 / 80 GiB). "
              f"Fits one GPU of {fits} (the larger of the two estimates).  The NFE does not change the peak (no_grad: one step's activations at a "
              "time).", ""]
    lines += ["Other methods of the DIV2K tables at the full size (tensor model only, activations + weights, "
              "float32, batch 1): " + "; ".join(
                  f"{k} {v['model_peak_gib'] + v['weights_gib']:.1f} GiB, {v['flops_per_nfe'] / 1e12:.1f} TFLOP per NFE"
                  for k, v in s["others"].items()) + ".  SR3's self-attention (1/8 resolution) is quadratic in the "
              "pixels, so it is the one that grows fastest.", ""]
    if all(s["fits"].values()):
        lines += ["No tiled path is needed for the paper's evaluation: the full image fits each of these GPUs "
                  "(issue 13 asks for one only where it does not).", ""]
    e = s.get("evaluated")
    if e:
        lines += [f"**Ran here**: `ecdp evaluate` on one 2040x1356 image, 2 NFE, one thread: peak RSS "
                  f"{e['rss_peak_gib']:.2f} GiB, {e['seconds_per_image']:.0f} s per image (wall, inflated by "
                  f"other load), {e['cpu_s_process']:.0f} CPU s for the whole process.", ""]
    else:
        lines += ["**Not run here**: the full-size `ecdp evaluate` " +
                  ("was skipped (--no-evaluate)." if s["fits_here"] else
                   f"would need about {s['needs_here_gib']:.1f} GiB, more than this machine has free."), ""]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
