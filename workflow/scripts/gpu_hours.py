"""GPU-hours of the whole paper grid (config/paper.yaml), per rule: an ESTIMATE (issue 13).

FLOPs come from the networks themselves, built on PyTorch's meta device at the paper's
sizes (no memory, no compute; :mod:`ecdp.cost`), counted by FlopCounterMode (matmuls and
convolutions; norms and element-wise ops are not counted).  Measured at the real batch,
patch and image sizes (no scaling from small sizes is needed on the meta device; the
convolutions scale linearly in pixels, SR3's self-attention quadratically, and both are
counted as they are).

* training (rule ``train``): every training job of the grid (:class:`ecdp.grid.Grid`:
  jobs that share their first stages with another start after them, as the workflow
  runs them), per stage ``steps x FLOPs per step`` at the stage's batch and the
  dataset's patch, times the job's seeds; the quality stage by
  :func:`ecdp.cost.quality_step_flops` (its NFE: dopri5 from the committed sampler study,
  chains by definition);
* evaluation (rule ``evaluate``): every cell and seed, ``images x (conditioning + NFE x
  FLOPs per NFE)`` at the test size: DIV2K 100 images at 2040x1356 HR (ASSUMPTION: every
  validation image at the common size; a few are smaller or portrait), ImageNet 5000 at
  256x256, CelebA 5000 at 160x160;
* Table 3 (rule ``time_table3``): warm-up + repeats images at 256x256 per method;
* the sampler study (rule ``sampler_study``): ``limit`` full-size DIV2K images per sampler.

GPU time = FLOPs / (peak x utilisation), for a stated peak (default: A100 fp32 19.5
TFLOP/s and TF32 / bf16 dense tensor cores 156 TFLOP/s) and utilisation (default 40 %);
data preparation and the tables are CPU rules (0 GPU-hours).  Not counted: validation
during training (Figure 8), the optimiser, the quality loss's VGG, LPIPS, data loading.

    python3 workflow/scripts/gpu_hours.py          # -> results/rehearsal/gpu_hours.{csv,md}
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

#: test sets of the paper profile (ecdp.data.registry): (images, LR height, LR width)
TEST_SETS = {"div2k": (100, 339, 510), "imagenet": (5000, 64, 64), "celeba": (5000, 20, 20)}
SCALES = {"div2k": 4, "imagenet": 4, "celeba": 8}


def measured_nfe(path: Path = ROOT / "results" / "tables" / "samplers_embedded-div2k-ecdp-hybrid-c1.0-seed0.csv") -> dict:
    """(solver, tolerance) -> NFE of the committed sampler study (embedded DIV2K, trained model)."""
    sys.path.insert(0, str(ROOT / "workflow" / "scripts"))
    from fullsize import measured_dopri5_nfe

    return measured_dopri5_nfe(path)


def chain_length(method) -> int | None:
    sched = getattr(method, "schedule", None)
    return len(sched) if sched is not None else None


def stage_flops(method, cfg: dict, stage: dict, nfe_table: dict, cache: dict) -> tuple[int, dict]:
    """FLOPs of one step of ``stage`` and what they assume."""
    from ecdp import cost

    patch, scale = int(cfg["data"]["patch"]), method.scale
    batch = int(stage["batch"])
    if stage["kind"] == "distill":   # the teacher's solve (no gradient) + K student steps (ECDP.distill_loss)
        from ecdp.model import teacher_solve_options

        nfe = cost.sampler_nfe({"name": "ode", **teacher_solve_options(cfg)}, nfe_table)
        f = cost.image_flops(method, (patch // scale, patch // scale))
        k = int((cfg.get("sampler") or {}).get("steps") or 1)
        student = cost.train_step_flops(method, {**stage, "kind": "score"}, batch, patch)
        return k * student + batch * (f["per_image"] + nfe * f["per_nfe"]), {"nfe": nfe}
    if stage["kind"] != "quality":
        return cost.train_step_flops(method, stage, batch, patch), {}
    q = cfg.get("quality") or {}
    sampler = q.get("sampler") or {}
    nfe = cost.sampler_nfe(sampler, nfe_table, chain_length(method))
    mode = q.get("mode", "add")
    score = cost.train_step_flops(method, {**stage, "kind": "score"}, batch, patch) if mode == "add" else 0
    f = cost.image_flops(method, (patch // scale, patch // scale))
    adjoint = sampler.get("name", "ode") == "ode" and bool(sampler.get("adjoint", True))
    flops = cost.quality_step_flops(score_step=score, per_image=f["per_image"], per_nfe=f["per_nfe"], batch=batch,
                                    nfe=nfe, adjoint=adjoint, checkpoint=bool(sampler.get("checkpoint", True)),
                                    add_score=mode == "add", nfe_backward=q.get("truncate"))
    return flops, {"nfe": nfe, "adjoint": adjoint}


def jobs(config_path: Path, nfe_table: dict) -> list[dict]:
    """One row per (rule, job, stage): FLOPs and what they are made of."""
    from ecdp import cost
    from ecdp.grid import Grid, load_workflow_config

    wf = load_workflow_config(config_path)
    grid = Grid(wf, ROOT)
    rows: list[dict] = []
    methods: dict = {}

    def meta(cell):
        key = (cell.dataset, cell.variant)
        if key not in methods:
            methods[key] = cost.meta_method(cell.run_config(grid.seeds[0]), SCALES[cell.dataset_key])
        return methods[key]

    for cell in grid.training_cells():
        cfg = cell.run_config(grid.seeds[0])
        stages = cfg["train"]["stages"]
        skip = cell.init_from[1] if cell.init_from else 0
        seeds = len(grid.training_seeds(cell))
        for stage in stages[skip:]:
            per_step, extra = stage_flops(meta(cell), cfg, stage, nfe_table, {})
            rows.append({"rule": "train", "dataset": cell.dataset, "variant": cell.variant, "stage": stage["name"],
                         "seeds": seeds, "units": int(stage["steps"]), "unit": "steps", "batch": int(stage["batch"]),
                         "size": f"{cfg['data']['patch']}x{cfg['data']['patch']}", "nfe": extra.get("nfe", ""),
                         "flops_per_unit": per_step, "flops": per_step * int(stage["steps"]) * seeds})

    def image_row(rule, cell, sampler, n_images, lr_hw, seeds, label=""):
        m = meta(cell)
        f = cost.image_flops(m, lr_hw)
        if cell.method == "bicubic":
            nfe = 0
        elif cell.method == "regression":
            nfe = 1
        else:
            nfe = cost.sampler_nfe(sampler, nfe_table, chain_length(m))
        per = f["per_image"] + nfe * f["per_nfe"]
        rows.append({"rule": rule, "dataset": cell.dataset, "variant": cell.variant, "stage": label,
                     "seeds": seeds, "units": n_images, "unit": "images", "batch": 1,
                     "size": f"{lr_hw[1] * m.scale}x{lr_hw[0] * m.scale}", "nfe": nfe,
                     "flops_per_unit": per, "flops": per * n_images * seeds})

    ev_limit = (wf.get("evaluation") or {}).get("limit")
    for cell in grid.cells.values():
        n, h, w = TEST_SETS[cell.dataset_key]
        image_row("evaluate", cell, cell.run_config(grid.seeds[0]).get("sampler") or {},
                  min(n, ev_limit) if ev_limit else n, (h, w), len(cell.seeds))
    t3 = wf["studies"].get("table3")
    if t3:
        ds = grid.dataset_name(t3["dataset"])
        for v in t3["variants"]:
            cell = grid.cell(ds, v)
            side = int(t3.get("hr_size", 256)) // SCALES[cell.dataset_key]
            image_row("time_table3", cell, cell.run_config(grid.seeds[0]).get("sampler") or {},
                      int(t3.get("repeats", 3)) + int(t3.get("warmup", 1)), (side, side), 1)
    sam = wf["studies"].get("samplers")
    if sam:
        cell = grid.cell(grid.dataset_name(sam["dataset"]), sam["variant"])
        n, h, w = TEST_SETS[cell.dataset_key]
        for s in sam["samplers"]:
            image_row("sampler_study", cell, s, min(n, int(sam.get("limit") or n)), (h, w),
                      len(grid.study_seeds("samplers")), label=json.dumps(s, sort_keys=True))
    return rows


def gpu_hours(flops: float, peak_tflops: float, utilisation: float) -> float:
    """Hours of one GPU at ``utilisation`` of ``peak_tflops`` for ``flops``."""
    return flops / (peak_tflops * 1e12 * utilisation) / 3600.0


def per_rule(rows: list[dict], peaks: dict, utilisation: float) -> list[dict]:
    order = ["train", "evaluate", "time_table3", "sampler_study"]
    out = []
    for rule in order + ["total"]:
        sel = [r for r in rows if rule == "total" or r["rule"] == rule]
        if not sel:
            continue
        flops = float(sum(r["flops"] for r in sel))
        row = {"rule": rule, "jobs": len({(r["rule"], r["dataset"], r["variant"]) for r in sel}), "pflop": flops / 1e15}
        for name, peak in peaks.items():
            row[f"gpu_hours_{name}"] = gpu_hours(flops, peak, utilisation)
        out.append(row)
    return out


def markdown(rules: list[dict], rows: list[dict], peaks: dict, utilisation: float, config: str) -> str:
    names = list(peaks)
    head = " | ".join(f"GPU-h {n} ({peaks[n]:g} TFLOP/s)" for n in names)
    lines = [f"# GPU-hours of the paper grid ({config}): ESTIMATE", "",
             "Generated by `python3 workflow/scripts/gpu_hours.py` (docstring: method and assumptions). "
             f"FLOPs of the networks on the meta device at the paper's sizes; GPU time = FLOPs / (peak x "
             f"{utilisation:.0%} utilisation).  `data` and `aggregate` are CPU rules.", "",
             f"| rule | jobs | PFLOP | {head} |", "|---|---:|---:|" + "---:|" * len(names)]
    for r in rules:
        lines.append(f"| {r['rule']} | {r['jobs']} | {r['pflop']:,.0f} | " +
                     " | ".join(f"{r[f'gpu_hours_{n}']:,.0f}" for n in names) + " |")
    lines += ["", "Largest items:", "", "| rule | dataset | variant | stage | seeds | units | NFE | PFLOP |",
              "|---|---|---|---|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: -r["flops"])[:10]:
        lines.append(f"| {r['rule']} | {r['dataset']} | {r['variant']} | {r['stage']} | {r['seeds']} | "
                     f"{r['units']} {r['unit']} | {r['nfe']} | {r['flops'] / 1e15:,.1f} |")
    lines += ["", "Assumptions: the quality stage's backward takes as many NFE as its forward (adjoint: 3 forward "
              "costs per backward NFE; a checkpointed chain: 3 per step); dopri5's NFE from the embedded-DIV2K "
              "sampler study (results/tables/samplers_embedded-div2k-ecdp-hybrid-c1.0-seed0.csv), which may differ on full images and other datasets; "
              "DIV2K test images at 2040x1356; FLOPs count matmuls and convolutions only."]
    return "\n".join(lines) + "\n"


BEGIN = "<!-- paper-cost:begin (generated by `python3 workflow/scripts/gpu_hours.py --readme`) -->"
END = "<!-- paper-cost:end -->"


def readme_block(out_dir: Path) -> str:
    """The README's cost paragraph, from results/rehearsal/gpu_hours.csv and fullsize.json."""
    import pandas as pd

    df = pd.read_csv(out_dir / "gpu_hours.csv")
    fs = json.loads((out_dir / "fullsize.json").read_text())
    cols = [c for c in df.columns if c.startswith("gpu_hours_")]
    names = [c[len("gpu_hours_"):] for c in cols]
    util = float(df["utilisation"].iloc[0])
    lines = [BEGIN, "", "| rule (config/paper.yaml, 1 seed) | jobs | PFLOP | " +
             " | ".join(f"GPU-h {n}" for n in names) + " |", "|---|---:|---:|" + "---:|" * len(names)]
    for _, r in df.iterrows():
        lines.append(f"| {r['rule']} | {r['jobs']} | {r['pflop']:,.0f} | " +
                     " | ".join(f"{r[c]:,.0f}" for c in cols) + " |")
    total = df[df["rule"] == "total"].iloc[0]
    ok = [g for g, v in fs["fits"].items() if v]
    no = [g for g, v in fs["fits"].items() if not v]
    fits = (f"fits a {', '.join(ok)} GB GPU" if ok else "fits none of the 24 / 40 / 80 GB GPUs") + \
        (f" but not a {', '.join(no)} GB one" if ok and no else "")
    ev = fs.get("evaluated")
    ran = (f"; measured on CPU: one 2040x1356 image through `ecdp evaluate` peaked at {ev['rss_peak_gib']:.1f} GiB "
           "resident" if ev else "")
    sr3 = fs["others"]["sr3"]
    lines += ["", f"ESTIMATE: the grid is about {total[cols[0]]:,.0f} GPU-hours on A100s in fp32, or "
              f"{total[cols[-1]]:,.0f} with TF32 / bf16 tensor cores, at {util:.0%} of peak (FLOPs of the networks "
              f"at the paper's sizes; assumptions in results/rehearsal/gpu_hours.md). "
              f"Full-size DIV2K evaluation of ECDP (2040x1356, batch 1, fp32) needs about "
              f"{max(fs['full_gpu_estimate_gib'], fs['full_gpu_estimate_rss_gib']):.1f} GiB of GPU memory "
              f"(activations + dopri5 state + weights{ran}; results/rehearsal/fullsize.md), so it {fits} without "
              f"tiling (SR3: {sr3['model_peak_gib'] + sr3['weights_gib']:.1f} GiB by the tensor model); an image costs "
              f"{fs['full_flops_per_nfe'] / 1e12:.1f} TFLOP per NFE, {fs['full_flops_dopri5'] / 1e12:,.0f} TFLOP with "
              f"dopri5 at 1e-4 ({fs['dopri5_1e-4_nfe']:.0f} NFE assumed).", "", END]
    return "\n".join(lines)


def update_readme(readme: Path, block: str) -> None:
    text = readme.read_text()
    start, end = text.index(BEGIN), text.index(END) + len(END)
    readme.write_text(text[:start] + block + text[end:])


def main(argv=None) -> int:
    import pandas as pd

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "config" / "paper.yaml"))
    p.add_argument("--peak", action="append", default=None, metavar="NAME=TFLOPS",
                   help="GPU peak throughput(s) (default: A100-fp32=19.5, A100-tf32=156)")
    p.add_argument("--utilisation", type=float, default=0.4, help="fraction of peak achieved (default 0.4)")
    p.add_argument("--out", default=str(ROOT / "results" / "rehearsal"))
    p.add_argument("--readme", action="store_true",
                   help="only rewrite the README's cost paragraph from the CSVs in --out (no FLOP counting)")
    args = p.parse_args(argv)
    if args.readme:
        update_readme(ROOT / "README.md", readme_block(Path(args.out)))
        return 0
    peaks = dict(kv.split("=") for kv in (args.peak or ["A100-fp32=19.5", "A100-tf32=156"]))
    peaks = {k: float(v) for k, v in peaks.items()}
    rows = jobs(Path(args.config), measured_nfe())
    rules = per_rule(rows, peaks, args.utilisation)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(out / "gpu_hours_jobs.csv", index=False)
    df = pd.DataFrame(rules)
    df["utilisation"] = args.utilisation
    df.to_csv(out / "gpu_hours.csv", index=False)
    (out / "gpu_hours.md").write_text(markdown(rules, rows, peaks, args.utilisation, Path(args.config).name))
    print((out / "gpu_hours.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
