# Stage 3: training, one job per *distinct* training config.  Cells whose run configs
# differ only in what does not change the weights (test-time sampler, validation,
# logging) share the job of the first such cell (ecdp/grid.py: trained_as); the
# training rule refuses the other cells.  A job whose first stages train exactly as an
# earlier job's (SR3++ after SR3, ECDP without L_quality after ECDP: grid.py init_from)
# waits for that job and starts from its stage state (`--init-from`; the earlier job
# keeps its stage states: `--keep-stages`).  With `resources.gpu: N > 1` each training job
# runs N data-parallel processes (`ecdp train --nproc N`: torchrun, DDP, one GPU each;
# the stages' batch is the global batch).  The run config (base + overrides, resolved)
# is written to RUN/run.yaml; `ecdp train --resume` continues a killed job from its
# last atomic checkpoint (Snakemake reruns the incomplete job, the trainer resumes).
# The rule's output is RUN/train/outcome.json (`ecdp train --outcome`): "trained" with
# final.pt beside it, or "diverged" with the reason (non-finite loss or weights; a job
# starting from a diverged one's stages is not trained either).  A diverged job ends
# with success so that the rest of the grid finishes; evaluate / time / the sampler
# study read the outcome and write "not computed" results that say why.


rule train:
    """`ecdp train` on one cell's run config (resumable)."""
    input:
        unpack(training_inputs),
    output:
        outcome=f"{RESULTS}/runs/{{dataset}}/{{variant}}/seed{{seed}}/train/outcome.json",
        config=f"{RESULTS}/runs/{{dataset}}/{{variant}}/seed{{seed}}/run.yaml",
    log:
        f"{RESULTS}/logs/train/{{dataset}}/{{variant}}/seed{{seed}}.log",
    benchmark:
        f"{RESULTS}/logs/benchmarks/train/{{dataset}}/{{variant}}/seed{{seed}}.tsv"
    threads: threads_for("train")
    resources:
        **resources_for("train", True),
    conda:
        ENV
    params:
        device=DEVICE,
        cfg=run_config_json,
        stages=stage_args,
        out=lambda wc, output: str(Path(output.outcome).parent),
    shell:
        """
        printf '%s\\n' {params.cfg} > {output.config:q}
        python -m ecdp.grid clean-stale {output.config:q} {params.out:q} > {log:q} 2>&1
        OMP_NUM_THREADS={threads} python -m ecdp.cli train --config {output.config:q} --out {params.out:q} \
            --resume --device {params.device:q} {params.stages} --outcome {output.outcome:q} >> {log:q} 2>&1
        """
