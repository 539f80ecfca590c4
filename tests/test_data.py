"""The embedded (pip-wheel) datasets, sigma^2 estimation, idempotent/atomic prepare,
and the ``ecdp data`` command."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from ecdp.cli import main as ecdp_main
from ecdp.data import PairedImages, read_meta
from ecdp.data import embedded
from ecdp.data.download import ChecksumError
from ecdp.data.prepare import estimate_sigma2, estimate_sigma2_all, prepare, single_threaded_torch
from ecdp.data.registry import EMBEDDED_NAMES, REGISTRY, get_spec, resolve_names
from ecdp.imageio import load_image, save_image
from ecdp.imresize import bicubic_upsample, imresize

EXPECTED = {  # name: (scale, HR side or None, LR side or None)
    "embedded-div2k": (4, None, None),
    "embedded-imagenet": (4, 256, 64),
    "embedded-celeba": (8, 160, 20),
}


@pytest.fixture(scope="module")
def embedded_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("embedded")
    assert ecdp_main(["data", "prepare", "embedded", "--root", str(root), "--no-progress"]) == 0
    return root


def test_embedded_sources_verify_against_installed_files():
    from skimage.data._registry import registry
    assert len(embedded.SOURCES) == 12
    for src in embedded.SOURCES:
        data = embedded.read_verified(src)
        assert hashlib.sha256(data).hexdigest() == src.sha256
        if src.package == "skimage":
            assert registry["data/" + Path(src.relpath).name] == src.sha256
    assert set(embedded.TEST_NAMES) <= {s.name for s in embedded.SOURCES}


@pytest.mark.parametrize("name", EMBEDDED_NAMES)
def test_embedded_layout_counts_shapes_meta(embedded_root, name):
    scale, hr_side, lr_side = EXPECTED[name]
    folder = embedded_root / name
    meta = read_meta(folder)
    assert meta["name"] == name and meta["scale"] == scale
    assert meta["counts"] == {"train": 9, "test": 3}
    assert meta["sigma2"] > 0 and meta["sigma2"] == meta["sigma2_by_kernel"]["matlab"]
    assert meta["sigma2_by_kernel"]["torch"] > 0
    assert meta["protocol"] and "imresize" in meta["lr_kernel"]
    assert {s["name"] for s in meta["sources"] if s["split"] == "test"} == set(embedded.TEST_NAMES)
    assert {s["sha256"] for s in meta["sources"]} == {s.sha256 for s in embedded.SOURCES}
    for split in ("train", "test"):
        stems = sorted(p.stem for p in (folder / split / "HR").iterdir())
        assert stems == sorted(p.stem for p in (folder / split / "LR").iterdir())
        for stem in stems:
            hr = load_image(folder / split / "HR" / f"{stem}.png")
            lr = load_image(folder / split / "LR" / f"{stem}.png")
            assert hr.shape[-2:] == (scale * lr.shape[-2], scale * lr.shape[-1])
            if hr_side:
                assert hr.shape[-2:] == (hr_side, hr_side) and lr.shape[-2:] == (lr_side, lr_side)
            elif split == "test":
                assert max(hr.shape[-2:]) <= 256
            else:
                assert max(hr.shape[-2:]) <= 512
    # LR is the MATLAB-bicubic degradation of the stored 8-bit HR (up to 8-bit rounding)
    hr = load_image(folder / "test/HR/coffee.png")
    lr = load_image(folder / "test/LR/coffee.png")
    assert (imresize(hr, scale=1 / scale).clamp(0, 1) - lr).abs().max() <= 0.5 / 255 + 1e-6
    assert len(PairedImages(folder, "test")) == 3


def test_sigma2_matches_direct_pooled_variance(embedded_root):
    folder = embedded_root / "embedded-celeba"
    residual = {"matlab": [], "torch": []}
    with single_threaded_torch():
        for hr_p in sorted((folder / "train/HR").iterdir()):
            hr = load_image(hr_p).double()
            lr = load_image(folder / "train/LR" / hr_p.name).double()
            for k in residual:
                residual[k].append((hr - bicubic_upsample(lr, 8, k)).flatten())
        meta = read_meta(folder)
        for k, parts in residual.items():
            direct = torch.cat(parts).var(unbiased=False).item()
            assert meta["sigma2_by_kernel"][k] == pytest.approx(direct, rel=1e-9)
            assert estimate_sigma2(folder, k) == pytest.approx(direct, rel=1e-9)


def test_estimate_sigma2_known_residual(tmp_path):
    # HR = mu(LR) + d * checkerboard on the 8-bit grid (constant LR): sigma2 = d^2
    lr = torch.full((3, 8, 8), 0.5)
    hr = bicubic_upsample(lr, 4, "matlab")
    d = 4 / 255
    r = torch.ones(32, 32)
    r[::2, 1::2] = r[1::2, ::2] = -1
    save_image(hr + d * r, tmp_path / "train/HR/a.png")
    save_image(lr, tmp_path / "train/LR/a.png")
    assert estimate_sigma2(tmp_path, "matlab", scale=4) == pytest.approx(d * d, rel=1e-4)   # float32 files
    assert estimate_sigma2_all(tmp_path, scale=4, split="test") == {"matlab": None, "torch": None}


def test_second_run_is_a_noop(embedded_root, capsys):
    meta = embedded_root / "embedded-div2k" / "meta.json"
    before = meta.stat().st_mtime_ns
    assert ecdp_main(["data", "prepare", "embedded-div2k", "--root", str(embedded_root), "--no-progress"]) == 0
    assert "already prepared" in capsys.readouterr().out
    assert prepare("embedded-div2k", embedded_root, progress=False) == embedded_root / "embedded-div2k"
    assert meta.stat().st_mtime_ns == before


def test_tampered_source_is_rejected(tmp_path, monkeypatch):
    real = embedded.locate(embedded.SOURCES[0])
    bad = tmp_path / "astronaut.png"
    data = bytearray(real.read_bytes())
    data[-100] ^= 0xFF
    bad.write_bytes(bytes(data))
    original = embedded.locate
    monkeypatch.setattr(embedded, "locate", lambda src: bad if src.name == "astronaut" else original(src))
    with pytest.raises(ChecksumError, match="astronaut"):
        prepare("embedded-celeba", tmp_path / "root", progress=False)
    assert not (tmp_path / "root" / "embedded-celeba").exists()
    assert not (tmp_path / "root" / "embedded-celeba.tmp").exists()


def test_interrupted_prepare_leaves_nothing_and_rerun_completes(tmp_path, monkeypatch):
    calls = {"n": 0}
    original = embedded.read_verified

    def flaky(src):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(src)

    monkeypatch.setattr(embedded, "read_verified", flaky)
    root = tmp_path / "root"
    with pytest.raises(KeyboardInterrupt):
        prepare("embedded-celeba", root, limit=2, progress=False)
    assert not (root / "embedded-celeba").exists() and not (root / "embedded-celeba.tmp").exists()
    # a stale half-built folder from a killed run is replaced, never used
    (root / "embedded-celeba.tmp" / "train" / "HR").mkdir(parents=True)
    out = prepare("embedded-celeba", root, limit=2, progress=False)
    meta = read_meta(out)
    assert meta["counts"] == {"train": 2, "test": 2} and meta["limit"] == 2


def test_cli_list_and_dry_run(tmp_path, capsys):
    assert ecdp_main(["data", "list"]) == 0
    out = capsys.readouterr().out
    for name in REGISTRY:
        assert name in out
    root = tmp_path / "nothing-here"
    assert ecdp_main(["data", "prepare", "div2k", "--root", str(root), "--dry-run"]) == 0
    out = capsys.readouterr().out
    for f in get_spec("div2k").files.values():
        assert f.url in out and f.md5 in out
        if f.sha256:
            assert f.sha256 in out and str(f.size) in out
    assert not root.exists()
    assert ecdp_main(["data", "prepare", "imagenet", "--root", str(root), "--dry-run"]) == 0
    assert "ILSVRC2012_img_val.tar" in capsys.readouterr().out and not root.exists()


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert ecdp_main(["data", "prepare", "nope", "--root", str(tmp_path)]) == 2
    assert "unknown dataset" in capsys.readouterr().err
    assert ecdp_main(["data", "prepare", "imagenet", "--root", str(tmp_path), "--no-progress"]) == 2
    assert "--source-dir" in capsys.readouterr().err
    assert ecdp_main(["data", "prepare", "embedded-celeba", "--root", str(tmp_path), "--set", "bogus=1"]) == 2
    assert "unknown option" in capsys.readouterr().err


def test_registry_entries_document_their_protocol():
    assert resolve_names(["embedded", "set5", "embedded-div2k"]) == list(EMBEDDED_NAMES) + ["set5"]
    for spec in REGISTRY.values():
        assert len(spec.protocol) > 100, spec.name
        for f in spec.files.values():
            assert f.md5 or f.sha256, (spec.name, f.filename)
    div2k = get_spec("div2k")
    assert div2k.files["train_hr"].size == 3530603713
    assert get_spec("celeba").options["box"] == [0, 20, 178, 198]
    assert get_spec("urban100").splits == ("test",)


# ---------------------------------------------------------------- the paper-scale builders on tiny fakes
def _photo(h: int, w: int, top: int = 0) -> torch.Tensor:
    x = embedded.load_verified(embedded.SOURCES[0])          # astronaut, 512x512
    return x[:, top:top + h, :w]


def _encode(x: torch.Tensor, fmt: str) -> bytes:
    import io

    import numpy as np
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray((x.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(buf, fmt)
    return buf.getvalue()


def _remote(path: Path, like):
    import dataclasses
    data = path.read_bytes()
    return dataclasses.replace(like, url=path.as_uri(), gdrive_id=None, size=len(data),
                               sha256=hashlib.sha256(data).hexdigest(), md5=None)


def test_prepare_celeba_protocol_on_fake_files(tmp_path):
    import dataclasses
    import zipfile
    names = [f"{i:06d}.jpg" for i in range(1, 6)]
    with zipfile.ZipFile(tmp_path / "img_align_celeba.zip", "w") as zf:
        for i, n in enumerate(names):
            zf.writestr(f"img_align_celeba/{n}", _encode(_photo(218, 178, top=20 * i), "JPEG"))
    (tmp_path / "list_eval_partition.txt").write_text(
        "".join(f"{n} {p}\n" for n, p in zip(names, [0, 0, 1, 2, 2])))
    real = get_spec("celeba")
    spec = dataclasses.replace(real, files={"images": _remote(tmp_path / "img_align_celeba.zip", real.files["images"]),
                                            "partition": _remote(tmp_path / "list_eval_partition.txt",
                                                                 real.files["partition"])})
    out = prepare(spec, tmp_path / "root", options={"test_count": 1}, progress=False)
    meta = read_meta(out)
    assert meta["counts"] == {"train": 2, "test": 1} and meta["scale"] == 8 and meta["sigma2"] > 0
    assert sorted(p.name for p in (out / "test/HR").iterdir()) == ["000004.png"]   # first of partition 2
    hr, lr = load_image(out / "test/HR/000004.png"), load_image(out / "test/LR/000004.png")
    assert hr.shape == (3, 160, 160) and lr.shape == (3, 20, 20)
    with zipfile.ZipFile(tmp_path / "img_align_celeba.zip") as zf:
        src = embedded.decode(zf.read("img_align_celeba/000004.jpg"))
    expected = imresize(src[:, 20:198, 0:178], size=(160, 160)).clamp(0, 1)     # box (0, 20, 178, 198)
    assert (expected - hr).abs().max() <= 0.5 / 255 + 1e-6


def test_prepare_benchmark_test_only_with_official_lr(tmp_path):
    import dataclasses
    import io
    import tarfile
    hr = _photo(26, 30)                                     # not a multiple of 4: cropped to 24x28
    lr = imresize(hr[:, :24, :28], scale=0.25).clamp(0, 1)
    with tarfile.open(tmp_path / "benchmark.tar", "w") as tf:
        for name, data in (("benchmark/Set5/HR/baby.png", _encode(hr, "PNG")),
                           ("benchmark/Set5/LR_bicubic/X4/babyx4.png", _encode(lr, "PNG"))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    real = get_spec("set5")
    spec = dataclasses.replace(real, files={"benchmark": _remote(tmp_path / "benchmark.tar", real.files["benchmark"])})
    out = prepare(spec, tmp_path / "root", progress=False)
    meta = read_meta(out)
    assert meta["counts"] == {"train": 0, "test": 1} and meta["sigma2"] is None
    assert load_image(out / "test/HR/baby.png").shape == (3, 24, 28)
    assert load_image(out / "test/LR/baby.png").shape == (3, 6, 7)


def test_prepare_imagenet_streams_user_tarballs(tmp_path):
    import dataclasses
    import io
    import tarfile

    def add(tf, name, data):
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))

    src = tmp_path / "src"
    src.mkdir()
    with tarfile.open(src / "ILSVRC2012_img_val.tar", "w") as tf:
        for i in (3, 1, 2):                                 # tar order is not name order
            add(tf, f"ILSVRC2012_val_{i:08d}.JPEG", _encode(_photo(60 + i, 80, top=10 * i), "JPEG"))
    buf = {}
    for cls in ("n001", "n002"):
        b = io.BytesIO()
        with tarfile.open(fileobj=b, mode="w") as tf:
            for j in range(3):
                add(tf, f"{cls}_{j}.JPEG", _encode(_photo(70, 50 + j, top=5 * j), "JPEG"))
        buf[cls] = b.getvalue()
    with tarfile.open(src / "ILSVRC2012_img_train.tar", "w") as tf:
        for cls, data in buf.items():
            add(tf, f"{cls}.tar", data)
    real = get_spec("imagenet")
    md5 = {r: hashlib.md5((src / f.filename).read_bytes()).hexdigest() for r, f in real.user_files.items()}
    spec = dataclasses.replace(real, user_files={r: dataclasses.replace(f, md5=md5[r])
                                                 for r, f in real.user_files.items()})
    out = prepare(spec, tmp_path / "root", source_dir=src, options={"test_limit": 2, "train_per_class": 2},
                  progress=False)
    meta = read_meta(out)
    assert meta["counts"] == {"train": 4, "test": 2}
    assert sorted(p.stem for p in (out / "test/HR").iterdir()) == ["ILSVRC2012_val_00000001", "ILSVRC2012_val_00000002"]
    assert sorted(p.stem for p in (out / "train/HR").iterdir()) == ["n001_0", "n001_1", "n002_0", "n002_1"]
    hr = load_image(out / "test/HR/ILSVRC2012_val_00000001.png")
    assert hr.shape == (3, 256, 256)
    with tarfile.open(src / "ILSVRC2012_img_val.tar") as tf:
        img = embedded.decode(tf.extractfile("ILSVRC2012_val_00000001.JPEG").read())     # 61x80
    expected = imresize(img[:, :, 9:70], size=(256, 256)).clamp(0, 1)                  # centre 61x61 square
    assert (expected - hr).abs().max() <= 0.5 / 255 + 1e-6
    assert load_image(out / "test/LR/ILSVRC2012_val_00000001.png").shape == (3, 64, 64)
    # a user file with the wrong md5 is refused
    bad = dataclasses.replace(real, user_files={r: dataclasses.replace(f, md5="0" * 32)
                                                for r, f in real.user_files.items()})
    with pytest.raises(Exception, match="md5"):
        prepare(bad, tmp_path / "root2", source_dir=src, progress=False)
