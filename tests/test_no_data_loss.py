"""Issue 16, "silent data loss or wrong results" 1-6: nothing a user made is overwritten,
nothing non-finite is saved, mismatched scales are errors.  Each test failed before."""
from __future__ import annotations

import os
import stat

import pytest
import torch

from ecdp import checkpoint as ckpt
from ecdp.cli import main
from ecdp.imageio import save_image
from ecdp.model import ECDP
from helpers import tiny_config

ONE_STAGE = {"train": {"warmup": 0, "checkpoint_every": 2, "log_every": 1,
                       "stages": [{"name": "score", "kind": "score", "steps": 3, "batch": 2, "lr": 5e-4}]}}


def _write_config(tmp_path, cfg: dict):
    import yaml
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _untrained(tmp_path, tiny_data, scale=4, poison=False):
    cfg = tiny_config(tiny_data)
    torch.manual_seed(0)
    model = ECDP(cfg, {"scale": scale, "sigma2": 0.01})
    state = model.state_dict()
    if poison:
        key = next(k for k, v in state.items() if v.dtype.is_floating_point and v.numel() > 1)
        state[key] = state[key].clone()
        state[key].view(-1)[0] = float("nan")
    path = tmp_path / f"final-x{scale}{'-nan' if poison else ''}.pt"
    ckpt.save({"format": ckpt.FORMAT, "config": cfg, "meta": {"scale": scale, "sigma2": 0.01}, "model": state}, path)
    return path


# ------------------------------------------------------------------ 1, 2: finished runs
def test_resume_leaves_a_finished_run_exactly_as_it_is(tiny_data, tmp_path, capsys):
    cfg = tiny_config(tiny_data, **ONE_STAGE)
    path = _write_config(tmp_path, cfg)
    out = tmp_path / "run"
    assert main(["train", "--config", str(path), "--out", str(out), "--device", "cpu"]) == 0
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()}
    capsys.readouterr()
    assert main(["train", "--config", str(path), "--out", str(out), "--resume", "--device", "cpu"]) == 0
    assert "already finished" in capsys.readouterr().out
    after = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()}
    assert after == before                              # not one byte, not one timestamp
    # another config on the finished run: refused
    other = _write_config(tmp_path, tiny_config(tiny_data, **ONE_STAGE, seed=1))
    assert main(["train", "--config", str(other), "--out", str(out), "--resume", "--device", "cpu"]) == 2
    assert "different config" in capsys.readouterr().err


def test_a_folder_with_final_pt_is_never_trained_over(tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "final.pt").write_bytes(b"a model somebody made")
    path = _write_config(tmp_path, tiny_config(tiny_data, **ONE_STAGE))
    assert main(["train", "--config", str(path), "--out", str(out), "--device", "cpu"]) == 2
    assert "finished run" in capsys.readouterr().err
    assert (out / "final.pt").read_bytes() == b"a model somebody made"
    assert sorted(p.name for p in out.iterdir()) == ["final.pt"]


# ------------------------------------------------------------------ 3: ecdp sr never overwrites
def _lr_png(path):
    save_image(torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(0)), path)
    return path


def test_sr_refuses_to_overwrite(tiny_data, tmp_path, capsys):
    ck = _untrained(tmp_path, tiny_data)
    lr = _lr_png(tmp_path / "in" / "x.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "x.png").write_bytes(b"mine")
    fast = ["--sampler", '{"name": "dpmpp_2m", "steps": 1}', "--device", "cpu"]
    assert main(["sr", "--checkpoint", str(ck), str(lr), "-o", str(out), *fast]) == 2
    assert "--overwrite" in capsys.readouterr().err and (out / "x.png").read_bytes() == b"mine"
    assert main(["sr", "--checkpoint", str(ck), str(lr), "-o", str(out), "--overwrite", *fast]) == 0
    assert (out / "x.png").read_bytes() != b"mine"
    # its own input: never, not even with --overwrite
    original = lr.read_bytes()
    assert main(["sr", "--checkpoint", str(ck), str(lr), "-o", str(lr.parent), "--overwrite", *fast]) == 2
    assert "is an input" in capsys.readouterr().err and lr.read_bytes() == original
    # two inputs with one stem: refused before any work
    jpg = tmp_path / "in" / "x.jpg"
    from PIL import Image
    Image.open(lr).convert("RGB").save(jpg)
    fresh = tmp_path / "fresh"
    assert main(["sr", "--checkpoint", str(ck), str(lr), str(jpg), "-o", str(fresh), *fast]) == 2
    assert "both be written" in capsys.readouterr().err and not fresh.exists()
    # -o a file
    assert main(["sr", "--checkpoint", str(ck), str(lr), "-o", str(ck), *fast]) == 2
    assert "is a file" in capsys.readouterr().err


# ------------------------------------------------------------------ 4: the user's umask
@pytest.mark.parametrize("mask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_outputs_get_the_umask(tmp_path, mask, mode):
    old = os.umask(mask)
    try:
        with ckpt.atomic_open(tmp_path / "a.txt", "w") as f:
            f.write("x")
        ckpt.save({"x": torch.zeros(1)}, tmp_path / "b.pt")
    finally:
        os.umask(old)
    for name in ("a.txt", "b.pt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name


# ------------------------------------------------------------------ 5: non-finite
def test_training_stops_at_a_non_finite_loss(tiny_data, tmp_path, monkeypatch, capsys):
    real = ECDP.training_losses
    calls = {"n": 0}

    def nan_at_3(self, hr, lr):
        calls["n"] += 1
        out = real(self, hr, lr)
        return {k: v * float("nan") for k, v in out.items()} if calls["n"] == 3 else out

    monkeypatch.setattr(ECDP, "training_losses", nan_at_3)
    path = _write_config(tmp_path, tiny_config(tiny_data, **ONE_STAGE))
    out = tmp_path / "run"
    assert main(["train", "--config", str(path), "--out", str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "training diverged at step 3 (stage score): non-finite loss" in err and "Traceback" not in err
    assert (out / "checkpoint.pt").exists() and not (out / "final.pt").exists()
    kept = ckpt.load(out / "checkpoint.pt")
    assert kept["global_step"] == 2                              # the last good state
    assert all(bool(torch.isfinite(v).all()) for v in kept["model"].values() if v.dtype.is_floating_point)


def test_training_stops_at_non_finite_weights(tiny_data, tmp_path, capsys):
    stages = [{"name": "score", "kind": "score", "steps": 3, "batch": 2, "lr": float("inf")}]
    cfg = tiny_config(tiny_data, train={"warmup": 0, "clip": None, "stages": stages})
    path = _write_config(tmp_path, cfg)
    out = tmp_path / "run"
    assert main(["train", "--config", str(path), "--out", str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "training diverged at step 1 (stage score): non-finite weights" in err
    assert not (out / "final.pt").exists() and not (out / "checkpoint.pt").exists()


def test_sr_and_evaluate_refuse_non_finite_checkpoints(tiny_data, tmp_path, capsys):
    ck = _untrained(tmp_path, tiny_data, poison=True)
    lr = _lr_png(tmp_path / "in" / "x.png")
    assert main(["sr", "--checkpoint", str(ck), str(lr), "-o", str(tmp_path / "o"), "--device", "cpu"]) == 2
    assert "NaN or Inf" in capsys.readouterr().err and not (tmp_path / "o").exists()
    assert main(["evaluate", "--checkpoint", str(ck), "--data", str(tiny_data / "tiny4x"), "--out",
                 str(tmp_path / "e"), "--lpips-net", "none", "--device", "cpu", "--no-progress"]) == 2
    assert "NaN or Inf" in capsys.readouterr().err


def test_sr_never_writes_a_non_finite_image(tiny_data, tmp_path, monkeypatch, capsys):
    ck = _untrained(tmp_path, tiny_data)
    lr = _lr_png(tmp_path / "in" / "x.png")

    def nan_sr(self, lr, generator=None, **_):
        return torch.full((lr.shape[0], 3, lr.shape[-2] * 4, lr.shape[-1] * 4), float("nan")), {"nfe": 1}

    monkeypatch.setattr(ECDP, "super_resolve", nan_sr)
    assert main(["sr", "--checkpoint", str(ck), str(lr), "-o", str(tmp_path / "o"), "--device", "cpu"]) == 2
    assert "not finite" in capsys.readouterr().err and not (tmp_path / "o" / "x.png").exists()


# ------------------------------------------------------------------ 6: scales and sizes
def test_evaluate_refuses_a_model_of_another_scale(tiny_data, tmp_path, capsys):
    ck = _untrained(tmp_path, tiny_data, scale=8)
    rc = main(["evaluate", "--checkpoint", str(ck), "--data", str(tiny_data / "tiny4x"), "--out", str(tmp_path / "e"),
               "--lpips-net", "none", "--device", "cpu", "--no-progress", "--sampler", '{"name": "dpmpp_2m", "steps": 1}'])
    assert rc == 2
    assert "8x model" in capsys.readouterr().err and not (tmp_path / "e" / "summary.csv").exists()


def test_metrics_refuse_an_sr_image_larger_than_its_hr(tmp_path, capsys):
    from ecdp.metrics import prepare
    hr = torch.rand(3, 32, 32)
    with pytest.raises(ValueError, match="larger than HR"):
        prepare(torch.rand(3, 64, 64), hr)
    with pytest.raises(ValueError, match="larger than HR"):
        prepare(torch.rand(3, 36, 32), hr, scale=4)               # 4 px over: not a 4x padding
    assert prepare(torch.rand(3, 35, 32), hr, scale=4)[0].shape == (1, 3, 32, 32)   # 3 px: the padding
    save_image(torch.rand(3, 64, 64), tmp_path / "sr.png")
    save_image(hr, tmp_path / "hr.png")
    assert main(["metrics", str(tmp_path / "sr.png"), str(tmp_path / "hr.png"), "--lpips-net", "none"]) == 2
    assert "larger than HR" in capsys.readouterr().err


# --------------------------------------------------------------------------- item 7: prepared datasets are verified

def _prepared_celeba(tmp_path):
    from ecdp.data.prepare import prepare

    return prepare("embedded-celeba", tmp_path / "data", progress=False)


def test_a_damaged_prepared_dataset_is_refused_on_every_use_and_rebuilt_on_request(tmp_path, capsys):
    from ecdp.cli import main
    from ecdp.data.paired import DatasetDamaged, TrainPatches, read_meta

    root = _prepared_celeba(tmp_path)
    assert (root / "files.json").exists()
    victims = sorted((root / "train" / "HR").iterdir())[:3]
    for p in victims:
        p.unlink()
    with pytest.raises(DatasetDamaged, match=f"train/HR/{victims[0].name} missing"):
        read_meta(root)
    with pytest.raises(DatasetDamaged):
        TrainPatches(root, 64)
    assert main(["data", "prepare", "embedded-celeba", "--root", str(root.parent), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "is damaged" in err and "--force" in err and len(err.strip().splitlines()) == 1
    assert main(["data", "prepare", "embedded-celeba", "--root", str(root.parent), "--no-progress", "--force"]) == 0
    assert main(["data", "verify", "embedded-celeba", "--root", str(root.parent)]) == 0
    assert "24 files match" in capsys.readouterr().out
    assert read_meta(root)["counts"] == {"train": 9, "test": 3}


def test_data_verify_finds_a_changed_byte_that_the_cheap_check_lets_pass(tmp_path, capsys):
    from ecdp.cli import main
    from ecdp.data.paired import check_files, read_meta

    root = _prepared_celeba(tmp_path)
    p = sorted((root / "test" / "LR").iterdir())[0]
    b = bytearray(p.read_bytes())
    b[-20] ^= 1
    p.write_bytes(bytes(b))
    read_meta(root)   # same size: the check on every use is names and sizes only
    assert main(["data", "verify", "embedded-celeba", "--root", str(root.parent)]) == 1
    assert f"test/LR/{p.name} changed (sha256)" in capsys.readouterr().out
    (root / "test" / "HR" / "extra.png").write_bytes(b"x")
    with pytest.raises(ValueError, match="extra.png not prepared here"):
        check_files(root)


def test_a_dataset_prepared_before_files_json_is_checked_by_its_counts(tmp_path):
    from ecdp.data.paired import DatasetDamaged, read_meta

    root = _prepared_celeba(tmp_path)
    (root / "files.json").unlink()
    read_meta(root)
    sorted((root / "test" / "HR").iterdir())[0].unlink()
    with pytest.raises(DatasetDamaged, match="test/HR has 2 images, meta.json says 3"):
        read_meta(root)


def test_a_training_checkpoint_is_used_with_its_ema_weights_and_says_so(tiny_data, tmp_path, capsys):
    from ecdp.checkpoint import load_method
    from ecdp.training import train

    cfg = tiny_config(tiny_data, train={"checkpoint_every": 2, "ema_decay": 0.5, "stages": [
        {"name": "score", "kind": "score", "steps": 3, "batch": 2, "lr": 1e-3}]})
    final = train(cfg, tmp_path / "run")
    capsys.readouterr()
    from_ck, _ = load_method(tmp_path / "run" / "checkpoint.pt")   # saved at the end of the stage
    assert "is a training checkpoint (step 3): using its EMA weights" in capsys.readouterr().err
    from_final, _ = load_method(final)
    a, b = from_ck.state_dict(), from_final.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)   # the EMA weights, as final.pt holds them
