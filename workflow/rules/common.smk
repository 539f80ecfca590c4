# Constants and functions shared by workflow/rules/*.smk, which the Snakefile includes
# after this file.  Those files hold rules only; what their inputs, params and commands
# are computed from is here (GRID, RESULTS, DATA and config come from the Snakefile).
# Every function takes a job's wildcards, or a name the Snakefile passes, reads the grid
# (ecdp/grid.py) and writes nothing.

#: the prepared datasets of the config by folder name (the {dataset} wildcard)
PREPARE = {d["name"]: d for d in config["datasets"].values()}

# The rehearsal's archives (config/rehearsal.yaml `fixture_archives: FOLDER`; absent from
# the paper and default profiles): rule fixture_archives (data.smk) builds the
# official-layout fixture archives into FOLDER and writes the config's `data_sources`
# for them (file:// URLs, checksums), and every prepare_dataset job waits for that file.
FIXTURES = config.get("fixture_archives")
if FIXTURES and not config.get("data_sources"):
    raise WorkflowError("fixture_archives needs data_sources: the sources file the rule writes for them")
if FIXTURES and Path(config["data_sources"]).parent != Path(FIXTURES):
    raise WorkflowError(f"data_sources ({config['data_sources']}) must be a file in fixture_archives ({FIXTURES}): "
                        "the sources file lies beside the archives it names")
#: the flag file the weights job leaves: weights folder filled for this results folder
WEIGHTS_OK = f"{RESULTS}/logs/weights.ok"
#: the Table 3 study and the sampler study of the config (None when absent)
T3 = config["studies"].get("table3")
SAM = config["studies"].get("samplers")


# --------------------------------------------------------------------------- threads and resources

def threads_for(rule):
    n = int(RES["threads"].get(rule, 1))
    return workflow.cores if n == 0 else n


def resources_for(rule, gpu_job):
    out = {}
    if RES["mem_mb"].get(rule):
        out["mem_mb"] = int(RES["mem_mb"][rule])
    if RES["runtime"].get(rule):
        out["runtime"] = int(RES["runtime"][rule])
    if gpu_job and int(RES["gpu"]) > 0:
        out["gpu"] = int(RES["gpu"])
    return out


# --------------------------------------------------------------------------- training (train.smk)

def run_config_json(wildcards):
    """The cell's resolved run config as one shell-quoted JSON line (YAML is a JSON superset)."""
    try:
        cell = GRID.cell(wildcards.dataset, wildcards.variant)
    except KeyError as e:
        raise WorkflowError(str(e))
    if cell.shares_training:
        raise WorkflowError(f"{wildcards.dataset}/{wildcards.variant} shares the training job of "
                            f"{cell.trained_as}; ask for {RESULTS}/runs/{cell.dataset}/{cell.trained_as}/"
                            f"seed{wildcards.seed}/train/outcome.json instead")
    if int(wildcards.seed) not in GRID.training_seeds(cell):
        raise WorkflowError(f"seed {wildcards.seed} is not among the seeds of {cell.dataset}/{cell.variant}: "
                            f"{GRID.training_seeds(cell)} (config seeds {SEEDS}, studies.*.seeds)")
    return shlex.quote(json.dumps(cell.run_config(int(wildcards.seed)), sort_keys=True))


def training_inputs(wildcards):
    cell = GRID.cell(wildcards.dataset, wildcards.variant)
    out = {"data": f"{DATA}/{cell.dataset}/.complete", "weights": WEIGHTS_OK}
    if cell.init_from:
        base = GRID.cell(cell.dataset, cell.init_from[0])
        out["base"] = GRID.outcome(RESULTS, base, int(wildcards.seed))
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


# --------------------------------------------------------------------------- evaluation (evaluate.smk)

def eval_inputs(wildcards):
    try:
        cell = GRID.cell(wildcards.dataset, wildcards.variant)
    except KeyError as e:
        raise WorkflowError(str(e))
    return {"outcome": GRID.outcome(RESULTS, cell, int(wildcards.seed)),
            "data": f"{DATA}/{cell.dataset}/.complete", "weights": WEIGHTS_OK}


def eval_settings(wildcards):
    cell = GRID.cell(wildcards.dataset, wildcards.variant)
    ev = config["evaluation"]
    limit = PREPARE[cell.dataset].get("eval_limit", ev.get("limit"))
    settings = {"dataset": cell.dataset, "variant": cell.variant, "method": cell.method,
                "trained_as": cell.trained_as, "studies": cell.studies, "seed": int(wildcards.seed),
                "sampler": cell.eval_sampler, "limit": limit, "convention": ev["convention"],
                "lpips_net": ev["lpips_net"], "split": ev["split"], "profile": GRID.profile}
    if cell.shares_training:
        settings["run_config"] = cell.run_config(int(wildcards.seed))
    return settings


# --------------------------------------------------------------------------- Table 3 (time.smk)

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


# --------------------------------------------------------------------------- aggregation (aggregate.smk)

def report_inputs(wildcards):
    inputs = {"metrics": GRID.cell_targets(RESULTS)}
    if T3:
        inputs["timing"] = table3_outputs()
    if SAM:
        inputs["samplers"] = [f"{RESULTS}/samplers/{GRID.dataset_name(SAM['dataset'])}/{SAM['variant']}/seed{s}.csv"
                              for s in GRID.study_seeds("samplers")]
        if SAM.get("students"):   # every seed of the grid
            inputs["students"] = [f"{RESULTS}/samplers/{GRID.dataset_name(SAM['dataset'])}/{SAM['variant']}/"
                                  f"students_seed{s}.csv" for s in GRID.student_seeds()]
    if config.get("benchmark_json") and Path(config["benchmark_json"]).exists():
        inputs["benchmark"] = config["benchmark_json"]   # pytest-benchmark JSON -> results/benchmarks/
    fig8 = config["studies"].get("figure8")
    if fig8:  # val.jsonl lives beside these checkpoints
        ds = GRID.dataset_name(fig8["dataset"])
        inputs["figure8"] = [GRID.outcome(RESULTS, GRID.cell(ds, v), s) for v in fig8["variants"]
                             for s in GRID.study_seeds("figure8")]
    return inputs
