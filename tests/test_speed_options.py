"""Sampling speed settings (issue 14): ``ecdp sr / evaluate / time --precision
--channels-last --compile`` through ``ecdp.checkpoint.configure_inference``."""
from __future__ import annotations

import csv
import json

import pytest
import torch

from ecdp import checkpoint as ckpt
from ecdp.cli import main

SAMPLER = {"name": "dpmpp_2m", "steps": 3}


def _sr(path, **speed):
    method, _ = ckpt.load_method(path, **speed)
    lr = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    sr, stats = method.super_resolve(lr, generator=torch.Generator().manual_seed(0), **SAMPLER)
    return method, sr, stats


def test_defaults_change_nothing(tiny_ckpt):
    method, sr, stats = _sr(tiny_ckpt)
    assert "super_resolve" not in vars(method)   # no wrapper at the defaults
    assert sr.dtype == torch.float32 and stats["nfe"] == 3


def test_channels_last_same_image(tiny_ckpt):
    _, ref, _ = _sr(tiny_ckpt)
    method, sr, stats = _sr(tiny_ckpt, channels_last=True)
    conv = next(m for m in method.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    # the same arithmetic in another memory layout: equal up to float reassociation
    assert stats["nfe"] == 3 and torch.allclose(sr, ref, atol=1e-5, rtol=0)


def test_bf16_close_and_fp32_out(tiny_ckpt):
    _, ref, _ = _sr(tiny_ckpt)
    _, sr, _ = _sr(tiny_ckpt, precision="bf16")
    assert sr.dtype == torch.float32
    # bf16 keeps 8 mantissa bits (relative step 2^-8 ~ 0.4 %): three solver steps of an
    # untrained network stay within a few of those steps of fp32 on [0, 1] images
    err = (sr - ref).abs().mean().item()
    assert 0 < err < 0.02


def test_fp16_without_cuda_refused(tiny_ckpt, tmp_path, capsys):
    from ecdp.imageio import save_image

    if torch.cuda.is_available():
        pytest.skip("fp16 is allowed on CUDA")
    save_image(torch.rand(3, 8, 8), tmp_path / "a.png")
    rc = main(["sr", "--checkpoint", str(tiny_ckpt), str(tmp_path / "a.png"), "-o", str(tmp_path / "out"),
               "--device", "cpu", "--precision", "fp16", "--sampler", json.dumps(SAMPLER)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and err[-1].endswith("precision fp16 needs a CUDA device; use bf16 on CPU")
    assert not (tmp_path / "out" / "a.png").exists()


def test_time_records_speed(tiny_ckpt, tmp_path):
    out = tmp_path / "t.csv"
    assert main(["time", "--checkpoint", str(tiny_ckpt), "--size", "4", "--repeats", "1", "--warmup", "0",
                 "--device", "cpu", "--channels-last", "--precision", "bf16", "--sampler", json.dumps(SAMPLER),
                 "--out", str(out)]) == 0
    row = next(csv.DictReader(out.open()))
    assert (row["precision"], row["channels_last"], row["compile"]) == ("bf16", "True", "False")


def test_evaluate_records_speed_and_refingerprints(tiny_ckpt, tiny_data, tmp_path):
    from ecdp.evaluation import evaluate

    data = tiny_data / "tiny4x"
    kw = dict(limit=1, sampler=SAMPLER, lpips_net=None, crops=0, progress=False, log=lambda *a: None)
    evaluate(tiny_ckpt, data, tmp_path / "e", **kw)
    s = evaluate(tiny_ckpt, data, tmp_path / "e", speed={"precision": "bf16"}, **kw)
    prov = json.loads((tmp_path / "e" / "summary.json").read_text())["provenance"]
    assert prov["speed"] == {"precision": "bf16", "channels_last": False, "compile": False}
    # the fp32 image is not reused for the bf16 evaluation (the fingerprint holds the settings)
    assert s["n_images"] == 1
    lines = (tmp_path / "e" / "progress.jsonl").read_text().splitlines()
    assert len({json.loads(line)["fingerprint"] for line in lines}) == 2


@pytest.mark.slow
def test_compile_same_image(tiny_ckpt):
    """torch.compile (inductor) of each network: the same image to float tolerance."""
    _, ref, _ = _sr(tiny_ckpt)
    _, sr, stats = _sr(tiny_ckpt, compile=True)
    assert stats["nfe"] == 3 and torch.allclose(sr, ref, atol=1e-4, rtol=0)


def test_sampler_presets(tiny_ckpt, tmp_path, capsys):
    """`--sampler fast` / `paper`: ECDP's named presets (ecdp.model.ECDP.SAMPLER_PRESETS)."""
    from ecdp.model import ECDP as cls

    out = tmp_path / "fast.csv"
    assert main(["time", "--checkpoint", str(tiny_ckpt), "--size", "4", "--repeats", "1", "--warmup", "0",
                 "--device", "cpu", "--sampler", "fast", "--out", str(out)]) == 0
    row = next(csv.DictReader(out.open()))
    fast = cls.SAMPLER_PRESETS["fast"]
    assert json.loads(row["sampler_options"]) == fast and int(row["nfe"]) == fast["steps"]
    assert cls.SAMPLER_PRESETS["paper"] == {"name": "ode", "method": "dopri5", "atol": 1e-4, "rtol": 1e-4,
                                            "state": "normalized"}
    rc = main(["time", "--checkpoint", str(tiny_ckpt), "--size", "4", "--sampler", "quick"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "not a sampler preset of ECDP (presets: fast, paper)" in err[0]
