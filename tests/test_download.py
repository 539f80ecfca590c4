"""Resumable checksummed downloads (from an HTTP server on 127.0.0.1, and ``file://``
URLs of a local mirror), safe extraction and a full ``prepare`` of a DIV2K-shaped
registry entry against the HTTP server."""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest
import torch

from ecdp.data.download import ChecksumError, DownloadError, confirm_url_from_page, download, gdrive_url, local_path
from ecdp.data.extract import MARKER, UnsafeArchiveError, extract
from ecdp.data.fixtures import tar_bytes, zip_bytes
from ecdp.data.prepare import prepare
from ecdp.data.registry import RemoteFile, get_spec
from ecdp.imageio import load_image, quantize, save_image
from ecdp.imresize import imresize


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def all_files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


PAYLOAD = os.urandom(300_000)


# ---------------------------------------------------------------- downloads
def test_interrupted_transfer_resumes_with_range(server, tmp_path):
    server.files["/a.bin"] = PAYLOAD
    server.drop_after["/a.bin"] = 100_000
    dest = tmp_path / "a.bin"
    with pytest.raises(DownloadError):
        download(server.url + "/a.bin", dest, sha256=sha(PAYLOAD), retries=0, progress=False)
    assert not dest.exists()                                   # never a partial under the final name
    assert (tmp_path / "a.bin.part").stat().st_size == 100_000
    download(server.url + "/a.bin", dest, sha256=sha(PAYLOAD), size=len(PAYLOAD), retries=0, progress=False)
    assert server.requests[-1] == ("/a.bin", "bytes=100000-")
    assert dest.read_bytes() == PAYLOAD
    assert not (tmp_path / "a.bin.part").exists()


def test_drop_is_retried_within_one_call(server, tmp_path):
    server.files["/b.bin"] = PAYLOAD
    server.drop_after["/b.bin"] = 12_345
    dest = download(server.url + "/b.bin", tmp_path / "b.bin", md5=hashlib.md5(PAYLOAD).hexdigest(),
                    retries=2, backoff=0, progress=False)
    assert [r for _, r in server.requests] == [None, "bytes=12345-"]
    assert dest.read_bytes() == PAYLOAD


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    server.files["/c.bin"] = PAYLOAD
    (tmp_path / "c.bin.part").write_bytes(b"garbage-prefix")
    server.ignore_range = True
    download(server.url + "/c.bin", tmp_path / "c.bin", sha256=sha(PAYLOAD), retries=0, progress=False)
    assert server.requests[-1][1] == "bytes=14-"
    assert (tmp_path / "c.bin").read_bytes() == PAYLOAD


def test_corrupt_file_is_rejected_deleted_and_not_used(server, tmp_path):
    server.files["/d.bin"] = PAYLOAD
    dest = tmp_path / "d.bin"
    with pytest.raises(ChecksumError, match="corrupt"):
        download(server.url + "/d.bin", dest, sha256=sha(b"something else"), retries=0, progress=False)
    assert not dest.exists() and not (tmp_path / "d.bin.part").exists()
    with pytest.raises(ChecksumError, match="size"):
        download(server.url + "/d.bin", dest, size=len(PAYLOAD) + 1, retries=0, progress=False)
    assert not dest.exists() and not (tmp_path / "d.bin.part").exists()


def test_present_verified_file_is_a_noop_and_tampered_one_refetched(server, tmp_path):
    server.files["/e.bin"] = PAYLOAD
    dest = tmp_path / "e.bin"
    download(server.url + "/e.bin", dest, sha256=sha(PAYLOAD), progress=False)
    n = len(server.requests)
    download(server.url + "/e.bin", dest, sha256=sha(PAYLOAD), progress=False)
    assert len(server.requests) == n
    dest.write_bytes(b"tampered")
    download(server.url + "/e.bin", dest, sha256=sha(PAYLOAD), progress=False)
    assert len(server.requests) == n + 1 and dest.read_bytes() == PAYLOAD


def test_http_404_fails_without_retry(server, tmp_path):
    with pytest.raises(DownloadError, match="404"):
        download(server.url + "/missing", tmp_path / "m", retries=3, backoff=0, progress=False)
    assert len(server.requests) == 1


# ---------------------------------------------------------------- file:// (a local mirror)
def test_file_url_is_linked_or_copied_verified_and_atomic(tmp_path, monkeypatch):
    mirror = tmp_path / "my mirror"                      # a space: Path.as_uri percent-escapes it
    mirror.mkdir()
    (mirror / "f.bin").write_bytes(PAYLOAD)
    url = (mirror / "f.bin").as_uri()
    assert local_path(url) == mirror / "f.bin" and local_path("http://x/f.bin") is None
    dest = download(url, tmp_path / "dl" / "f.bin", sha256=sha(PAYLOAD), size=len(PAYLOAD), progress=False)
    assert dest.read_bytes() == PAYLOAD and not (tmp_path / "dl" / "f.bin.part").exists()
    assert download(url, dest, sha256=sha(PAYLOAD), progress=False) == dest      # present and verified: a no-op
    # where no hard link can be made (another file system): a copy
    monkeypatch.setattr(os, "link", lambda *a: (_ for _ in ()).throw(OSError(18, "Invalid cross-device link")))
    copy = download(url, tmp_path / "dl2" / "f.bin", md5=hashlib.md5(PAYLOAD).hexdigest(), progress=False)
    assert copy.read_bytes() == PAYLOAD and not copy.samefile(mirror / "f.bin")
    assert (mirror / "f.bin").read_bytes() == PAYLOAD


def test_file_url_with_wrong_checksum_is_refused_and_the_source_kept(tmp_path):
    (tmp_path / "g.bin").write_bytes(PAYLOAD)
    dest = tmp_path / "dl" / "g.bin"
    with pytest.raises(ChecksumError, match="sha256"):
        download((tmp_path / "g.bin").as_uri(), dest, sha256=sha(b"other"), progress=False)
    assert not dest.exists() and not (tmp_path / "dl" / "g.bin.part").exists()
    assert (tmp_path / "g.bin").read_bytes() == PAYLOAD                          # the mirror is untouched


@pytest.mark.parametrize("make_url, message", [
    (lambda d: (d / "missing.bin").as_uri(), "no such file"),
    (lambda d: d.as_uri(), "not a regular file"),
    (lambda d: "file://otherhost" + str(d / "h.bin"), "must name a local path"),
    (lambda d: (d / "h.bin").as_uri() + "?x=1", "query or fragment"),
])
def test_bad_file_url_is_a_one_line_error_at_once(tmp_path, make_url, message):
    (tmp_path / "h.bin").write_bytes(PAYLOAD)
    url = make_url(tmp_path)
    with pytest.raises(DownloadError) as err:
        download(url, tmp_path / "dl" / "h.bin", sha256=sha(PAYLOAD), retries=3, backoff=100, progress=False)
    assert message in str(err.value) and "\n" not in str(err.value) and str(err.value).startswith(url)
    assert not (tmp_path / "dl" / "h.bin").exists() and not (tmp_path / "dl" / "h.bin.part").exists()


def test_google_drive_url_and_confirm_page():
    url = gdrive_url("0B7EVK8r0v71pZjFTYXZWM3FlRnM")
    assert url == "https://drive.google.com/uc?export=download&id=0B7EVK8r0v71pZjFTYXZWM3FlRnM"
    assert get_spec("celeba").files["images"].source_url == url
    page = ('<html><form id="download-form" action="https://drive.usercontent.google.com/download" method="get">'
            '<input type="hidden" name="id" value="XYZ"><input type="hidden" name="export" value="download">'
            '<input type="hidden" name="confirm" value="t"><input type="hidden" name="uuid" value="u-1"></form>')
    assert confirm_url_from_page(page, url) == \
        "https://drive.usercontent.google.com/download?id=XYZ&export=download&confirm=t&uuid=u-1"
    old = '<a href="/uc?export=download&amp;confirm=AbC_9&amp;id=XYZ">Download anyway</a>'
    assert confirm_url_from_page(old, url) == url + "&confirm=AbC_9"
    assert confirm_url_from_page("<html>quota exceeded</html>", url) is None


# ---------------------------------------------------------------- safe extraction
def zip_symlink(name: str, target: str):
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info, target


def tinfo(name, type_=tarfile.REGTYPE, linkname=""):
    t = tarfile.TarInfo(name)
    t.type, t.linkname = type_, linkname
    return t


ZIP_CASES = {
    "dotdot": ("../evil.txt", lambda: zip_bytes([("ok/a.txt", b"a"), ("../evil.txt", b"x")])),
    "absolute": ("/tmp/ecdp_abs_evil.txt", lambda: zip_bytes([("ok/a.txt", b"a"), ("/tmp/ecdp_abs_evil.txt", b"x")])),
    "symlink": ("ok/link", lambda: zip_bytes([("ok/a.txt", b"a"), zip_symlink("ok/link", "../../outside")])),
    "nested-dotdot": ("ok/../../evil.txt", lambda: zip_bytes([("ok/../../evil.txt", b"x")])),
}
TAR_CASES = {
    "dotdot": ("../evil", [(tinfo("ok/a.txt"), b"a"), (tinfo("../evil"), b"x")]),
    "absolute": ("/tmp/ecdp_abs_evil", [(tinfo("ok/a.txt"), b"a"), (tinfo("/tmp/ecdp_abs_evil"), b"x")]),
    "symlink": ("ok/link", [(tinfo("ok/a.txt"), b"a"), (tinfo("ok/link", tarfile.SYMTYPE, "/etc/passwd"), None),
                            (tinfo("ok/link/evil"), b"x")]),
    "hardlink": ("ok/hard", [(tinfo("ok/hard", tarfile.LNKTYPE, "/etc/passwd"), None)]),
    "device": ("ok/dev", [(tinfo("ok/dev", tarfile.CHRTYPE), None)]),
}


def _assert_refused(tmp_path, archive: Path, entry: str):
    before = all_files(tmp_path)
    with pytest.raises(UnsafeArchiveError) as err:
        extract(archive, tmp_path / "work" / "out", progress=False)
    assert entry in str(err.value)
    assert all_files(tmp_path) == before             # nothing written anywhere under tmp_path
    assert not Path("/tmp/ecdp_abs_evil.txt").exists() and not Path("/tmp/ecdp_abs_evil").exists()


@pytest.mark.parametrize("case", list(ZIP_CASES))
def test_malicious_zip_refused(tmp_path, case):
    entry, make = ZIP_CASES[case]
    archive = tmp_path / "evil.zip"
    archive.write_bytes(make())
    (tmp_path / "work").mkdir()
    _assert_refused(tmp_path, archive, entry)


@pytest.mark.parametrize("case", list(TAR_CASES))
def test_malicious_tar_refused(tmp_path, case):
    entry, members = TAR_CASES[case]
    archive = tmp_path / "evil.tar.gz"
    archive.write_bytes(tar_bytes(members, mode="w:gz"))
    (tmp_path / "work").mkdir()
    _assert_refused(tmp_path, archive, entry)


def test_extract_ok_is_atomic_and_idempotent(tmp_path):
    archive = tmp_path / "good.tar"
    archive.write_bytes(tar_bytes([(tinfo("top/sub", tarfile.DIRTYPE), None), (tinfo("top/sub/x.txt"), b"hello"),
                                   (tinfo("./top/y.txt"), b"y")], mode="w"))
    out = extract(archive, tmp_path / "out", progress=False)
    assert (out / "top/sub/x.txt").read_bytes() == b"hello" and (out / "top/y.txt").read_bytes() == b"y"
    assert json.loads((out / MARKER).read_text())["files"] == 2
    assert not (tmp_path / "out.tmp-extract").exists()
    (out / "top/y.txt").write_bytes(b"changed")
    extract(archive, tmp_path / "out", progress=False)       # marker: no-op
    assert (out / "top/y.txt").read_bytes() == b"changed"
    zarchive = tmp_path / "good.zip"
    zarchive.write_bytes(zip_bytes([("d/", b""), ("d/z.txt", b"z")]))
    assert (extract(zarchive, tmp_path / "zout", progress=False) / "d/z.txt").read_bytes() == b"z"


# ---------------------------------------------------------------- full prepare of a DIV2K-shaped entry
def _png_bytes(x: torch.Tensor, tmp: Path, name: str) -> bytes:
    p = tmp / name
    save_image(x, p)
    return p.read_bytes()


def _mini_div2k(tmp: Path) -> dict[str, bytes]:
    """DIV2K-shaped archives: 3 train HR (one not a multiple of 4), 2 Flickr2K HR,
    2 valid HR with official-style X4 LR."""
    g = torch.Generator().manual_seed(0)
    img = lambda h, w: quantize(torch.rand(3, h, w, generator=g))  # noqa: E731
    scratch = tmp / "scratch"
    train = [(f"DIV2K_train_HR/{i:04d}.png", _png_bytes(img(32, 36 + 2 * (i == 2)), scratch, f"t{i}.png"))
             for i in (1, 2, 3)]
    flickr = [(f"Flickr2K/Flickr2K_HR/{i:06d}.png", _png_bytes(img(28, 32), scratch, f"f{i}.png")) for i in (1, 2)]
    valid, valid_lr = [], []
    for i in (801, 802):
        hr = img(24, 32)
        valid.append((f"DIV2K_valid_HR/{i:04d}.png", _png_bytes(hr, scratch, f"v{i}.png")))
        valid_lr.append((f"DIV2K_valid_LR_bicubic/X4/{i:04d}x4.png",
                         _png_bytes(quantize(imresize(hr, scale=0.25)), scratch, f"vl{i}.png")))
    ftar = io.BytesIO()
    with tarfile.open(fileobj=ftar, mode="w") as tf:
        for name, data in flickr:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return {"train_hr": zip_bytes(train), "flickr2k": ftar.getvalue(), "valid_hr": zip_bytes(valid),
            "valid_lr": zip_bytes(valid_lr)}


def _div2k_on_server(server, archives: dict, corrupt: str | None = None):
    """The real div2k registry entry with its archives served by ``server`` (published
    size, sha256 and md5 of the true bytes); ``corrupt``: that role's bytes change in transit."""
    real = get_spec("div2k")
    files = {}
    for role, data in archives.items():
        f = real.files[role]
        server.files["/" + f.filename] = data if role != corrupt else data[:-10] + b"0123456789"
        files[role] = RemoteFile(f.filename, server.url + "/" + f.filename, size=len(data), sha256=sha(data),
                                 md5=hashlib.md5(data).hexdigest())
    return dataclasses.replace(real, files=files)


def test_prepare_div2k_shaped_entry_from_local_server(server, tmp_path):
    archives = _mini_div2k(tmp_path)
    spec = _div2k_on_server(server, archives)
    files = spec.files
    root = tmp_path / "root"
    out = prepare(spec, root, progress=False)
    assert out == root / "div2k" and (out / ".complete").exists() and not (root / "div2k.tmp").exists()
    meta = json.loads((out / "meta.json").read_text())
    assert meta["counts"] == {"train": 5, "test": 2} and meta["scale"] == 4
    assert meta["sigma2"] > 0 and set(meta["sigma2_by_kernel"]) == {"matlab", "torch"}
    assert {s["url"] for s in meta["sources"]} == {f.url for f in files.values()}
    names = sorted(p.name for p in (out / "train/HR").iterdir())
    assert names == ["000001.png", "000002.png", "0001.png", "0002.png", "0003.png"]
    for split in ("train", "test"):
        for hr_p in (out / split / "HR").iterdir():
            hr, lr = load_image(hr_p), load_image(out / split / "LR" / hr_p.name)
            assert hr.shape[-2:] == (4 * lr.shape[-2], 4 * lr.shape[-1])
    assert load_image(out / "train/HR/0002.png").shape == (3, 32, 36)          # 32x38 top-left cropped to x4
    # the test LR is the official X4 image (pixel-identical)
    with zipfile.ZipFile(io.BytesIO(archives["valid_lr"])) as zf:
        official = zf.read("DIV2K_valid_LR_bicubic/X4/0801x4.png")
    (tmp_path / "official.png").write_bytes(official)
    assert torch.equal(load_image(out / "test/LR/0801.png"), load_image(tmp_path / "official.png"))
    # second run: no request, nothing rewritten
    n, mtime = len(server.requests), (out / "meta.json").stat().st_mtime_ns
    assert prepare(spec, root, progress=False) == out
    assert len(server.requests) == n and (out / "meta.json").stat().st_mtime_ns == mtime


def test_prepare_with_corrupt_download_leaves_no_dataset(server, tmp_path):
    spec = _div2k_on_server(server, _mini_div2k(tmp_path), corrupt="valid_lr")
    root = tmp_path / "root"
    with pytest.raises(ChecksumError):
        prepare(spec, root, progress=False)
    assert not (root / "div2k").exists() and not (root / "_downloads" / "DIV2K_valid_LR_bicubic_X4.zip").exists()
