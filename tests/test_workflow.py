"""The Snakemake workflow: dry runs of both configs list the jobs of every table, the
config schema rejects bad configs, one cell can be asked for alone, and (slow) a tiny
grid runs end to end, survives being killed, and resumes without redoing finished jobs."""
from __future__ import annotations

import importlib
import json
import os
import re
import sys
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SNAKEFILE = ROOT / "Snakefile"
TABLES = ("table1", "table2", "table3", "table4", "table5", "table7", "protocol")

pytestmark = pytest.mark.skipif(shutil.which("snakemake") is None, reason="snakemake is not installed")


def snakemake(workdir: Path, *args: str, timeout: int = 600, check: bool = True) -> subprocess.CompletedProcess:
    cmd = ["snakemake", "-s", str(SNAKEFILE), "-d", str(workdir), *args]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=workdir)
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}")
    return res


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table of a dry run: rule -> count."""
    counts, on = {}, False
    for line in output.splitlines():
        if line.startswith("job") and "count" in line:
            on = True
            continue
        if on:
            m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
            if m:
                counts[m.group(1)] = int(m.group(2))
            elif line.strip().startswith("total"):
                break
    return counts


def dry_run(workdir: Path, *args: str) -> tuple[str, dict[str, int]]:
    res = snakemake(workdir, "-n", "--cores", "2", *args)
    out = res.stdout + res.stderr
    return out, job_counts(out)


# --------------------------------------------------------------------------- dry runs

def test_dry_run_default_lists_every_table(tmp_path):
    out, counts = dry_run(tmp_path)
    assert counts["prepare_embedded"] == 1 and counts["fetch_weights"] == 1
    # 32 cells (22 + the two floors on three datasets + the two distilled students on two),
    # 31 training configs: the ode-tolerance row shares the training of ECDP (c = 1.0);
    # seeds 0-2, but the protocol table's five cells run the first seed only
    # (studies.protocol.seeds: first): 27 x 3 + 5 evaluations
    assert counts["train"] == 27 * 3 + 4 and counts["evaluate"] == 27 * 3 + 5
    assert counts["time_table3"] == 1 and counts["aggregate"] == 1
    # the sampler study and its students on the study's model, every seed (issue 17)
    assert counts["sampler_study"] == 3 and counts["sampler_students"] == 3
    cell = "results/runs/embedded-{}/{}/seed0/metrics.csv"
    for ds, variant in [("div2k", "ecdp-hybrid-c1.0"), ("div2k", "sr3"), ("div2k", "srdiff"),           # Table 1
                        ("imagenet", "ecdp-hybrid-c1.0"), ("imagenet", "sr3"), ("imagenet", "srdiff"),  # Table 2
                        ("celeba", "ecdp-hybrid-c1.0"), ("celeba", "sr3"), ("celeba", "srdiff"),        # Table 4
                        ("div2k", "ecdp-hybrid-c0.5"), ("div2k", "ecdp-hybrid-c1.5"), ("div2k", "ecdp-eps"),
                        ("div2k", "ecdp-x0"), ("div2k", "ecdp-hybrid-c1.0-noquality"),                  # Table 5
                        ("div2k", "sr3pp"), ("div2k", "srdiffpp"), ("div2k", "ecdp-noprobflow"),        # Table 7
                        ("div2k", "ecdp-official"), ("div2k", "ecdp-paper-but-ode_tolerance"),          # protocol
                        ("div2k", "ecdp-paper-but-sigma"), ("div2k", "ecdp-paper-but-mu_kernel"),
                        ("div2k", "ecdp-paper-but-quality_stage"),
                        ("div2k", "bicubic"), ("div2k", "regression"), ("celeba", "bicubic")]:          # floors
        assert cell.format(ds, variant) in out, (ds, variant)
    for t in TABLES:
        for ext in ("csv", "tex", "md"):
            assert f"results/tables/{t}.{ext}" in out
    for target in ("results/timing/embedded-imagenet/ecdp-hybrid-c1.0.csv", "results/timing/embedded-imagenet/sr3.csv",
                   "results/timing/embedded-imagenet/srdiff.csv",
                   "results/samplers/embedded-div2k/ecdp-hybrid-c1.0/seed0.csv",
                   "results/samplers/embedded-div2k/ecdp-hybrid-c1.0/per_image_seed0.csv",
                   "results/README.md", "results/run_metadata.json", "results/figures"):
        assert target in out
    assert "ecdp-paper-but-ode_tolerance/seed0/train/outcome.json" not in out
    assert "--device cpu" in out and "gpu=" not in out


def test_dry_run_paper_config(tmp_path):
    out, counts = dry_run(tmp_path, "--configfile", str(ROOT / "config" / "paper.yaml"))
    assert counts["prepare_dataset"] == 3 and "prepare_embedded" not in counts
    # + the CelebA U-Net blocks row, which runs on CelebA in the paper profile, + the floors
    # (bicubic, regression) on the three datasets, + the distilled students (1 and 2 steps)
    # on DIV2K and ImageNet (issue 17) and the study's students rows
    assert counts["train"] == 22 + 6 + 4 and counts["evaluate"] == 23 + 6 + 4
    assert counts["time_table3"] == 1 and counts["sampler_study"] == 1 and counts["aggregate"] == 1
    assert counts["sampler_students"] == 1
    for target in ("results/runs/div2k/ecdp-hybrid-c1.0/seed0/metrics.csv",
                   "results/runs/imagenet/ecdp-hybrid-c1.0/seed0/metrics.csv",
                   "results/runs/celeba/ecdp-paper-but-celeba_blocks/seed0/metrics.csv",
                   "results/runs/celeba/sr3/seed0/metrics.csv", "results/runs/div2k/srdiffpp/seed0/metrics.csv",
                   "results/timing/imagenet/sr3.csv", "data/div2k/.complete", "data/imagenet/.complete"):
        assert target in out, target
    assert "gpu=1" in out and "--device cuda" in out
    assert "embedded" not in out.replace("embedded-", "")  # nothing of the default config leaks in
    for t in TABLES:
        assert f"results/tables/{t}.tex" in out


@pytest.mark.slow   # > 5 s: CI runs it (.ci/run), the fast suite stays under 3 min
def test_dry_run_one_cell(tmp_path):
    out, counts = dry_run(tmp_path, "results/runs/embedded-div2k/ecdp-hybrid-c1.0/seed0/metrics.csv")
    counts.pop("total", None)
    assert counts == {"evaluate": 1, "fetch_weights": 1, "prepare_embedded": 1, "train": 1}
    # a cell that shares its training: the job of the owning cell is the one that runs
    out, counts = dry_run(tmp_path, "results/runs/embedded-div2k/ecdp-paper-but-ode_tolerance/seed0/metrics.csv")
    assert counts["train"] == 1 and "ecdp-hybrid-c1.0/seed0/train/outcome.json" in out
    assert '"atol": 0.001' in out


def lint(workdir: Path, config: str) -> str:
    """Findings of ``snakemake --lint`` on the workflow with ``config/<config>.yaml`` ("" if none)."""
    res = snakemake(workdir, "--lint", "--cores", "1", "--configfile", str(ROOT / "config" / f"{config}.yaml"),
                    check=False)
    out = res.stdout + res.stderr
    return "" if res.returncode == 0 and "Lints for" not in out else out


def test_snakemake_lint_reports_nothing(tmp_path):
    """Every rule of the default config (all studies on) passes ``snakemake --lint``."""
    findings = lint(tmp_path, "default")
    assert not findings, findings[-6000:]


@pytest.mark.slow   # > 5 s: CI runs it (.ci/run), the fast suite stays under 3 min
@pytest.mark.parametrize("config", ["paper", "test", "rehearsal"])
def test_snakemake_lint_reports_nothing_other_configs(tmp_path, config):
    findings = lint(tmp_path, config)
    assert not findings, findings[-6000:]


@pytest.mark.slow   # > 5 s: CI runs it (.ci/run), the fast suite stays under 3 min
def test_cell_not_in_grid_fails_clearly(tmp_path):
    res = snakemake(tmp_path, "-n", "--cores", "1", "results/runs/embedded-div2k/no-such-variant/seed0/metrics.csv",
                    check=False)
    assert res.returncode != 0
    assert "not a cell of the embedded grid" in res.stdout + res.stderr


def _write(tmp_path: Path, cfg: dict) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


# three cases in the fast run, the rest marked slow (> 5 s each: one snakemake dry run per case; CI runs them)
@pytest.mark.parametrize("mutate, message", [
    (lambda c: c.update(seeds="zero"), "'zero' is not of type 'array'"),
    pytest.param(lambda c: c.pop("studies"), "'studies' is a required property", marks=pytest.mark.slow),
    pytest.param(lambda c: c["studies"]["table1"].update(variants="ecdp"), "is not of type 'array'", marks=pytest.mark.slow),
    pytest.param(lambda c: c.update(device="gpu"), "does not match", marks=pytest.mark.slow),
    pytest.param(lambda c: c.update(unknown_key=1), "Additional properties are not allowed", marks=pytest.mark.slow),
    # names and roots that would leave the project's folders (issue 16, item 9)
    (lambda c: c["datasets"]["div2k"].update(name=".."), "dataset name '..' is not a plain folder name"),
    pytest.param(lambda c: c.update(results=""), "results: '' must be a folder", marks=pytest.mark.slow),
    pytest.param(lambda c: c.update(results="/"), "results: '/' must be a folder", marks=pytest.mark.slow),
    pytest.param(lambda c: c.update(results="../elsewhere"), "results: '../elsewhere' must be a folder", marks=pytest.mark.slow),
    pytest.param(lambda c: c.update(data_root="/"), "data_root: '/' must be a folder", marks=pytest.mark.slow),
    pytest.param(lambda c: c.update(data_root="data/../.."), "data_root: 'data/../..' must be a folder", marks=pytest.mark.slow),
    # a bad run config inside a cell fails the dry run, not a job
    (lambda c: c["methods"]["ecdp"]["set"]["train"]["stages"][1].update(steps=-3),
     "train.stages[1].steps: must be a positive integer"),
    pytest.param(lambda c: c["methods"]["ecdp"]["set"].update(smapler={}), "unknown config key 'smapler'", marks=pytest.mark.slow),
    # the sampler study's HR crop must be big enough for LPIPS-Alex (found by the rehearsal, issue 13)
    pytest.param(lambda c: c["studies"]["samplers"].update(lr_crop=4), "studies.samplers.lr_crop: 4 x scale 4 = 16 px", marks=pytest.mark.slow),
    # the rehearsal's fixture archives are reached through the sources file the rule writes
    pytest.param(lambda c: c.update(fixture_archives="data/_sources"), "fixture_archives needs data_sources", marks=pytest.mark.slow),
])
def test_invalid_config_fails_with_schema_message(tmp_path, mutate, message):
    cfg = yaml.safe_load((ROOT / "config" / "default.yaml").read_text())
    mutate(cfg)
    res = snakemake(tmp_path, "-n", "--cores", "1", "--configfile", str(_write(tmp_path, cfg)), check=False)
    assert res.returncode != 0
    assert message in res.stdout + res.stderr


@pytest.mark.slow   # > 5 s: CI runs it (.ci/run), the fast suite stays under 3 min
def test_paths_with_spaces_and_shell_characters_are_quoted(tmp_path):
    cfg = yaml.safe_load((ROOT / "config" / "default.yaml").read_text())
    cfg["results"], cfg["data_root"] = "my results", "data; touch pwned"
    res = snakemake(tmp_path, "-n", "-p", "--cores", "1", "--configfile", str(_write(tmp_path, cfg)))
    out = res.stdout + res.stderr
    assert "--out 'my results/runs/embedded-div2k/ecdp-hybrid-c1.0/seed0/train'" in out
    assert "--root 'data; touch pwned'" in out and "--data 'data; touch pwned/embedded-div2k'" in out


@pytest.mark.slow   # > 5 s: CI runs it (.ci/run), the fast suite stays under 3 min
def test_data_sources_config_reaches_prepare(tmp_path):
    """``data_sources`` (a sources override, null in the paper config) becomes a quoted
    ``--sources`` of every prepare_dataset job."""
    cfg = yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())
    assert cfg["data_sources"] is None
    res = snakemake(tmp_path, "-n", "-p", "--cores", "1", "data/div2k/.complete",
                    "--configfile", str(_write(tmp_path, cfg)))
    assert "data prepare div2k" in res.stdout and "--sources" not in res.stdout
    cfg["data_sources"] = "my sources; x.yaml"
    res = snakemake(tmp_path, "-n", "-p", "--cores", "1", "data/div2k/.complete",
                    "--configfile", str(_write(tmp_path, cfg)))
    assert "--root data --sources 'my sources; x.yaml' --workers" in res.stdout


@pytest.mark.slow   # > 5 s: CI runs it (.ci/run), the fast suite stays under 3 min
def test_config_referring_to_unknown_variant_fails(tmp_path):
    cfg = yaml.safe_load((ROOT / "config" / "default.yaml").read_text())
    cfg["studies"]["table5"]["variants"].append("ecdp-typo")
    res = snakemake(tmp_path, "-n", "--cores", "1", "--configfile", str(_write(tmp_path, cfg)), check=False)
    assert res.returncode != 0 and "variant 'ecdp-typo' is not defined" in res.stdout + res.stderr


def test_configs_validate_against_schema():
    import jsonschema

    schema = yaml.safe_load((ROOT / "config" / "schema.yaml").read_text())
    for name in ("default", "paper", "test"):
        jsonschema.validate(yaml.safe_load((ROOT / "config" / f"{name}.yaml").read_text()), schema)


def test_conda_env_matches_environment_yml():
    def deps(path):
        env = yaml.safe_load(path.read_text())
        out = set()
        for d in env["dependencies"]:
            if isinstance(d, dict):
                out |= {p for p in d["pip"] if not p.startswith("-e")}
            else:
                out.add(d)
        return out

    top, job = deps(ROOT / "environment.yml"), deps(ROOT / "workflow" / "envs" / "ecdp.yaml")
    assert job <= top
    assert top - job <= {"snakemake>=8", "snakemake-executor-plugin-slurm", "pytest", "pytest-benchmark"}
    for rule_file in (ROOT / "workflow" / "rules").glob("*.smk"):
        text = rule_file.read_text()
        if "shell:" in text or "script:" in text:
            assert "conda:" in text, rule_file.name


def test_profiles_parse():
    for name in ("local", "slurm"):
        cfg = yaml.safe_load((ROOT / "workflow" / "profiles" / name / "config.yaml").read_text())
        assert cfg["rerun-incomplete"] is True
    assert yaml.safe_load((ROOT / "workflow" / "profiles" / "slurm" / "config.yaml").read_text())["executor"] == "slurm"
    assert yaml.safe_load((ROOT / "profiles" / "default" / "config.yaml").read_text())["rerun-incomplete"] is True


# --------------------------------------------------------------------------- a real run (slow)

def finished_outputs(log: str, rule: str) -> list[str]:
    """Outputs of the jobs of ``rule`` that a Snakemake log reports as finished."""
    outputs, jobs = {}, re.split(r"\n(?=\[\w{3} \w{3} )", log)
    for block in jobs:
        m_rule = re.search(rf"^\s*(?:local)?rule {rule}:", block, re.M)
        m_id, m_out = re.search(r"jobid: (\d+)", block), re.search(r"output: (.+)", block)
        if m_rule and m_id and m_out:
            outputs[m_id.group(1)] = [o.strip() for o in m_out.group(1).split(",")]
    finished = re.findall(rf"Finished jobid: (\d+) \(Rule: {rule}\)", log)
    return [o for j in finished for o in outputs.get(j, [])]


def _wait_for(log: Path, pattern: str, proc: subprocess.Popen, timeout: float) -> bool:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if log.exists() and re.search(pattern, log.read_text()):
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.5)
    return False


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, weights_dir):
    """The test grid (config/test.yaml) plus the example method package (examples/l1net,
    installed, listed in Table 1), interrupted after its first finished training job and
    started again; returns (workdir, info)."""
    from test_plugins import install_example

    work = tmp_path_factory.mktemp("workflow")
    site = install_example(work / "site")
    sys.path.insert(0, str(site))   # this process reads the grid too (the report's Context)
    importlib.invalidate_caches()
    # PYTHONUNBUFFERED: Snakemake's log reaches the file line by line, so the interrupt
    # below comes right after the first finished training job, not at a buffer flush
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    cfg = yaml.safe_load((ROOT / "config" / "test.yaml").read_text())
    cfg["weights"] = {"dir": str(weights_dir), "offline": True}
    cfg["methods"]["l1net"] = {"set": {"method": "l1net", "data": {"workers": 0}, "model": {"channels": 8, "blocks": 2},
                                       "train": {"checkpoint_every": 2, "log_every": 1, "stages": [
                                           {"name": "regress", "kind": "regress", "steps": 2, "batch": 2, "lr": 1e-3}]}}}
    cfg["variants"]["l1net"] = {"method": "l1net", "label": "L1 regression (example)"}
    cfg["studies"]["table1"]["variants"].append("l1net")
    # a cell whose training diverges (Adam at lr 1e30: non-finite within a few steps; 1e38 overflows inside Adam itself):
    # the grid must still finish, the cell empty with the reason (issue 12)
    cfg["variants"]["sr3-diverges"] = {"method": "sr3", "label": "SR3 (diverges)", "set": {"train": {"stages": [
        {"name": "score", "kind": "score", "steps": 3, "batch": 2, "lr": 1e30}]}}}
    cfg["studies"]["table1"]["variants"].append("sr3-diverges")
    cfg["claims"].append({"id": "vs-diverged", "paper": "Table 1", "text": "ECDP below a diverged SR3",
                          "dataset": "div2k", "a": "ecdp-hybrid-c1.0", "b": "sr3-diverges", "metric": "lpips"})
    for attempt in range(2):   # should the interrupt still come after the run is done: try once more
        if attempt:
            work = tmp_path_factory.mktemp("workflow")
        config = work / "test.yaml"
        config.write_text(yaml.safe_dump(cfg))
        args = ["snakemake", "-s", str(SNAKEFILE), "-d", str(work), "--configfile", str(config), "--cores", "2"]
        log = work / "first.log"
        with open(log, "w") as f:
            # the child gets SIGINT's default action even where this test process ignores it
            # (an earlier test of the session can leave SIGINT ignored; children inherit that)
            proc = subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, cwd=work, start_new_session=True, env=env,
                                    preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        try:
            finished = _wait_for(log, r"Finished jobid: \d+ \(Rule: train\)", proc, 900)
            assert finished, log.read_text()[-3000:]
            # Ctrl-C: Snakemake stops its jobs, removes their incomplete outputs and its lock
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        if "(100%) done" not in log.read_text():
            break
    killed_log = log.read_text()
    # the training jobs Snakemake saw finish before the interrupt (an outcome written by a
    # job that was interrupted before Snakemake registered it is rightly recomputed); every
    # rerun of a training job rewrites its outcome.json, so its mtime tells
    done = [work / p for p in finished_outputs(killed_log, "train") if p.endswith("outcome.json")]
    mtimes = {str(p): os.stat(p).st_mtime_ns for p in done}
    finished_first = re.findall(r"Finished jobid: \d+ \(Rule: (\w+)\)", killed_log)
    second = subprocess.run(args, capture_output=True, text=True, cwd=work, timeout=1500, env=env)
    assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-4000:]
    return work, {"mtimes": mtimes, "first": killed_log, "second": second.stdout + second.stderr,
                  "finished_first": finished_first, "config": config, "args": args, "env": env}


@pytest.mark.slow
def test_end_to_end_tables_figures_metadata(tiny_run):
    work, info = tiny_run
    results = work / "results"
    for t in TABLES:
        for ext in ("csv", "tex", "md"):
            assert (results / "tables" / f"{t}.{ext}").stat().st_size > 0, (t, ext)
    t1 = pd.read_csv(results / "tables" / "table1.csv")
    ecdp = t1[t1["method"] == "ECDP"].iloc[0]
    assert 0 < ecdp["ours_lpips"] < 2 and ecdp["ours_psnr"] > 0 and ecdp["paper_lpips"] == pytest.approx(0.108)
    srdiff = t1[t1["method"] == "SRDiff"].iloc[0]
    assert pd.isna(srdiff["ours_lpips"]) and srdiff["note"] == "not in this profile"
    # the example method package: trained, evaluated and in Table 1 with no edit under ecdp/
    l1 = t1[t1["variant"] == "l1net"].iloc[0]
    assert l1["method"] == "L1 regression (example)" and pd.isna(l1["paper_lpips"]) and l1["ours_psnr"] > 10
    assert "test (pipeline check" in (results / "tables" / "table1.md").read_text()
    for fig in ("figure8.png", "lpips_vs_seconds.png", "lpips_vs_nfe.png", "grid_embedded-div2k.png"):
        assert (results / "figures" / fig).stat().st_size > 0, fig
    meta = json.loads((results / "run_metadata.json").read_text())
    assert meta["profile"] == "test" and meta["wall_time_s"] > 0 and meta["benchmarks"]["jobs"] >= 8
    assert all(c["seeds_done"] == 1 for c in meta["cells"] if c["variant"] != "sr3-diverges")
    assert "tables/table5.md" in (results / "README.md").read_text()
    # the diverged cell: the grid finished, its row is empty and says why, its claim is inconclusive
    bad = t1[t1["variant"] == "sr3-diverges"].iloc[0]
    assert pd.isna(bad["ours_lpips"]) and bad["note"].startswith("not computed: seed 0: training diverged at step")
    outcome = json.loads((results / "runs/embedded-div2k/sr3-diverges/seed0/train/outcome.json").read_text())
    assert outcome["status"] == "diverged" and "non-finite" in outcome["reason"]
    assert not (results / "runs/embedded-div2k/sr3-diverges/seed0/train/final.pt").exists()
    claim = pd.read_csv(results / "tables" / "claims.csv").set_index("id").loc["vs-diverged"]
    assert claim["verdict"] == "inconclusive" and "SR3 (diverges) not computed: seed 0: training diverged" in claim["note"]
    cell = next(c for c in meta["cells"] if c["variant"] == "sr3-diverges")
    assert cell["seeds_done"] == 0 and cell["not_computed"].startswith("seed 0: training diverged")
    assert outcome["reason"] in (results / "README.md").read_text()
    # the shared cell was evaluated with its own sampler on the owner's checkpoint, never trained
    shared = results / "runs/embedded-div2k/ecdp-paper-but-ode_tolerance/seed0"
    assert (shared / "metrics.csv").exists() and not (shared / "train").exists()
    ev = yaml.safe_load((shared / "eval.yaml").read_text())
    assert ev["trained_as"] == "ecdp-hybrid-c1.0" and ev["sampler"]["atol"] == 1e-3
    assert "ecdp-hybrid-c1.0/seed0/train/final.pt" in json.loads((shared / "summary.json").read_text())["checkpoint"]
    assert (results / "runs/embedded-div2k/ecdp-hybrid-c1.0/seed0/train/val.jsonl").exists()
    assert (results / "runs/embedded-div2k/ecdp-hybrid-c1.0/seed0/run.yaml").exists()
    # the distilled student (issue 17): started from its teacher's stage state, which is also its teacher; 1 NFE
    student = results / "runs/embedded-div2k/ecdp-1step/seed0"
    run = yaml.safe_load((student / "run.yaml").read_text())
    assert run["distill"]["teacher"] == "results/runs/embedded-div2k/ecdp-hybrid-c1.0/seed0/train/stages/stage3.pt"
    assert json.loads((student / "train/provenance.json").read_text())["init_from"]["stages"] == 3
    assert pd.read_csv(student / "summary.csv")["nfe"].iloc[0] == 1
    rows = pd.read_csv(results / "tables" / "students.csv")
    assert rows["sampler"].str.startswith("student:ecdp-1step").any() and rows["accurate"].any()
    assert "student:ecdp-1step" in (results / "tables" / "samplers.md").read_text()


@pytest.mark.slow
def test_killed_run_resumes_without_redoing_finished_jobs(tiny_run):
    work, info = tiny_run
    assert info["mtimes"], "no training job had finished before the interrupt"
    for path, mtime in info["mtimes"].items():
        assert os.stat(path).st_mtime_ns == mtime, f"{path} was recomputed"
    # the second run did not run the jobs the first one finished
    for path in info["mtimes"]:
        rel = Path(path).relative_to(work)
        assert f"output: {rel}" not in info["second"], f"{rel} was trained again"
    assert "Rule: aggregate)" in info["second"]
    # nothing half-written anywhere
    assert not list((work / "results").rglob("*.part"))
    for csv in (work / "results").rglob("metrics.csv"):
        assert len(pd.read_csv(csv)) == (0 if "sr3-diverges" in str(csv) else 1)
    from ecdp.checkpoint import load_method

    for ck in (work / "results").rglob("final.pt"):
        load_method(ck)
    # and a third start has nothing left to do
    res = subprocess.run(info["args"] + ["-n"], capture_output=True, text=True, cwd=work, timeout=300, env=info["env"])
    assert "Nothing to be done" in res.stdout + res.stderr


@pytest.mark.slow
def test_until_train_then_full_run_reuses_training(tiny_run, tmp_path):
    """`--until train` stops after training; the next full run only evaluates."""
    work, info = tiny_run
    out = tmp_path / "results"
    base = yaml.safe_load(info["config"].read_text())
    base["results"] = str(out)
    base["studies"] = {"table1": {"dataset": "div2k", "variants": ["sr3"]}}
    base["data_root"] = str(work / "data")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(base))
    args = ["snakemake", "-s", str(SNAKEFILE), "-d", str(tmp_path), "--configfile", str(cfg), "--cores", "2"]
    first = subprocess.run(args + ["--until", "train"], capture_output=True, text=True, cwd=tmp_path, timeout=900,
                           env=info["env"])
    assert first.returncode == 0, first.stderr[-3000:]
    final = out / "runs/embedded-div2k/sr3/seed0/train/final.pt"
    mtime = final.stat().st_mtime_ns
    assert not (out / "runs/embedded-div2k/sr3/seed0/metrics.csv").exists()
    second = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, timeout=900, env=info["env"])
    assert second.returncode == 0, second.stderr[-3000:]
    assert final.stat().st_mtime_ns == mtime
    assert "Rule: train)" not in second.stdout + second.stderr
    assert (out / "runs/embedded-div2k/sr3/seed0/metrics.csv").exists()


@pytest.mark.slow
def test_snakemake_report(tiny_run):
    work, info = tiny_run
    res = subprocess.run(info["args"] + ["--report", str(work / "report.html")], capture_output=True, text=True, env=info["env"],
                         cwd=work, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    html = (work / "report.html").read_text(errors="replace")
    assert "table1" in html and "figure8" in html
