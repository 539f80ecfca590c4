"""The table builder on fixture metrics, the grid of the workflow configs, figures,
README and run metadata (``ecdp report``)."""
from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from ecdp import config as config_mod
from ecdp.model import DISCREPANCIES
from ecdp.report import cli as report_cli
from ecdp import grid as G
from ecdp.report import tables as T

ROOT = Path(__file__).resolve().parent.parent


def load_config(name: str) -> dict:
    return yaml.safe_load((ROOT / "config" / f"{name}.yaml").read_text())


# --------------------------------------------------------------------------- fixtures

def summary(dataset, variant, seed, lpips, psnr, ssim, method="ecdp", nfe=50.0, seconds=1.5, profile="embedded"):
    return {"method": method, "variant": variant, "dataset": dataset, "split": "test", "profile": profile,
            "seed": seed, "n_images": 3, "lpips": lpips, "psnr": psnr, "ssim": ssim, "lpips_std": 0.0,
            "psnr_std": 0.0, "ssim_std": 0.0, "nfe": nfe, "seconds_per_image": seconds, "device": "cpu (test)",
            "convention": "ecdp", "lpips_net": "alex", "sampler": "{}", "params": 1_234_567, "train_steps": 10,
            "git_commit": "abc", "checkpoint": "x", "checkpoint_sha256": "y", "provenance": {"seed": seed}}


def write_results(root: Path, rows: list[dict], crops: bool = False) -> Path:
    from ecdp.imageio import save_image
    import torch

    for r in rows:
        d = root / "runs" / r["dataset"] / r["variant"] / f"seed{r['seed']}"
        d.mkdir(parents=True, exist_ok=True)
        (d / "summary.json").write_text(json.dumps(r))
        if crops:
            g = torch.Generator().manual_seed(r["seed"])
            for kind in ("lr", "sr", "hr"):
                save_image(torch.rand(3, 16, 16, generator=g), d / "crops" / f"img_{kind}.png")
    return root


EMB = {"div2k": "embedded-div2k", "imagenet": "embedded-imagenet", "celeba": "embedded-celeba"}


@pytest.fixture
def runs() -> pd.DataFrame:
    rows = [
        summary("embedded-div2k", "ecdp-hybrid-c1.0", 0, 0.30, 24.0, 0.60),
        summary("embedded-div2k", "ecdp-hybrid-c1.0", 1, 0.34, 23.0, 0.62),
        summary("embedded-div2k", "sr3", 0, 0.50, 21.0, 0.65, method="sr3", nfe=100),
        summary("embedded-div2k", "ecdp-eps", 0, 0.40, 22.0, 0.50),
        summary("embedded-div2k", "ecdp-hybrid-c1.0-noquality", 0, 0.45, 22.5, 0.55),
        summary("embedded-div2k", "ecdp-official", 0, 0.31, 24.5, 0.61),
        summary("embedded-div2k", "ecdp-paper-but-ode_tolerance", 0, 0.32, 24.1, 0.60, nfe=30),
    ]
    return pd.DataFrame(rows)


def grid_context(**over) -> T.Context:
    planned = {
        "table1": {("embedded-div2k", v) for v in ("ecdp-hybrid-c1.0", "sr3", "srdiff")},
        "table5": {("embedded-div2k", v) for v in ("ecdp-hybrid-c1.0", "ecdp-eps", "ecdp-hybrid-c1.0-noquality")},
        "protocol": {("embedded-div2k", v) for v in ("ecdp-hybrid-c1.0", "ecdp-official",
                                                     "ecdp-paper-but-ode_tolerance", "ecdp-paper-but-sigma")},
    }
    ctx = T.Context("embedded", T.PROFILE_LABELS["embedded"], dict(EMB), planned,
                    {"celeba_blocks": "not in this profile: tiny nets"},
                    {"dataset": "div2k", "discrepancies": {"ode_tolerance": {}, "sigma": {}}}, [0, 1], True)
    ctx.paper_rows, ctx.labels = T.Context._variant_info(T._shipped_variants())   # config/default.yaml's
    for k, v in over.items():
        setattr(ctx, k, v)
    return ctx


def row(table: T.Table, method: str) -> dict:
    return next(r for r in table.rows if r["method"] == method)


# --------------------------------------------------------------------------- table builder

def test_table1_rows_values_and_reasons(runs):
    t = T.build_tables(runs, pd.DataFrame(), grid_context())["table1"]
    paper = T.paper_results()
    assert [r["method"] for r in t.rows] == list(paper[paper["table"] == 1]["method"])
    ecdp = row(t, "ECDP")
    assert ecdp["paper_lpips"] == pytest.approx(0.108) and ecdp["ours_lpips"] == pytest.approx(0.32)
    assert ecdp["ours_lpips_std"] == pytest.approx(np.std([0.30, 0.34], ddof=1)) and ecdp["n_seeds"] == 2
    assert ecdp["ours_params_m"] == pytest.approx(1.234567) and ecdp["note"] == ""
    # a planned cell without results, a floor this grid does not run, a method we never reimplemented
    srdiff, rrdb, esrgan, irsde = row(t, "SRDiff"), row(t, "RRDB"), row(t, "ESRGAN"), row(t, "IR-SDE")
    assert math.isnan(srdiff["ours_lpips"]) and srdiff["note"].startswith("no result")
    assert math.isnan(rrdb["ours_psnr"]) and rrdb["variant"] == "regression" and rrdb["note"] == "not in this profile"
    assert rrdb["paper_psnr"] == pytest.approx(29.44)
    assert math.isnan(esrgan["ours_psnr"]) and "not reimplemented: paper value only" in esrgan["note"]
    assert "IR-SDE not reimplemented" in irsde["note"]
    assert "embedded (small-scale smoke run, not comparable with the paper)" in t.caption


def test_missing_cells_stay_empty_in_every_format(runs):
    tables = T.build_tables(runs, pd.DataFrame(), grid_context())
    t2 = tables["table2"]   # nothing ran on ImageNet
    assert all(math.isnan(r["ours_lpips"]) for r in t2.rows)
    assert {r["note"] for r in t2.rows if r["variant"]} == {"not in this profile"}
    csv = pd.read_csv(pd.io.common.StringIO(T.to_csv(t2)))
    assert csv["ours_lpips"].isna().all() and csv["paper_lpips"].notna().all()
    md = T.to_markdown(t2)
    sr3_line = next(line for line in md.splitlines() if line.startswith("| SR3 |"))
    cells = [c.strip() for c in sr3_line.strip("|").split("|")]
    assert cells[1] == "0.191" and cells[2] == "" and cells[-1] == "not in this profile"
    tex = T.to_latex(t2)
    assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex
    for line in tex.splitlines():
        if line.endswith(r"\\"):
            assert line.count(" & ") == len(t2.display) - 1


def test_not_in_this_profile_vs_no_result(runs):
    ctx = grid_context()
    t5 = T.build_tables(runs, pd.DataFrame(), ctx)["table5"]
    assert row(t5, "ECDP x0-parametrization")["note"] == "not in this profile"
    assert row(t5, "ECDP eps-parametrization")["ours_psnr"] == pytest.approx(22.0)
    assert row(t5, "ECDP hybrid c=1.0 without L_quality")["l_quality"] == "no"
    assert row(t5, "ECDP hybrid c=0.5")["l_quality"] == "yes"
    # without a grid: whatever is missing has simply no result
    t5_free = T.build_tables(runs, pd.DataFrame(), T.Context.from_runs(runs))["table5"]
    assert row(t5_free, "ECDP x0-parametrization")["note"] == "no result found"


def test_bold_marks_best_diffusion_result_paper_and_ours(runs):
    t = T.build_tables(runs, pd.DataFrame(), grid_context())["table1"]
    md = T.to_markdown(t)
    ecdp = next(line for line in md.splitlines() if line.startswith("| ECDP (ours) |"))
    assert "**0.108**" in ecdp and "**28.03**" in ecdp and "**0.320 ± 0.028**" in ecdp
    sr3 = next(line for line in md.splitlines() if line.startswith("| SR3 |"))
    assert "**0.650**" in sr3          # our best SSIM is SR3's
    rrdb = next(line for line in md.splitlines() if line.startswith("| RRDB |"))
    assert "**" not in rrdb             # non-diffusion rows are never bold (as in the paper)
    srdiff = next(line for line in md.splitlines() if line.startswith("| SRDiff |"))
    assert "**0.79**" in srdiff         # a tie in the paper: both bold
    assert r"\textbf{0.108}" in T.to_latex(t)
    t5 = T.build_tables(runs, pd.DataFrame(), grid_context())["table5"]
    assert "**" not in T.to_markdown(t5).split("\n", 1)[1]   # the paper's Table 5 has no bold


def test_single_seed_has_no_spread(runs):
    one = runs[runs["seed"] == 0]
    t = T.build_tables(one, pd.DataFrame(), grid_context(seeds=[0]))["table1"]
    assert "±" not in T.to_markdown(t)
    assert row(t, "ECDP")["n_seeds"] == 1 and math.isnan(row(t, "ECDP")["ours_lpips_std"])


def test_timing_table(runs):
    timing = pd.DataFrame([
        {"dataset": "embedded-imagenet", "variant": "ecdp-hybrid-c1.0", "seconds_per_image": 1.25, "nfe": 62,
         "sampler": "ode-dopri5", "hr_size": "256x256", "repeats": 3, "device": "cpu (test)"},
        {"dataset": "embedded-imagenet", "variant": "sr3", "seconds_per_image": 9.5, "nfe": 100,
         "sampler": "ddpm-ancestral-100", "hr_size": "256x256", "repeats": 3, "device": "cpu (test)"},
    ])
    ctx = grid_context()
    ctx.planned["table3"] = {("embedded-imagenet", v) for v in ("ecdp-hybrid-c1.0", "sr3", "srdiff")}
    t3 = T.build_tables(runs, timing, ctx)["table3"]
    assert row(t3, "ECDP")["ours_seconds"] == pytest.approx(1.25) and row(t3, "ECDP")["nfe"] == 62
    assert row(t3, "ECDP")["paper_seconds"] == pytest.approx(2.0)
    assert row(t3, "SRDiff")["note"].startswith("no result")
    assert "not reimplemented" in row(t3, "GDP")["note"]
    md = T.to_markdown(t3)
    assert "**1.250**" in md and "**2.0s**" in md and "cpu (test)" in t3.caption


def test_protocol_table(runs):
    p = T.build_tables(runs, pd.DataFrame(), grid_context())["protocol"]
    settings = [r["setting"] for r in p.rows]
    assert settings[0].startswith("paper protocol") and settings[1].startswith("released code")
    assert len(p.rows) == 2 + len(DISCREPANCIES)
    assert p.rows[0]["paper_lpips"] == pytest.approx(0.108)       # the paper's own ECDP result
    assert math.isnan(p.rows[1]["paper_lpips"])
    tol = next(r for r in p.rows if "ode_tolerance" in r["setting"])
    assert tol["ours_psnr"] == pytest.approx(24.1) and tol["released_value"] == "0.001"
    assert tol["config_path"] == "sampler.atol,sampler.rtol"
    sigma = next(r for r in p.rows if "sigma" in r["setting"])
    assert sigma["note"].startswith("no result")                    # planned, not run
    blocks = next(r for r in p.rows if "celeba_blocks" in r["setting"])
    assert blocks["note"] == "not in this profile: tiny nets" and math.isnan(blocks["ours_lpips"])
    mu = next(r for r in p.rows if "mu_kernel" in r["setting"])
    assert mu["note"] == "not in this profile"                      # not listed in the config


def test_write_tables(runs, tmp_path):
    written = T.write_tables(T.build_tables(runs, pd.DataFrame(), grid_context()), tmp_path)
    names = {p.name for p in written}
    for t in ("table1", "table2", "table3", "table4", "table5", "table7", "protocol"):
        for ext in ("csv", "tex", "md"):
            assert f"{t}.{ext}" in names
    assert not list(tmp_path.glob("*.part"))


def test_tex_escape():
    assert T.tex_escape("a_b & 50% ± c") == r"a\_b \& 50\% $\pm$ c"


# --------------------------------------------------------------------------- the grid

def test_default_grid_shares_training_jobs():
    grid = G.Grid(load_config("default"), ROOT)
    main = grid.cell("embedded-div2k", G.MAIN_ECDP)
    assert {"table1", "table5", "table7", "figure8", "protocol"} <= set(main.studies)
    assert not main.shares_training and main.user["train"]["validate"]["every"] > 0
    tol = grid.cell("embedded-div2k", G.TOGGLE_PREFIX + "ode_tolerance")
    assert tol.trained_as == G.MAIN_ECDP and tol.eval_sampler["atol"] == 1e-3
    assert grid.checkpoint("results", tol, 0) == "results/runs/embedded-div2k/ecdp-hybrid-c1.0/seed0/train/final.pt"
    # every other cell trains: they all differ in what changes the weights
    keys = [G.training_key(c.run_config(0)) for c in grid.training_cells()]
    assert len(keys) == len(set(keys)) == len(grid.cells) - 1
    # the embedded tolerance is the protocol's (paper 1e-4, released 1e-3)
    assert main.run_config(0)["sampler"]["atol"] == 1e-4
    assert grid.cell("embedded-div2k", G.OFFICIAL).run_config(0)["sampler"]["atol"] == 1e-3
    assert grid.skipped == {"celeba_blocks": pytest.approx(grid.skipped["celeba_blocks"])}


def test_training_prefixes_are_shared_where_the_stages_train_alike():
    grid = G.Grid(load_config("default"), ROOT)
    starts = {c.variant: c.init_from for c in grid.cells.values() if c.init_from}
    assert starts == {"ecdp-hybrid-c1.0-noquality": (G.MAIN_ECDP, 2), "ecdp-noprobflow": (G.MAIN_ECDP, 2),
                      "ecdp-paper-but-quality_stage": (G.MAIN_ECDP, 2), "sr3pp": ("sr3", 1),
                      "srdiffpp": ("srdiff", 2), "ecdp-1step": (G.MAIN_ECDP, 3), "ecdp-2step": (G.MAIN_ECDP, 3)}
    main = grid.cell("embedded-div2k", G.MAIN_ECDP)
    assert {c.variant for c in grid.init_dependents(main)} == {"ecdp-hybrid-c1.0-noquality", "ecdp-noprobflow",
                                                              "ecdp-paper-but-quality_stage", "ecdp-1step",
                                                              "ecdp-2step"}
    assert grid.init_state("results", grid.cell("embedded-div2k", "sr3pp"), 1) == \
        "results/runs/embedded-div2k/sr3/seed1/train/stages/stage1.pt"
    # a base trains every seed its dependents need
    assert grid.training_seeds(main) == [0, 1, 2]
    # nothing else starts from another run: every other difference changes the first stages
    assert grid.cell("embedded-div2k", "ecdp-hybrid-c0.5").init_from is None
    assert grid.cell("embedded-imagenet", "sr3").init_from is None


def test_default_grid_variants():
    grid = G.Grid(load_config("default"), ROOT)
    cfg = lambda v, ds="embedded-div2k": grid.cell(ds, v).run_config(0)  # noqa: E731
    assert cfg("ecdp-hybrid-c0.5")["parametrization"] == {"kind": "hybrid", "c": 0.5, "heads": "both"}
    assert cfg("ecdp-eps")["parametrization"]["kind"] == "eps"
    assert [s["kind"] for s in cfg("ecdp-hybrid-c1.0-noquality")["train"]["stages"]] == ["pretrain", "score"]
    assert cfg("ecdp-noprobflow")["quality"]["sampler"]["name"] == "ddpm_chain"
    assert cfg("ecdp-noprobflow")["quality"]["sampler"]["steps"] == 100
    assert cfg("ecdp-paper-but-sigma")["sde"]["sigma"] == 0.2 and cfg("ecdp-paper-but-sigma")["protocol"] == "paper"
    q = cfg("ecdp-paper-but-quality_stage")["quality"]
    assert (q["mode"], q["init_from_ema"], q["ema_decay"]) == ("only", True, 0.9)   # the released stage, all of it
    assert q["sampler"]["name"] == "ode" and cfg("ecdp-paper-but-quality_stage")["protocol"] == "paper"
    assert cfg("ecdp-official")["quality"]["mode"] == "only"
    assert cfg("sr3")["method"] == "sr3" and cfg("sr3pp")["train"]["stages"][-1]["kind"] == "quality"
    assert cfg("ecdp-hybrid-c1.0", "embedded-celeba")["quality"]["weight"] == 1.0
    assert cfg("ecdp-hybrid-c1.0", "embedded-celeba")["data"]["dataset"] == "embedded-celeba"
    assert cfg("ecdp-hybrid-c1.0")["seed"] == 0 and grid.cell("embedded-div2k", "sr3").run_config(2)["seed"] == 2


def test_paper_grid():
    grid = G.Grid(load_config("paper"), ROOT)
    assert grid.profile == "paper"
    names = {c.dataset for c in grid.cells.values()}
    assert names == {"div2k", "imagenet", "celeba"}
    ecdp = {ds: grid.cell(ds, G.MAIN_ECDP).run_config(0) for ds in names}
    assert ecdp["div2k"]["model"]["rrdb_blocks"] == 23 and ecdp["imagenet"]["model"]["rrdb_blocks"] == 16
    assert ecdp["celeba"]["model"]["blocks"] == [3, 3, 3, 3] and ecdp["celeba"]["quality"]["weight"] == 1.0
    assert ecdp["div2k"]["sampler"]["atol"] == 1e-4
    blocks = grid.cell("celeba", G.TOGGLE_PREFIX + "celeba_blocks").run_config(0)
    assert blocks["model"]["blocks"] == [2, 2, 2, 2]
    assert grid.cell("div2k", G.TOGGLE_PREFIX + "ode_tolerance").trained_as == G.MAIN_ECDP
    assert not grid.skipped


def test_discrepancy_overrides():
    assert G.discrepancy_overrides("ode_tolerance") == {"sampler": {"atol": 1e-3, "rtol": 1e-3}}
    assert G.discrepancy_overrides("celeba_blocks") == {"model": {"blocks": [2, 2, 2, 2]}}


def test_grid_errors():
    cfg = load_config("test")
    cfg["studies"]["table1"]["variants"].append("no-such-variant")
    with pytest.raises(ValueError, match="no-such-variant"):
        G.Grid(cfg, ROOT)
    cfg = load_config("test")
    grid = G.Grid(cfg, ROOT)
    with pytest.raises(KeyError, match="not a cell"):
        grid.cell("embedded-div2k", "ecdp-x0")


def test_clean_stale_training(tmp_path, tiny_data):
    from ecdp import checkpoint as ckpt

    from helpers import tiny_config

    cfg = tiny_config(tiny_data)
    run = tmp_path / "run.yaml"
    run.write_text(yaml.safe_dump(cfg))
    train = tmp_path / "train"
    train.mkdir()
    ckpt.save({"config": cfg}, train / "checkpoint.pt")
    (train / "log.jsonl").write_text("{}\n")
    assert not G.clean_stale_training(run, train, log=lambda *a: None)
    assert (train / "checkpoint.pt").exists()
    run.write_text(yaml.safe_dump(config_mod.deep_merge(cfg, {"seed": 7})))
    assert G.clean_stale_training(run, train, log=lambda *a: None)
    assert not (train / "checkpoint.pt").exists() and not (train / "log.jsonl").exists()


# --------------------------------------------------------------------------- ecdp report

def test_report_end_to_end(runs, tmp_path):
    results = write_results(tmp_path / "results", runs.to_dict("records"), crops=True)
    val = results / "runs/embedded-div2k/ecdp-hybrid-c1.0/seed0/train/val.jsonl"
    val.parent.mkdir(parents=True)
    val.write_text("\n".join(json.dumps({"step": s, "stage": "score", "lpips": 0.5 - s / 1000}) for s in (10, 20)))
    eps_val = results / "runs/embedded-div2k/ecdp-eps/seed0/train/val.jsonl"
    eps_val.parent.mkdir(parents=True)
    eps_val.write_text(json.dumps({"step": 10, "stage": "score", "lpips": 0.6}))
    bench = results / "logs/benchmarks/train"
    bench.mkdir(parents=True)
    now = time.time()
    for i, s in enumerate((10.0, 20.0)):
        f = bench / f"job{i}.tsv"
        f.write_text(f"s\th:m:s\tmax_rss\n{s}\t0:00:{int(s)}\t100\n")
        os.utime(f, (now - 100 + 30 * i, now - 100 + 30 * i))
    (results / "samplers/embedded-div2k/ecdp-hybrid-c1.0").mkdir(parents=True)
    pd.DataFrame([{"sampler": "dpmpp_2m-5", "nfe": 5, "lpips": 0.4, "psnr": 20, "ssim": 0.5},
                  {"sampler": "dpmpp_2m-10", "nfe": 10, "lpips": 0.35, "psnr": 21, "ssim": 0.5}]).to_csv(
        results / "samplers/embedded-div2k/ecdp-hybrid-c1.0/seed0.csv", index=False)
    (results / "samplers/embedded-div2k/ecdp-hybrid-c1.0/per_image_seed0.csv").write_text("not a study\n")
    wf = tmp_path / "wf.yaml"
    wf.write_text(yaml.safe_dump(load_config("default")))
    out = report_cli.report(results, workflow_config=wf, benchmarks_dir=results / "logs/benchmarks",
                            base_dir=ROOT, log=lambda *a: None)
    assert len(out["tables"]) == 30  # 7 paper tables + the sampler study + the claims + the students (empty here), 3 formats each
    claims = pd.read_csv(results / "tables/claims.csv")
    assert set(claims["verdict"]) <= {"holds", "contradicted", "inconclusive"} and len(claims) >= 20
    assert "Sampler study" in (results / "tables/samplers.md").read_text()
    figs = {p.name for p in out["figures"]}
    assert {"figure8.png", "lpips_vs_seconds.png", "lpips_vs_nfe.png", "grid_embedded-div2k.png"} <= figs
    meta = json.loads((results / "run_metadata.json").read_text())
    assert meta["profile"] == "embedded" and meta["seeds"] == [0, 1, 2]
    assert meta["benchmarks"]["jobs"] == 2 and meta["wall_time_s"] == pytest.approx(40.0, abs=1.0)
    assert meta["benchmarks"]["job_seconds_total"] == pytest.approx(30.0)
    shutil.rmtree(results / "logs/benchmarks")   # a fresh clone's committed results: the earlier wall time stays
    report_cli.report(results, workflow_config=wf, benchmarks_dir=results / "logs/benchmarks",
                      base_dir=ROOT, log=lambda *a: None)
    kept = json.loads((results / "run_metadata.json").read_text())
    assert kept["wall_time_s"] == meta["wall_time_s"] and kept["benchmarks"]["kept_from_report_of_utc"]
    for key in ("git_commit", "versions", "devices", "cells", "hardware_of_report"):
        assert key in meta
    readme = (results / "README.md").read_text()
    assert "tables/table1.md" in readme and "figures/figure8.png" in readme and "claims at this scale" in readme
    assert "embedded (small-scale smoke run" in readme and "Planned cells without results" in readme
    t1 = (results / "tables/table1.md").read_text()
    assert "not reimplemented: paper value only" in t1 and "embedded (small-scale smoke run" in t1


def test_sampler_table_marks_target_against_reference():
    base = {"psnr": 25.0, "ssim": 0.7, "n_images": 3, "device": "cpu", "convention": "ecdp"}
    study = pd.DataFrame([
        {"sampler": "ode-dopri5-tol1e-04", "nfe": 80, "seconds_per_image": 2.0, "lpips": 0.300, "solver_rmse": 0.5,
         "accurate": False, **base},
        {"sampler": "ode-dopri5-tol1e-06", "nfe": 300, "seconds_per_image": 8.0, "lpips": 0.305, "solver_rmse": 0.0,
         "accurate": True, **base},
        {"sampler": "dpmpp_2m-20", "nfe": 20, "seconds_per_image": 0.5, "lpips": 0.3015, "solver_rmse": 0.6,
         "accurate": False, **base},
        {"sampler": "dpmpp_2m-5", "nfe": 5, "seconds_per_image": 0.1, "lpips": 0.310, "solver_rmse": 0.4,
         "accurate": False, **base},
        {"sampler": "heun-20", "nfe": 40, "seconds_per_image": 1.0, "lpips": 0.300, "solver_rmse": 0.1,
         "accurate": False, **base},
    ])
    t = T.sampler_table(study, grid_context(), source="embedded-div2k")
    # LPIPS target: 20 steps only (5 steps: LPIPS too far; heun: 1/2 the NFE; the accurate row: 3.75x the NFE)
    assert [r["meets_target"] for r in t.rows] == [False, False, True, False, False]
    # error target: 5 steps only (20 steps: error above the reference's 0.5; heun: too many NFE)
    assert [r["meets_error_target"] for r in t.rows] == [False, False, False, True, False]
    assert t.rows[2]["nfe_vs_ref"] == pytest.approx(0.25) and t.rows[3]["lpips_minus_ref"] == pytest.approx(0.01)
    md = T.to_markdown(t)
    assert "(reference)" in md and "(accurate)" in md and "3 test image(s)" in md
    assert md.count("✓") == 4  # the caption's two legends and the two rows that meet them
    assert "\\checkmark" in T.to_latex(t)
    old = study.drop(columns=["solver_rmse", "accurate"])  # a study without an accurate row: no error marks
    assert not any(r["meets_error_target"] or r["accurate"] for r in T.sampler_table(old, grid_context()).rows)


def test_report_cli_without_grid(runs, tmp_path, capsys):
    from ecdp.cli import main

    results = write_results(tmp_path / "results", runs.to_dict("records"))
    assert main(["report", "--results", str(results)]) == 0
    assert (results / "tables" / "protocol.tex").exists() and (results / "README.md").exists()
    assert "report:" in capsys.readouterr().out
    assert main(["report", "--results", str(tmp_path / "nope")]) == 2



def test_workflow_config_written_as_json_reads_back_with_numbers(tmp_path):
    """The aggregate job writes the config as one JSON line; JSON's 5e-05 must come back a
    number (YAML 1.1 would read it as a string and the stage check would fail)."""
    cfg = yaml.safe_load((Path(__file__).parent.parent / "config" / "default.yaml").read_text())
    path = tmp_path / "workflow_config.yaml"
    path.write_text(json.dumps(cfg) + "\n")
    back = G.load_workflow_config(path)
    assert back == cfg
    grid = G.Grid(back, Path(__file__).parent.parent)
    assert grid.cell("embedded-div2k", "ecdp-hybrid-c1.0").run_config(0)["train"]["stages"][2]["lr"] == 5e-05
