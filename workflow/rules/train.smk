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


def run_config_json(wildcards):
    """The cell's resolved run config as one shell-quoted JSON line (YAML is a JSON superset)."""
    try:
        cell = GRID.cell(wildcards.dataset, wildcards.variant)
    except KeyError as e:
        raise WorkflowError(str(e))
    if cell.shares_training:
        raise WorkflowError(f"{wildcards.dataset}/{wildcards.variant} shares the training job of "
                            f"{cell.trained_as}; ask for {RESULTS}/runs/{cell.dataset}/{cell.trained_as}/"
                            f"seed{wildcards.seed}/train/final.pt instead")
    if int(wildcards.seed) not in GRID.training_seeds(cell):
        raise WorkflowError(f"seed {wildcards.seed} is not among the seeds of {cell.dataset}/{cell.variant}: "
                            f"{GRID.training_seeds(cell)} (config seeds {SEEDS}, studies.*.seeds)")
    return shlex.quote(json.dumps(cell.run_config(int(wildcards.seed)), sort_keys=True))


def training_inputs(wildcards):
    cell = GRID.cell(wildcards.dataset, wildcards.variant)
    out = {"data": f"{DATA}/{cell.dataset}/.complete", "weights": WEIGHTS_OK}
    if cell.init_from:
        base = GRID.cell(cell.dataset, cell.init_from[0])
        out["base"] = f"{GRID.run_dir(RESULTS, base, int(wildcards.seed))}/train/final.pt"
    return out


def stage_args(wildcards):
    """--init-from (the stage state this job starts from) and --keep-stages (a later job starts from its)."""
    cell = GRID.cell(wildcards.dataset, wildcards.variant)
    args = []
    init = GRID.init_state(RESULTS, cell, int(wildcards.seed))
    if init:
        args += ["--init-from", init]
    if GRID.init_dependents(cell):
        args.append("--keep-stages")
    if int(RES["gpu"]) > 1:
        args += ["--nproc", str(int(RES["gpu"]))]   # one data-parallel process per GPU of the job
    return " ".join(shlex.quote(a) for a in args)


rule train:
    """`ecdp train` on one cell's run config (resumable)."""
    input:
        unpack(training_inputs),
    output:
        model=f"{RESULTS}/runs/{{dataset}}/{{variant}}/seed{{seed}}/train/final.pt",
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
        out=lambda wc, output: str(Path(output.model).parent),
    shell:
        """
        printf '%s\\n' {params.cfg} > {output.config:q}
        python -m ecdp.grid clean-stale {output.config:q} {params.out:q} > {log:q} 2>&1
        OMP_NUM_THREADS={threads} python -m ecdp.cli train --config {output.config:q} --out {params.out:q} \
            --resume --device {params.device:q} {params.stages} >> {log:q} 2>&1
        """
