"""The real registry entries and the real ``ecdp data prepare`` on archives with the
official names and layouts (ecdp.data.fixtures), served on 127.0.0.1 (or a local
``file://`` folder) and reached through a ``--sources`` override (URL base and
checksums, verified): the protocol of
each dataset is checked on the prepared images, pixel for pixel."""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ecdp.cli import main as ecdp_main
from ecdp.data import fixtures
from ecdp.data.registry import (REGISTRY, SOURCES_ENV, SourcesError, check_sources, get_spec, with_sources)
from ecdp.imageio import load_image, quantize
from ecdp.imresize import imresize


# ---------------------------------------------------------------- helpers
def decode(data: bytes) -> torch.Tensor:
    """Source image bytes -> (3, H, W) [0, 1], decoded independently of ecdp (PIL, RGB)."""
    with Image.open(io.BytesIO(data)) as img:
        arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def zip_members(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return {n: zf.read(n) for n in zf.namelist() if not n.endswith("/")}


def tar_members(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return {m.name: tf.extractfile(m).read() for m in tf if m.isfile()}


def lr_of(hr: torch.Tensor, scale: int) -> torch.Tensor:
    return quantize(imresize(hr, scale=1.0 / scale))


def images(folder: Path) -> dict[str, torch.Tensor]:
    return {p.stem: load_image(p) for p in sorted(folder.glob("*.png"))}


def prepare_cli(name: str, root: Path, sources: Path | None, *extra: str) -> int:
    args = ["data", "prepare", name, "--root", str(root), "--no-progress", *extra]
    return ecdp_main(args + (["--sources", str(sources)] if sources else []))


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err and "\n" not in err, err
    return err


# ---------------------------------------------------------------- fixtures
def marked(png: bytes) -> bytes:
    """The image one 8-bit level off in its red channel: an "official" LR file that
    differs from what prepare would compute, so that using it can be told apart."""
    x = decode(png)
    x[0] = torch.where(x[0] < 1, x[0] + 1 / 255, x[0] - 1 / 255)
    return fixtures.encode(x)


@pytest.fixture(scope="module")
def archives() -> dict[str, bytes]:
    """The official-layout archives, their shipped X4 LR images marked (see :func:`marked`)."""
    out = fixtures.build_archives()
    lr_zip = zip_members(out["DIV2K_valid_LR_bicubic_X4.zip"])
    out["DIV2K_valid_LR_bicubic_X4.zip"] = fixtures.zip_bytes(fixtures.with_folders(
        [(n, marked(b)) for n, b in lr_zip.items()]))
    bench = tar_members(out["benchmark.tar"])
    out["benchmark.tar"] = fixtures.tar_bytes(fixtures.with_folders(
        [(n, marked(b) if "/LR_bicubic/X4/" in n else b) for n, b in bench.items()]))
    return out


@pytest.fixture(scope="module")
def hosted(archives, tmp_path_factory):
    """(server, sources file, folder holding the user files) for every archive."""
    tmp = tmp_path_factory.mktemp("hosted")
    with fixtures.Server() as srv:
        srv.add({k: v for k, v in archives.items() if not k.startswith("ILSVRC2012")})
        sources = fixtures.write_sources(tmp / "sources.json", fixtures.sources_for(archives, srv.base_url))
        user = tmp / "ILSVRC2012"
        fixtures.write_archives(user, {k: v for k, v in archives.items() if k.startswith("ILSVRC2012")})
        yield srv, sources, user


@pytest.fixture
def no_env_sources(monkeypatch):
    monkeypatch.delenv(SOURCES_ENV, raising=False)


# ---------------------------------------------------------------- the four protocols
def test_div2k_df2k_protocol(archives, hosted, tmp_path, no_env_sources):
    srv, sources, _ = hosted
    root = tmp_path / "data"
    assert prepare_cli("div2k", root, sources) == 0
    out = root / "div2k"
    meta = json.loads((out / "meta.json").read_text())
    assert meta["counts"] == {"train": 5, "test": 2}
    assert {s["file"]: s["url"] for s in meta["sources"]} == {
        f: srv.base_url + f for f in ("DIV2K_train_HR.zip", "Flickr2K.tar", "DIV2K_valid_HR.zip",
                                      "DIV2K_valid_LR_bicubic_X4.zip")}
    assert {s["sha256"] for s in meta["sources"]} == {
        hashlib.sha256(archives[s["file"]]).hexdigest() for s in meta["sources"]}
    train_hr, train_lr = images(out / "train/HR"), images(out / "train/LR")
    # DIV2K 0001-0003 and Flickr2K's HR images (not its LR_bicubic folder) are the training set
    assert sorted(train_hr) == ["000001", "000002", "0001", "0002", "0003"]
    src = {Path(n).stem: decode(b) for n, b in zip_members(archives["DIV2K_train_HR.zip"]).items()}
    src |= {Path(n).stem: decode(b) for n, b in tar_members(archives["Flickr2K.tar"]).items() if "_HR/" in n}
    assert src["0001"].shape[-2:] == (50, 66) and src["0003"].shape[-2:] == (45, 71)   # not multiples of 4
    for stem, hr in train_hr.items():
        H, W = src[stem].shape[-2:]
        assert torch.equal(hr, src[stem][:, :H - H % 4, :W - W % 4]), stem          # top-left mod-crop
        assert torch.equal(train_lr[stem], lr_of(hr, 4)), stem                      # MATLAB bicubic of the HR file
    assert train_hr["0001"].shape[-2:] == (48, 64) and train_hr["0003"].shape[-2:] == (44, 68)
    # test: 0801, 0802 with the official X4 file as LR, HR cropped to 4x its size
    test_hr, test_lr = images(out / "test/HR"), images(out / "test/LR")
    valid = {Path(n).stem: decode(b) for n, b in zip_members(archives["DIV2K_valid_HR.zip"]).items()}
    official = {Path(n).stem: decode(b) for n, b in zip_members(archives["DIV2K_valid_LR_bicubic_X4.zip"]).items()}
    assert sorted(test_hr) == sorted(test_lr) == ["0801", "0802"]
    for stem in test_hr:
        lr = official[f"{stem}x4"]
        assert torch.equal(test_lr[stem], lr), stem                               # the official file, as is
        h, w = lr.shape[-2:]
        assert torch.equal(test_hr[stem], valid[stem][:, :4 * h, :4 * w]), stem
        assert not torch.equal(lr, lr_of(test_hr[stem], 4))                       # (which is not a recomputation)
    assert test_hr["0802"].shape[-2:] == (40, 56)                                  # 42x57 -> 4 x (10x14)
    assert meta["sigma2"] > 0


def test_celeba_crop_sizes_and_partitions(archives, hosted, tmp_path, no_env_sources):
    _, sources, _ = hosted
    root = tmp_path / "data"
    assert prepare_cli("celeba", root, sources, "--set", "test_count=2") == 0
    out = root / "celeba"
    parts = [line.split() for line in archives["list_eval_partition.txt"].decode().splitlines()]
    train = [n[:-4] for n, p in parts if p == "0"]
    test = [n[:-4] for n, p in parts if p == "2"][:2]
    assert train == ["000001", "000002", "000005"] and test == ["000004", "000006"]   # not 000008
    src = {Path(n).stem: decode(b) for n, b in zip_members(archives["img_align_celeba.zip"]).items()}
    for split, names in (("train", train), ("test", test)):
        hr, lr = images(out / split / "HR"), images(out / split / "LR")
        assert sorted(hr) == sorted(lr) == names, split
        for stem in names:
            assert src[stem].shape[-2:] == (218, 178)
            box = src[stem][:, 20:198, 0:178]                                   # (left 0, top 20, right 178, bottom 198)
            assert torch.equal(hr[stem], quantize(imresize(box, size=(160, 160)))), stem
            assert lr[stem].shape[-2:] == (20, 20) and torch.equal(lr[stem], lr_of(hr[stem], 8)), stem
    assert json.loads((out / "meta.json").read_text())["counts"] == {"train": 3, "test": 2}


def test_imagenet_centre_squares_and_val_order(archives, hosted, tmp_path, no_env_sources):
    _, sources, user = hosted
    root = tmp_path / "data"
    assert prepare_cli("imagenet", root, sources, "--source-dir", str(user), "--set", "test_limit=3") == 0
    out = root / "imagenet"
    src = {}
    for cls, data in tar_members(archives["ILSVRC2012_img_train.tar"]).items():
        assert cls in ("n01440764.tar", "n01443537.tar")
        src |= {Path(n).stem: decode(b) for n, b in tar_members(data).items()}
    val = {Path(n).stem: decode(b) for n, b in tar_members(archives["ILSVRC2012_img_val.tar"]).items()}
    assert min(x.shape[-1] for x in src.values()) < 256                       # one image smaller than 256
    for split, expected in (("train", sorted(src)),
                            ("test", [f"ILSVRC2012_val_{i:08d}" for i in (1, 2, 3)])):   # val 1..test_limit
        hr, lr = images(out / split / "HR"), images(out / split / "LR")
        assert sorted(hr) == sorted(lr) == expected, split
        for stem, x in hr.items():
            s = (src if split == "train" else val)[stem]
            side = min(s.shape[-2:])
            top, left = (s.shape[-2] - side) // 2, (s.shape[-1] - side) // 2
            square = s[:, top:top + side, left:left + side]
            assert torch.equal(x, quantize(imresize(square, size=(256, 256)))), stem
            assert lr[stem].shape[-2:] == (64, 64) and torch.equal(lr[stem], lr_of(x, 4)), stem
    sources_meta = json.loads((out / "meta.json").read_text())["sources"]
    assert {s["file"]: s["md5"] for s in sources_meta} == {
        f: hashlib.md5(archives[f]).hexdigest() for f in ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")}


def test_set5_uses_the_shipped_x4_images(archives, hosted, tmp_path, monkeypatch):
    _, sources, _ = hosted
    bad = tmp_path / "bad.yaml"
    bad.write_text("files: {nope.zip: {md5: 00000000000000000000000000000000}}\n")
    monkeypatch.setenv(SOURCES_ENV, str(bad))                  # --sources wins over the environment
    root = tmp_path / "data"
    assert prepare_cli("set5", root, sources) == 0
    out = root / "set5"
    members = tar_members(archives["benchmark.tar"])
    hr, lr = images(out / "test/HR"), images(out / "test/LR")
    names = ["baby", "bird", "butterfly", "head", "woman"]
    assert sorted(hr) == sorted(lr) == names and not list((out / "train/HR").iterdir())
    for stem in names:
        shipped = decode(members[f"benchmark/Set5/LR_bicubic/X4/{stem}x4.png"])
        assert torch.equal(lr[stem], shipped) and not torch.equal(shipped, lr_of(hr[stem], 4)), stem
        h, w = shipped.shape[-2:]
        assert torch.equal(hr[stem], decode(members[f"benchmark/Set5/HR/{stem}.png"])[:, :4 * h, :4 * w]), stem
    assert hr["woman"].shape[-2:] == (56, 36)                                   # 57x38 cropped to 4 x (14x9)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["sigma2"] is None and meta["counts"] == {"train": 0, "test": 5}


def test_a_file_mirror_prepares_the_same_dataset(archives, hosted, tmp_path, capsys, no_env_sources):
    """``base_url: file:///FOLDER/`` (a local mirror, as the rehearsal's fixture rule writes
    it): the same prepared images as over HTTP, checksums verified; a missing archive is a
    one-line error at once."""
    _, http_sources, _ = hosted
    mirror = tmp_path / "mirror"
    fixtures.write_archives(mirror, {"benchmark.tar": archives["benchmark.tar"]})
    sources = fixtures.write_sources(tmp_path / "file.json", fixtures.sources_for(archives, mirror.as_uri() + "/"))
    assert prepare_cli("set14", tmp_path / "a", sources) == 0
    assert prepare_cli("set14", tmp_path / "b", http_sources) == 0
    for split in ("test/HR", "test/LR"):
        got, want = images(tmp_path / "a/set14" / split), images(tmp_path / "b/set14" / split)
        assert sorted(got) == sorted(want) == ["baboon", "comic"]
        assert all(torch.equal(got[k], want[k]) for k in got)
    meta = json.loads((tmp_path / "a/set14/meta.json").read_text())
    assert [s["url"] for s in meta["sources"]] == [mirror.as_uri() + "/benchmark.tar"]
    capsys.readouterr()
    (mirror / "benchmark.tar").unlink()
    assert prepare_cli("set5", tmp_path / "c", sources) == 2
    err = one_line_error(capsys)
    assert err.startswith("ecdp data: error: set5: file://") and err.endswith("benchmark.tar: no such file") and "benchmark.tar" in err
    assert not (tmp_path / "c/set5").exists()


# ---------------------------------------------------------------- the override itself
def _edited(sources: Path, tmp_path: Path, edit) -> Path:
    data = json.loads(sources.read_text())
    edit(data)
    return fixtures.write_sources(tmp_path / "edited.json", data)


def test_wrong_checksum_fails_and_leaves_no_dataset(hosted, tmp_path, capsys, no_env_sources):
    _, sources, user = hosted
    flip = lambda h: ("0" if h[0] != "0" else "1") + h[1:]   # noqa: E731
    wrong = _edited(sources, tmp_path, lambda d: d["files"]["benchmark.tar"].update(
        sha256=flip(d["files"]["benchmark.tar"]["sha256"])))
    root = tmp_path / "data"
    assert prepare_cli("set5", root, wrong) == 2
    err = one_line_error(capsys)
    assert "set5:" in err and "benchmark.tar" in err and "sha256" in err
    assert not (root / "set5").exists() and not (root / "set5.tmp").exists()
    assert not (root / "_downloads" / "benchmark.tar").exists()
    # a user file's md5 is checked against the override too
    wrong = _edited(sources, tmp_path, lambda d: d["files"]["ILSVRC2012_img_val.tar"].update(
        md5=flip(d["files"]["ILSVRC2012_img_val.tar"]["md5"])))
    assert prepare_cli("imagenet", root, wrong, "--source-dir", str(user)) == 2
    err = one_line_error(capsys)
    assert "ILSVRC2012_img_val.tar" in err and "md5" in err and not (root / "imagenet").exists()


def test_unknown_filename_in_env_sources_is_one_line_error(hosted, tmp_path, capsys, monkeypatch):
    _, sources, _ = hosted
    typo = _edited(sources, tmp_path, lambda d: d["files"].update({"DIV2K_train_HR.zp": d["files"]["DIV2K_train_HR.zip"]}))
    monkeypatch.setenv(SOURCES_ENV, str(typo))
    assert prepare_cli("div2k", tmp_path / "data", None) == 2
    err = one_line_error(capsys)
    assert "unknown file 'DIV2K_train_HR.zp'" in err and str(typo) in err
    assert not (tmp_path / "data").exists()
    monkeypatch.setenv(SOURCES_ENV, str(tmp_path / "missing.yaml"))
    assert prepare_cli("div2k", tmp_path / "data", None) == 2
    assert "missing.yaml" in one_line_error(capsys)


def test_dry_run_shows_the_overridden_urls(hosted, capsys, tmp_path, no_env_sources):
    srv, sources, _ = hosted
    assert prepare_cli("celeba", tmp_path, sources, "--dry-run") == 0
    out = capsys.readouterr().out
    assert srv.base_url + "img_align_celeba.zip" in out and "drive.google.com" not in out


def test_with_sources_is_pure_and_keeps_what_is_not_overridden():
    celeba = get_spec("celeba")
    files = {"img_align_celeba.zip": {"size": 10, "sha256": "a" * 64, "md5": None}}
    spec = with_sources(celeba, check_sources({"base_url": "http://mirror.example/x/", "files": files}))
    img, part = spec.files["images"], spec.files["partition"]
    assert img.source_url == "http://mirror.example/x/img_align_celeba.zip" and img.gdrive_id is None
    assert (img.size, img.sha256, img.md5) == (10, "a" * 64, None)
    assert part.source_url == "http://mirror.example/x/list_eval_partition.txt"      # a mirror: official checksums
    assert (part.size, part.sha256, part.md5) == (celeba.files["partition"].size, celeba.files["partition"].sha256,
                                                  celeba.files["partition"].md5)
    assert REGISTRY["celeba"] is celeba and celeba.files["images"].gdrive_id   # the registry is untouched
    assert with_sources(celeba, None) is celeba


@pytest.mark.parametrize("sources, message", [
    ({"base_url": "ftp://x/"}, "base_url must be an http(s) URL"),
    ({"base_url": "file://host/x/"}, "or a local file:/// folder"),
    ({"mirror": "http://x/"}, "unknown key(s) ['mirror']"),
    ({"files": {"benchmark.tar": {"size": 3}}}, "needs sha256 or md5"),
    ({"files": {"benchmark.tar": {"md5": "xyz"}}}, "not a hex md5 digest"),
    ({"files": {"ILSVRC2012_img_val.tar": {"sha256": "a" * 64}}}, "user-supplied file"),
    ({"files": {"benchmark.tar": {"md5": "a" * 32, "crc": 1}}}, "must be a mapping of size, sha256, md5"),
])
def test_bad_sources_are_refused(sources, message):
    with pytest.raises(SourcesError, match=None) as err:
        check_sources(sources, "s.yaml")
    assert message in str(err.value) and str(err.value).startswith("s.yaml: ")
