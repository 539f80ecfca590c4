"""`ecdp sr` on a user's own images: odd sizes and modes, corrupt files, `ecdp params`."""
import numpy as np
import pytest
import torch
from PIL import Image

from ecdp.cli import main
from ecdp.imageio import load_image
from ecdp.training import train

from helpers import tiny_config

SHORT = {"train": {"checkpoint_every": 100, "warmup": 0, "stages": [
    {"name": "score", "kind": "score", "steps": 2, "batch": 2, "lr": 1e-4}]},
    "sampler": {"name": "ode", "method": "dopri5", "atol": 1e-2, "rtol": 1e-2}}


@pytest.fixture(scope="module")
def checkpoint(tiny_data, tmp_path_factory):
    return train(tiny_config(tiny_data, **SHORT), tmp_path_factory.mktemp("run") / "r")


def write_inputs(folder):
    g = np.random.default_rng(0)
    paths = {}
    rgb = (g.random((13, 7, 3)) * 255).astype(np.uint8)
    paths["rgb"] = folder / "odd_rgb.png"
    Image.fromarray(rgb).save(paths["rgb"])
    paths["rgba"] = folder / "alpha.png"
    Image.fromarray(np.dstack([rgb, np.full((13, 7), 128, np.uint8)]), "RGBA").save(paths["rgba"])
    paths["gray"] = folder / "gray.png"
    Image.fromarray((g.random((9, 10)) * 255).astype(np.uint8), "L").save(paths["gray"])
    paths["gray16"] = folder / "gray16.png"
    Image.fromarray((g.random((6, 5)) * 65535).astype(np.uint16)).save(paths["gray16"])
    paths["jpeg"] = folder / "photo.jpg"
    Image.fromarray(rgb).save(paths["jpeg"])
    return paths


@pytest.mark.slow   # > 5 s: CI runs it (.ci/run), the fast suite stays under 3 min
def test_sr_odd_sizes_and_modes(checkpoint, tmp_path):
    paths = write_inputs(tmp_path)
    out = tmp_path / "out"
    assert main(["sr", "--checkpoint", str(checkpoint), *map(str, paths.values()), "-o", str(out)]) == 0
    for key, p in paths.items():
        src = Image.open(p)
        res = Image.open(out / f"{p.stem}.png")
        assert res.size == (src.size[0] * 4, src.size[1] * 4), key
        assert res.mode == ("RGBA" if key == "rgba" else "RGB"), key
    # deterministic for a fixed seed
    first = load_image(out / "odd_rgb.png")
    assert main(["sr", "--checkpoint", str(checkpoint), str(paths["rgb"]), "-o", str(tmp_path / "again")]) == 0
    assert torch.equal(first, load_image(tmp_path / "again" / "odd_rgb.png"))


def test_sr_corrupt_file_writes_nothing(checkpoint, tmp_path, capsys):
    good = write_inputs(tmp_path)["rgb"]
    bad = tmp_path / "broken.png"
    bad.write_bytes(good.read_bytes()[:40])  # truncated PNG
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    out = tmp_path / "out"
    for corrupt in (bad, text):
        code = main(["sr", "--checkpoint", str(checkpoint), str(good), str(corrupt), "-o", str(out)])
        err = capsys.readouterr().err.strip()
        assert code != 0
        assert len(err.splitlines()) == 1 and corrupt.name in err
        assert not out.exists() or not any(out.iterdir())


def test_sr_bad_checkpoint(tmp_path, capsys):
    img = write_inputs(tmp_path)["rgb"]
    fake = tmp_path / "fake.pt"
    fake.write_bytes(b"garbage")
    assert main(["sr", "--checkpoint", str(fake), str(img), "-o", str(tmp_path / "o")]) != 0
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


@pytest.mark.slow   # > 5 s: CI runs it (.ci/run), the fast suite stays under 3 min
def test_params_within_two_percent(capsys):
    assert main(["params"]) == 0
    out = capsys.readouterr().out
    for arch, paper in (("div2k", "42.6"), ("imagenet", "37.6"), ("celeba", "40.0")):
        line = next(l for l in out.splitlines() if l.startswith("ECDP") and arch in l)
        assert paper in line and line.rstrip().endswith("yes")


@pytest.mark.parametrize("text", ["{atol: 1e-3", "[1, 2]"])
def test_sr_bad_sampler_option_is_one_line_error(tmp_path, capsys, checkpoint, text):
    img = write_inputs(tmp_path)["rgb"]
    out = tmp_path / "o"
    assert main(["sr", "--checkpoint", str(checkpoint), str(img), "-o", str(out), "--sampler", text]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--sampler" in err and not out.exists()
