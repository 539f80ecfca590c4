# Stage 6: aggregation.  `ecdp report` turns every summary.json, the timing CSVs, the
# sampler study and the trainers' val.jsonl into results/tables/*.{csv,tex,md},
# results/figures/*.png, results/benchmarks/ (pytest-benchmark JSON, if present),
# results/README.md and results/run_metadata.json.  The workflow config it ran is
# saved beside them so the tables know the grid (empty cells say why they are empty).

TABLES = ["table1", "table2", "table3", "table4", "table5", "table7", "protocol"]
CAPTIONS = "../report"  # relative to this rule file


def report_inputs(wildcards):
    inputs = {"config": f"{RESULTS}/workflow_config.yaml", "metrics": GRID.cell_targets(RESULTS)}
    if T3:
        inputs["timing"] = table3_outputs()
    if SAM:
        inputs["samplers"] = [f"{RESULTS}/samplers/{GRID.dataset_name(SAM['dataset'])}/{SAM['variant']}/seed{s}.csv"
                              for s in SEEDS]
    if config.get("benchmark_json") and Path(config["benchmark_json"]).exists():
        inputs["benchmark"] = config["benchmark_json"]   # pytest-benchmark JSON -> results/benchmarks/
    fig8 = config["studies"].get("figure8")
    if fig8:  # val.jsonl lives beside these checkpoints
        ds = GRID.dataset_name(fig8["dataset"])
        inputs["figure8"] = [GRID.checkpoint(RESULTS, GRID.cell(ds, v), s) for v in fig8["variants"] for s in SEEDS]
    return inputs


rule workflow_config:
    """The config this workflow ran (after --config overrides and schema defaults)."""
    output:
        f"{RESULTS}/workflow_config.yaml",
    params:
        config=config,
    run:
        import yaml

        from ecdp.evaluation import atomic_write_text

        atomic_write_text(output[0], "# written by the workflow: the config of this results folder\n"
                          + yaml.safe_dump(dict(params.config), sort_keys=False))


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
        metadata=report(f"{RESULTS}/run_metadata.json", caption=f"{CAPTIONS}/metadata.rst", category="Metadata"),
    log:
        f"{RESULTS}/logs/report.log",
    threads: threads_for("report")
    conda:
        ENV
    params:
        results=RESULTS,
        bench_dir=f"{RESULTS}/logs/benchmarks",
        start=f"{RESULTS}/logs/workflow_start",
        bench=lambda wc, input: f"--benchmark-json {shlex.quote(input.benchmark)}" if "benchmark" in input.keys() else "",
    shell:
        "python -m ecdp.cli report --results {params.results:q} --workflow-config {input.config:q} "
        "--benchmarks-dir {params.bench_dir:q} --start-marker {params.start:q} "
        "{params.bench} > {log:q} 2>&1"
