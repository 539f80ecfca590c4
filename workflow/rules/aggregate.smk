# Stage 6: aggregation.  `ecdp report` turns every summary.json, the timing CSVs, the
# sampler study and the trainers' val.jsonl into results/tables/*.{csv,tex,md},
# results/figures/*.png, results/benchmarks/ (pytest-benchmark JSON, if present),
# results/README.md and results/run_metadata.json.  The workflow config it ran is
# written by the same job beside them (results/workflow_config.yaml), so the tables know
# the grid and a results folder from an earlier run (a fresh clone's committed one)
# never keeps an older config.

TABLES = (["table1", "table2", "table3", "table4", "table5", "table7", "protocol"] + (["claims"] if config.get("claims") else [])
          + (["students"] if (config["studies"].get("samplers") or {}).get("students") else []))
CAPTIONS = "../report"  # relative to this rule file


rule aggregate:
    """Tables, figures, README and run metadata from everything above."""
    input:
        unpack(report_inputs),
    output:
        tables=[report(f"{RESULTS}/tables/{t}.{ext}", caption=f"{CAPTIONS}/{t}.rst", category="Tables",
                       subcategory=t, labels={"table": t, "format": ext})
                for t in TABLES for ext in ("md", "csv", "tex")],
        figures=report(directory(f"{RESULTS}/figures"), patterns=["{name}.png"], caption=f"{CAPTIONS}/figures.rst",
                       category="Figures"),
        readme=f"{RESULTS}/README.md",
        config=f"{RESULTS}/workflow_config.yaml",
        metadata=report(f"{RESULTS}/run_metadata.json", caption=f"{CAPTIONS}/metadata.rst", category="Metadata"),
    log:
        f"{RESULTS}/logs/report.log",
    threads: threads_for("report")
    conda:
        ENV
    params:
        cfg=lambda wc: shlex.quote(json.dumps(dict(config))),
        results=lambda wc, output: str(Path(output.readme).parent),   # RESULTS, from the output
        bench_dir=f"{RESULTS}/logs/benchmarks",
        start=f"{RESULTS}/logs/workflow_start",
        bench=lambda wc, input: f"--benchmark-json {shlex.quote(input.benchmark)}" if "benchmark" in input.keys() else "",
    shell:
        "printf '%s\\n' {params.cfg} > {output.config:q} && "
        "python -m ecdp.cli report --results {params.results:q} --workflow-config {output.config:q} "
        "--benchmarks-dir {params.bench_dir:q} --start-marker {params.start:q} "
        "{params.bench} > {log:q} 2>&1"
