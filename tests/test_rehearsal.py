"""The paper rehearsal (issue 13): config/rehearsal.yaml is config/paper.yaml with only
the listed keys changed, it validates and its dry run has every rule of the paper DAG;
(slow) the reduced rehearsal (workflow/scripts/rehearse.py --reduced: DIV2K, every rule
kind) runs in a fresh folder and its report says every rule ran and nothing failed."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "workflow" / "scripts" / "rehearse.py"

#: the only keys (dotted paths; a path covers everything below it) where the rehearsal
#: config may differ from the paper config, each with a REHEARSAL comment there
CHANGED = {
    "profile", "profile_label", "device", "data_root", "data_sources", "fixture_archives", "results", "weights.offline",
    "resources.gpu", "resources.threads", "resources.mem_mb", "resources.runtime", "evaluation.limit",
    "datasets.div2k.set.data", "datasets.imagenet.prepare_args", "datasets.imagenet.set.data",
    "datasets.celeba.set.data",
    "methods.ecdp.set.train", "methods.ecdp.datasets.imagenet.train.stages", "methods.ecdp.datasets.celeba.train.stages",
    "methods.sr3.set.sampler.steps", "methods.sr3.set.train.log_every", "methods.sr3.set.train.stages",
    "methods.sr3.datasets.imagenet.model.arch",
    "methods.sr3pp.set.sampler.steps", "methods.sr3pp.set.quality.sampler.steps", "methods.sr3pp.set.train.log_every",
    "methods.sr3pp.set.train.stages",
    "methods.srdiff.set.sampler.steps", "methods.srdiff.set.train.log_every", "methods.srdiff.set.train.stages",
    "methods.srdiffpp.set.sampler.steps", "methods.srdiffpp.set.quality.sampler.steps",
    "methods.srdiffpp.set.train.log_every", "methods.srdiffpp.set.train.stages",
    "methods.regression.set.train",
    "studies.table3.hr_size", "studies.table3.repeats", "studies.table3.warmup",
    "studies.figure8.validate", "studies.samplers.limit", "studies.samplers.lr_crop",
    "variants.ecdp-1step.add_stages", "variants.ecdp-2step.add_stages",
}


def load(name: str) -> dict:
    return yaml.safe_load((ROOT / "config" / f"{name}.yaml").read_text())


def differences(a, b, path: str = "") -> list[str]:
    """Dotted paths where ``a`` and ``b`` differ (down to the first non-dict)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b), key=str)
                for d in differences(a.get(k), b.get(k), f"{path}.{k}" if path else str(k))]
    return [] if a == b else [path]


def rehearse_module():
    spec = importlib.util.spec_from_file_location("rehearse", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_rehearsal_config_is_the_paper_config_but_sizes():
    diff = differences(load("paper"), load("rehearsal"))
    assert diff, "no difference at all"
    outside = [d for d in diff if not any(d == c or d.startswith(c + ".") for c in CHANGED)]
    assert not outside, f"changed without being listed (and commented) as a rehearsal change: {outside}"
    text = (ROOT / "config" / "rehearsal.yaml").read_text()
    assert text.count("REHEARSAL") >= 30
    # what must stay the paper's: architectures, samplers and tolerances, stage sequences
    reh = load("rehearsal")
    assert reh["methods"]["ecdp"]["set"]["model"]["arch"] == "div2k"
    assert reh["methods"]["sr3"]["set"]["model"]["arch"] == "sr3-div2k"
    assert reh["methods"]["srdiff"]["set"]["model"]["arch"] == "srdiff-div2k"
    assert reh["studies"]["samplers"]["samplers"] == load("paper")["studies"]["samplers"]["samplers"]
    kinds = [s["kind"] for s in reh["methods"]["ecdp"]["set"]["train"]["stages"]]
    assert kinds == ["pretrain", "score", "quality"]


@pytest.mark.parametrize("reduced", [False, True])
def test_rehearsal_config_validates(reduced):
    import jsonschema

    from ecdp.grid import Grid, check_paths

    cfg = load("rehearsal")
    if reduced:
        cfg = rehearse_module().reduce_config(cfg)
    jsonschema.validate(cfg, yaml.safe_load((ROOT / "config" / "schema.yaml").read_text()))
    check_paths(cfg)
    assert Grid(cfg, ROOT).cells
    assert not cfg["results"].startswith("results/run") and cfg["results"].startswith("results/rehearsal")
    assert cfg["data_root"] not in ("data", "data/")


def test_reduce_config_keeps_every_rule_kind():
    mod = rehearse_module()
    cfg = mod.reduce_config(load("rehearsal"))
    assert list(cfg["datasets"]) == ["div2k"]
    exp = mod.expected_rules(cfg)
    assert all(exp[r] >= 1 for r in mod.PAPER_RULES), exp
    assert exp["prepare_dataset"] == 1
    for c in cfg["claims"]:
        assert set(c.get("datasets", [c.get("dataset")])) == {"div2k"}


def test_narrow_claim():
    mod = rehearse_module()
    claim = {"id": "x", "text": "t", "datasets": ["div2k", "celeba"], "as": ["a", "b"], "b": "c"}
    assert mod.narrow_claim(claim, {"div2k"}, {"a", "c"}) == {**claim, "datasets": ["div2k"], "as": ["a"]}
    assert mod.narrow_claim(claim, {"div2k"}, {"a"}) is None
    assert mod.narrow_claim({"id": "y", "text": "t", "dataset": "imagenet", "a": "a", "b": "c"}, {"div2k"}, {"a", "c"}) is None


def test_rule_counts_and_benchmarks(tmp_path):
    mod = rehearse_module()
    log = ("Finished jobid: 3 (Rule: train)\nFinished jobid: 4 (Rule: train)\nFinished jobid: 1 (Rule: aggregate)\n"
           "Error in rule evaluate:\n")
    assert mod.rule_counts(log) == ({"train": 2, "aggregate": 1}, {"evaluate": 1})
    d = tmp_path / "train" / "div2k" / "ecdp"
    d.mkdir(parents=True)
    (d / "seed0.tsv").write_text("s\th:m:s\tmax_rss\tmax_vms\n12.5\t0:00:12\t800.25\t900\n")
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "fetch.tsv").write_text("s\th:m:s\tmax_rss\tmax_vms\n1.0\t0:00:01\tNA\t-\n")
    rows = mod.read_benchmarks(tmp_path)
    assert rows == [{"rule": "train", "job": "div2k/ecdp/seed0", "seconds": 12.5, "max_rss_mb": 800.25},
                    {"rule": "fetch_weights", "job": "fetch", "seconds": 1.0, "max_rss_mb": None}]
    agg = mod.per_rule(rows)
    assert agg["train"] == {"jobs": 1, "seconds": 12.5, "max_seconds": 12.5, "peak_rss_mb": 800.25}
    assert agg["fetch_weights"]["peak_rss_mb"] is None


@pytest.mark.slow   # > 5 s: CI runs it (.ci/run), the fast suite stays under 3 min
def test_dry_run_lists_every_rule_of_the_paper_dag(tmp_path):
    from test_workflow import dry_run

    if shutil.which("snakemake") is None:
        pytest.skip("snakemake is not installed")
    out, counts = dry_run(tmp_path, "-p", "--configfile", str(ROOT / "config" / "rehearsal.yaml"))
    paper = dry_run(tmp_path, "--configfile", str(ROOT / "config" / "paper.yaml"))[1]
    # the paper DAG, and before it the rehearsal's own rule: the fixture archives and their sources file
    assert counts.pop("fixture_archives") == 1 and counts["total"] == paper["total"] + 1
    counts["total"] -= 1
    assert counts == paper, "the rehearsal DAG is the paper DAG"
    assert "fixture_archives" not in paper
    for rule in rehearse_module().PAPER_RULES:
        assert counts.get(rule, 0) >= 1, rule
    assert "--device cpu" in out and "gpu=" not in out and "--sources data-rehearsal/_sources/sources.json" in out
    assert "results/rehearsal/run/tables/table1.md" in out and " data/" not in out
    # every prepare_dataset job waits for the sources file the fixture rule writes
    jobs = re.split(r"\n(?=\S*rule \w+:)", out)
    fixture = [j for j in jobs if re.match(r"\S*rule fixture_archives:", j)]
    assert len(fixture) == 1 and "output: data-rehearsal/_sources/sources.json" in fixture[0]
    prepare = [j for j in jobs if re.match(r"\S*rule prepare_dataset:", j)]
    assert len(prepare) == 3 and all("input: data-rehearsal/_sources/sources.json" in j for j in prepare)


@pytest.mark.slow
def test_rehearsal_prepares_its_datasets_from_a_fresh_folder(tmp_path):
    """``snakemake --configfile config/rehearsal.yaml`` alone, in an empty folder, as far as
    the prepared datasets: the fixture rule writes the archives and their file:// sources,
    and the real ``ecdp data prepare`` verifies and prepares DIV2K, ImageNet and CelebA."""
    from test_workflow import snakemake

    if shutil.which("snakemake") is None:
        pytest.skip("snakemake is not installed")
    targets = [f"data-rehearsal/{d}/.complete" for d in ("div2k", "imagenet", "celeba")]
    res = snakemake(tmp_path, "--cores", "2", *targets, "--configfile", str(ROOT / "config" / "rehearsal.yaml"))
    assert "Finished jobid" in res.stdout + res.stderr
    sources = json.loads((tmp_path / "data-rehearsal/_sources/sources.json").read_text())
    assert sources["base_url"] == (tmp_path / "data-rehearsal/_sources").resolve().as_uri() + "/"
    assert {"DIV2K_train_HR.zip", "Flickr2K.tar", "img_align_celeba.zip", "ILSVRC2012_img_val.tar"} <= set(sources["files"])
    for d in ("div2k", "imagenet", "celeba"):
        meta = json.loads((tmp_path / "data-rehearsal" / d / "meta.json").read_text())
        assert meta["counts"]["train"] > 0 and meta["counts"]["test"] > 0, d
        urls = [s["url"] for s in meta["sources"] if "url" in s]
        assert all(u.startswith(sources["base_url"]) for u in urls), (d, urls)
    assert (tmp_path / "results/rehearsal/run/logs/benchmarks/fixtures/archives.tsv").exists()


@pytest.mark.slow
def test_reduced_rehearsal_runs_every_rule(tmp_path, weights_dir):
    """workflow/scripts/rehearse.py --reduced in a fresh folder: every rule of the paper
    DAG ran (counts as the grid says), every training stage kind, no failure, a report."""
    if shutil.which("snakemake") is None:
        pytest.skip("snakemake is not installed")
    env = {**os.environ, "ECDP_WEIGHTS_DIR": str(weights_dir),
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    res = subprocess.run([sys.executable, str(SCRIPT), "--reduced", "--workdir", str(tmp_path), "--cores", "2"],
                         capture_output=True, text=True, cwd=tmp_path, env=env, timeout=3000)
    out = tmp_path / "results" / "rehearsal-reduced"
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:] + (out / "snakemake.log").read_text()[-3000:]
    rep = json.loads((out / "rehearsal.json").read_text())
    assert rep["problems"] == [] and rep["failed"] == {} and rep["snakemake_rc"] == 0
    mod = rehearse_module()
    for rule in mod.REHEARSAL_RULES + mod.PAPER_RULES:
        assert rep["ran"].get(rule, 0) == rep["expected"][rule] >= 1, rule
    kinds = {s["kind"] for r in rep["training"] for s in r["stages"].values()}
    assert kinds >= {"pretrain", "score", "quality", "distill"}
    ecdp = next(r for r in rep["training"] if r["run"].startswith("div2k/ecdp-hybrid-c1.0"))
    assert 42e6 < ecdp["params"] < 43.5e6   # Table 6: 42.6M
    assert all(s["seconds_per_step"] > 0 for s in ecdp["stages"].values())
    assert all(e["device"].startswith("cpu") for e in rep["evaluations"])
    assert any(e["seconds_per_nfe"] for e in rep["evaluations"])
    assert all(r["peak_rss_mb"] for k, r in rep["per_rule"].items() if k != "fetch_weights")
    fwd = {f["arch"]: f for f in rep["forward_checks"]}
    assert 630e6 < fwd["sr3-imagenet"]["params"] < 640e6 and fwd["sr3-imagenet"]["finite"]
    text = (out / "REPORT.md").read_text()
    assert "all jobs succeeded" in text and "sr3-imagenet" in text and rep["git_commit"][:12] in text
    assert (out / "report.html").stat().st_size > 0
    assert (out / "run" / "tables" / "table1.md").exists() and not (tmp_path / "results" / "tables").exists()


def test_fresh_paths_stay_inside_the_working_directory(tmp_path):
    mod = rehearse_module()
    cfg = mod.reduce_config(load("rehearsal"))
    paths = mod.fresh_paths(tmp_path, cfg)
    assert tmp_path / "results/rehearsal/run" in paths and tmp_path / "data-rehearsal/div2k" in paths
    # the fixture archives and their sources file: the rule rebuilds them, so that it runs too
    assert tmp_path / "data-rehearsal/_sources" in paths and tmp_path / "data-rehearsal/_sources/sources.json" in paths
    with pytest.raises(ValueError, match="not inside the working directory"):
        mod.fresh_paths(tmp_path, {**cfg, "results": "/elsewhere"})


def test_check_report_names_every_problem():
    mod = rehearse_module()
    rep = {"failed": {"evaluate": 1}, "expected": {"train": 2, "evaluate": 1, "time_table3": 0},
           "ran": {"train": 2}, "snakemake_rc": 1, "forward_checks": [{"arch": "sr3-imagenet", "error": "oom"}],
           "training": [{"stages": {"pretrain": {"kind": "pretrain"}, "score": {"kind": "score"}}}]}
    assert mod.check_report(rep) == ["rule evaluate: 1 job(s) failed", "rule evaluate: ran 0 of 1 job(s)",
                                     "no training stage of kind quality ran", "no training stage of kind distill ran",
                                     "forward check of sr3-imagenet failed: oom",
                                     "snakemake exited with status 1"]
    ok = {**rep, "failed": {}, "ran": {"train": 2, "evaluate": 1}, "snakemake_rc": 0, "forward_checks": [],
          "training": [{"stages": {k: {"kind": k} for k in mod.STAGE_KINDS}}]}
    assert mod.check_report(ok) == []


def test_resume_needs_the_config_it_started_with(tmp_path, capsys):
    """--resume goes on with an interrupted rehearsal only: a missing or different config
    is a one-line error, and nothing in OUT is removed."""
    mod = rehearse_module()
    out = tmp_path / "results/rehearsal"
    out.mkdir(parents=True)
    (out / "keep.txt").write_text("x")
    with pytest.raises(SystemExit) as e:
        mod.main(["--resume", "--workdir", str(tmp_path)])
    assert e.value.code == 2 and "is missing or is not this rehearsal's config" in capsys.readouterr().err
    (out / "rehearsal.yaml").write_text("seeds: [0]\n")
    with pytest.raises(SystemExit):
        mod.main(["--resume", "--workdir", str(tmp_path)])
    assert (out / "keep.txt").exists()
    inv = [{"started": "2026-12-03 14:45:00", "git_commit": "abc", "resume": False, "snakemake_s": 10.0},
           {"started": "2026-12-04 09:00:00", "git_commit": "def", "resume": True, "snakemake_s": 5.0}]
    text = mod._resumed({"invocations": inv})
    assert "2 invocations" in text and "`abc` (10.0 s)" in text and "`def` (5.0 s)" in text
    assert mod._resumed({"invocations": inv[:1]}) == ""
