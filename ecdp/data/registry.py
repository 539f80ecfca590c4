"""The dataset registry: one :class:`DatasetSpec` per dataset, its protocol written
down (the docstring of the function that defines the entry; it is copied into the
prepared dataset's ``meta.json``) with its sources.

Sources, sizes and checksums: ``reference/datasets.md`` (sizes/sha256 from
tensorflow/datasets ``checksums.tsv``, md5 from Coloquinte/torchSR and torchvision).
Protocols: the ECDP paper (AAAI 2024, section 5 and appendix), the released ECDP
code (github Yuan-Yutao/ECDP @1696fa1) and SRDiff (Li et al. 2022,
``data_gen/df2k.py``, ``data_gen/celeb_a.py``), which ECDP follows.

How each entry is built lives in :mod:`ecdp.data.prepare` (``spec.kind`` names the
builder).

Sources override (a mirror, or the local archives of :mod:`ecdp.data.fixtures`): the
entries here are never edited; :func:`with_sources` returns an entry whose files come
from elsewhere, with other checksums, from a YAML or JSON file such as::

    base_url: http://127.0.0.1:8000/     # replaces each URL's host and path; the filename is kept
                                         # (or file:///mnt/mirror/: a local folder of the files)
    files:                               # optional, per filename: replaces size / sha256 / md5
      DIV2K_train_HR.zip: {size: 1234, sha256: "...", md5: "..."}
      ILSVRC2012_img_train.tar: {size: 5678, md5: "..."}   # user files: md5 and size only

``base_url`` also replaces CelebA's Google Drive ids (``base_url + filename``); a file
without an entry under ``files`` keeps the registry's checksums (a true mirror); an
entry replaces all three values (an absent one is not checked) and must give sha256 or
md5, so that every file is still verified.  ``ecdp data prepare --sources FILE`` or the
environment variable ``ECDP_DATA_SOURCES`` (:data:`SOURCES_ENV`) selects the file
(:func:`load_sources`); a filename no entry has is an error.
"""
from __future__ import annotations

import dataclasses
import inspect
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from .download import gdrive_url

__all__ = ["RemoteFile", "UserFile", "DatasetSpec", "REGISTRY", "ALIASES", "get_spec", "resolve_names",
           "EMBEDDED_NAMES", "BENCHMARK_NAMES", "SourcesError", "SOURCES_ENV", "check_sources", "load_sources",
           "with_sources", "user_filenames"]


@dataclass(frozen=True)
class RemoteFile:
    """A file fetched by :func:`ecdp.data.download.download` into the downloads folder."""
    filename: str
    url: str | None = None
    gdrive_id: str | None = None
    size: int | None = None
    sha256: str | None = None
    md5: str | None = None

    @property
    def source_url(self) -> str:
        return self.url if self.url else gdrive_url(self.gdrive_id)


@dataclass(frozen=True)
class UserFile:
    """A file the user must supply (``--source-dir``), e.g. ImageNet behind a login."""
    filename: str
    md5: str | None = None
    size: int | None = None
    hint: str = ""


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    scale: int
    kind: str                                   # builder in ecdp.data.prepare
    summary: str
    protocol: str
    files: dict[str, RemoteFile] = field(default_factory=dict)      # role -> file
    user_files: dict[str, UserFile] = field(default_factory=dict)   # role -> file
    options: dict[str, Any] = field(default_factory=dict)
    splits: tuple[str, ...] = ("train", "test")
    license: str = ""


def _doc(fn: Callable) -> str:
    return inspect.cleandoc(fn.__doc__ or "")


# ---------------------------------------------------------------- DIV2K / DF2K
DIV2K = "https://data.vision.ee.ethz.ch/cvl/DIV2K/"


def _div2k() -> DatasetSpec:
    """DF2K x4 (ECDP section 5, "General SR"): train on DIV2K_train_HR (800 images,
    0001-0800) plus Flickr2K (2650 images), test on the 100 DIV2K validation images
    0801-0900 at full size with the official bicubic X4 LR images (released ECDP
    code, batch 1).  Training HR images are cropped at the top-left to a multiple of
    4 and their LR made with MATLAB-bicubic imresize(HR, 1/4) (ecdp.imresize), as
    SRDiff's data_gen/df2k.py does; the official DIV2K X4 images were made with
    MATLAB's imresize too.  Test HR images are cropped to 4x their official LR.
    Sources: DIV2K (Agustsson & Timofte, CVPRW 2017), Flickr2K (Lim et al., EDSR,
    CVPRW 2017); checksums from tensorflow/datasets and torchSR (reference/datasets.md).
    Flickr2K's size is not published, so it is verified by md5 only."""
    return DatasetSpec(
        name="div2k", scale=4, kind="div2k", protocol=_doc(_div2k),
        summary="DF2K x4: DIV2K train + Flickr2K (3450) / DIV2K valid 0801-0900 with official X4 LR",
        files={
            "train_hr": RemoteFile("DIV2K_train_HR.zip", DIV2K + "DIV2K_train_HR.zip", size=3530603713,
                                   sha256="9d0b9c463f6e35b6c62cc6a930ee2224f670b34c1df841a57670f9acf0f6c335",
                                   md5="bdc2d9338d4e574fe81bf7d158758658"),
            "flickr2k": RemoteFile("Flickr2K.tar", "https://cv.snu.ac.kr/research/EDSR/Flickr2K.tar",
                                   md5="5d3f39443d5e9489bff8963f8f26cb03"),
            "valid_hr": RemoteFile("DIV2K_valid_HR.zip", DIV2K + "DIV2K_valid_HR.zip", size=448993893,
                                   sha256="20dd31fd84d777bc1cf5d6b7654a3f569c0aec74458ae094122ad1d0489900fc",
                                   md5="9fcdda83005c5e5997799b69f955ff88"),
            "valid_lr": RemoteFile("DIV2K_valid_LR_bicubic_X4.zip", DIV2K + "DIV2K_valid_LR_bicubic_X4.zip",
                                   size=31505881,
                                   sha256="a50a5d1c4b88de4e8d300d8fb2b904c52fe93b2b298a4899697760d7cbb6d553",
                                   md5="21962de700c8d368c6ff83314480eff0"),
        },
        # (file role, folder inside the extracted archive)
        options={"train_sources": [["train_hr", "DIV2K_train_HR"], ["flickr2k", "Flickr2K_HR"]],
                 "test_source": ["valid_hr", "DIV2K_valid_HR"]},
        license="DIV2K and Flickr2K: academic research use only",
    )


# ---------------------------------------------------------------- ImageNet
def _imagenet() -> DatasetSpec:
    """ImageNet 64 -> 256 (x4; ECDP section 5).  ILSVRC2012 needs a login, so the
    user puts ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in --source-dir
    (md5 as torchvision lists them is verified).  Each image is decoded straight from
    the tarball (nothing is extracted), cropped to a square of side min(H, W),
    resized with MATLAB-bicubic imresize to 256x256 (HR, quantised to 8 bit), and
    imresize(HR, 1/4) gives the 64x64 LR (released ECDP code).  Test: the centre
    square of the validation images ILSVRC2012_val_00000001 .. N, N = option
    test_limit, default 5000 (the paper's "dev set" is not identified publicly; the
    released code evaluates the whole val folder: test_limit null).  Train: the released code
    takes a random square per epoch; a prepared dataset must be fixed, so the centre
    square is stored for training images too (random crops then come from the
    patch sampler).  Option train_per_class caps the images per class (tar order)."""
    return DatasetSpec(
        name="imagenet", scale=4, kind="imagenet", protocol=_doc(_imagenet),
        summary="ImageNet 64->256 (x4), centre squares, user-supplied ILSVRC2012 tarballs",
        user_files={
            "train": UserFile("ILSVRC2012_img_train.tar", md5="1d675b47d978889d74fa0da5fadfb00e",
                              hint="from image-net.org (login), 138 GB"),
            "val": UserFile("ILSVRC2012_img_val.tar", md5="29b22e2961454d5413ddabcf34fc5622",
                            hint="from image-net.org (login), 6.3 GB, 50,000 images"),
        },
        options={"hr_size": 256, "test_limit": 5000, "train_per_class": None},
        license="ImageNet terms of access: non-commercial research and education",
    )


# ---------------------------------------------------------------- CelebA
def _celeba() -> DatasetSpec:
    """CelebA 20 -> 160 (x8; ECDP section 5, following SRDiff and SRFlow).  From
    img_align_celeba (178x218) every face is cropped to the box (left 0, top 20,
    right 178, bottom 198), resized to 160x160 with MATLAB-bicubic imresize (HR,
    quantised to 8 bit), and imresize(HR, 1/8) gives the 20x20 LR.  Split by
    list_eval_partition.txt (0 train, 1 val, 2 test): train = partition 0 (as
    SRDiff's data_gen/celeb_a.py; option train_partitions), test = the first 5000
    images of partition 2 in list order (option test_count).  Files from the
    official Google Drive (ids, md5 from torchvision's celeba.py; size and sha256
    from tensorflow/datasets)."""
    return DatasetSpec(
        name="celeba", scale=8, kind="celeba", protocol=_doc(_celeba),
        summary="CelebA 20->160 (x8): partition 0 train / first 5000 of partition 2 test",
        files={
            "images": RemoteFile("img_align_celeba.zip", gdrive_id="0B7EVK8r0v71pZjFTYXZWM3FlRnM",
                                 size=1443490838, md5="00d2c5bc6d35e252742224ab0c1e8fcb",
                                 sha256="46fb89443c578308acf364d7d379fe1b9efb793042c0af734b6112e4fd3a8c74"),
            "partition": RemoteFile("list_eval_partition.txt", gdrive_id="0B7EVK8r0v71pY0NSMzRuSXJEVkk",
                                    size=2836386, md5="d32c9cbf5e040fd4025c592c306e6668",
                                    sha256="fc955bcb3ef8fbdf7d5640d9a8693a8431b5f2ee291a5c1449a1549e7e073fe7"),
        },
        options={"box": [0, 20, 178, 198], "hr_size": 160, "train_partitions": [0], "test_count": 5000},
        license="CelebA: non-commercial research purposes only",
    )


# ---------------------------------------------------------------- EDSR benchmark test sets
BENCHMARK = RemoteFile("benchmark.tar", "https://cv.snu.ac.kr/research/EDSR/benchmark.tar",
                       md5="4ace41d33c2384b97e6b320cd0afd6ba")


def _benchmark(name: str, subset: str, count: str) -> DatasetSpec:
    def entry():
        """Standard x4 SR test set from EDSR's benchmark.tar (Lim et al., CVPRW 2017;
        md5 from torchSR): benchmark/SUBSET/HR with the shipped MATLAB-bicubic
        LR_bicubic/X4 images; HR cropped at the top-left to 4x the LR size.  Test
        split only (sigma2 is not defined for it: use the training set's)."""
    protocol = _doc(entry).replace("SUBSET", subset)
    return DatasetSpec(name=name, scale=4, kind="benchmark", protocol=protocol,
                       summary=f"{subset} x4 test set ({count} images), EDSR benchmark.tar",
                       files={"benchmark": BENCHMARK}, options={"subset": subset}, splits=("test",),
                       license="research use (collected by the EDSR authors)")


# ---------------------------------------------------------------- embedded (offline) sets
def _embedded_div2k() -> DatasetSpec:
    """Offline stand-in for DF2K x4, made of the real photos shipped inside the
    scikit-image, scikit-learn and matplotlib wheels (ecdp.data.embedded, each file
    verified by sha256).  HR = the photo cropped at the top-left to a multiple of 4
    (as SRDiff's df2k.py), LR = MATLAB-bicubic imresize(HR, 1/4).  Test = 3 fixed
    photos (chelsea, coffee, grace_hopper), each a centre crop of at most 256x256 so
    that CPU evaluation stays fast (DIV2K test images are full 2K images); train =
    the other photos, each a centre crop of at most 512x512 to keep the set small."""
    return DatasetSpec(name="embedded-div2k", scale=4, kind="embedded", protocol=_doc(_embedded_div2k),
                       summary="offline DF2K stand-in, x4, pip-wheel photos (train 9 / test 3)",
                       options={"variant": "div2k", "train_max": 512, "test_max": 256},
                       license="per image, see sources in meta.json")


def _embedded_imagenet() -> DatasetSpec:
    """Offline stand-in for ImageNet 64 -> 256 (x4) with the ImageNet protocol of the
    released ECDP code: centre square of side min(H, W), MATLAB-bicubic imresize to
    256x256 (HR), imresize(HR, 1/4) = 64x64 LR.  Photos from the pip wheels
    (ecdp.data.embedded, sha256-verified); test = chelsea, coffee, grace_hopper."""
    return DatasetSpec(name="embedded-imagenet", scale=4, kind="embedded", protocol=_doc(_embedded_imagenet),
                       summary="offline ImageNet stand-in, 64->256 (x4), centre squares",
                       options={"variant": "square", "hr_size": 256},
                       license="per image, see sources in meta.json")


def _embedded_celeba() -> DatasetSpec:
    """Offline stand-in for CelebA 20 -> 160 (x8): centre square of side min(H, W),
    MATLAB-bicubic imresize to 160x160 (HR), imresize(HR, 1/8) = 20x20 LR.  Only
    astronaut and grace_hopper are faces; the set checks the x8 pipeline, not face
    statistics.  Photos from the pip wheels (sha256-verified); test = chelsea,
    coffee, grace_hopper."""
    return DatasetSpec(name="embedded-celeba", scale=8, kind="embedded", protocol=_doc(_embedded_celeba),
                       summary="offline CelebA stand-in, 20->160 (x8), centre squares",
                       options={"variant": "square", "hr_size": 160},
                       license="per image, see sources in meta.json")


REGISTRY: dict[str, DatasetSpec] = {s.name: s for s in (
    _div2k(), _imagenet(), _celeba(),
    _benchmark("set5", "Set5", "5"), _benchmark("set14", "Set14", "14"),
    _benchmark("b100", "B100", "100"), _benchmark("urban100", "Urban100", "100"),
    _embedded_div2k(), _embedded_imagenet(), _embedded_celeba(),
)}

EMBEDDED_NAMES = ("embedded-div2k", "embedded-imagenet", "embedded-celeba")
BENCHMARK_NAMES = ("set5", "set14", "b100", "urban100")
ALIASES: dict[str, tuple[str, ...]] = {"embedded": EMBEDDED_NAMES, "benchmarks": BENCHMARK_NAMES}


def get_spec(name: str) -> DatasetSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(list(REGISTRY) + list(ALIASES))}") from None


def resolve_names(names) -> list[str]:
    """Expand aliases (``embedded``, ``benchmarks``), keep order, drop duplicates."""
    out: list[str] = []
    for n in names:
        for m in ALIASES.get(n, (n,)):
            get_spec(m)
            if m not in out:
                out.append(m)
    return out


# ---------------------------------------------------------------- sources override
#: environment variable naming a sources file (``ecdp data prepare --sources`` wins)
SOURCES_ENV = "ECDP_DATA_SOURCES"
_DIGESTS = {"sha256": re.compile(r"^[0-9a-fA-F]{64}$"), "md5": re.compile(r"^[0-9a-fA-F]{32}$")}


class SourcesError(ValueError):
    """A sources override that cannot be used (one line, naming the file and key)."""


def remote_filenames() -> set[str]:
    """Filenames of every downloaded file of the registry."""
    return {f.filename for s in REGISTRY.values() for f in s.files.values()}


def user_filenames() -> set[str]:
    """Filenames of every user-supplied file of the registry (checked by md5 and size)."""
    return {f.filename for s in REGISTRY.values() for f in s.user_files.values()}


def check_sources(sources: Any, where: str = "sources") -> dict:
    """``sources`` (parsed YAML/JSON) checked against the registry; returns it as
    ``{"base_url": str | None, "files": {filename: {size, sha256, md5}}}`` or raises
    :class:`SourcesError` naming ``where`` and the offending key."""
    if not isinstance(sources, dict):
        raise SourcesError(f"{where}: expected a mapping with base_url and/or files")
    unknown = set(sources) - {"base_url", "files"}
    if unknown:
        raise SourcesError(f"{where}: unknown key(s) {sorted(unknown)}; known: base_url, files")
    base = sources.get("base_url")
    if base is not None and not (isinstance(base, str) and re.match(r"^(https?://[^/]|file:///|file://localhost/)", base)):
        raise SourcesError(f"{where}: base_url must be an http(s) URL or a local file:/// folder, got {base!r}")
    files = sources.get("files") or {}
    if not isinstance(files, dict):
        raise SourcesError(f"{where}: files must map filenames to {{size, sha256, md5}}")
    remote, user = remote_filenames(), user_filenames()
    out = {}
    for name, entry in files.items():
        if name not in remote | user:
            raise SourcesError(f"{where}: unknown file {name!r} (no registry entry has it; known: "
                               f"{', '.join(sorted(remote | user))})")
        if not isinstance(entry, dict) or set(entry) - {"size", "sha256", "md5"}:
            raise SourcesError(f"{where}: files.{name} must be a mapping of size, sha256, md5")
        if name in user and entry.get("sha256") is not None:
            raise SourcesError(f"{where}: files.{name} is a user-supplied file, checked by md5 and size; "
                               "sha256 is not used for it")
        if not any(entry.get(k) for k in _DIGESTS):
            raise SourcesError(f"{where}: files.{name} needs sha256 or md5 (every file is verified)")
        for key, pattern in _DIGESTS.items():
            value = entry.get(key)
            if value is not None and not (isinstance(value, str) and pattern.match(value)):
                raise SourcesError(f"{where}: files.{name}.{key} is not a hex {key} digest: {value!r}")
        size = entry.get("size")
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
            raise SourcesError(f"{where}: files.{name}.size must be a byte count, got {size!r}")
        out[name] = {k: entry.get(k) for k in ("size", "sha256", "md5")}
    return {"base_url": base, "files": out}


def load_sources(path: str | os.PathLike) -> dict:
    """Read and check a sources file (YAML or JSON); :class:`SourcesError` if unusable."""
    import yaml

    try:
        with open(path) as f:
            raw = yaml.safe_load(f)
    except OSError as e:
        raise SourcesError(f"sources file {path}: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise SourcesError(f"sources file {path}: not YAML/JSON ({str(e).splitlines()[0]})") from None
    return check_sources(raw, f"sources file {path}")


def with_sources(spec: DatasetSpec, sources: dict | None) -> DatasetSpec:
    """``spec`` with its files taken from ``sources`` (checked by :func:`check_sources`):
    URL = ``base_url`` + filename (Google Drive ids dropped), and size / sha256 / md5
    from ``sources["files"][filename]`` where given, for downloaded and user files."""
    if not sources:
        return spec
    base, table = sources.get("base_url"), sources.get("files") or {}
    files = {}
    for role, f in spec.files.items():
        if base:
            f = dataclasses.replace(f, url=base.rstrip("/") + "/" + f.filename, gdrive_id=None)
        if f.filename in table:
            f = dataclasses.replace(f, **table[f.filename])
        files[role] = f
    user = {role: dataclasses.replace(f, md5=table[f.filename]["md5"], size=table[f.filename]["size"])
            if f.filename in table else f for role, f in spec.user_files.items()}
    return dataclasses.replace(spec, files=files, user_files=user)
