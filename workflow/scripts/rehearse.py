"""The paper rehearsal (issue 13): config/rehearsal.yaml through Snakemake on this
machine, on small archives with the official names and layouts, and a report.

    python3 workflow/scripts/rehearse.py             # the whole paper DAG -> results/rehearsal/
    python3 workflow/scripts/rehearse.py --reduced   # DIV2K only, every rule kind -> results/rehearsal-reduced/
    python3 workflow/scripts/rehearse.py --resume    # go on with an interrupted rehearsal (same config)

``snakemake --cores all --configfile config/rehearsal.yaml`` alone runs the same DAG (its
rule fixture_archives builds the official-layout archives of ecdp.data.fixtures into
DATA/_sources and writes the ``data_sources`` file of file:// URLs and checksums that
the real ``ecdp data prepare`` reads; workflow/scripts/fixture_archives.py); this script
adds a fresh start and the report.  Steps: remove what an earlier rehearsal left
(:func:`fresh_paths`), write the config (``--reduced``: narrowed by :func:`reduce_config`;
results in OUT/run), run ``snakemake --cores all --configfile OUT/rehearsal.yaml``, then
``--report``, then build what the CPU cannot train (SR3's 634M-parameter ImageNet
U-Net) and run one forward pass of it, and write OUT/rehearsal.json and OUT/REPORT.md: which rules ran
(counts, from Snakemake's log and the benchmark TSVs), each trained network's parameter
count, seconds per training step and per NFE on this CPU, peak memory (max_rss) per
rule, total wall time, the git commit, and what did not run on CPU and why.

Every number in the report is measured in this run on this machine (labelled CPU);
nothing is extrapolated.  Exit status 0 only when every job succeeded.
"""
from __future__ import annotations

import argparse
import copy
import csv
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))   # the suite from this checkout (as fullsize.py, gpu_hours.py)
from ecdp.evaluation import atomic_write_text  # noqa: E402
CONFIG = REPO / "config" / "rehearsal.yaml"
#: every rule of the paper DAG (rule all is Snakemake's target, not a job of its own)
PAPER_RULES = ("prepare_dataset", "fetch_weights", "train", "evaluate", "time_table3", "sampler_study",
               "sampler_students", "aggregate")
#: the rehearsal's own rules, before the paper DAG's (config `fixture_archives`)
REHEARSAL_RULES = ("fixture_archives",)
#: the training stage kinds the paper DAG runs (ECDP: pretrain, score, quality through
#: odeint_adjoint; its distilled students: distill)
STAGE_KINDS = ("pretrain", "score", "quality", "distill")
#: benchmark folder (RESULTS/logs/benchmarks/<folder>/...) -> rule
BENCH_RULES = {"fixtures": "fixture_archives", "prepare": "prepare_dataset", "weights": "fetch_weights",
               "train": "train", "evaluate": "evaluate", "time": "time_table3", "samplers": "sampler_study"}
#: the networks the rehearsal builds but does not train (config/rehearsal.yaml says why)
FORWARD_ONLY = {"sr3-imagenet": {"method": "sr3", "lr_size": 16, "scale": 4, "why": (
    "SR3's ImageNet U-Net (633.99M parameters): training it needs ~10 GB for its fp32 weights, gradients, Adam "
    "moments and EMA alone (4 x 2.5 GB, before activations), beyond the rehearsal's train budget (mem_mb 8000); "
    "the grid trains the DIV2K-size 97.8M U-Net in its place on ImageNet (config/rehearsal.yaml), and this check "
    "builds the real one and runs one forward pass (1 NFE)")}}
#: what the rehearsal runs at other than paper settings, beside config/rehearsal.yaml's comments
NOT_ON_CPU = [
    "Training lengths: 2 steps per stage at batch 2 (reduced: batch 1, 16 px patches) instead of the recipes' "
    "1000-1M steps at batch 12-64.",
    "SR3 / SRDiff chains re-spaced to 4 ancestral steps (paper: 2000 and 100): 2000 NFE of a 97.8M U-Net per image "
    "is hours on a CPU; seconds per NFE below are measured on the 4-step chains.",
    "Test images: one per dataset (fixture images of ~50x70 px, not DIV2K's 2040x1356): the full-size evaluation "
    "is issue 13's third item.",
]
#: added to :data:`NOT_ON_CPU` by ``--reduced``
NOT_ON_CPU_REDUCED = [
    "Reduced rehearsal only: ECDP's ODE tolerances loosened to 1e-2 (test time, Table 3, sampler study reference, "
    "the distilled student's teacher solve) "
    "and 1e-1 (the quality stage's odeint_adjoint solve), from the paper's 1e-4, to fit CI (REDUCED_TOL).",
]


# ------------------------------------------------------------------ config
#: ODE tolerances of the reduced rehearsal (CI): test-time / validation, and the quality
#: loss's solve through odeint_adjoint.  The paper's 1e-4 costs ~2.5 min per 32x32 patch
#: solve of the 42.6M-parameter network on a shared 2-core CPU (measured here), which
#: the quality stage multiplies (forward + adjoint) and CI cannot afford; the full
#: rehearsal keeps 1e-4.
REDUCED_TOL = {"sampler": 1e-2, "quality": 1e-1}
#: the reduced rehearsal's fitted grid (UniPC, 3 steps): one training image, a 4x4 LR crop,
#: 3 solves; :func:`reduce_config` fits it to the reduced study's accurate solver instead of 1e-6
REDUCED_FIT = {"images": 1, "lr_crop": 4, "max_evals": 3}
#: HR training patch of the reduced rehearsal (full rehearsal: 32): 4x4 LR, the U-Net's
#: four levels down to 2x2
REDUCED_PATCH = 16


def reduce_config(cfg: dict) -> dict:
    """The reduced rehearsal (CI): DIV2K only; ECDP (every training stage kind: pretrain,
    score, quality) and bicubic in Table 1 and Table 3, the sampler study (dopri5 at two
    tolerances, the second its accurate solver, DPM-Solver++(2M) with 5 steps and UniPC
    with 3 steps on a grid fitted to the model, :data:`REDUCED_FIT`) on a
    8x8 LR crop (32x32 HR: LPIPS-Alex needs 31 px), no Figure 8 validation; the 1-step
    distilled student (stage kind distill) in Table 1 and the study's students rows;
    training on one patch of 16 px per step (batch 1, :data:`REDUCED_PATCH`);
    ECDP's ODE tolerances, the student's teacher solve among them, loosened to
    :data:`REDUCED_TOL`; claims narrowed to what is left."""
    out = copy.deepcopy(cfg)
    out["datasets"] = {"div2k": copy.deepcopy(out["datasets"]["div2k"])}
    out["datasets"]["div2k"]["set"]["data"]["patch"] = REDUCED_PATCH
    for method in out["methods"].values():
        for stage in method.get("set", {}).get("train", {}).get("stages", []):
            stage["batch"] = 1
    student = "ecdp-1step" if "ecdp-1step" in out.get("variants", {}) else None
    keep = ["ecdp-hybrid-c1.0", "bicubic"] + ([student] if student else [])
    tol = REDUCED_TOL
    if student:
        var = out["variants"][student]
        var["add_stages"] = [{**st, "batch": 1} for st in var.get("add_stages", [])]
        var["set"] = {**var.get("set", {}), "distill": {**var.get("set", {}).get("distill", {}),
                                                        "teacher_sampler": {"atol": tol["sampler"], "rtol": tol["sampler"]}}}
    ecdp = out["methods"]["ecdp"]["set"]
    ecdp["sampler"] = {**ecdp.get("sampler", {}), "atol": tol["sampler"], "rtol": tol["sampler"]}
    ecdp["quality"] = {**ecdp.get("quality", {}), "sampler": {**ecdp.get("quality", {}).get("sampler", {}),
                                                            "atol": tol["quality"], "rtol": tol["quality"]}}
    ode = [{"name": "ode", "method": "dopri5", "atol": t, "rtol": t} for t in (tol["sampler"], tol["sampler"] / 10)]
    out["studies"] = {
        "table1": {"dataset": "div2k", "variants": keep},
        "table3": {**out["studies"]["table3"], "dataset": "div2k", "variants": ["ecdp-hybrid-c1.0"]},
        "samplers": {**out["studies"]["samplers"], "accurate": 1,
                     "samplers": ode + [{"name": "dpmpp_2m", "steps": 5},
                                        {"name": "unipc", "steps": 3, "grid": "fitted", "fit": {**REDUCED_FIT, "reference": ode[1]}}],
                     "students": [student] if student else []},
    }
    out["claims"] = [c for c in (narrow_claim(c, {"div2k"}, set(keep)) for c in out.get("claims", [])) if c]
    return out


def narrow_claim(claim: dict, datasets: set, variants: set) -> dict | None:
    """``claim`` with its dataset / variant lists cut to ``datasets`` / ``variants``; None if nothing is left."""
    c = dict(claim)
    for one, many, allowed in (("dataset", "datasets", datasets), ("a", "as", variants), ("b", "bs", variants)):
        if many in c:
            c[many] = [x for x in c[many] if x in allowed]
            if not c[many]:
                return None
        elif one in c and c[one] not in allowed:
            return None
    return c


# ------------------------------------------------------------------ running
def fresh_paths(workdir: Path, cfg: dict) -> list[Path]:
    """What a rehearsal removes before it starts, so that every job of the DAG runs:
    the results folder, the config's prepared datasets and downloads under data_root, and
    the fixture archives with their sources file (each must lie inside ``workdir``)."""
    data = workdir / cfg["data_root"]
    paths = [workdir / cfg["results"], data / "_downloads"] + [data / d["name"] for d in cfg["datasets"].values()]
    if cfg.get("fixture_archives"):
        paths += [workdir / cfg["fixture_archives"], workdir / cfg["data_sources"]]
    for path in paths:
        if workdir.resolve() not in path.resolve().parents:
            raise ValueError(f"{path} is not inside the working directory {workdir}")
    return paths


def snakemake_args(config: Path, workdir: Path, cores: str) -> list[str]:
    """The snakemake command line of the rehearsal."""
    return ["snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir), "--configfile", str(config),
            "--cores", cores]


def run_logged(args: list[str], log: Path, cwd: Path, env: dict, append: bool = False) -> tuple[int, float]:
    """Run ``args`` with stdout and stderr into ``log`` (``append``: after what it holds);
    returns (exit status, seconds)."""
    t0 = time.time()
    with open(log, "a" if append else "w") as f:
        rc = subprocess.run(args, stdout=f, stderr=subprocess.STDOUT, cwd=cwd, env=env).returncode
    return rc, time.time() - t0


def forward_check(arch: str, spec: dict) -> dict:
    """Build ``arch`` (random init, the real preset) and time one forward pass (1 NFE) on
    a (1, 3, lr_size, lr_size) LR; peak memory from this process's max RSS."""
    import resource

    import torch

    from ecdp.config import resolve
    from ecdp.registry import build_method, count_params

    torch.manual_seed(0)
    t0 = time.perf_counter()
    method = build_method(resolve({"method": spec["method"], "protocol": "paper", "model": {"arch": arch}}),
                          {"scale": spec["scale"]}).eval()
    built = time.perf_counter() - t0
    lr = torch.rand(1, 3, spec["lr_size"], spec["lr_size"], generator=torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    with torch.no_grad():
        sr, stats = method.super_resolve(lr, torch.Generator().manual_seed(0), name="ancestral", steps=1)
    return {"arch": arch, "params": int(count_params(method)), "build_s": round(built, 3),
            "forward_s": round(time.perf_counter() - t0, 3), "nfe": int(stats.get("nfe", 1)),
            "lr_size": spec["lr_size"], "sr_shape": list(sr.shape), "finite": bool(torch.isfinite(sr).all()),
            "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "why": spec["why"]}


def forward_checks(env: dict, cwd: Path) -> list[dict]:
    """:func:`forward_check` of each :data:`FORWARD_ONLY` network in a fresh process
    (so that its peak memory is its own); a failure is reported, not raised."""
    out = []
    for arch in FORWARD_ONLY:
        res = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--forward-check", arch],
                             capture_output=True, text=True, cwd=cwd, env=env)
        try:
            out.append(json.loads(res.stdout.strip().splitlines()[-1]))
        except (IndexError, json.JSONDecodeError):
            err = (res.stderr.strip().splitlines() or ["no output"])[-1]
            out.append({"arch": arch, "error": err, "why": FORWARD_ONLY[arch]["why"]})
    return out


# ------------------------------------------------------------------ collecting
def rule_counts(log: str) -> tuple[dict, dict]:
    """(finished jobs per rule, failed jobs per rule) from a Snakemake log."""
    done, failed = {}, {}
    for rule in re.findall(r"Finished jobid: \d+ \(Rule: (\w+)\)", log):
        done[rule] = done.get(rule, 0) + 1
    for rule in re.findall(r"^Error in rule (\w+):", log, re.M):
        failed[rule] = failed.get(rule, 0) + 1
    return done, failed


def read_benchmarks(bench_dir: Path) -> list[dict]:
    """One row per Snakemake benchmark TSV: rule, job (path below the rule's folder),
    seconds, max_rss_mb (missing values: None)."""
    rows = []
    for tsv in sorted(bench_dir.rglob("*.tsv")):
        rel = tsv.relative_to(bench_dir)
        with open(tsv) as f:
            rec = next(csv.DictReader(f, delimiter="\t"), None)
        if not rec:
            continue
        rule = BENCH_RULES.get(rel.parts[0], rel.parts[0])
        if rule == "sampler_study" and rel.name.startswith("students_"):   # the same folder, rule sampler_students
            rule = "sampler_students"
        rows.append({"rule": rule, "job": str(Path(*rel.parts[1:]).with_suffix("")),
                     "seconds": _num(rec.get("s")), "max_rss_mb": _num(rec.get("max_rss"))})
    return rows


def _num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def per_rule(bench: list[dict]) -> dict:
    """rule -> jobs, total and max seconds, peak max_rss (MB) over its benchmark rows."""
    out = {}
    for r in bench:
        d = out.setdefault(r["rule"], {"jobs": 0, "seconds": 0.0, "max_seconds": 0.0, "peak_rss_mb": None})
        d["jobs"] += 1
        d["seconds"] = round(d["seconds"] + (r["seconds"] or 0), 2)
        d["max_seconds"] = max(d["max_seconds"], r["seconds"] or 0)
        if r["max_rss_mb"] is not None:
            d["peak_rss_mb"] = max(d["peak_rss_mb"] or 0, r["max_rss_mb"])
    return out


def training_runs(results: Path) -> list[dict]:
    """Per training job: run, method, arch, parameters (its final.pt provenance,
    read without the weights where possible: the evaluated summary), stage kinds, and the
    median seconds per step of each stage (batch / images_per_s of log.jsonl; a stage's
    first step, which includes its set-up, is left out where there are more); runs
    that train nothing (bicubic) are left out."""
    runs = []
    for log in sorted(results.glob("runs/*/*/seed*/train/log.jsonl")):
        train = log.parent
        cfg = yaml.safe_load((train / "config.yaml").read_text()) if (train / "config.yaml").exists() else {}
        stages = {s["name"]: s for s in cfg.get("train", {}).get("stages", [])}
        recs = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        per_stage = {}
        for name, st in stages.items():
            ips = [r["images_per_s"] for r in recs if r.get("stage") == name and r.get("images_per_s")]
            if ips:
                steps = [st["batch"] / v for v in ips]
                per_stage[name] = {"kind": st.get("kind"), "batch": st["batch"], "steps_logged": len(steps),
                                   "seconds_per_step": round(statistics.median(steps[1:] or steps), 3)}
        if not per_stage:   # nothing trained (bicubic's checkpoint)
            continue
        prov = json.loads((train / "provenance.json").read_text()) if (train / "provenance.json").exists() else {}
        runs.append({"run": str(train.parent.relative_to(results / "runs")), "method": cfg.get("method"),
                     "arch": cfg.get("model", {}).get("arch"), "params": _params(train.parent, prov),
                     "stages": per_stage, "init_from": prov.get("init_from")})
    return runs


def _params(run: Path, prov: dict):
    if prov.get("parameters"):
        return int(prov["parameters"])
    summary = run / "summary.json"
    if summary.exists():
        return json.loads(summary.read_text()).get("params")
    return None


def evaluations(results: Path) -> list[dict]:
    """Per evaluated cell: params, NFE, seconds per image and per NFE (summary.json, CPU)."""
    rows = []
    for path in sorted(results.glob("runs/*/*/seed*/summary.json")):
        s = json.loads(path.read_text())
        nfe, spi = s.get("nfe") or 0, s.get("seconds_per_image")
        rows.append({"cell": str(path.parent.relative_to(results / "runs")), "params": s.get("params"),
                     "nfe": nfe, "seconds_per_image": spi, "device": s.get("device"),
                     "seconds_per_nfe": round(spi / nfe, 4) if nfe and spi is not None else None})
    return rows


def timings(results: Path) -> list[dict]:
    """Per Table 3 row (RESULTS/timing/DATASET/VARIANT.csv): NFE, seconds per image and per NFE (CPU)."""
    rows = []
    for path in sorted(results.glob("timing/*/*.csv")):
        with open(path) as f:
            for r in csv.DictReader(f):
                nfe, spi = _num(r.get("nfe")), _num(r.get("seconds_per_image"))
                rows.append({"timing": str(path.relative_to(results / "timing").with_suffix("")), "nfe": nfe,
                             "lr_size": r.get("lr_size"), "seconds_per_image": spi,
                             "seconds_per_nfe": round(spi / nfe, 4) if nfe and nfe > 0 and spi is not None else None})
    return rows


def git_commit() -> str:
    """HEAD of the checkout, with ``-dirty`` when tracked files outside results/ differ from
    it (the rehearsal rewrites its own tracked outputs there, e.g. rehearsal.yaml, before
    this is read; ecdp.provenance applies the same rule)."""
    def git(*a):
        return subprocess.run(["git", *a], capture_output=True, text=True, cwd=REPO).stdout.strip()
    head = git("rev-parse", "HEAD") or "unknown"
    return head + ("-dirty" if git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results")
                   else "")


def expected_rules(cfg: dict) -> dict:
    """rule -> number of jobs a full run of ``cfg`` has (from the grid, as the Snakefile counts)."""
    from ecdp.grid import Grid

    grid = Grid(cfg, REPO)
    studies = cfg["studies"]
    return {"fixture_archives": int(bool(cfg.get("fixture_archives"))), "prepare_dataset": len(cfg["datasets"]),
            "fetch_weights": 1,
            "train": sum(len(grid.training_seeds(c)) for c in grid.training_cells()),
            "evaluate": len(grid.cell_targets("x")), "time_table3": int(bool(studies.get("table3"))),
            "sampler_study": len(grid.study_seeds("samplers")) if studies.get("samplers") else 0,
            "sampler_students": len(grid.student_seeds()) if (studies.get("samplers") or {}).get("students")
            else 0, "aggregate": 1}


def check_report(rep: dict) -> list[str]:
    """What is wrong with a finished rehearsal (empty: nothing): failed jobs, rules that
    ran fewer jobs than the grid has, stage kinds never trained, a forward check failed."""
    problems = [f"rule {r}: {n} job(s) failed" for r, n in rep["failed"].items()]
    for rule, n in rep["expected"].items():
        if n and rep["ran"].get(rule, 0) < n:
            problems.append(f"rule {rule}: ran {rep['ran'].get(rule, 0)} of {n} job(s)")
    kinds = {s["kind"] for r in rep["training"] for s in r["stages"].values()}
    problems += [f"no training stage of kind {k} ran" for k in STAGE_KINDS if k not in kinds]
    problems += [f"forward check of {f['arch']} failed: {f['error']}" for f in rep["forward_checks"] if "error" in f]
    if rep["snakemake_rc"]:
        problems.append(f"snakemake exited with status {rep['snakemake_rc']}")
    return problems


def collect(results: Path, log: str, cfg: dict, forward: list[dict]) -> dict:
    """The measured part of the report: rule counts (Snakemake's ``log``), benchmark
    rows and their per-rule summary, training, evaluation and timing numbers (RESULTS),
    the forward checks, the commit and the machine."""
    ran, failed = rule_counts(log)
    bench = read_benchmarks(results / "logs" / "benchmarks")
    return {"git_commit": git_commit(), "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores, "
                                                   f"{platform.system()}, Python {platform.python_version()}",
            "ran": ran, "failed": failed, "expected": expected_rules(cfg), "per_rule": per_rule(bench),
            "benchmarks": bench, "training": training_runs(results), "evaluations": evaluations(results),
            "timing": timings(results), "forward_checks": forward, "not_on_cpu": NOT_ON_CPU}


# ------------------------------------------------------------------ report
def markdown(rep: dict) -> str:
    """REPORT.md of a rehearsal report."""
    L = [f"# Paper rehearsal{' (reduced)' if rep['reduced'] else ''}: config/rehearsal.yaml on CPU", "",
         f"Commit `{rep['git_commit']}`, {rep['started']} UTC, {rep['machine']}.  "
         f"Total wall time {rep['wall_s']:.0f} s (Snakemake {rep['snakemake_s']:.0f} s); load average (1 min) "
         f"{rep['load_average_1min'][0]} at the start, {rep['load_average_1min'][1]} at the end "
         f"{'(above the core count: the CPU was shared with other work)' if _shared(rep) else ''}.  "
         f"All numbers are measured on this CPU in this run; with 2 training steps on fixture images the "
         f"tables' metrics mean nothing." + _resumed(rep), "",
         "Status: " + ("**all jobs succeeded**" if not rep["problems"] else
                       "**problems**: " + "; ".join(rep["problems"])), "",
         "## Rules that ran", "", "| rule | jobs ran | jobs in the DAG | failed | seconds (sum) | peak RSS (MB) |",
         "|---|---:|---:|---:|---:|---:|"]
    for rule in REHEARSAL_RULES + PAPER_RULES:
        b = rep["per_rule"].get(rule, {})
        rss = b.get("peak_rss_mb")
        L.append(f"| {rule} | {rep['ran'].get(rule, 0)} | {rep['expected'].get(rule, 0)} | "
                 f"{rep['failed'].get(rule, 0)} | {b.get('seconds', '')} | {'' if rss is None else f'{rss:.0f}'} |")
    L += ["", "`fixture_archives` is the rehearsal's own rule (the official-layout archives and their file:// "
          "sources file); `aggregate` has no benchmark file (a local rule), its count is from Snakemake's log.", "",
          "## Trained networks (CPU)", "", "| run | method | arch | parameters | stage: seconds per step (batch) |",
          "|---|---|---|---:|---|"]
    for r in rep["training"]:
        st = ", ".join(f"{n} ({s['kind']}): {s['seconds_per_step']} s ({s['batch']})" for n, s in r["stages"].items())
        init = f" (first stages from {r['init_from']})" if r.get("init_from") else ""
        L.append(f"| {r['run']} | {r['method']} | {r['arch']} | {_fmt_params(r['params'])} | {st}{init} |")
    L += ["", "## Sampling (CPU, one test image per cell)", "",
          "| cell | parameters | NFE | seconds per image | seconds per NFE |", "|---|---:|---:|---:|---:|"]
    for e in rep["evaluations"]:
        L.append(f"| {e['cell']} | {_fmt_params(e['params'])} | {e['nfe']:g} | {e['seconds_per_image']:.3f} | "
                 f"{'' if e['seconds_per_nfe'] is None else e['seconds_per_nfe']} |")
    L += ["", "## Table 3 timing (CPU, `ecdp time`)", "", "| run | LR size | NFE | seconds per image | seconds per NFE |",
          "|---|---|---:|---:|---:|"]
    for t in rep["timing"]:
        L.append(f"| {t['timing']} | {t['lr_size']} | {t['nfe']:g} | {t['seconds_per_image']:.3f} | "
                 f"{'' if t['seconds_per_nfe'] is None else t['seconds_per_nfe']} |")
    L += ["", "## Not run on CPU, and why", ""]
    for f in rep["forward_checks"]:
        if "error" in f:
            L.append(f"- **{f['arch']}**: {f['why']}.  Forward check FAILED: {f['error']}")
        else:
            L.append(f"- **{f['arch']}**: {f['why']}.  Built: {_fmt_params(f['params'])} parameters in "
                     f"{f['build_s']} s; one forward pass ({f['nfe']} NFE, LR {f['lr_size']}x{f['lr_size']} -> "
                     f"{f['sr_shape'][-2]}x{f['sr_shape'][-1]}) {f['forward_s']} s, output finite: {f['finite']}, "
                     f"peak RSS {f['max_rss_mb']:.0f} MB.")
    L += [f"- {line}" for line in rep["not_on_cpu"]]
    L += ["", "Every other change from config/paper.yaml, with its reason: the `REHEARSAL` comments of "
          "config/rehearsal.yaml.  Machine-readable: rehearsal.json beside this file.", ""]
    return "\n".join(L)


def _resumed(rep: dict) -> str:
    """The sentence of a rehearsal that ran in more than one invocation (``--resume``)."""
    inv = rep.get("invocations") or []
    if len(inv) < 2:
        return ""
    parts = ", ".join(f"{i['started']} UTC at `{i['git_commit']}` ({i.get('snakemake_s', '?')} s)" for i in inv)
    return (f"  The rehearsal ran in {len(inv)} invocations (interrupted, then `--resume`): {parts}; the wall "
            f"time above is the last one's, the rules' seconds below sum every job's benchmark.")


def _shared(rep: dict) -> bool:
    """Whether the load average exceeded the core count (other work shared the CPU)."""
    return max(rep["load_average_1min"]) > (os.cpu_count() or 1)


def _fmt_params(n) -> str:
    return "" if not n else f"{n / 1e6:.2f}M"


# ------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reduced", action="store_true", help="DIV2K only, every rule kind (CI)")
    p.add_argument("--out", help="report folder (default results/rehearsal, --reduced: results/rehearsal-reduced); "
                                 "the workflow's results go to OUT/run")
    p.add_argument("--workdir", default=".", help="Snakemake's working directory (data_root and --out are relative to it)")
    p.add_argument("--cores", default="all", help="snakemake --cores (default all)")
    p.add_argument("--no-report-html", action="store_true", help="skip snakemake --report")
    p.add_argument("--resume", action="store_true",
                   help="go on with an interrupted rehearsal in OUT: keep its outputs and its Snakemake log "
                        "(appended to), unlock, rerun incomplete jobs; the config must be the one it started with")
    p.add_argument("--forward-check", metavar="ARCH", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.forward_check:
        print(json.dumps(forward_check(args.forward_check, FORWARD_ONLY[args.forward_check])))
        return 0
    t_start, started, load0 = time.time(), time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()), os.getloadavg()[0]
    workdir = Path(args.workdir).resolve()
    out = Path(args.out or ("results/rehearsal-reduced" if args.reduced else "results/rehearsal"))
    out_abs = out if out.is_absolute() else workdir / out
    out_abs.mkdir(parents=True, exist_ok=True)
    cfg = yaml.safe_load(CONFIG.read_text())
    if args.reduced:
        cfg = reduce_config(cfg)
    cfg["results"] = str(out / "run")
    config = out_abs / "rehearsal.yaml"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}
    sm = snakemake_args(config, workdir, args.cores)
    invocations_file = out_abs / "invocations.json"
    if args.resume:
        if not config.exists() or yaml.safe_load(config.read_text()) != cfg:
            p.error(f"--resume: {config} is missing or is not this rehearsal's config; start afresh without --resume")
        invocations = (json.loads(invocations_file.read_text()) if invocations_file.exists() else
                       [{"started": "not recorded", "git_commit": "not recorded", "resume": False}])
        subprocess.run(sm + ["--unlock"], cwd=workdir, env=env, capture_output=True)
        sm += ["--rerun-incomplete"]
    else:
        atomic_write_text(config, yaml.safe_dump(cfg, sort_keys=False))
        invocations = []
        for path in fresh_paths(workdir, cfg):
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    invocations.append({"started": started, "git_commit": git_commit(), "resume": args.resume})
    atomic_write_text(invocations_file, json.dumps(invocations, indent=2) + "\n")
    rc, sm_s = run_logged(sm, out_abs / "snakemake.log", workdir, env, append=args.resume)
    invocations[-1]["snakemake_s"] = round(sm_s, 1)
    atomic_write_text(invocations_file, json.dumps(invocations, indent=2) + "\n")
    if rc == 0 and not args.no_report_html:
        rc = run_logged(snakemake_args(config, workdir, args.cores) + ["--report", str(out_abs / "report.html")],
                        out_abs / "snakemake-report.log", workdir, env)[0]
    fwd = forward_checks(env, workdir)
    rep = collect(workdir / cfg["results"], (out_abs / "snakemake.log").read_text(), cfg, fwd)
    rep.update({"reduced": args.reduced, "started": started, "snakemake_rc": rc,
                "load_average_1min": [round(load0, 2), round(os.getloadavg()[0], 2)],
                "snakemake_s": round(sm_s, 1), "config": str(out / "rehearsal.yaml"), "invocations": invocations})
    if args.reduced:
        rep["not_on_cpu"] = NOT_ON_CPU + NOT_ON_CPU_REDUCED
    rep["wall_s"] = round(time.time() - t_start, 1)
    rep["problems"] = check_report(rep)
    atomic_write_text(out_abs / "rehearsal.json", json.dumps(rep, indent=2) + "\n")
    atomic_write_text(out_abs / "REPORT.md", markdown(rep))
    print(f"rehearsal {'passed' if not rep['problems'] else 'FAILED: ' + '; '.join(rep['problems'])} "
          f"in {rep['wall_s']:.0f} s: {out_abs / 'REPORT.md'}")
    return 0 if not rep["problems"] else 1


if __name__ == "__main__":
    sys.exit(main())
