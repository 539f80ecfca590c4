"""The informative embedded benchmark (issue 12): floors, convergence, claims with
intervals and verdicts, per-study seeds, hardware provenance."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from baselines.floors import Bicubic, Regression
from ecdp import config as C
from ecdp.imresize import bicubic_upsample
from ecdp.report import claims as K
from ecdp.report import figures as F
from ecdp.report import tables as T
from ecdp.grid import Grid

REPO = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- floors

def test_bicubic_floor_is_mu_and_has_nothing_to_train():
    cfg = C.resolve({"method": "bicubic"})
    assert cfg["train"]["stages"] == []
    C.check_stages(cfg)   # an empty stage list is right for a method without stage kinds
    m = Bicubic(cfg, {"scale": 4})
    lr = torch.rand(1, 3, 8, 8)
    sr, stats = m.super_resolve(lr)
    assert torch.equal(sr, bicubic_upsample(lr, 4, "matlab").clamp(0, 1)) and stats["nfe"] == 0
    assert m.parameter_count() == 0
    with pytest.raises(ValueError, match="nothing to train"):
        C.check_stages(C.resolve({"method": "bicubic", "train": {
            "stages": [{"name": "s", "kind": "score", "steps": 1, "batch": 1, "lr": 1e-3}]}}))
    with pytest.raises(ValueError, match="no sampler options"):
        m.super_resolve(lr, steps=3)


def test_bicubic_trains_to_a_final_checkpoint(tiny_data, tmp_path):
    from ecdp.checkpoint import load_method
    from ecdp.training import train

    cfg = C.resolve({"method": "bicubic", "data": {"dataset": "tiny4x", "root": str(tiny_data)}})
    final = train(cfg, tmp_path / "run")
    model, _ = load_method(final)
    lr = torch.rand(1, 3, 8, 8)
    assert torch.equal(model.super_resolve(lr)[0], bicubic_upsample(lr, model.scale).clamp(0, 1))


def test_regression_floor_is_ecdps_pretraining_network_and_learns():
    from ecdp.model import ECDP

    user = {"model": {"rrdb_blocks": 1, "nf": 8, "gc": 4}}
    reg = Regression(C.resolve({"method": "regression", **user}), {"scale": 4})
    ecdp = ECDP(C.resolve({"method": "ecdp", "model": {"arch": "custom", "channels": [8, 8], "blocks": [1, 1],
                                                        **user["model"]}}), {"scale": 4, "sigma2": 0.01})
    assert reg.parameter_count() == sum(p.numel() for p in ecdp.rrdb.parameters())   # the same network
    torch.manual_seed(0)
    hr = torch.rand(4, 3, 16, 16)
    lr = torch.nn.functional.avg_pool2d(hr, 4)
    opt = torch.optim.Adam(reg.parameters(), 1e-2)
    first = None
    for _ in range(30):
        loss = reg.training_losses(hr, lr)["l1"]
        first = first if first is not None else float(loss.detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.5 * first
    sr, stats = reg.super_resolve(lr)
    assert sr.shape == hr.shape and stats["nfe"] == 1 and 0 <= float(sr.min()) and float(sr.max()) <= 1


# --------------------------------------------------------------------------- convergence

STAGES = [{"name": "pretrain", "steps": 100}, {"name": "score", "steps": 400}]


def _val(values, start=100, every=100):
    return [{"step": start + every * (i + 1), "stage": "score", "lpips": v} for i, v in enumerate(values)]


def test_plateau_measures_the_last_quarter_of_the_validated_stage():
    # score stage: steps 100..500; three quarters at 400 -> L(400) vs L(500)
    flat = K.plateau(_val([0.5, 0.4, 0.30, 0.295]), STAGES)
    assert flat["converged"] and flat["step_q"] == 400 and flat["step_end"] == 500
    assert flat["moved"] == pytest.approx((0.30 - 0.295) / 0.30)
    moving = K.plateau(_val([0.5, 0.4, 0.30, 0.25]), STAGES)
    assert moving["converged"] is False and moving["moved"] == pytest.approx(1 / 6)
    worse = K.plateau(_val([0.5, 0.4, 0.30, 0.35]), STAGES)   # got worse: no more improvement
    assert worse["converged"] and worse["moved"] < 0
    assert K.plateau([], STAGES)["converged"] is None
    assert K.plateau(_val([0.3]), STAGES)["converged"] is None


def test_convergence_summary_counts_seeds_and_never_hides_a_cell():
    conv = pd.DataFrame([
        {"dataset": "d", "variant": "a", "seed": 0, "converged": True, "moved": 0.01},
        {"dataset": "d", "variant": "a", "seed": 1, "converged": False, "moved": 0.08},
        {"dataset": "d", "variant": "b", "seed": 0, "converged": True, "moved": -0.02},
        {"dataset": "d", "variant": "bic", "seed": 0, "converged": None, "moved": math.nan, "reason": "nothing trained"},
    ])
    s = K.convergence_summary(conv)
    assert s[("d", "a")] == {"text": "1/2 seeds (max +8.0 %)", "converged": False}
    assert s[("d", "b")] == {"text": "yes (-2.0 %)", "converged": True}
    assert s[("d", "bic")] == {"text": "n/a (nothing trained)", "converged": None}


# --------------------------------------------------------------------------- verdicts

@pytest.mark.parametrize("lo,hi,metric,test,margin,expected", [
    (-0.05, -0.01, "lpips", "better", 0, "holds"),
    (0.01, 0.05, "lpips", "better", 0, "contradicted"),
    (-0.01, 0.01, "lpips", "better", 0, "inconclusive"),
    (0.5, 1.0, "psnr", "better", 0, "holds"),          # higher PSNR is better for A
    (-1.0, -0.5, "psnr", "better", 0, "contradicted"),
    (-0.01, 0.004, "lpips", "no_worse", 0.005, "holds"),
    (0.006, 0.02, "lpips", "no_worse", 0.005, "contradicted"),
    (0.001, 0.008, "lpips", "no_worse", 0.005, "inconclusive"),
    (math.nan, math.nan, "lpips", "better", 0, "inconclusive"),
])
def test_verdict_is_computed_from_the_interval(lo, hi, metric, test, margin, expected):
    assert K.verdict(lo, hi, metric, test, margin) == expected


def test_bootstrap_interval_is_deterministic_and_covers_the_mean():
    x = np.random.default_rng(1).normal(0.2, 0.1, 30)
    lo, hi = K.bootstrap_interval(x)
    assert (lo, hi) == K.bootstrap_interval(x) and lo < x.mean() < hi
    assert K.bootstrap_interval(np.full(9, -0.1)) == pytest.approx((-0.1, -0.1))


def test_expand_makes_one_row_per_combination():
    rows = K.expand([{"id": "x", "text": "t", "datasets": ["d1", "d2"], "a": "e", "bs": ["s1", "s2"],
                      "metrics": ["lpips", "psnr"]}, {"id": "y", "text": "u", "dataset": "d1", "a": "e", "b": "s"}])
    assert len(rows) == 9
    assert rows[0]["id"] == "x/d1/s1/lpips" and rows[-1]["id"] == "y" and rows[-1]["metric"] == "lpips"


# --------------------------------------------------------------------------- claims on a results folder

def _write_cell(results: Path, ds: str, variant: str, values: dict[int, list[float]], metric="lpips"):
    for seed, vals in values.items():
        d = results / "runs" / ds / variant / f"seed{seed}"
        d.mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"image": [f"im{i}" for i in range(len(vals))], metric: vals}).to_csv(d / "metrics.csv", index=False)


def _ctx():
    return T.Context(profile="t", datasets={"div2k": "embedded-div2k"}, labels={"a": "A", "b": "B"})


def test_claims_pair_images_and_seeds_and_give_verdicts(tmp_path):
    rng = np.random.default_rng(0)
    base = {s: list(rng.uniform(0.3, 0.5, 3)) for s in (0, 1, 2)}
    _write_cell(tmp_path, "embedded-div2k", "b", base)
    _write_cell(tmp_path, "embedded-div2k", "a", {s: [v - 0.05 for v in vals] for s, vals in base.items()})
    _write_cell(tmp_path, "embedded-div2k", "c", {s: [v + 0.05 for v in vals] for s, vals in base.items()})
    _write_cell(tmp_path, "embedded-div2k", "one", {0: [0.1, 0.1, 0.1]})
    claims = [{"id": "ab", "text": "a below b", "dataset": "div2k", "a": "a", "b": "b"},
              {"id": "cb", "text": "c below b", "dataset": "div2k", "a": "c", "b": "b"},
              {"id": "missing", "text": "x below b", "dataset": "div2k", "a": "x", "b": "b"},
              {"id": "few", "text": "one below b", "dataset": "div2k", "a": "one", "b": "b"}]
    df = K.test_claims(tmp_path, claims, _ctx(), conv={("embedded-div2k", "c"): {"text": "no (+9.0 %)",
                                                                                  "converged": False}})
    got = df.set_index("id")
    assert got.loc["ab", "verdict"] == "holds" and got.loc["ab", "n"] == 9
    assert got.loc["ab", "diff"] == pytest.approx(-0.05) and got.loc["ab", "a"] == "A"
    assert "3 images x 3 seeds" in got.loc["ab", "interval"]
    assert got.loc["cb", "verdict"] == "contradicted" and "not converged" in got.loc["cb", "note"]
    assert got.loc["missing", "verdict"] == "inconclusive" and "no result for x" in got.loc["missing", "note"]
    assert got.loc["few", "verdict"] == "inconclusive" and "too few" in got.loc["few", "note"]
    assert got.loc["few", "diff"] < 0   # the difference is still reported
    table = K.claims_table(df, _ctx())
    md = T.to_markdown(table)
    assert "| a below b |" in md and "holds" in md and "1 holds, 1 contradicted, 2 inconclusive" in table.caption
    T.to_latex(table)
    assert F.claims_forest(df, tmp_path / "claims.png") is not None and (tmp_path / "claims.png").stat().st_size


def test_speed_claims_use_the_timing_repeats():
    timing = pd.DataFrame([{"variant": "a", "seconds_runs": "[1.0, 1.1, 0.9]", "seconds_per_image": 1.0},
                           {"variant": "b", "seconds_runs": "[2.0, 2.1, 1.9]", "seconds_per_image": 2.0}])
    df = K.test_claims(".", [{"id": "s", "text": "a faster", "kind": "speed", "dataset": "div2k", "a": "a", "b": "b",
                              "metric": "seconds"}], _ctx(), timing)
    assert df.loc[0, "verdict"] == "holds" and df.loc[0, "diff"] == pytest.approx(-1.0)


# --------------------------------------------------------------------------- grid, config, provenance

def _default_config():
    return C.yaml_load((REPO / "config" / "default.yaml").read_text())


def test_default_grid_has_seeds_floors_equal_budgets_and_matched_networks():
    from ecdp.registry import build_method

    cfg = _default_config()
    grid = Grid(cfg, REPO)
    assert grid.seeds == [0, 1, 2]
    assert grid.cell("embedded-div2k", "sr3").seeds == [0, 1, 2]
    assert grid.cell("embedded-div2k", "ecdp-paper-but-sigma").seeds == [0]        # protocol: first seed
    assert grid.training_seeds(grid.cell("embedded-div2k", "ecdp-paper-but-ode_tolerance")) == [0, 1, 2]
    for t in ("table1", "table2", "table4", "table5", "table7"):
        assert {"bicubic", "regression"} <= set(cfg["studies"][t]["variants"])
    counts, steps = {}, {}
    for ds in ("embedded-div2k", "embedded-celeba"):
        for v in ("ecdp-hybrid-c1.0", "sr3", "srdiff", "regression"):
            rc = grid.cell(ds, v).run_config(0)
            main = [s for s in rc["train"]["stages"] if s["kind"] != "quality"]
            steps[(ds, v)] = (sum(s["steps"] for s in main), frozenset(s["batch"] for s in main), rc["data"]["patch"])
            counts[v] = build_method(rc, {"scale": 4 if "div2k" in ds else 8, "sigma2": 0.01}).parameter_count()
        assert len({steps[(ds, v)] for v in ("ecdp-hybrid-c1.0", "sr3", "srdiff", "regression")}) == 1
    for v in ("sr3", "srdiff"):
        assert abs(counts[v] / counts["ecdp-hybrid-c1.0"] - 1) <= 0.15, (v, counts)
    quality = {v: [s for s in grid.cell("embedded-div2k", v).run_config(0)["train"]["stages"] if s["kind"] == "quality"]
               for v in ("ecdp-hybrid-c1.0", "sr3pp", "srdiffpp")}
    assert len({(q[0]["steps"], q[0]["batch"]) for q in quality.values()}) == 1
    claims = K.expand(cfg["claims"])
    variants = set(grid.variants)
    assert all(c["a"] in variants and c["b"] in variants for c in claims)


def test_study_seeds_are_checked(tmp_path):
    cfg = _default_config()
    cfg["studies"]["protocol"]["seeds"] = [5]
    with pytest.raises(ValueError, match=r"studies.protocol.seeds: \[5\]"):
        Grid(cfg, REPO)


def test_provenance_records_the_cpu():
    from ecdp.provenance import record

    hw = record(0)["hardware"]
    assert hw["cpu_model"] and hw["torch_cpu_capability"] and hw["cpu_count"] >= 1
    json.dumps(hw)
    yaml.safe_dump(hw)


def test_convergence_reads_the_training_folder_beside_the_run(tmp_path, monkeypatch):
    train = tmp_path / "res" / "runs" / "d" / "owner" / "seed0" / "train"
    train.mkdir(parents=True)
    (train / "config.yaml").write_text(yaml.safe_dump({"train": {"stages": STAGES}}))
    (train / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _val([0.5, 0.4, 0.30, 0.2])))
    run_dir = tmp_path / "res" / "runs" / "d" / "sharer" / "seed0"
    monkeypatch.chdir(tmp_path)   # the stored checkpoint path is relative to where the workflow ran
    runs = pd.DataFrame([{"dataset": "d", "variant": "sharer", "seed": 0, "run_dir": str(run_dir),
                          "checkpoint": "elsewhere/runs/d/owner/seed0/train/final.pt"}])
    conv = K.convergence(runs)
    assert conv.loc[0, "converged"] is False or conv.loc[0, "converged"] == False  # noqa: E712
    assert conv.loc[0, "moved"] == pytest.approx(1 / 3)
