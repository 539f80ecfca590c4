"""ecdp-bench: from nothing to the ECDP paper's tables and figures.

    snakemake --cores all                                   # embedded profile (config/default.yaml)
    snakemake --cores all --configfile config/paper.yaml    # the paper's protocol (GPUs)
    snakemake --cores all --configfile config/rehearsal.yaml   # the paper DAG on CPU, sizes shrunk, fixture archives
    snakemake --profile workflow/profiles/slurm --configfile config/paper.yaml   # on SLURM
    snakemake -n results/runs/embedded-div2k/ecdp-hybrid-c1.0/seed0/metrics.csv  # one cell

Stages, one rule file each (workflow/rules/): data (prepare datasets; in the rehearsal
profile first its fixture archives), weights (LPIPS / VGG weights), train (`ecdp
train`, one job per distinct training config), evaluate (`ecdp evaluate`, one job per
cell and seed), time (Table 3 with `ecdp time`), samplers (the sampler study),
aggregate (`ecdp report`: tables, figures, README, run metadata). What their inputs
and commands are computed from is in workflow/rules/common.smk.

The grid (which datasets x variants x seeds, which cells share a training job) is
built by ecdp/grid.py from the config; `ecdp report` reads the same grid.
"""
import json
import os
import shlex
import sys
import time
from pathlib import Path

from snakemake.utils import min_version, validate

min_version("8.0")

REPO = Path(workflow.basedir).resolve()
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # the ecdp package, even without `pip install -e .`

# config/default.yaml unless the user gives --configfile (which then *replaces* it:
# snakemake would otherwise deep-merge the two and leak embedded settings into paper runs)
if not workflow.overwrite_configfiles:
    configfile: str(REPO / "config" / "default.yaml")


validate(config, schema=str(REPO / "config" / "schema.yaml"))

from ecdp.grid import Grid  # noqa: E402

try:
    GRID = Grid(config, REPO)
except (ValueError, KeyError, FileNotFoundError) as e:
    raise WorkflowError(f"invalid workflow config: {e}")

RESULTS = config["results"].rstrip("/")
DATA = config["data_root"].rstrip("/")
SEEDS = GRID.seeds
DEVICE = config["device"]
RES = config["resources"]
ENV = "../envs/ecdp.yaml"  # relative to workflow/rules/

# Every job runs `python -m ecdp.cli ...` with the repository's package on PYTHONPATH
# (whatever python the job's (conda) env has) and the weights folder of the config in
# $ECDP_WEIGHTS_DIR.  Both are set here, in the environment that jobs (and SLURM jobs,
# which re-read this file) inherit, so no absolute path is part of a job's parameters:
# moving the checkout does not make Snakemake rerun anything.  `envvars` declares
# them: Snakemake checks that they are set and passes them on to remote jobs.
from ecdp.weights.store import resolve_dir  # noqa: E402

os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
os.environ["ECDP_WEIGHTS_DIR"] = str(resolve_dir(  # config weights.dir, else $ECDP_WEIGHTS_DIR, else the default
    os.path.abspath(os.path.expanduser(config["weights"]["dir"])) if config["weights"].get("dir") else None))


envvars:
    "PYTHONPATH",
    "ECDP_WEIGHTS_DIR",


wildcard_constraints:
    dataset="[A-Za-z0-9_.-]+",
    variant="[A-Za-z0-9_.+-]+",
    seed=r"\d+",


localrules: all, prepare_embedded, prepare_dataset, fetch_weights, aggregate


onstart:
    Path(RESULTS, "logs").mkdir(parents=True, exist_ok=True)
    Path(RESULTS, "logs", "workflow_start").write_text(f"{time.time():.3f}\n")


rule all:
    """Every table, figure, the results README and run_metadata.json."""
    input:
        f"{RESULTS}/README.md",
        f"{RESULTS}/run_metadata.json",


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/weights.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/time.smk"
include: "workflow/rules/samplers.smk"
include: "workflow/rules/aggregate.smk"
