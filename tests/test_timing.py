"""ecdp.timing (time_sampler, `ecdp time`), ecdp.sampler_study and ecdp.report.benchmarks."""
from __future__ import annotations

import csv
import json

import pytest

from ecdp import checkpoint as ckpt
from ecdp.cli import main
from ecdp.sampler_study import sampler_study, summarize_sampler_study
from ecdp.timing import photo_lr, time_sampler


def test_time_sampler(tiny_ckpt):
    model, _ = ckpt.load_method(tiny_ckpt)
    lr = photo_lr(4)
    assert lr.shape == (3, 4, 4)
    res = time_sampler(model, lr, {"name": "dpmpp_2m", "steps": 3}, repeats=2, warmup=1)
    assert res["nfe"] == 3 and res["nfe_runs"] == [3, 3]
    assert res["sampler"] == "dpmpp_2m-3" and res["method"] == "ecdp"
    assert len(res["seconds_runs"]) == 2 and res["seconds_per_image"] > 0
    assert res["hr_size"] == "16x16" and res["lr_size"] == "4x4" and res["scale"] == 4
    assert model.training is False
    with pytest.raises(ValueError):
        time_sampler(model, lr, {}, repeats=0)


def test_time_cli(tiny_ckpt, tmp_path, capsys):
    out = tmp_path / "t" / "ecdp.csv"
    rc = main(["time", "--checkpoint", str(tiny_ckpt), "--size", "4", "--repeats", "1", "--warmup", "0",
               "--sampler", '{"name": "rk4", "steps": 1}', "--out", str(out), "--device", "cpu"])
    assert rc == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 1
    r = rows[0]
    assert r["method"] == "ecdp" and r["sampler"] == "rk4-1" and r["nfe"] == "4" and r["hr_size"] == "16x16"
    assert float(r["seconds_per_image"]) > 0 and r["git_commit"] and r["device"].startswith("cpu")
    assert main(["time", "--checkpoint", str(tiny_ckpt), "--sampler", "{bad"]) == 2
    assert main(["time", "--checkpoint", str(tmp_path / "missing.pt")]) == 2
    assert "error" in capsys.readouterr().err


@pytest.fixture
def lpips_weights(weights_dir, monkeypatch):
    """The study scores LPIPS from the default weights folder: point it at the session's."""
    monkeypatch.setenv("ECDP_WEIGHTS_DIR", str(weights_dir))


def test_sampler_study(tiny_ckpt, tiny_data, lpips_weights):
    df = sampler_study(tiny_ckpt, tiny_data / "tiny4x", [{"name": "dpmpp_2m", "steps": 2}, {"name": "rk4", "steps": 1}],
                       limit=1, lr_crop=8, device="cpu")
    assert list(df["sampler"]) == ["dpmpp_2m-2", "rk4-1"]
    assert list(df["nfe"]) == [2, 4] and (df["n_images"] == 1).all()
    assert df[["lpips", "psnr", "ssim", "seconds_per_image", "solver_rmse"]].notna().all().all()
    assert list(df["accurate"]) == [True, False] and df["solver_rmse"].iloc[0] == 0
    assert df["solver_rmse"].iloc[1] > 0      # one RK4 step is not the 2-step solution


def test_sampler_study_per_image_and_accurate_row(tiny_ckpt, tiny_data, lpips_weights):
    samplers = [{"name": "dpmpp_2m", "steps": 1}, {"name": "dpmpp_2m", "steps": 3}]
    images = sampler_study(tiny_ckpt, tiny_data / "tiny4x", samplers, limit=2, lr_crop=8, device="cpu",
                           per_image=True, accurate=1)
    assert len(images) == 4 and list(images["accurate"]) == [False, False, True, True]
    assert (images.loc[images["accurate"], "solver_rmse"] == 0).all()
    summary = summarize_sampler_study(images)
    assert list(summary["sampler"]) == ["dpmpp_2m-1", "dpmpp_2m-3"] and list(summary["n_images"]) == [2, 2]
    assert summary["solver_rmse"].iloc[0] == pytest.approx(images["solver_rmse"].iloc[:2].mean())
    with pytest.raises(ValueError, match="accurate=2"):
        sampler_study(tiny_ckpt, tiny_data / "tiny4x", samplers, limit=1, lr_crop=8, device="cpu", accurate=2)


def _bench(name, group, median, **extra):
    return {"group": group, "name": name, "fullname": name, "params": None,
            "stats": {"median": median, "mean": median, "stddev": 0.0, "min": median, "rounds": 3},
            "extra_info": {"images": 1, "torch_threads": 2, **extra}}


def test_benchmark_tables(tmp_path):
    from ecdp.report.benchmarks import benchmark_tables, main as report_main

    data = {"machine_info": {"cpu": {"brand_raw": "Test CPU", "count": 2}, "python_version": "3.11"},
            "commit_info": {"id": "abcdef1234567890", "dirty": True}, "datetime": "now", "version": "5",
            "benchmarks": [
                _bench("ecdp", "sampling", 2.0, method="ECDP", sampler="dopri5-1e-4", nfe=50, reference=True),
                _bench("srdiff", "sampling", 4.0, method="SRDiff", sampler="ancestral-100", nfe=100),
                _bench("sr3", "sampling", 0.5, method="SR3", sampler="ancestral-2000", nfe=2000, measured_nfe=20,
                       extrapolated=True, timed_steps=20, full_steps=2000, extrapolation="x100"),
                _bench("s", "training-step", 1.0, method="ECDP", step="score", images=2, reference=True),
                _bench("q", "training-step", 5.0, method="ECDP", step="score+quality", images=2),
                *[_bench(f"m{m}{s}", "quality-memory", 1.0, mode=m, steps=s, nfe=4 * s,
                         peak_saved_bytes=(2**20 if m == "adjoint" else s * 2**20)) for m in ("adjoint", "direct")
                  for s in (4, 8)],
                _bench("t32", "training-throughput", 2.0, arch="div2k", mode="fp32", batch=4, hr_crop=64),
                _bench("t16", "training-throughput", 0.5, arch="div2k", mode="bf16", batch=4, hr_crop=64),
                _bench("ld", "loader", 0.1, workers=0, batch=16, patch=32, batches_per_s=80.0),
                _bench("s32", "sampling-modes", 4.0, arch="imagenet", sampler="dpmpp_2m-10", mode="fp32", nfe=10),
                _bench("scl", "sampling-modes", 1.0, arch="imagenet", sampler="dpmpp_2m-10", mode="bf16", nfe=10),
            ]}
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(data))
    out = tmp_path / "results" / "benchmarks"
    written = benchmark_tables(path, out)
    assert {p.name for p in written} >= {"sampling.csv", "sampling.md", "training_step.csv", "quality_memory.md"}
    rows = {r["method"]: r for r in csv.DictReader((out / "sampling.csv").open())}
    assert float(rows["SR3"]["seconds_per_image"]) == pytest.approx(50.0)       # 0.5 s x 2000/20
    assert float(rows["SR3"]["time_vs_ecdp"]) == pytest.approx(25.0)
    assert float(rows["SRDiff"]["time_vs_ecdp"]) == pytest.approx(2.0)
    assert float(rows["SRDiff"]["nfe_vs_ecdp"]) == pytest.approx(2.0)
    assert "extrapolated" in rows["SR3"]["timing"]
    md = (out / "sampling.md").read_text()
    assert "Test CPU" in md and "abcdef123456-dirty" in md
    ts = list(csv.DictReader((out / "training_step.csv").open()))
    assert float(ts[1]["time_vs_score_step"]) == pytest.approx(5.0)
    qm = list(csv.DictReader((out / "quality_memory.csv").open()))
    assert [float(r["memory_vs_fewest_steps"]) for r in qm] == [1.0, 1.0, 1.0, 2.0]
    tp = {(r["arch"], r["mode"]): r for r in csv.DictReader((out / "training_throughput.csv").open())}
    assert float(tp[("div2k", "fp32")]["images_per_s"]) == pytest.approx(2.0)        # 4 images / 2 s
    assert float(tp[("div2k", "bf16")]["vs_fp32"]) == pytest.approx(4.0)
    assert float(tp[("loader alone", "0 workers")]["images_per_s"]) == pytest.approx(16 * 80.0)
    sm = {r["mode"]: r for r in csv.DictReader((out / "sampling_modes.csv").open())}
    assert float(sm["fp32"]["seconds_per_nfe"]) == pytest.approx(0.4)
    assert float(sm["bf16"]["per_nfe_vs_fp32"]) == pytest.approx(0.25)
    assert report_main([str(path), str(tmp_path / "o2")]) == 0
    assert report_main([str(tmp_path / "missing.json"), str(tmp_path / "o3")]) == 2


@pytest.mark.slow   # > 5 s: CI runs it (.ci/run), the fast suite stays under 3 min
def test_fit_grid_cli_stores_beside_checkpoint_and_study_uses_fitted(tiny_ckpt, tiny_data, tmp_path, lpips_weights,
                                                                      capsys):
    """`ecdp fit-grid` fits on training images and stores the grid beside the checkpoint
    (never replaced without --force); a study entry `grid: fitted` fits its own and
    records the fractions it sampled with."""
    import shutil

    from ecdp.sampler_study import grids_path

    ck = tmp_path / "final.pt"
    shutil.copy(tiny_ckpt, ck)
    args = ["fit-grid", "--checkpoint", str(ck), "--data", str(tiny_data / "tiny4x"),
            "--sampler", '{"name": "dpmpp_2m", "steps": 3}', "--images", "1", "--lr-crop", "4", "--max-evals", "4"]
    assert main(args) == 0
    stored = json.loads(grids_path(ck).read_text())
    rec = stored["dpmpp_2m-3"]
    fr = rec["sampler"]["grid"]
    assert len(fr) == 2 and 0 < fr[0] < fr[1] < 1 and rec["error_fitted"] <= rec["error_uniform"]
    assert rec["fitted_on"]["split"] == "train" and rec["evaluations"] <= 4 and "git_commit" in rec["provenance"]
    assert main(args) == 2 and "--force" in capsys.readouterr().err
    df = sampler_study(ck, tiny_data / "tiny4x", [{"name": "dpmpp_2m", "steps": 3},
                                                  {"name": "dpmpp_2m", "steps": 3, "grid": "fitted",
                                                   "fit": {"images": 1, "lr_crop": 4, "max_evals": 2}}],
                       limit=1, lr_crop=8, device="cpu", accurate=None)
    assert list(df["sampler"]) == ["dpmpp_2m-3", "dpmpp_2m-3-fitted"]
    assert len(json.loads(df["options"].iloc[1])["grid"]) == 2
