"""Issue 16, item 8 and the run-config tracebacks: every bad run config is a one-line
error naming the key (exit code 2), before any work, with nothing written."""
from __future__ import annotations

import re

import pytest
import yaml

from ecdp.cli import main
from helpers import tiny_config


def _stage(**kw):
    return {"name": "score", "kind": "score", "steps": 2, "batch": 2, "lr": 5e-4, **kw}


# (what is wrong, the user's settings over tiny.yaml, a fragment of the message)
CASES = [
    ("typo in train", {"train": {"chekpoint_every": 3}}, "unknown config key 'train.chekpoint_every'"),
    ("typo at the top", {"smapler": {"name": "ode"}}, "unknown config key 'smapler'"),
    ("typo in a stage", {"train": {"stages": [{**_stage(), "stpes": 3}]}}, "train.stages[0]: unknown key(s) ['stpes']"),
    ("no stages", {"train": {"stages": []}}, "at least one training stage"),
    ("negative steps", {"train": {"stages": [_stage(steps=-3)]}}, "train.stages[0].steps: must be a positive integer"),
    ("fractional steps", {"train": {"stages": [_stage(steps=1.5)]}}, "train.stages[0].steps: must be a positive integer"),
    ("steps as text", {"train": {"stages": [_stage(steps="ten")]}}, "train.stages[0].steps"),
    ("missing steps", {"train": {"stages": [{"name": "s", "kind": "score", "batch": 2, "lr": 1e-3}]}}, "missing 'steps'"),
    ("batch zero", {"train": {"stages": [_stage(batch=0)]}}, "train.stages[0].batch: must be a positive integer"),
    ("batch negative", {"train": {"stages": [_stage(batch=-2)]}}, "train.stages[0].batch"),
    ("lr as text", {"train": {"stages": [_stage(lr="fast")]}}, "train.stages[0].lr: must be a positive number"),
    ("unknown stage kind", {"train": {"stages": [_stage(kind="finetune")]}}, "'finetune' is not a stage of ecdp"),
    ("seed as text", {"seed": "abc"}, "seed: expected a number"),
    ("model not a mapping", {"model": 3}, "model: expected a mapping"),
    ("unknown method", {"method": "nosuch"}, "unknown method 'nosuch'"),
    ("unknown protocol", {"protocol": "mine"}, "protocol must be one of"),
    ("EMA decay above 1", {"train": {"ema_decay": 1.5}}, "train.ema_decay: must be a number in [0, 1]"),
]


@pytest.mark.parametrize("what,settings,message", CASES, ids=[c[0] for c in CASES])
def test_bad_run_config_is_one_line_and_writes_nothing(tiny_data, tmp_path, capsys, what, settings, message):
    base = {k: v for k, v in tiny_config(tiny_data).items()}   # a complete, valid config
    user = {"method": base["method"], "data": base["data"], "model": base["model"], "train": {
        "stages": base["train"]["stages"], "checkpoint_every": 25, "log_every": 10}}
    for k, v in settings.items():
        user[k] = {**user[k], **v} if isinstance(v, dict) and isinstance(user.get(k), dict) else v
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(user))
    out = tmp_path / "out"
    assert main(["train", "--config", str(path), "--out", str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


@pytest.mark.parametrize("text,message", [
    ("", "is empty"),
    ("method: [ecdp\n", "not valid YAML"),
    ("!!python/object/apply:os.system ['echo pwned']\n", "not valid YAML"),
    ("- a\n- b\n", "must be a YAML mapping"),
])
def test_unreadable_run_configs(tmp_path, capsys, text, message):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    assert main(["train", "--config", str(path), "--out", str(tmp_path / "out"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- sampler options
@pytest.fixture(scope="module")
def untrained(tiny_data, tmp_path_factory):
    import torch

    from ecdp import checkpoint as ckpt
    from ecdp.model import ECDP
    cfg = tiny_config(tiny_data)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ck") / "final.pt"
    ckpt.save({"format": ckpt.FORMAT, "config": cfg, "meta": {"scale": 4, "sigma2": 0.01},
               "model": ECDP(cfg, {"scale": 4, "sigma2": 0.01}).state_dict()}, path)
    return path


@pytest.mark.parametrize("options,message", [
    ('{"nmae": "dpmpp_2m"}', "has no option(s) ['nmae']"),
    ('{"name": "euler_a"}', "unknown sampler 'euler_a'"),
    ('{"atol": -1}', "atol: must be a positive number"),
    ('{"name": "dpmpp_2m", "steps": 0}', "steps: must be a positive integer"),
    ('{"name": "dpmpp_2m", "steps": -1}', "steps: must be a positive integer"),
    ('{"name": "dpmpp_2m", "steps": "ten"}', "steps: must be a positive integer"),
    ('{"name": "dpmpp_2m", "atol": 1e-3}', "has no option(s) ['atol']"),
    ('{"state": "latent"}', "state: one of"),
    ('{"name": "heun", "steps": 3, "grid": "cosine"}', "grid: one of"),
])
@pytest.mark.parametrize("command", ["sr", "evaluate", "time"])
def test_bad_sampler_options_fail_before_any_work(untrained, tiny_data, tmp_path, capsys, options, message, command,
                                                 monkeypatch):
    from ecdp.model import ECDP
    monkeypatch.setattr(ECDP, "__init__", lambda *a, **k: (_ for _ in ()).throw(AssertionError("model built")))
    out = tmp_path / "out"
    lr = sorted((tiny_data / "tiny4x" / "test" / "LR").glob("*.png"))[0]
    args = {"sr": ["sr", "--checkpoint", str(untrained), str(lr), "-o", str(out)],
            "evaluate": ["evaluate", "--checkpoint", str(untrained), "--data", str(tiny_data / "tiny4x"), "--out", str(out),
                         "--lpips-net", "none", "--no-progress"],
            "time": ["time", "--checkpoint", str(untrained), "--size", "4", "--out", str(out / "t.csv")]}[command]
    assert main([*args, "--sampler", options, "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err
    assert not out.exists()


# --------------------------------------------------------------------------- checkpoints
def _bad_checkpoints(folder, tiny_data):
    import pickle

    import torch

    from ecdp import checkpoint as ckpt
    from ecdp.model import ECDP
    (folder / "empty.pt").write_bytes(b"")
    torch.save(torch.zeros(3), folder / "tensor.pt")
    torch.save({"format": ckpt.FORMAT, "model": {}}, folder / "noconfig.pt")
    import datetime
    (folder / "pickle.pt").write_bytes(pickle.dumps({"when": datetime.date(2024, 1, 1)}))   # a global torch refuses
    cfg = tiny_config(tiny_data)
    other = {**cfg, "model": {**cfg["model"], "channels": [8, 16, 16, 16]}}
    ckpt.save({"format": ckpt.FORMAT, "config": other, "meta": {"scale": 4, "sigma2": 0.01},
               "model": ECDP(cfg, {"scale": 4, "sigma2": 0.01}).state_dict()}, folder / "mismatch.pt")
    return {"empty.pt": "is empty", "tensor.pt": "not an ecdp-bench model checkpoint",
            "noconfig.pt": "not an ecdp-bench model checkpoint", "pickle.pt": "refused",
            "mismatch.pt": "weights do not match the stored config"}


def test_bad_checkpoints_are_one_line_errors(tiny_data, tmp_path, capsys):
    lr = sorted((tiny_data / "tiny4x" / "test" / "LR").glob("*.png"))[0]
    for name, message in _bad_checkpoints(tmp_path, tiny_data).items():
        assert main(["sr", "--checkpoint", str(tmp_path / name), str(lr), "-o", str(tmp_path / "o"), "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and "weights_only` set to `False" not in err, (name, err)
        assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- --set
def test_set_reaches_list_entries(tiny_data, tmp_path):
    from ecdp import config as config_mod
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"method": "ecdp", "data": {"root": str(tiny_data), "dataset": "tiny4x"}}))
    cfg = config_mod.load(path, config_mod.parse_overrides(["train.stages.1.steps=7", "seed=3", "sampler.atol=1e-3"]))
    assert cfg["train"]["stages"][1]["steps"] == 7 and cfg["train"]["stages"][0]["steps"] == 53750   # defaults kept
    assert cfg["seed"] == 3 and cfg["sampler"]["atol"] == 1e-3
    for bad, message in [("train.stages.9.steps=1", "not an index of a list of 3"), ("seed", "key.path=value"),
                         ("seed=abc", "seed: expected a number"), ("train..steps=1", "key.path=value")]:
        with pytest.raises(ValueError, match=message):
            config_mod.load(path, config_mod.parse_overrides([bad]))


# --------------------------------------------------------------------------- ecdp data prepare: bad inputs

@pytest.mark.parametrize("args,fragment", [
    (["--root", "{file}"], "is a file, not a folder"),
    (["--root", "{file}/sub"], "which is a file, not a folder"),
    (["--set", "train_max=abc"], 'train_max="abc": must be an integer'),
    (["--set", "train_max=2"], "train_max=2: at least 64 (= 16 LR pixels at 4x)"),
    (["--set", "train_max=-8"], "must be at least 1"),
    (["--set", "variant=nosuch"], "variant must be one of ['div2k', 'square']"),
    (["--set", "variant=square"], "variant 'square' needs hr_size"),
])
def test_data_prepare_bad_inputs_are_one_line_errors(tmp_path, capsys, args, fragment):
    from ecdp.cli import main

    afile = tmp_path / "afile"
    afile.write_text("")
    args = [a.replace("{file}", str(afile)) for a in args]
    if "--root" not in args:
        args += ["--root", str(tmp_path / "data")]
    assert main(["data", "prepare", "embedded-div2k", "--no-progress", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and len(err.splitlines()) == 1 and "embedded-div2k: embedded-div2k" not in err
    assert not (tmp_path / "data" / "embedded-div2k").exists()


def test_data_prepare_with_other_options_than_the_prepared_folder_says_so(tmp_path, capsys):
    from ecdp.cli import main

    root = str(tmp_path / "data")
    assert main(["data", "prepare", "embedded-celeba", "--root", root, "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["data", "prepare", "embedded-celeba", "--root", root, "--set", "hr_size=128", "--no-progress"]) == 2
    assert "with hr_size=160; --force rebuilds it with hr_size=128" in capsys.readouterr().err


# --------------------------------------------------------------------------- ecdp metrics / ecdp time: bad inputs

def _png(path, side):
    import numpy as np
    from PIL import Image

    Image.fromarray((np.random.default_rng(side).random((side, side, 3)) * 255).astype("uint8")).save(path)
    return str(path)


@pytest.mark.parametrize("side,net,fragment", [(24, "alex", "LPIPS-alex needs images of at least 31 px"),
                                               (15, "vgg", "LPIPS-vgg needs images of at least 16 px")])
def test_metrics_small_images_are_one_line_errors(tmp_path, capsys, side, net, fragment):
    from ecdp.cli import main

    img = _png(tmp_path / "a.png", side)
    assert main(["metrics", img, img, "--lpips-net", net]) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and len(err.splitlines()) == 1
    assert main(["metrics", img, img, "--lpips-net", "none"]) == 0
    assert "LPIPS  skipped" in capsys.readouterr().out


@pytest.mark.parametrize("target,fragment", [("{tmp}", "is a folder, not a file"),
                                             ("{tmp}/afile/x.csv", "afile is a file, not a folder"),
                                             ("/proc/x.csv", "cannot write there")])
def test_metrics_and_time_refuse_an_unwritable_output_before_any_work(tmp_path, capsys, target, fragment,
                                                                       monkeypatch):
    from ecdp import metrics as M
    from ecdp.cli import main

    (tmp_path / "afile").write_text("")
    target = target.replace("{tmp}", str(tmp_path))
    img = _png(tmp_path / "a.png", 40)
    monkeypatch.setattr(M, "score", lambda *a, **k: pytest.fail("scored before checking --csv"))
    assert main(["metrics", img, img, "--csv", target]) == 2
    assert fragment in capsys.readouterr().err
    assert main(["time", "--checkpoint", str(tmp_path / "none.pt"), "--out", target]) == 2
    assert fragment in capsys.readouterr().err


def test_metrics_and_time_never_overwrite_an_existing_file_unasked(tmp_path, capsys):
    from ecdp.cli import main

    img = _png(tmp_path / "a.png", 40)
    target = tmp_path / "mine.csv"
    target.write_text("a user's file\n")
    assert main(["metrics", img, img, "--lpips-net", "none", "--csv", str(target)]) == 2
    assert "mine.csv exists; pass --overwrite" in capsys.readouterr().err
    assert main(["time", "--checkpoint", str(tmp_path / "none.pt"), "--out", str(target)]) == 2
    assert "mine.csv exists; pass --overwrite" in capsys.readouterr().err
    assert target.read_text() == "a user's file\n"
    assert main(["metrics", img, img, "--lpips-net", "none", "--csv", str(target), "--overwrite"]) == 0
    assert target.read_text().startswith("image,psnr,ssim,lpips")


# --------------------------------------------------------------------------- ecdp sr: awkward inputs

def _bomb(path):
    import struct
    import zlib

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\x00" * 100)) + chunk(b"IEND", b""))
    return str(path)


@pytest.fixture
def bicubic_checkpoint(tiny_data, tmp_path):
    from ecdp import config as C
    from ecdp.training import train

    return str(train(C.resolve({"method": "bicubic", "data": {"dataset": "tiny4x", "root": str(tiny_data)}}),
                     tmp_path / "bicubic"))


def test_sr_refuses_a_decompression_bomb_and_does_nothing_of_the_batch(tmp_path, capsys, bicubic_checkpoint):
    from ecdp.cli import main

    good, bomb, out = _png(tmp_path / "a.png", 40), _bomb(tmp_path / "bomb.png"), tmp_path / "out"
    capsys.readouterr()
    assert main(["sr", "--checkpoint", bicubic_checkpoint, good, bomb, "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "bomb.png: refused, Image size (3600000000 pixels) exceeds limit" in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_sr_writes_an_output_whose_name_leaves_no_room_for_a_longer_temporary_name(tmp_path, bicubic_checkpoint):
    from ecdp.cli import main

    name = "x" * 250 + ".png"   # 254 bytes: the temporary name must stay under 255
    src = _png(tmp_path / name, 40)
    out = tmp_path / "out"
    assert main(["sr", "--checkpoint", bicubic_checkpoint, src, "-o", str(out)]) == 0
    assert [p.name for p in out.iterdir()] == [name]


# --------------------------------------------------------------------------- workflow config: names checked at dry-run time

@pytest.mark.parametrize("mutate,fragment", [
    (lambda c: c["studies"]["table1"].__setitem__("dataset", "nosuch"), "studies.table1.dataset: 'nosuch' is not under"),
    (lambda c: c["studies"]["protocol"]["discrepancies"].__setitem__("nosuch", {}),
     "studies.protocol.discrepancies: unknown ['nosuch']"),
    (lambda c: c["variants"]["ecdp-hybrid-c1.0-noquality"].__setitem__("drop_stages", ["nosuch"]),
     "drop_stages: ['nosuch'] names no stage"),
    (lambda c: c["studies"]["samplers"].__setitem__("accurate", 99), "studies.samplers.accurate: 99 is not an index"),
])
def test_workflow_config_names_are_checked_before_any_job(mutate, fragment):
    from pathlib import Path

    from ecdp.config import yaml_load
    from ecdp.grid import Grid

    root = Path(__file__).resolve().parent.parent
    cfg = yaml_load((root / "config" / "default.yaml").read_text())
    mutate(cfg)
    with pytest.raises(ValueError, match=re.escape(fragment)):
        Grid(cfg, root)


def test_prepare_leaves_no_lock_file_in_the_data_root(tmp_path):
    from ecdp.data.prepare import prepare

    prepare("embedded-celeba", tmp_path / "data", progress=False)
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["_downloads", "embedded-celeba"]


def test_progress_on_a_log_file_is_lines_not_carriage_returns(tmp_path):
    import io

    from ecdp.progress import bar

    log = io.StringIO()   # not a terminal, as a workflow job's log
    for _ in bar(range(500), desc="train", file=log, mininterval=0):
        pass
    text = log.getvalue()
    assert "\r" not in text and text.count("\n") >= 2 and "500/500" in text.splitlines()[-1]
