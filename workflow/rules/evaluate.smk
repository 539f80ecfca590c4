# Stage 4: evaluation, one job per cell and seed: `ecdp evaluate` on the cell's test
# set with the checkpoint of its training job and its own test-time sampler.
# Resumable per image (RUN/progress.jsonl); metrics.csv / summary.* are written last.


rule evaluate:
    """`ecdp evaluate`: SR images, per-image metrics.csv, summary.json / summary.csv."""
    input:
        unpack(eval_inputs),
    output:
        metrics=f"{RESULTS}/runs/{{dataset}}/{{variant}}/seed{{seed}}/metrics.csv",
        summary=f"{RESULTS}/runs/{{dataset}}/{{variant}}/seed{{seed}}/summary.json",
        row=f"{RESULTS}/runs/{{dataset}}/{{variant}}/seed{{seed}}/summary.csv",
        settings=f"{RESULTS}/runs/{{dataset}}/{{variant}}/seed{{seed}}/eval.yaml",
    log:
        f"{RESULTS}/logs/evaluate/{{dataset}}/{{variant}}/seed{{seed}}.log",
    benchmark:
        f"{RESULTS}/logs/benchmarks/evaluate/{{dataset}}/{{variant}}/seed{{seed}}.tsv"
    threads: threads_for("evaluate")
    resources:
        **resources_for("evaluate", True),
    conda:
        ENV
    params:
        device=DEVICE,
        settings=lambda wc: shlex.quote(json.dumps(eval_settings(wc), sort_keys=True)),
        model=lambda wc: GRID.checkpoint(RESULTS, GRID.cell(wc.dataset, wc.variant), int(wc.seed)),
        data=lambda wc: f"{DATA}/{wc.dataset}",
        out=lambda wc, output: str(Path(output.metrics).parent),
        sampler=lambda wc: shlex.quote(json.dumps(eval_settings(wc)["sampler"])),
        limit=lambda wc: f"--limit {eval_settings(wc)['limit']}" if eval_settings(wc)["limit"] else "",
        convention=config["evaluation"]["convention"],
        lpips_net=config["evaluation"]["lpips_net"],
        split=config["evaluation"]["split"],
        crops=config["evaluation"]["crops"],
        crop_size=config["evaluation"]["crop_size"],
        profile=GRID.profile,
    shell:
        """
        printf '%s\\n' {params.settings} > {output.settings:q}
        OMP_NUM_THREADS={threads} python -m ecdp.cli evaluate --checkpoint {params.model:q} --outcome {input.outcome:q} \
            --data {params.data:q} --split {params.split:q} {params.limit} --sampler {params.sampler} \
            --seed {wildcards.seed} --out {params.out:q} --convention {params.convention:q} \
            --lpips-net {params.lpips_net:q} --device {params.device:q} --threads {threads} \
            --variant {wildcards.variant:q} --profile {params.profile:q} --crops {params.crops} \
            --crop-size {params.crop_size} --no-progress > {log:q} 2>&1
        """
