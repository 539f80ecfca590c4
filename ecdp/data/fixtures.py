"""Small archives with the official file names and inner layouts of the paper's
datasets, and a local HTTP server to serve them: for the tests
(``tests/test_official_layouts.py``, ``tests/test_download.py``) and for a developer
rehearsal of the paper workflow (``workflow/scripts/rehearse.py``,
``config/rehearsal.yaml``), never for real data.  It ships in the package, unlike the
test-only helpers of ``tests/helpers``, because that rehearsal is part of the shipped
workflow: it builds these archives, serves them on 127.0.0.1 and runs the paper's
download -> verify -> extract -> prepare path on them (docs/ARCHITECTURE.md).

Every archive is built the way its host ships it:

* ``DIV2K_train_HR.zip`` (``DIV2K_train_HR/0001.png`` ..), ``DIV2K_valid_HR.zip``
  (``DIV2K_valid_HR/0801.png`` ..), ``DIV2K_valid_LR_bicubic_X4.zip``
  (``DIV2K_valid_LR_bicubic/X4/0801x4.png`` .., MATLAB-bicubic :func:`ecdp.imresize.imresize`
  of the HR, quantised to 8 bit, as the official ones; of the HR cropped at the top-left
  to a multiple of 4 where it is not one);
* ``Flickr2K.tar`` (``Flickr2K/Flickr2K_HR/000001.png`` .., and its
  ``Flickr2K_LR_bicubic/X4`` folder, which the builder must not pick up);
* ``img_align_celeba.zip`` (``img_align_celeba/000001.jpg`` .., 178x218 JPEGs) and
  ``list_eval_partition.txt`` (``000001.jpg 0`` lines, codes 0 train, 1 val, 2 test);
* ``ILSVRC2012_img_train.tar`` (a tar of per-class tars ``n01440764.tar`` holding
  ``n01440764_10026.JPEG`` .., non-square, one grayscale and one CMYK JPEG as the real
  one has, one image smaller than 256) and ``ILSVRC2012_img_val.tar``
  (``ILSVRC2012_val_00000001.JPEG`` ..);
* EDSR's ``benchmark.tar`` (``benchmark/{Set5,Set14,B100,Urban100}/HR/NAME.png`` and
  ``LR_bicubic/X{2,3,4}/NAMExS.png``; HR sizes need not be a multiple of the scale, the
  LR is made from the HR cropped at the top-left to one, as EDSR's MATLAB script did).

Zips and tars hold their folder entries too, as ``zip -r`` and ``tar c`` write them.
The images are crops of the sha256-verified photos of :mod:`ecdp.data.embedded`,
resized to small sizes, so that building every archive takes a few seconds.  The
bytes are deterministic (fixed archive timestamps), so their checksums are too.

:func:`sources_for` writes the override that points the real registry entries at a
:class:`Server` (``ecdp data prepare --sources FILE``, see
:func:`ecdp.data.registry.with_sources`).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import threading
import zipfile
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import torch
from PIL import Image

from ..imageio import quantize, to_uint8
from ..imresize import imresize
from . import embedded

__all__ = ["Server", "photo", "encode", "zip_bytes", "tar_bytes", "div2k_archives", "celeba_archives",
           "imagenet_archives", "benchmark_archives", "with_folders", "ARCHIVES", "build_archives", "write_archives",
           "sources_for", "write_sources", "CELEBA_PARTITIONS", "BENCHMARK_SETS"]

#: archive timestamp (zip cannot store earlier than 1980)
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
_PHOTOS = ("astronaut", "chelsea", "coffee", "grace_hopper")


# ================================================================ image content
@lru_cache(maxsize=None)
def _photo_source(name: str) -> torch.Tensor:
    src = next(s for s in embedded.SOURCES if s.name == name)
    return embedded.load_verified(src)


def photo(k: int, h: int, w: int) -> torch.Tensor:
    """A (3, h, w) 8-bit image: a window of the target aspect ratio of embedded photo
    ``k`` (mod 4), shifted and scaled with ``k``, resized with MATLAB-bicubic imresize."""
    img = _photo_source(_PHOTOS[k % len(_PHOTOS)])
    H, W = img.shape[-2:]
    s = min(H / h, W / w) * (0.5 + 0.1 * (k % 5))
    ch, cw = max(1, int(h * s)), max(1, int(w * s))
    top, left = (k * 37) % (H - ch + 1), (k * 53) % (W - cw + 1)
    return quantize(imresize(img[:, top:top + ch, left:left + cw], size=(h, w)))


def encode(x: torch.Tensor, fmt: str = "PNG", mode: str = "RGB") -> bytes:
    """Image file bytes of a (3, H, W) [0, 1] tensor; ``mode`` 'L' or 'CMYK' converts
    first (JPEG quality 90, as a camera or web file; PNG lossless)."""
    img = Image.fromarray(to_uint8(x), "RGB")
    if mode != "RGB":
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _lr(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """Official-style LR: imresize(HR cropped at the top-left to a multiple of scale, 1/scale), 8 bit."""
    H, W = hr.shape[-2:]
    return quantize(imresize(hr[:, :H - H % scale, :W - W % scale], scale=1.0 / scale))


# ================================================================ archive writers (bytes)
def zip_bytes(entries) -> bytes:
    """A zip of ``(name, data)`` (or ``(ZipInfo, data)``) entries; plain names get a
    fixed timestamp and the permissions ``ZipFile.writestr`` gives (a name ending in
    ``/`` is a folder)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries:
            info = name
            if not isinstance(info, zipfile.ZipInfo):
                info = zipfile.ZipInfo(name, _ZIP_TIME)
                info.external_attr = (0o40775 << 16 | 0x10) if name.endswith("/") else 0o600 << 16
            zf.writestr(info, data)
    return buf.getvalue()


def tar_bytes(members, mode: str = "w") -> bytes:
    """A tar of ``(name or TarInfo, data or None)`` members (plain names: mtime 0, a
    name ending in ``/`` is a folder)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        for info, data in members:
            if isinstance(info, str):
                folder = info.endswith("/")
                info = tarfile.TarInfo(info.rstrip("/"))
                if folder:
                    info.type, info.mode = tarfile.DIRTYPE, 0o755
            if data is not None:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            else:
                tf.addfile(info)
    return buf.getvalue()


def with_folders(entries) -> list:
    """``(name, data)`` entries with a ``(folder/, b"")`` entry before the first file of
    each folder, as ``zip -r`` and ``tar c`` write them."""
    out, seen = [], set()
    for name, data in entries:
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            folder = "/".join(parts[:i]) + "/"
            if folder not in seen:
                seen.add(folder)
                out.append((folder, b""))
        out.append((name, data))
    return out


# ================================================================ the datasets
#: (height, width) of the DIV2K / Flickr2K images: train sizes not multiples of 4
DIV2K_TRAIN_SIZES = ((50, 66), (48, 64), (45, 71))
FLICKR2K_SIZES = ((44, 60), (52, 40))
DIV2K_VALID_SIZES = ((48, 68), (42, 57))


def div2k_archives() -> dict[str, bytes]:
    """DIV2K_train_HR.zip, Flickr2K.tar, DIV2K_valid_HR.zip, DIV2K_valid_LR_bicubic_X4.zip."""
    train = [(f"DIV2K_train_HR/{i:04d}.png", encode(photo(i, h, w)))
             for i, (h, w) in enumerate(DIV2K_TRAIN_SIZES, 1)]
    flickr = []
    for i, (h, w) in enumerate(FLICKR2K_SIZES, 1):
        hr = photo(10 + i, h, w)
        flickr += [(f"Flickr2K/Flickr2K_HR/{i:06d}.png", encode(hr)),
                   (f"Flickr2K/Flickr2K_LR_bicubic/X4/{i:06d}x4.png", encode(_lr(hr, 4)))]
    valid, valid_lr = [], []
    for i, (h, w) in enumerate(DIV2K_VALID_SIZES, 801):
        hr = photo(i, h, w)
        valid.append((f"DIV2K_valid_HR/{i:04d}.png", encode(hr)))
        valid_lr.append((f"DIV2K_valid_LR_bicubic/X4/{i:04d}x4.png", encode(_lr(hr, 4))))
    return {"DIV2K_train_HR.zip": zip_bytes(with_folders(train)), "Flickr2K.tar": tar_bytes(with_folders(flickr)),
            "DIV2K_valid_HR.zip": zip_bytes(with_folders(valid)),
            "DIV2K_valid_LR_bicubic_X4.zip": zip_bytes(with_folders(valid_lr))}


#: partition code of 000001.jpg, 000002.jpg, .. (list_eval_partition.txt, in list order)
CELEBA_PARTITIONS = (0, 0, 1, 2, 0, 2, 1, 2)


def celeba_archives(partitions=CELEBA_PARTITIONS) -> dict[str, bytes]:
    """img_align_celeba.zip (178x218 JPEGs) and list_eval_partition.txt."""
    names = [f"{i:06d}.jpg" for i in range(1, len(partitions) + 1)]
    images = [(f"img_align_celeba/{n}", encode(photo(20 + k, 218, 178), "JPEG")) for k, n in enumerate(names)]
    listing = "".join(f"{n} {p}\n" for n, p in zip(names, partitions))
    return {"img_align_celeba.zip": zip_bytes(with_folders(images)), "list_eval_partition.txt": listing.encode()}


#: class -> [(image id, (height, width), PIL mode)]: non-square, one smaller than 256,
#: a grayscale and a CMYK JPEG (the real train tar has both)
IMAGENET_TRAIN = {
    "n01440764": [("10026", (300, 400), "RGB"), ("10027", (150, 200), "RGB"), ("10029", (280, 260), "L")],
    "n01443537": [("10007", (400, 290), "RGB"), ("10014", (270, 330), "CMYK")],
}
IMAGENET_VAL_SIZES = ((330, 260), (260, 300), (300, 410), (275, 275))


def imagenet_archives() -> dict[str, bytes]:
    """ILSVRC2012_img_train.tar (a tar of per-class tars) and ILSVRC2012_img_val.tar."""
    class_tars, k = [], 40
    for wnid, images in IMAGENET_TRAIN.items():
        members = []
        for num, (h, w), mode in images:
            members.append((f"{wnid}_{num}.JPEG", encode(photo(k, h, w), "JPEG", mode)))
            k += 1
        class_tars.append((f"{wnid}.tar", tar_bytes(members)))
    val = [(f"ILSVRC2012_val_{i:08d}.JPEG", encode(photo(60 + i, h, w), "JPEG"))
           for i, (h, w) in enumerate(IMAGENET_VAL_SIZES, 1)]
    return {"ILSVRC2012_img_train.tar": tar_bytes(class_tars), "ILSVRC2012_img_val.tar": tar_bytes(val)}


#: subset -> [(name, (height, width))]: official image names, HR sizes not all multiples of 4
BENCHMARK_SETS = {
    "Set5": [("baby", (64, 64)), ("bird", (48, 48)), ("butterfly", (44, 44)), ("head", (46, 46)),
             ("woman", (57, 38))],
    "Set14": [("baboon", (60, 62)), ("comic", (45, 37))],
    "B100": [("3096", (41, 61)), ("8023", (61, 41))],
    "Urban100": [("img_001", (64, 48)), ("img_002", (48, 64))],
}


def benchmark_archives() -> dict[str, bytes]:
    """EDSR's benchmark.tar: benchmark/SUBSET/HR and LR_bicubic/X2..X4."""
    members, k = [], 80
    for subset, images in BENCHMARK_SETS.items():
        for name, (h, w) in images:
            hr = photo(k, h, w)
            k += 1
            members.append((f"benchmark/{subset}/HR/{name}.png", encode(hr)))
            members += [(f"benchmark/{subset}/LR_bicubic/X{s}/{name}x{s}.png", encode(_lr(hr, s))) for s in (2, 3, 4)]
    return {"benchmark.tar": tar_bytes(with_folders(members))}


#: registry dataset (or group) -> archive builder
ARCHIVES = {"div2k": div2k_archives, "celeba": celeba_archives, "imagenet": imagenet_archives,
            "benchmark": benchmark_archives}


def build_archives(names=tuple(ARCHIVES)) -> dict[str, bytes]:
    """filename -> bytes of the archives of ``names`` (keys of :data:`ARCHIVES`)."""
    out: dict[str, bytes] = {}
    for name in names:
        out.update(ARCHIVES[name]())
    return out


def write_archives(folder: str | os.PathLike, archives: dict[str, bytes]) -> dict[str, Path]:
    """Write each archive to ``folder/FILENAME`` atomically; returns filename -> path."""
    from ..checkpoint import atomic_open

    out = {}
    for filename, data in archives.items():
        path = Path(folder) / filename
        with atomic_open(path, "wb") as f:
            f.write(data)
        out[filename] = path
    return out


# ================================================================ the override
def sources_for(archives: dict[str, bytes], base_url: str) -> dict:
    """The ``--sources`` override of :func:`ecdp.data.registry.with_sources` for these
    archives: ``base_url`` and, per file, size, sha256 and md5 (md5 and size only for
    user-supplied files such as the ILSVRC2012 tarballs, which the registry checks by md5)."""
    from .registry import user_filenames

    user = user_filenames()
    files = {}
    for filename, data in archives.items():
        entry = {"size": len(data), "md5": hashlib.md5(data).hexdigest()}
        if filename not in user:
            entry["sha256"] = hashlib.sha256(data).hexdigest()
        files[filename] = entry
    return {"base_url": base_url, "files": files}


def write_sources(path: str | os.PathLike, sources: dict) -> Path:
    """Write a sources override as JSON (a YAML file works too), atomically."""
    from ..checkpoint import atomic_open

    with atomic_open(path, "w") as f:
        f.write(json.dumps(sources, indent=2) + "\n")
    return Path(path)


# ================================================================ local server
class Server:
    """A threaded HTTP server on 127.0.0.1 (a free port) serving ``files`` (URL path ->
    bytes) with ``Range`` support.  ``drop_after[path] = n`` makes the next request for
    ``path`` send only n bytes and close the connection; ``ignore_range`` answers 200
    with the whole file to Range requests; ``requests`` records (path, Range header).
    Use as a context manager or call :meth:`close`."""

    def __init__(self, files: dict[str, bytes] | None = None):
        self.files: dict[str, bytes] = dict(files or {})
        self.drop_after: dict[str, int] = {}
        self.ignore_range = False
        self.requests: list[tuple[str, str | None]] = []
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def base_url(self) -> str:
        return self.url + "/"

    def add(self, archives: dict[str, bytes]) -> "Server":
        """Serve each ``filename -> bytes`` at ``/filename``."""
        self.files.update({"/" + name: data for name, data in archives.items()})
        return self

    def add_folder(self, folder: str | os.PathLike) -> "Server":
        """Serve every file directly inside ``folder`` at ``/filename`` (read now)."""
        return self.add({p.name: p.read_bytes() for p in sorted(Path(folder).iterdir()) if p.is_file()})

    def _handler(self):
        srv = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                rng = self.headers.get("Range")
                srv.requests.append((self.path, rng))
                data = srv.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                if rng and not srv.ignore_range:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                cut = srv.drop_after.pop(self.path, None)
                if cut is not None:
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        return Handler

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
