"""pytest-benchmark JSON (``pytest tests/benchmarks --benchmark-only --benchmark-json=F``)
-> ``sampling``, ``training_step`` and ``quality_memory`` tables (CSV + markdown).

Every ratio is against a row measured in the *same* run on the same machine:

* sampling: seconds per image and NFE of each sampler / those of ECDP's probability
  flow with dopri5 at atol = rtol = 1e-4 (``extra_info["reference"]``).  Rows whose
  time is extrapolated (SR3's full 2000-step chain, timed on a shorter chain and
  scaled by ``full_steps / timed_steps``) say so in the ``timing`` column;
* training_step: seconds per step / the score-only step's;
* quality_memory: peak autograd bytes and seconds per gradient, adjoint vs direct, by
  solver steps; ratios against the same mode at the fewest steps;
* training_throughput: training images per second of each Table 6 ECDP architecture
  in fp32 / bf16 / bf16 + channels_last / compiled (ratio to the same architecture's
  fp32 row), and the loader's batches per second alone (``loader`` rows);
* sampling_modes: seconds per image and per NFE of ECDP's probability flow with the
  ImageNet Table 6 network in fp32 / channels_last / bf16 / compiled (ratio to the same
  sampler's fp32 row).

The machine (CPU, cores, torch threads, python, commit) comes from the JSON's
``machine_info`` / ``commit_info`` and is written above every markdown table.

``benchmark_tables(json_path, out_dir)`` returns the written paths; also
``python -m ecdp.report.benchmarks JSON OUTDIR``.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pandas as pd

GROUPS = {"sampling": "sampling", "training-step": "training_step", "quality-memory": "quality_memory"}


def load(json_path: str | Path) -> dict:
    data = json.loads(Path(json_path).read_text())
    if not isinstance(data, dict) or "benchmarks" not in data:
        raise ValueError(f"{json_path}: not a pytest-benchmark JSON file (no 'benchmarks')")
    return data


def machine_summary(data: dict) -> dict:
    m, c = data.get("machine_info") or {}, data.get("commit_info") or {}
    cpu = m.get("cpu") or {}
    threads = {b.get("extra_info", {}).get("torch_threads") for b in data["benchmarks"]} - {None}
    return {
        "cpu": cpu.get("brand_raw") or m.get("processor") or m.get("machine") or "unknown",
        "cores": cpu.get("count"),
        "torch_threads": ",".join(map(str, sorted(threads))) or None,
        "node": m.get("node"),
        "python": m.get("python_version"),
        "commit": (c.get("id") or "unknown")[:12] + ("-dirty" if c.get("dirty") else ""),
        "datetime": data.get("datetime"),
        "pytest_benchmark": data.get("version"),
    }


def _rows(data: dict, group: str) -> list[dict]:
    out = []
    for b in data["benchmarks"]:
        if b.get("group") != group:
            continue
        st, ex = b.get("stats") or {}, dict(b.get("extra_info") or {})
        out.append({"name": b.get("name"), "median_s": st.get("median"), "mean_s": st.get("mean"),
                    "stddev_s": st.get("stddev"), "min_s": st.get("min"), "rounds": st.get("rounds"), **ex})
    return out


def sampling_table(data: dict) -> pd.DataFrame:
    rows = []
    for r in _rows(data, "sampling"):
        images = r.get("images") or 1
        factor = (r["full_steps"] / r["timed_steps"]) if r.get("extrapolated") else 1.0
        rows.append({
            "method": r.get("method"), "sampler": r.get("sampler"), "nfe": r.get("nfe"),
            "seconds_per_image": r["median_s"] / images * factor,
            "seconds_per_nfe": r["median_s"] / images / (r.get("measured_nfe") or r.get("nfe") or math.nan),
            "timing": (f"extrapolated: {r.get('extrapolation')}" if r.get("extrapolated")
                       else f"measured, median of {r['rounds']}"),
            "params": r.get("params"), "gflops_per_nfe": (r.get("flops_per_nfe") or math.nan) / 1e9,
            "lr_size": r.get("lr_size"), "hr_size": r.get("hr_size"), "weights": r.get("weights"),
            "device": r.get("device"), "reference": bool(r.get("reference")),
        })
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    ref = df[df["reference"]]
    if len(ref):
        df["time_vs_ecdp"] = df["seconds_per_image"] / float(ref["seconds_per_image"].iloc[0])
        df["nfe_vs_ecdp"] = df["nfe"] / float(ref["nfe"].iloc[0])
    else:
        df["time_vs_ecdp"] = df["nfe_vs_ecdp"] = math.nan
    order = {"ECDP": 0, "SRDiff": 1, "SR3": 2}
    df = df.sort_values(["method", "seconds_per_image"], key=lambda s: s.map(order).fillna(9) if s.name == "method"
                        else s, kind="stable").reset_index(drop=True)
    return df[["method", "sampler", "nfe", "seconds_per_image", "time_vs_ecdp", "nfe_vs_ecdp", "seconds_per_nfe",
               "gflops_per_nfe", "params", "timing", "lr_size", "hr_size", "weights", "device", "reference"]]


def training_step_table(data: dict) -> pd.DataFrame:
    rows = []
    for r in _rows(data, "training-step"):
        rows.append({"method": r.get("method"), "step": r.get("step"), "images": r.get("images"),
                     "seconds_per_step": r["median_s"], "seconds_per_image": r["median_s"] / (r.get("images") or 1),
                     "quality_forward_nfe": r.get("quality_forward_nfe"),
                     "quality_sampler": json.dumps(r["quality_sampler"]) if r.get("quality_sampler") else "",
                     "feature_net": r.get("feature_net") or "", "rounds": r.get("rounds"), "hr_size": r.get("hr_size"),
                     "weights": r.get("weights"), "device": r.get("device"), "reference": bool(r.get("reference"))})
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    ref = df[df["reference"]]
    df["time_vs_score_step"] = (df["seconds_per_step"] / float(ref["seconds_per_step"].iloc[0])) if len(ref) else math.nan
    return df


def training_throughput_table(data: dict) -> pd.DataFrame:
    rows = []
    for r in _rows(data, "training-throughput"):
        rows.append({"arch": r.get("arch"), "mode": r.get("mode"), "batch": r.get("batch"), "hr_crop": r.get("hr_crop"),
                     "images_per_s": r.get("batch", 1) / r["median_s"], "seconds_per_step": r["median_s"],
                     "params": r.get("params"), "scale": r.get("scale"), "device": r.get("device")})
    for r in _rows(data, "loader"):
        rows.append({"arch": "loader alone", "mode": f"{r.get('workers')} workers", "batch": r.get("batch"),
                     "hr_crop": r.get("patch"), "images_per_s": r.get("batch", 1) * r.get("batches_per_s", math.nan),
                     "seconds_per_step": 1 / r["batches_per_s"] if r.get("batches_per_s") else math.nan,
                     "params": None, "scale": r.get("note"), "device": r.get("device")})
    return _vs_fp32(pd.DataFrame(rows), "arch", "images_per_s", "vs_fp32")


def sampling_modes_table(data: dict) -> pd.DataFrame:
    rows = []
    for r in _rows(data, "sampling-modes"):
        nfe = r.get("nfe") or math.nan
        rows.append({"arch": r.get("arch"), "sampler": r.get("sampler"), "mode": r.get("mode"), "nfe": r.get("nfe"),
                     "seconds_per_image": r["median_s"], "seconds_per_nfe": r["median_s"] / nfe,
                     "params": r.get("params"), "hr_size": r.get("hr_size"), "weights": r.get("weights"),
                     "scale": r.get("scale"), "device": r.get("device")})
    return _vs_fp32(pd.DataFrame(rows), "sampler", "seconds_per_nfe", "per_nfe_vs_fp32")


def _vs_fp32(df: pd.DataFrame, by: str, value: str, column: str) -> pd.DataFrame:
    """``column`` = each row's ``value`` / that of the fp32 row with the same ``by``."""
    if df.empty:
        return df
    fp32 = df[df["mode"] == "fp32"].set_index(by)[value]
    df[column] = df.apply(lambda r: r[value] / fp32.get(r[by], math.nan), axis=1)
    return df


def quality_memory_table(data: dict) -> pd.DataFrame:
    rows = []
    for r in _rows(data, "quality-memory"):
        rows.append({"mode": r.get("mode"), "steps": r.get("steps"), "nfe": r.get("nfe"),
                     "peak_saved_mib": r["peak_saved_bytes"] / 2**20 if r.get("peak_saved_bytes") is not None else math.nan,
                     "peak_cuda_mib": r["peak_cuda_bytes"] / 2**20 if r.get("peak_cuda_bytes") else math.nan,
                     "seconds_per_gradient": r["median_s"], "solver": r.get("solver"), "hr_size": r.get("hr_size"),
                     "weights": r.get("weights"), "device": r.get("device")})
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    df = df.sort_values(["mode", "steps"]).reset_index(drop=True)
    first = df.groupby("mode")["peak_saved_mib"].transform("first")
    df["memory_vs_fewest_steps"] = df["peak_saved_mib"] / first
    direct = df[df["mode"] == "direct"].set_index("steps")["peak_saved_mib"]
    df["memory_vs_direct"] = df.apply(lambda r: r["peak_saved_mib"] / direct.get(r["steps"], math.nan), axis=1)
    return df


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, bool):
        return "yes" if v else ""
    if isinstance(v, float):
        if abs(v) >= 100:
            return f"{v:.1f}"
        if abs(v) >= 1:
            return f"{v:.3g}" if abs(v) < 10 else f"{v:.2f}"
        return f"{v:.3g}"
    return str(v).replace("|", "\\|")


def to_markdown(df: pd.DataFrame, title: str, machine: dict, notes: str = "") -> str:
    lines = [f"## {title}", ""]
    lines.append("Machine: " + ", ".join(f"{k} {v}" for k, v in machine.items() if v not in (None, "")) + ".")
    if notes:
        lines += ["", notes]
    lines.append("")
    if df.empty:
        return "\n".join(lines + ["(no benchmarks of this group in the run)", ""])
    cols = list(df.columns)
    lines.append("| " + " | ".join(cols) + " |")
    lines.append("|" + "|".join("---" for _ in cols) + "|")
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(_fmt(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


NOTES = {
    "sampling": ("Seconds per image: median of the timed rounds after one warm-up round, one image per call. "
                 "time_vs_ecdp / nfe_vs_ecdp: ratios to ECDP probability flow (dopri5, atol = rtol = 1e-4) "
                 "measured in the same run. SR3's full 2000-step chain is extrapolated from a shorter chain of "
                 "the same network (per-step cost x 2000), as the `timing` column says. Networks have about the "
                 "same parameter count so the comparison isolates the sampler."),
    "training_step": ("One optimiser step (forward, backward, Adam). time_vs_score_step: ratio to the step without "
                      "the image quality loss, same run."),
    "quality_memory": ("Gradient of the image quality loss (eq. 19) through probability flow with fixed-step rk4. "
                       "peak_saved_mib: peak live bytes of tensors autograd saved for backward "
                       "(SavedTensorMeter, tests/helpers/memory.py). The adjoint method should stay flat in the number of steps; "
                       "direct backprop grows linearly."),
    "training_throughput": ("Training images per second, one score-stage optimiser step (eq. 16) of each Table 6 "
                            "ECDP architecture; vs_fp32: ratio to the same architecture's fp32 row, same run. On CPU "
                            "the batch is 1 and the HR crop 64 (`scale` column), not the paper's, and compiled rows "
                            "are skipped: CPU figures show that every mode runs, not GPU throughput. `loader alone` "
                            "rows: the training data loader without a model, to compare with a step."),
    "sampling_modes": ("Seconds per image of probability flow with the ImageNet Table 6 network (random weights: "
                       "dopri5's NFE is not a trained model's, so compare seconds per NFE); per_nfe_vs_fp32: ratio "
                       "to the same sampler's fp32 row, same run. On CPU the image is 16 -> 64 (`scale` column), "
                       "not Table 3's 64 -> 256, and compiled and dopri5 rows are skipped. bf16 changes the solution (1e-4 "
                       "tolerances are below its resolution): a speed figure, not a protocol."),
}


def benchmark_tables(json_path: str | Path, out_dir: str | Path) -> list[Path]:
    """Write ``{sampling,training_step,quality_memory,training_throughput,sampling_modes}.{csv,md}``
    (+ ``machine.json``)."""
    data = load(json_path)
    machine = machine_summary(data)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tables = {"sampling": (sampling_table(data), "Sampling speed (same run)"),
              "training_step": (training_step_table(data), "Training step"),
              "quality_memory": (quality_memory_table(data), "Image quality loss: adjoint vs direct backprop"),
              "training_throughput": (training_throughput_table(data), "Training throughput (issue 14)"),
              "sampling_modes": (sampling_modes_table(data), "Sampling precision / memory format / compile")}
    written = []
    for name, (df, title) in tables.items():
        csv_path, md_path = out / f"{name}.csv", out / f"{name}.md"
        df.to_csv(csv_path, index=False)
        md_path.write_text(to_markdown(df, title, machine, NOTES[name]))
        written += [csv_path, md_path]
    (out / "machine.json").write_text(json.dumps({**machine, "source": str(json_path)}, indent=2) + "\n")
    written.append(out / "machine.json")
    return written


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m ecdp.report.benchmarks BENCHMARK_JSON OUTDIR", file=sys.stderr)
        return 2
    try:
        paths = benchmark_tables(argv[0], argv[1])
    except (OSError, ValueError) as e:
        print(f"ecdp.report.benchmarks: error: {e}", file=sys.stderr)
        return 2
    for p in paths:
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
