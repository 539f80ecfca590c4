"""``ecdp report``: aggregate a results folder into the paper's tables and figures.

Reads ``RESULTS/runs/*/*/seed*/summary.json`` (``ecdp evaluate``), ``RESULTS/timing``
(``ecdp time``), ``RESULTS/samplers`` (sampler study) and the trainers' ``val.jsonl``;
writes ``tables/{table1,table2,table3,table4,table5,table7,protocol}.{csv,tex,md}``,
``figures/*.png``, ``benchmarks/`` (from a pytest-benchmark JSON, if given and
present), ``README.md`` (an index) and ``run_metadata.json``.

With ``--workflow-config`` (the workflow config the Snakefile ran, which the workflow
saves as ``RESULTS/workflow_config.yaml``) the tables know the grid, so an empty cell
says whether it was "not in this profile" or planned but not finished.
"""
from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path

import pandas as pd

from . import claims as claims_mod
from . import figures as figures_mod
from . import tables as tables_mod


# --------------------------------------------------------------------------- inputs

def _read_csv(p: Path) -> pd.DataFrame | None:
    try:
        return pd.read_csv(p)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return None


def collect_samplers(results: str | Path) -> list[tuple[str, pd.DataFrame]]:
    """The sampler studies (``samplers/<dataset>/<variant>/seed<k>.csv``), each followed
    by the student rows of the same seed (``students_seed<k>.csv``: the distilled
    students, scored against the same accurate solution), if any."""
    out = []
    for p in sorted(Path(results).glob("samplers/*/*/seed*.csv")):
        df = _read_csv(p)
        if df is None:
            continue
        st = _read_csv(p.with_name("students_" + p.name))
        if st is not None and "family" in st and len(df):
            df = pd.concat([df, st[st["family"] == "student"]], ignore_index=True)
        df.attrs["cell"] = (p.parent.parent.name, p.parent.name)
        out.append((f"{p.parent.parent.name}-{p.parent.name}-{p.stem}", df))
    return out


def benchmark_times(folder: str | Path) -> dict:
    """Wall time of a workflow run from Snakemake's ``benchmark:`` files: each file's
    mtime is its job's end, minus its ``s`` column its start."""
    starts, ends, total, jobs = [], [], 0.0, 0
    by_rule: dict[str, float] = {}
    for p in sorted(Path(folder).rglob("*.tsv")):
        try:
            with open(p) as f:
                rows = list(csv.DictReader(f, delimiter="\t"))
        except OSError:
            continue
        secs = [float(r["s"]) for r in rows if r.get("s") not in (None, "", "NA")]
        if not secs:
            continue
        s = secs[-1]
        end = p.stat().st_mtime
        starts.append(end - s)
        ends.append(end)
        total += s
        jobs += 1
        rule = p.relative_to(folder).parts[0] if p.parent != Path(folder) else p.stem
        by_rule[rule] = by_rule.get(rule, 0.0) + s
    if not jobs:
        return {"jobs": 0}
    busy, cur_start, cur_end = 0.0, None, None   # the union of the jobs' intervals
    for a, b in sorted(zip(starts, ends)):
        if cur_end is None or a > cur_end:
            busy += (cur_end - cur_start) if cur_end is not None else 0.0
            cur_start, cur_end = a, b
        else:
            cur_end = max(cur_end, b)
    busy += cur_end - cur_start
    return {"jobs": jobs, "job_seconds_total": round(total, 3), "first_job_start_utc": _utc(min(starts)),
            "last_job_end_utc": _utc(max(ends)), "wall_time_s": round(max(ends) - min(starts), 3),
            "busy_time_s": round(busy, 3),
            "job_seconds_by_rule": {k: round(v, 3) for k, v in sorted(by_rule.items())}}


def _keep_earlier_benchmarks(meta: dict, previous: Path) -> None:
    """Re-aggregating a results folder whose Snakemake benchmark files are gone (a fresh
    clone's committed results/, or a folder merged from runs) keeps the wall time the
    earlier report measured, marked as such, instead of dropping it."""
    if (meta.get("benchmarks") or {}).get("jobs") or not previous.exists():
        return
    try:
        old = json.loads(previous.read_text())
    except (OSError, ValueError):
        return
    if (old.get("benchmarks") or {}).get("jobs"):
        meta["benchmarks"] = dict(old["benchmarks"], kept_from_report_of_utc=old.get("generated_utc"))
        meta["wall_time_s"] = old.get("wall_time_s")


def _utc(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def run_metadata(results: Path, runs: pd.DataFrame, timing: pd.DataFrame, ctx, benchmarks_dir: Path | None,
                 start_marker: Path | None, grid=None) -> dict:
    from ..provenance import git_commit, hardware, versions

    devices = set()
    for df in (runs, timing):
        if df is not None and not df.empty and "device" in df:
            devices |= {str(d) for d in df["device"].dropna()}
    commits = sorted({str(c) for c in runs["git_commit"].dropna()}) if not runs.empty and "git_commit" in runs else []
    meta = {
        "generated_utc": _utc(time.time()),
        "profile": ctx.profile,
        "profile_label": ctx.profile_label,
        "seeds": ctx.seeds or (sorted({int(s) for s in runs["seed"].dropna()}) if not runs.empty and "seed" in runs else []),
        "git_commit": git_commit(),
        "git_commits_of_runs": commits,
        "versions": versions(),
        "hardware_of_report": hardware(),
        "hardware_of_runs": _run_hardware(runs),
        "devices": sorted(devices),
        "runs_evaluated": int(len(runs)),
        "cells_planned": len(grid.cells) if grid is not None else None,
    }
    if benchmarks_dir is not None:
        meta["benchmarks"] = benchmark_times(benchmarks_dir)
        meta["wall_time_s"] = meta["benchmarks"].get("wall_time_s")
    if start_marker is not None and start_marker.exists():
        try:
            t0 = float(start_marker.read_text().split()[0])
            meta["workflow_started_utc"] = _utc(t0)
            meta["wall_time_since_start_s"] = round(time.time() - t0, 3)
        except (ValueError, IndexError):
            pass
    if grid is not None:
        done = set(zip(runs["dataset"], runs["variant"], runs["seed"].astype(int))) if not runs.empty else set()
        meta["cells"] = [{**row, "seeds_done": sum((row["dataset"], row["variant"], s) in done
                                                   for s in grid.cell(row["dataset"], row["variant"]).seeds),
                          **({"not_computed": ctx.failed[row["dataset"], row["variant"]]}
                             if (row["dataset"], row["variant"]) in ctx.failed else {})}
                         for row in grid.summary()]
    return meta


def _run_hardware(runs: pd.DataFrame) -> list[dict]:
    """The distinct ``provenance.hardware`` records of the evaluated runs."""
    seen = []
    for hw in (runs["hardware"] if runs is not None and "hardware" in runs else []):
        if isinstance(hw, dict) and hw not in seen:
            seen.append(hw)
    return seen


# --------------------------------------------------------------------------- README

def _fmt(x, d=3):
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{d}f}"


def readme(results: Path, tables: dict, figures: list[Path], meta: dict, runs: pd.DataFrame,
           benchmarks: list[Path]) -> str:
    lines = ["# ecdp-bench results", "",
             "Generated by `ecdp report` (the workflow's `report` rule); do not edit by hand.", "",
             f"- **Profile:** {meta['profile_label']}",
             f"- **Seeds:** {', '.join(map(str, meta.get('seeds') or [])) or '-'}",
             f"- **Commit of the runs:** {', '.join(f'`{c}`' for c in meta.get('git_commits_of_runs') or []) or '-'}"
             f" (report written at `{meta['git_commit']}`)",
             f"- **Devices:** {'; '.join(meta['devices']) or '-'}",
             f"- **Workflow wall time:** {_fmt(meta.get('wall_time_s'), 0) or '-'} s "
             "(first job start to last job end, from the benchmark files)" + (
                 f"; {_fmt(meta['benchmarks']['busy_time_s'], 0)} s with at least one job running (a run that "
                 "was stopped and resumed: the pause is not counted)"
                 if (meta.get("benchmarks") or {}).get("busy_time_s") is not None
                 and meta["benchmarks"]["busy_time_s"] < 0.95 * (meta.get("wall_time_s") or 0) else ""),
             "- Metadata: [run_metadata.json](run_metadata.json)", "",
             "Runs are bit-identical on one machine; on another machine of the same kind the last digits and "
             "the adaptive solver's NFE can differ (CPU model and torch's CPU capability are in each run's "
             "provenance): comparisons rest on the seed spread, never on one run.", ""]
    claims = tables.get("claims")
    if claims is not None and claims.rows:
        lines += ["## The paper's claims at this scale", "", claims.caption, "",
                  "| claim | dataset | A | B | A - B | 95 % interval | verdict | note |", "|---|---|---|---|---:|---|---|---|"]
        for r in claims.rows:
            ci = claims.formats["ci"](r)
            lines.append(f"| {r['claim']} ({r['paper']}) | {r['dataset']} | {r['a']} | {r['b']} | "
                         f"{claims.formats['diff'](r)} {r['metric']} | {ci} | {r['verdict']} | {r['note']} |")
        lines.append("")
    lines += [
             "## Tables", "",
             "Each table has the paper's value beside ours; an empty cell was not run and its Note says why.", ""]
    for name, t in tables.items():
        title = "Protocol" if name == "protocol" else name.replace("table", "Table ")
        lines.append(f"- **{title}**: {t.caption.split('. Profile')[0]} -- "
                     f"[md](tables/{name}.md) · [csv](tables/{name}.csv) · [tex](tables/{name}.tex)")
    lines += ["", "## Figures", ""]
    if figures:
        for p in figures:
            rel = p.relative_to(results) if p.is_absolute() or str(p).startswith(str(results)) else p
            lines.append(f"- [{p.name}]({rel})")
    else:
        lines.append("- none yet")
    if benchmarks:
        lines += ["", "## Benchmarks (pytest-benchmark)", ""]
        lines += [f"- [{p.name}]({p.relative_to(results)})" for p in benchmarks]
    lines += ["", "## Runs", "", "| dataset | variant | seed | LPIPS | PSNR | SSIM | NFE | s/img | folder |",
              "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    if not runs.empty:
        for r in runs.sort_values(["dataset", "variant", "seed"]).itertuples(index=False):
            rel = Path(r.run_dir).relative_to(results) if str(r.run_dir).startswith(str(results)) else r.run_dir
            lines.append(f"| {r.dataset} | {r.variant} | {r.seed} | {_fmt(r.lpips)} | {_fmt(r.psnr, 2)} | "
                         f"{_fmt(r.ssim)} | {_fmt(r.nfe, 0)} | {_fmt(r.seconds_per_image, 2)} | [{rel}]({rel}) |")
    if meta.get("cells"):
        pending = [c for c in meta["cells"] if c["seeds_done"] < c["seeds"]]
        if pending:
            lines += ["", "## Planned cells without results", ""]
            lines += [f"- {c['dataset']}/{c['variant']} ({c['studies']}): {c['seeds_done']}/{c['seeds']} seeds"
                      + (f"; not computed: {c['not_computed']}" if c.get("not_computed") else "") for c in pending]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main

def report(results: str | Path = "results", out: str | Path | None = None, workflow_config: str | Path | None = None,
           benchmark_json: str | Path | None = None, benchmarks_dir: str | Path | None = None,
           start_marker: str | Path | None = None, base_dir: str | Path = ".", log=print) -> dict:
    """Build every table, figure, the README and run_metadata.json; returns what was written."""
    from ..evaluation import atomic_write_text
    from ..grid import Grid, load_workflow_config

    results = Path(results)
    out = Path(out) if out else results
    if not workflow_config and (results / "workflow_config.yaml").exists():  # what the workflow ran
        workflow_config = results / "workflow_config.yaml"
    grid = None
    if workflow_config:
        grid = Grid(load_workflow_config(workflow_config), base_dir)
        ctx = tables_mod.Context.from_grid(grid)
    runs = tables_mod.collect_runs(results)
    if grid is None:
        ctx = tables_mod.Context.from_runs(runs)
    timing = tables_mod.collect_timing(results)
    samplers = collect_samplers(results)

    ctx.failed = tables_mod.collect_failures(results)
    conv = claims_mod.convergence(runs)
    ctx.convergence = claims_mod.convergence_summary(conv)
    tables = tables_mod.build_tables(runs, timing, ctx)
    claims_df = None
    if grid is not None and grid.config.get("claims"):
        claims_df = claims_mod.test_claims(results, grid.config["claims"], ctx, timing, ctx.convergence)
        tables["claims"] = claims_mod.claims_table(claims_df, ctx)
    for name, df in samplers:  # results/samplers/<dataset>/<variant>/seed<k>.csv
        tname = "samplers" if len(samplers) == 1 else f"samplers_{name}"
        tables[tname] = tables_mod.sampler_table(df, ctx, tname, source=name)
    students = [df for df in (_read_csv(p) for p in sorted(results.glob("samplers/*/*/students_seed*.csv")))
                if df is not None and len(df)]
    wants = grid is not None and ((grid.studies.get("samplers") or {}).get("students"))
    if students or wants:   # every seed's distilled students (issue 17); empty (with the note) if none ran
        frame = pd.concat(students, ignore_index=True) if students else pd.DataFrame(columns=["sampler", "accurate"])
        tables["students"] = tables_mod.students_table(frame, ctx)
    written = tables_mod.write_tables(tables, out / "tables")

    fig8_ds, fig8_variants = None, None
    grid_datasets: dict = {ds: None for ds in sorted(runs["dataset"].unique())} if not runs.empty else {}
    if grid is not None:
        f8 = grid.studies.get("figure8")
        if f8:
            fig8_ds = grid.dataset_name(f8["dataset"])
            fig8_variants = {v: ctx.label(v) for v in f8.get("variants", [])}
        grid_datasets = {grid.dataset_name(grid.studies[t]["dataset"]): {v: ctx.label(v) for v in grid.studies[t]["variants"]}
                         for t in ("table1", "table2", "table4") if grid.studies.get(t)}
    figs = figures_mod.make_figures(results, runs, out / "figures", fig8_dataset=fig8_ds, grid_datasets=grid_datasets,
                                    samplers=samplers, profile_label=ctx.profile_label, fig8_variants=fig8_variants)
    for ds in (sorted(runs["dataset"].unique()) if not runs.empty else []):   # every method's training curve
        found = list(runs[runs["dataset"] == ds]["variant"].unique())
        in_tables = [v for t in ("table1", "table2", "table4", "table5", "table7") if ctx.table_dataset(t) == ds
                     for v in ctx.study_variants.get(t, []) if v in found]
        variants = {v: ctx.label(v) for v in dict.fromkeys(in_tables or found)}
        figs.append(figures_mod.training_curves(results, out / "figures" / f"training_{ds}.png", ds, variants,
                                                ctx.profile_label))
    if claims_df is not None:
        figs.append(figures_mod.claims_forest(claims_df, out / "figures" / "claims.png", ctx.profile_label))
    figs = [p for p in figs if p is not None]

    bench_files: list[Path] = []
    if benchmark_json and Path(benchmark_json).exists():
        try:
            from .benchmarks import benchmark_tables
        except ImportError as e:  # pragma: no cover - module of another engineer
            log(f"benchmarks: skipped ({e})")
        else:
            res = benchmark_tables(benchmark_json, out / "benchmarks")
            bench_files = [Path(p) for p in (res or [])] if isinstance(res, (list, tuple)) else \
                sorted((out / "benchmarks").glob("*"))

    meta = run_metadata(results, runs, timing, ctx, Path(benchmarks_dir) if benchmarks_dir else None,
                        Path(start_marker) if start_marker else None, grid)
    _keep_earlier_benchmarks(meta, out / "run_metadata.json")
    atomic_write_text(out / "run_metadata.json", json.dumps(meta, indent=2, default=str) + "\n")
    atomic_write_text(out / "README.md", readme(out, tables, figs, meta, runs, bench_files))
    log(f"report: {len(runs)} evaluated runs -> {len(written)} table files, {len(figs)} figures in {out}")
    return {"tables": written, "figures": figs, "benchmarks": bench_files, "metadata": meta}


def add_cli(p):
    p.add_argument("--results", default="results", help="results folder (runs/, timing/, samplers/)")
    p.add_argument("--out", default=None, help="where tables/, figures/, README.md go (default: --results)")
    p.add_argument("--workflow-config", default=None,
                   help="workflow config YAML the grid came from (the workflow writes RESULTS/workflow_config.yaml)")
    p.add_argument("--benchmark-json", default=None, help="pytest-benchmark JSON -> RESULTS/benchmarks/ (if present)")
    p.add_argument("--benchmarks-dir", default=None,
                   help="Snakemake benchmark files (wall time of the run; default RESULTS/logs/benchmarks)")
    p.add_argument("--start-marker", default=None, help="file holding the workflow's start time (epoch seconds)")


def run_cli(args) -> int:
    from ..cli import CLIError

    results = Path(args.results)
    if not results.exists():
        raise CLIError(f"{results} does not exist")
    bdir = args.benchmarks_dir or (results / "logs" / "benchmarks")
    try:
        report(results, args.out, args.workflow_config, args.benchmark_json, bdir, args.start_marker)
    except (FileNotFoundError, ValueError) as e:
        raise CLIError(str(e)) from None
    return 0
