# Stage 5: cost.  Table 3 (seconds per 256x256 HR image and NFE of every diffusion
# method) is ONE job so that every method is timed on the same device, one after the
# other, each after warm-up runs; with threads = all cores it runs alone on a CPU
# machine.  The sampler study scores several samplers of one ECDP model (LPIPS vs NFE).

T3 = config["studies"].get("table3")
SAM = config["studies"].get("samplers")


def table3_outputs():
    if not T3:
        return []
    ds = GRID.dataset_name(T3["dataset"])
    return [f"{RESULTS}/timing/{ds}/{v}.csv" for v in T3["variants"]]


def table3_checkpoints(wildcards=None):
    ds = GRID.dataset_name(T3["dataset"])
    return {v: GRID.checkpoint(RESULTS, GRID.cell(ds, v), SEEDS[0]) for v in T3["variants"]}


def table3_outcomes(wildcards=None):
    ds = GRID.dataset_name(T3["dataset"])
    return {v: GRID.outcome(RESULTS, GRID.cell(ds, v), SEEDS[0]) for v in T3["variants"]}


def table3_command(wildcards, threads):
    ds = GRID.dataset_name(T3["dataset"])
    cmds = []
    for v, ck in table3_checkpoints().items():
        cell = GRID.cell(ds, v)
        size = int(T3.get("hr_size", 256)) // cell_scale(cell)
        sampler = f"--sampler {shlex.quote(json.dumps(cell.eval_sampler))}" if cell.eval_sampler else ""
        q = shlex.quote
        cmds.append(f"echo {q('== ' + v)} && OMP_NUM_THREADS={threads} python -m ecdp.cli time --checkpoint {q(ck)} "
                    f"--outcome {q(table3_outcomes()[v])} "
                    f"--size {size} {sampler} --repeats {int(T3.get('repeats', 3))} --warmup {int(T3.get('warmup', 1))} "
                    f"--seed {SEEDS[0]} --device {q(DEVICE)} --out {q(f'{RESULTS}/timing/{ds}/{v}.csv')}")
    return " && ".join(cmds)


def cell_scale(cell):
    """The SR scale of a cell's dataset: its meta.json if prepared, else the registry's."""
    meta = Path(DATA, cell.dataset, "meta.json")
    if meta.exists():
        return int(json.loads(meta.read_text())["scale"])
    from ecdp.data.registry import get_spec

    try:
        return int(get_spec(cell.dataset).scale)
    except KeyError:
        return 4


if T3:

    rule time_table3:
        """Table 3: `ecdp time` of each method's seed-0 checkpoint at 256x256 HR, one device, warm-up."""
        input:
            **table3_outcomes(),
        output:
            table3_outputs(),
        log:
            f"{RESULTS}/logs/time/table3.log",
        benchmark:
            f"{RESULTS}/logs/benchmarks/time/table3.tsv"
        threads: threads_for("time")
        resources:
            **resources_for("time", True),
        conda:
            ENV
        params:
            cmd=table3_command,
        shell:
            "( {params.cmd} ) > {log:q} 2>&1"


if SAM:

    rule sampler_study:
        """LPIPS / PSNR / SSIM against NFE and seconds per image for several samplers of one model."""
        input:
            outcome=lambda wc: GRID.outcome(RESULTS, GRID.cell(wc.dataset, wc.variant), int(wc.seed)),
            data=lambda wc: f"{DATA}/{wc.dataset}/.complete",
            weights=WEIGHTS_OK,
        output:
            summary=f"{RESULTS}/samplers/{{dataset}}/{{variant}}/seed{{seed}}.csv",
            per_image=f"{RESULTS}/samplers/{{dataset}}/{{variant}}/per_image_seed{{seed}}.csv",
        log:
            f"{RESULTS}/logs/samplers/{{dataset}}/{{variant}}/seed{{seed}}.log",
        benchmark:
            f"{RESULTS}/logs/benchmarks/samplers/{{dataset}}/{{variant}}/seed{{seed}}.tsv"
        threads: threads_for("samplers")
        resources:
            **resources_for("samplers", True),
        conda:
            ENV
        params:
            model=lambda wc: GRID.checkpoint(RESULTS, GRID.cell(wc.dataset, wc.variant), int(wc.seed)),
            samplers=SAM["samplers"],
            limit=SAM.get("limit"),
            lr_crop=SAM.get("lr_crop"),
            accurate=SAM.get("accurate"),
            convention=config["evaluation"]["convention"],
            device=DEVICE,
        script:
            "../scripts/sampler_study.py"
