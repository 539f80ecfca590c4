"""Every command in the README runs as written (issue 16, "Commands that fail as
documented"): each command line of the README's ``bash`` blocks has an entry in
:data:`COMMANDS` saying how this file runs it (as written, or in its smallest form:
fewer steps, ``--dry-run`` where the real one needs the dataset hosts, ``-n`` for a
whole workflow), or which other test runs it and why it cannot run here.  A README
command without an entry fails :func:`test_every_readme_command_has_a_test`, so the
README cannot drift from what is tested.

The ``ecdp`` commands run in order in one folder (``data/`` and ``runs/`` there,
``config/`` and ``examples/`` linked from the checkout), as a new user would type
them after the set-up line."""
from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"

AS_WRITTEN = "as written"
SMALL_TRAIN = "--set train.stages.0.steps=2 --set train.stages.1.steps=2"


def _covered(where: str) -> tuple[str, str]:
    return ("covered", where)


def _skip(why: str) -> tuple[str, str]:
    return ("skip", why)


# README command -> AS_WRITTEN, the smallest form (a command string), or (covered|skip, why)
COMMANDS: dict[str, object] = {
    'python3 -m pip install -e ".[test]"': _covered(".ci/run: the install of every CI run"),
    # Quick start
    "ecdp data prepare embedded --root data": AS_WRITTEN,
    "ecdp weights fetch": AS_WRITTEN,
    "ecdp train --config config/tiny.yaml --out runs/tiny": AS_WRITTEN,
    "ecdp sr --checkpoint runs/tiny/final.pt data/embedded-div2k/test/LR/chelsea.png -o runs/tiny/sr": AS_WRITTEN,
    "ecdp metrics runs/tiny/sr/chelsea.png data/embedded-div2k/test/HR/chelsea.png": AS_WRITTEN,
    "ecdp params": AS_WRITTEN,
    # Tests
    "python3 -m pytest -q": _covered("this test suite itself (the fast tests)"),
    'python3 -m pytest -q -m "slow or not slow"': _covered(".ci/run: the CI command"),
    "mkdir -p .benchmarks && python3 -m pytest --benchmark-only --benchmark-json=.benchmarks/latest.json":
        "python3 -m pytest --benchmark-only --collect-only -q -p no:cacheprovider " + str(ROOT / "tests" / "benchmarks"),
    # Training synopsis (FILE / DIR placeholders): every option it names is in --help
    "ecdp train --config FILE --out DIR [--resume] [--set key.path=value ...]": "synopsis",
    "ecdp sr --checkpoint DIR/final.pt IMAGES... -o OUTDIR [--seed S] [--sampler '{\"atol\": 1e-3}'] [--overwrite]":
        "synopsis",
    # Many GPUs (none here: the synopsis is checked against --help; tests/test_distributed.py runs
    # --nproc 2 on CPU with gloo)
    "ecdp train --config FILE --out DIR --nproc 8": "synopsis",
    "torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST:29500 \\":
        _covered("tests/test_distributed.py (torchrun --standalone through ecdp train --nproc 2)"),
    "-m ecdp.cli train --config FILE --out DIR": _covered("the continuation of the torchrun line above"),
    # Data (the real hosts are not reachable here: the dry run prints what would be fetched)
    "ecdp data prepare div2k --root data --dry-run": AS_WRITTEN,
    "python3 workflow/scripts/rehearse.py": _skip("the full paper rehearsal: 28 training jobs of the paper's "
                                                  "networks, too long for a test; its reduced form is tested"),
    "python3 workflow/scripts/rehearse.py --reduced": _covered("tests/test_rehearsal.py "
                                                               "(test_reduced_rehearsal_runs_every_rule, slow)"),
    "ecdp data prepare div2k celeba benchmarks --root data": "ecdp data prepare div2k celeba benchmarks --root data --dry-run",
    "ecdp data prepare imagenet --root data --source-dir /path/to/ILSVRC2012":
        "ecdp data prepare imagenet --root data --source-dir /path/to/ILSVRC2012 --dry-run",
    "ecdp data verify div2k celeba --root data": "ecdp data verify embedded-div2k embedded-celeba --root data",
    # Baselines
    "ecdp train --config config/tiny-srdiff.yaml --out runs/srdiff": "ecdp train --config config/tiny-srdiff.yaml "
                                                                     "--out runs/srdiff " + SMALL_TRAIN,
    "ecdp sr --checkpoint runs/srdiff/final.pt data/embedded-div2k/test/LR/chelsea.png -o runs/srdiff/sr": AS_WRITTEN,
    # A method of one's own: the example package is installed into a temporary target there
    "pip install -e examples/l1net": _covered("tests/test_plugins.py (pip install of examples/l1net, no network)"),
    "ecdp train --config examples/l1net/l1net.yaml --out runs/l1net": _covered("tests/test_plugins.py"),
    "ecdp sr --checkpoint runs/l1net/final.pt data/embedded-div2k/test/LR/chelsea.png -o runs/l1net/sr":
        _covered("tests/test_plugins.py"),
    "ecdp evaluate --checkpoint runs/l1net/final.pt --data data/embedded-div2k --out runs/l1net/eval":
        _covered("tests/test_plugins.py"),
    # The workflow (the full grid takes hours: its dry run here, the tiny grid end to end in
    # tests/test_workflow.py)
    "snakemake --cores all": "snakemake -n --cores all",
    "snakemake --cores all results/runs/embedded-div2k/ecdp-hybrid-c1.0/seed0/metrics.csv":
        "snakemake -n --cores all results/runs/embedded-div2k/ecdp-hybrid-c1.0/seed0/metrics.csv",
    "snakemake -n --configfile config/paper.yaml": AS_WRITTEN,
    "snakemake --cores all --configfile config/paper.yaml": "snakemake -n --cores all --configfile config/paper.yaml",
    "snakemake --cores all --use-conda --configfile config/paper.yaml":
        "snakemake -n --cores all --use-conda --configfile config/paper.yaml",
    "pip install snakemake-executor-plugin-slurm": _skip("a cluster's set-up (the plugin is in environment.yml)"),
    "snakemake --profile workflow/profiles/slurm --configfile config/paper.yaml":
        "snakemake -n --profile workflow/profiles/slurm --configfile config/paper.yaml",
    # The paper grid's cost (results/rehearsal/): the helpers are tested fast; the runs take CPU-minutes
    "python3 workflow/scripts/fullsize.py": _covered("tests/test_cost.py (its FLOP, memory-model and fit helpers); "
                                                     "results/rehearsal/fullsize.* is its output"),
    "python3 workflow/scripts/gpu_hours.py": _covered("tests/test_cost.py (FLOP, NFE and GPU-hour helpers); "
                                                      "results/rehearsal/gpu_hours.* is its output"),
    "python3 workflow/scripts/gpu_hours.py --readme": _covered("tests/test_cost.py: the README block equals "
                                                               "what this command writes from the CSVs"),
    # Sampling speed
    "ecdp time --checkpoint runs/tiny/final.pt --size 64 --sampler '{\"name\": \"dpmpp_2m\", \"steps\": 10}'":
        AS_WRITTEN,
}


def readme_commands(text: str) -> list[str]:
    """The command lines of the README's ``bash`` blocks, trailing ``# comments`` and
    comment-only lines dropped, in order (duplicates kept once)."""
    out: list[str] = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            line = re.split(r"\s+#\s", line.strip(), maxsplit=1)[0].strip()
            if line and not line.startswith("#") and line not in out:
                out.append(line)
    return out


def test_every_readme_command_has_a_test():
    commands = readme_commands(README.read_text())
    assert len(commands) >= 25, commands          # the parser found the blocks
    missing = [c for c in commands if c not in COMMANDS]
    stale = [c for c in COMMANDS if c not in commands]
    assert not missing, f"README commands with no entry in tests/test_readme.py COMMANDS: {missing}"
    assert not stale, f"COMMANDS entries no longer in the README: {stale}"


def test_parser_drops_comments_and_keeps_quoted_hashes():
    text = "```bash\n# a comment line\necho '#1'   # trailing\nls\n```\n```yaml\nx: 1\n```"
    assert readme_commands(text) == ["echo '#1'", "ls"]


def _argv(command: str) -> list[str]:
    argv = shlex.split(command)
    if argv[0] == "ecdp":
        argv = [sys.executable, "-m", "ecdp.cli", *argv[1:]]
    elif argv[0] == "python3":
        argv = [sys.executable, *argv[1:]]
    elif argv[0] == "snakemake":
        argv = ["snakemake", "-s", str(ROOT / "Snakefile"), *argv[1:]]
    return argv


def _synopsis_flags(command: str) -> list[str]:
    return re.findall(r"(?<![\w-])(--?[a-z][\w-]*)", command)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("snakemake") is None, reason="snakemake is not installed")
def test_readme_commands_run(tmp_path, weights_dir):
    """Every entry that runs here, in README order, in one fresh folder."""
    work = tmp_path / "work"
    work.mkdir()
    for name in ("config", "examples"):
        (work / name).symlink_to(ROOT / name)
    env = {**os.environ, "ECDP_WEIGHTS_DIR": str(weights_dir), "PYTHONPATH": str(ROOT),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    ran = 0
    for command in readme_commands(README.read_text()):
        how = COMMANDS[command]
        if isinstance(how, tuple):
            continue
        if how == "synopsis":
            argv = _argv(command)
            help_text = subprocess.run(argv[:4] + ["--help"], capture_output=True, text=True, env=env,
                                       cwd=work).stdout
            for flag in _synopsis_flags(command.split(None, 2)[2]):
                assert flag in help_text, f"{command}: {flag} not in --help"
            continue
        run = command if how == AS_WRITTEN else how
        if "--use-conda" in run and shutil.which("conda") is None:
            continue                              # snakemake needs conda for --use-conda, even for -n
        if "profiles/slurm" in run and importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
            continue                              # the executor plugin a cluster installs
        res = subprocess.run(_argv(run), capture_output=True, text=True, env=env, cwd=work, timeout=900)
        assert res.returncode == 0, f"README command {command!r} (run as {run!r}) failed:\n" \
                                    f"{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
        ran += 1
    assert ran >= 18
    assert (work / "runs/tiny/sr/chelsea.png").exists() and (work / "runs/srdiff/sr/chelsea.png").exists()
