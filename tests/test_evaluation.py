"""``ecdp evaluate``: outputs, per-image seeding, resume after a kill, the CLI."""
from __future__ import annotations

import json
import os

import pandas as pd
import pytest
import torch

from ecdp import checkpoint as ckpt
from ecdp import evaluation as E
from ecdp.cli import main
from ecdp.data import read_meta
from ecdp.registry import build_method

from helpers import tiny_config

FAST = {"name": "dpmpp_2m", "steps": 2}


@pytest.fixture(scope="module")
def tiny_checkpoint(tiny_data, tmp_path_factory):
    """An untrained tiny ECDP in the final-checkpoint format (what `ecdp train` writes)."""
    cfg = tiny_config(tiny_data)
    meta = read_meta(tiny_data / "tiny4x")
    torch.manual_seed(0)
    method = build_method(cfg, meta)
    path = tmp_path_factory.mktemp("ck") / "final.pt"
    ckpt.save({"format": ckpt.FORMAT, "config": cfg, "meta": meta, "model": method.state_dict(),
               "provenance": {"global_step": 0}}, path)
    return path


def _eval(ck, data, out, **kw):
    kw.setdefault("sampler", FAST)
    kw.setdefault("lpips_net", None)
    kw.setdefault("log", lambda *a: None)
    return E.evaluate(ck, data / "tiny4x", out, progress=False, **kw)


def test_outputs(tiny_checkpoint, tiny_data, tmp_path):
    s = _eval(tiny_checkpoint, tiny_data, tmp_path, variant="ecdp-test", profile="embedded", seed=3, crops=1,
              crop_size=32)
    m = pd.read_csv(tmp_path / "metrics.csv", dtype={"image": str})
    assert list(m.columns) == E.METRIC_COLUMNS
    assert list(m["image"]) == ["0000", "0001"]
    assert (m["nfe"] == 2).all() and (m["seconds"] > 0).all()
    assert sorted(p.name for p in (tmp_path / "sr").iterdir()) == ["0000.png", "0001.png"]
    assert sorted(p.name for p in (tmp_path / "crops").iterdir()) == ["0000_hr.png", "0000_lr.png", "0000_sr.png"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    for key in ("method", "variant", "dataset", "profile", "seed", "git_commit", "nfe", "seconds_per_image", "device",
                "convention", "lpips", "psnr", "ssim", "provenance", "checkpoint_sha256", "params"):
        assert key in summary, key
    assert summary["method"] == "ecdp" and summary["variant"] == "ecdp-test" and summary["seed"] == 3
    assert summary["dataset"] == "tiny4x" and summary["profile"] == "embedded" and summary["convention"] == "ecdp"
    assert summary["psnr"] == pytest.approx(m["psnr"].mean()) and summary["nfe"] == 2
    assert summary["provenance"]["git_commit"] == summary["git_commit"]
    row = pd.read_csv(tmp_path / "summary.csv")
    assert len(row) == 1 and list(row.columns) == E.SUMMARY_COLUMNS
    assert s["psnr"] == pytest.approx(float(row["psnr"].iloc[0]))
    assert not list(tmp_path.rglob("*.part"))


def test_per_image_seed_does_not_depend_on_the_other_images(tiny_checkpoint, tiny_data, tmp_path):
    sampler = {"name": "reverse_sde", "steps": 3}  # stochastic at every step
    _eval(tiny_checkpoint, tiny_data, tmp_path / "a", sampler=sampler, limit=1)
    _eval(tiny_checkpoint, tiny_data, tmp_path / "b", sampler=sampler)
    a = (tmp_path / "a" / "sr" / "0000.png").read_bytes()
    assert a == (tmp_path / "b" / "sr" / "0000.png").read_bytes()
    _eval(tiny_checkpoint, tiny_data, tmp_path / "c", sampler=sampler, seed=1, limit=1)
    assert a != (tmp_path / "c" / "sr" / "0000.png").read_bytes()
    assert E.image_seed(0, "0000") != E.image_seed(0, "0001") != E.image_seed(1, "0000")


def test_resume_skips_finished_images(tiny_checkpoint, tiny_data, tmp_path):
    first = _eval(tiny_checkpoint, tiny_data, tmp_path)
    # a killed run: results not written yet, one finished image, a torn last progress line
    for name in ("metrics.csv", "summary.json", "summary.csv"):
        (tmp_path / name).unlink()
    lines = (tmp_path / "progress.jsonl").read_text().splitlines()
    (tmp_path / "progress.jsonl").write_text(lines[0] + "\n" + lines[1][:20])
    (tmp_path / "sr" / "0001.png").unlink()
    done = tmp_path / "sr" / "0000.png"
    os.utime(done, (1_000_000, 1_000_000))
    logs = []
    again = _eval(tiny_checkpoint, tiny_data, tmp_path, log=logs.append)
    assert done.stat().st_mtime == 1_000_000          # not recomputed
    assert (tmp_path / "sr" / "0001.png").exists()
    assert any("1 of 2" in str(line) for line in logs)
    assert again["psnr"] == pytest.approx(first["psnr"])
    # another sampler is another evaluation: everything is recomputed
    _eval(tiny_checkpoint, tiny_data, tmp_path, sampler={"name": "dpmpp_2m", "steps": 3})
    assert done.stat().st_mtime != 1_000_000
    assert (pd.read_csv(tmp_path / "metrics.csv")["nfe"] == 3).all()


def test_crop_box_is_aligned_to_the_lr_grid():
    top, left, side = E.centre_crop_box(100, 60, 96, 4)
    assert side == 60 and top % 4 == 0 and left % 4 == 0 and top + side <= 100
    assert E.centre_crop_box(16, 16, 96, 8) == (0, 0, 16)


def test_cli(tiny_checkpoint, tiny_data, tmp_path, capsys):
    out = tmp_path / "cli"
    rc = main(["evaluate", "--checkpoint", str(tiny_checkpoint), "--data", str(tiny_data / "tiny4x"),
               "--out", str(out), "--limit", "1", "--sampler", json.dumps(FAST), "--lpips-net", "none",
               "--device", "cpu", "--variant", "v", "--profile", "embedded", "--no-progress"])
    assert rc == 0
    assert "PSNR" in capsys.readouterr().out
    assert len(pd.read_csv(out / "metrics.csv")) == 1
    assert main(["evaluate", "--checkpoint", str(tiny_checkpoint), "--data", str(tiny_data / "tiny4x"),
                 "--out", str(out), "--sampler", "{not json"]) == 2
    assert main(["evaluate", "--checkpoint", str(tmp_path / "missing.pt"), "--data", str(tiny_data / "tiny4x"),
                 "--out", str(out)]) == 2
    assert "error" in capsys.readouterr().err


def test_lpips_is_scored(tiny_checkpoint, tiny_data, tmp_path, weights_dir):
    s = _eval(tiny_checkpoint, tiny_data, tmp_path / "out", lpips_net="alex", weights_dir=str(weights_dir), limit=1)
    assert 0.0 <= s["lpips"] <= 2.0 and s["lpips_net"] == "alex"
