"""Prepare a registry dataset into the layout of :mod:`ecdp.data.paired`.

``prepare(name, root)``:

1. returns at once if ``ROOT/NAME/.complete`` exists (a second run does nothing);
2. fetches the entry's files into ``ROOT/_downloads`` (resumable, checksummed,
   :mod:`ecdp.data.download`) or verifies the user-supplied ones (``source_dir``);
3. builds ``ROOT/NAME.tmp/{train,test}/{HR,LR}/*.png`` with the entry's builder;
4. estimates sigma^2 = Var[x - mu(y)] over the training pairs (:func:`estimate_sigma2`);
5. writes ``meta.json``, then ``.complete`` last, and renames ``NAME.tmp`` to ``NAME``:
   an interrupted run never leaves a half dataset under the final name.

Every image transform is a small pure function on [0, 1] tensors; HR images are
quantised to 8 bit before their LR is computed, i.e. LR = imresize(HR file, 1/s),
exactly what a consumer reading the HR PNG would compute.
"""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
import dataclasses
import json
import multiprocessing
import os
import re
import shutil
import tarfile
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch
from PIL import Image
from ..progress import bar as tqdm

from ..imageio import list_images, load_image, quantize, save_image
from ..imresize import bicubic_upsample, imresize
from . import embedded
from .download import ChecksumError, download, file_lock, verify_file
from .extract import extract
from .paired import check_files, pair_paths, write_manifest
from .registry import DatasetSpec, get_spec

__all__ = ["prepare", "plan", "estimate_sigma2", "estimate_sigma2_all", "make_pair", "is_prepared",
           "DOWNLOADS", "PrepareError"]

DOWNLOADS = "_downloads"
COMPLETE = ".complete"
SPLITS = ("train", "test")


class PrepareError(RuntimeError):
    """A dataset that cannot be prepared (missing user files, unexpected archive layout)."""


#: options that are HR sizes in pixels: at least MIN_LR_SIDE LR pixels at the set's scale
SIZE_OPTIONS = ("train_max", "test_max", "hr_size")
MIN_LR_SIDE = 16
EMBEDDED_VARIANTS = ("div2k", "square")


def check_options(spec: DatasetSpec, options: dict[str, Any]) -> None:
    """``--set`` overrides of a spec's options: known keys, the default's type, sizes
    of at least :data:`MIN_LR_SIDE` LR pixels; a :class:`PrepareError` naming the key."""
    unknown = set(options) - set(spec.options)
    if unknown:
        raise PrepareError(f"{spec.name}: unknown option(s) {sorted(unknown)}; known: {sorted(spec.options)}")
    for key, value in options.items():
        default = spec.options[key]
        where = f"{spec.name}: --set {key}={json.dumps(value)}"
        if default is None or isinstance(default, int):   # an integer option (null allowed where it is the default)
            integer = isinstance(value, int) and not isinstance(value, bool)
            if not integer and not (value is None and default is None):
                raise PrepareError(f"{where}: must be an integer" + (" or null" if default is None else ""))
            if integer and value < 1:
                raise PrepareError(f"{where}: must be at least 1")
        elif isinstance(default, str) and not isinstance(value, str):
            raise PrepareError(f"{where}: must be a string")
        elif isinstance(default, list) and not isinstance(value, list):
            raise PrepareError(f"{where}: must be a list like {json.dumps(default)}")
        if key in SIZE_OPTIONS and isinstance(value, int) and value < MIN_LR_SIDE * spec.scale:
            raise PrepareError(f"{where}: at least {MIN_LR_SIDE * spec.scale} (= {MIN_LR_SIDE} LR pixels at "
                               f"{spec.scale}x)")
    if spec.kind == "embedded":
        merged = {**spec.options, **options}
        if merged.get("variant") not in EMBEDDED_VARIANTS:
            raise PrepareError(f"{spec.name}: --set variant must be one of {list(EMBEDDED_VARIANTS)}, "
                               f"got {merged.get('variant')!r}")
        if merged["variant"] == "square" and "hr_size" not in merged:
            raise PrepareError(f"{spec.name}: variant 'square' needs hr_size, which {spec.name} does not have")
        if merged["variant"] == "div2k" and not {"train_max", "test_max"} <= set(merged):
            raise PrepareError(f"{spec.name}: variant 'div2k' needs train_max and test_max, which "
                               f"{spec.name} does not have")


def is_prepared(root: str | os.PathLike, name: str) -> bool:
    return (Path(root) / name / COMPLETE).exists()


# ================================================================ image transforms (pure)
def crop_box(x: torch.Tensor, box) -> torch.Tensor:
    """PIL-style box (left, top, right, bottom)."""
    left, top, right, bottom = box
    if right > x.shape[-1] or bottom > x.shape[-2]:
        raise ValueError(f"crop box {box} exceeds the image {x.shape[-1]}x{x.shape[-2]}")
    return x[..., top:bottom, left:right]


def center_crop(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Centre crop to at most (h, w)."""
    H, W = x.shape[-2:]
    h, w = min(h, H), min(w, W)
    top, left = (H - h) // 2, (W - w) // 2
    return x[..., top:top + h, left:left + w]


def center_square(x: torch.Tensor) -> torch.Tensor:
    """Centre square of side min(H, W) (ImageNet protocol of the released ECDP code)."""
    s = min(x.shape[-2:])
    return center_crop(x, s, s)


def mod_crop(x: torch.Tensor, scale: int) -> torch.Tensor:
    """Top-left crop to a multiple of ``scale`` (SRDiff data_gen/df2k.py)."""
    H, W = x.shape[-2:]
    return x[..., :H - H % scale, :W - W % scale]


def degrade(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """LR of an 8-bit HR image: MATLAB-bicubic imresize(HR, 1/scale), quantised to 8 bit."""
    return quantize(imresize(hr, scale=1.0 / scale))


def _decode(src: Path | bytes) -> torch.Tensor:
    if isinstance(src, (bytes, bytearray)):
        return embedded.decode(bytes(src))
    return load_image(src)


def make_pair(src: Path | bytes, out: Path, split: str, stem: str, scale: int, *, box=None,
              square: bool = False, max_size: int | None = None, resize: int | None = None,
              lr_file: Path | None = None) -> tuple[int, int]:
    """Write ``out/split/{HR,LR}/stem.png`` from one source image.  Returns the HR (H, W).

    Steps, each optional: box crop -> centre square -> centre crop to ``max_size`` ->
    imresize to ``resize`` x ``resize`` -> 8-bit HR -> top-left crop to a multiple of
    ``scale`` -> LR = official ``lr_file`` (HR cropped to scale x its size) or
    :func:`degrade`.  An HR PNG that needs no change is copied byte for byte."""
    hr = _decode(src)
    untouched = box is None and not square and resize is None
    if box is not None:
        hr = crop_box(hr, box)
    if square:
        hr = center_square(hr)
    if max_size is not None:
        before = hr.shape
        hr = center_crop(hr, max_size, max_size)
        untouched = untouched and hr.shape == before
    if resize is not None:
        hr = imresize(hr, size=(resize, resize))
    hr = quantize(hr)
    if lr_file is not None:
        lr = load_image(lr_file)
        lh, lw = lr.shape[-2:]
        if hr.shape[-2] < lh * scale or hr.shape[-1] < lw * scale:
            raise PrepareError(f"{lr_file.name}: LR {lw}x{lh} x{scale} is larger than its HR "
                               f"{hr.shape[-1]}x{hr.shape[-2]}")
        cropped = hr[..., :lh * scale, :lw * scale]
    else:
        cropped = mod_crop(hr, scale)
        lr = degrade(cropped, scale)
    untouched = untouched and cropped.shape == hr.shape
    hr_path = out / split / "HR" / f"{stem}.png"
    if untouched and isinstance(src, Path) and _is_rgb8_png(src):
        hr_path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, hr_path)
    else:
        save_image(cropped, hr_path)
    save_image(lr, out / split / "LR" / f"{stem}.png")
    return tuple(cropped.shape[-2:])


def _is_rgb8_png(path: Path) -> bool:
    if path.suffix.lower() != ".png":
        return False
    with Image.open(path) as img:
        return img.mode == "RGB"


# ================================================================ sigma^2
def _welford_merge(a: tuple[int, float, float], n: int, mean: float, m2: float):
    """Chan et al.'s pairwise update of (count, mean, M2)."""
    na, ma, m2a = a
    tot = na + n
    if tot == 0:
        return a
    delta = mean - ma
    return tot, ma + delta * n / tot, m2a + m2 + delta * delta * na * n / tot


def estimate_sigma2_all(root: str | os.PathLike, kernels: Iterable[str] = ("matlab", "torch"),
                        split: str = "train", scale: int | None = None, progress: bool = False,
                        limit: int | None = None) -> dict[str, float | None]:
    """sigma^2 of the paper (section 4): the empirical variance of x - mu(y) over the
    training pairs, pooled over every pixel and channel of every image, [0, 1] units,
    mu = :func:`ecdp.imresize.bicubic_upsample` with each kernel.  One streaming pass
    (one image pair in memory at a time; float64 Chan/Welford accumulation), so it
    works at DIV2K scale.  Works on a folder being built (no ``.complete`` needed).
    Returns ``{kernel: None}`` when the split has no images."""
    root = Path(root)
    kernels = tuple(kernels)
    if scale is None:
        scale = int(json.loads((root / "meta.json").read_text())["scale"])
    if not (root / split / "HR").is_dir():
        return {k: None for k in kernels}
    pairs = pair_paths(root, split)[:limit]
    acc = {k: (0, 0.0, 0.0) for k in kernels}
    for hr_path, lr_path in tqdm(pairs, desc=f"sigma2 {root.name}", unit="img", disable=not progress, leave=False):
        hr = load_image(hr_path).double()
        lr = load_image(lr_path).double()
        for k in kernels:
            mu = bicubic_upsample(lr, scale, k)
            if mu.shape != hr.shape:
                raise PrepareError(f"{hr_path.name}: HR {tuple(hr.shape)} != {scale} x LR {tuple(lr.shape)}")
            d = hr - mu
            mean = float(d.mean())
            acc[k] = _welford_merge(acc[k], d.numel(), mean, float(((d - mean) ** 2).sum()))
    return {k: (m2 / n if n else None) for k, (n, _, m2) in acc.items()}


def estimate_sigma2(root: str | os.PathLike, kernel: str = "matlab", split: str = "train",
                    scale: int | None = None, progress: bool = False, limit: int | None = None) -> float | None:
    """sigma^2 = Var[x - mu(y)] over ``root/split`` for one mu kernel (see
    :func:`estimate_sigma2_all`)."""
    return estimate_sigma2_all(root, (kernel,), split, scale, progress, limit)[kernel]


# ================================================================ build context and job runner
@dataclass
class BuildContext:
    spec: DatasetSpec
    out: Path                       # ROOT/NAME.tmp
    downloads: Path
    inputs: dict[str, Path]         # role -> verified local file
    options: dict[str, Any]
    limit: int | None = None
    workers: int = 1
    progress: bool = True
    sources: list[dict] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)

    def extracted(self, role: str) -> Path:
        path = self.inputs[role]
        return extract(path, self.downloads / f"{path.name}.d", progress=self.progress)

    def run(self, jobs: Iterable[Callable[[], Any]], total: int | None, desc: str) -> int:
        return run_jobs(jobs, total, desc, self.workers, self.progress)


def _call(job):
    torch.set_num_threads(1)
    return job()


@contextlib.contextmanager
def single_threaded_torch():
    """Image preparation runs one torch thread per process (parallelism comes from
    ``workers``); small per-image ops are slower with OpenMP threads, badly so on a
    loaded machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def run_jobs(jobs: Iterable[Callable[[], Any]], total: int | None, desc: str, workers: int = 1,
             progress: bool = True) -> int:
    """Run picklable zero-argument jobs, serially or in ``workers`` processes (spawn;
    at most 2 x workers in flight so streamed sources stay bounded in memory)."""
    n = 0
    with tqdm(total=total, desc=desc, unit="img", disable=not progress) as bar:
        if workers <= 1:
            for job in jobs:
                job()
                n += 1
                bar.update()
            return n
        ctx = multiprocessing.get_context("spawn")
        with cf.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            pending: set = set()
            for job in jobs:
                pending.add(pool.submit(_call, job))
                if len(pending) >= 2 * workers:
                    done, pending = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
                    for f in done:
                        f.result()
                        n += 1
                        bar.update()
            for f in cf.as_completed(pending):
                f.result()
                n += 1
                bar.update()
    return n


def _find_dir(root: Path, name: str) -> Path:
    """The folder called ``name`` somewhere under ``root`` (archives nest differently)."""
    if root.name == name:
        return root
    hits = sorted(p for p in root.rglob(name) if p.is_dir())
    if not hits:
        raise PrepareError(f"no folder {name!r} inside {root}")
    return hits[0]


# ================================================================ builders
def build_div2k(ctx: BuildContext) -> None:
    """DF2K x4 (see the registry docstring)."""
    s = ctx.spec.scale
    train = []
    for role, dirname in ctx.options["train_sources"]:
        train += list_images(_find_dir(ctx.extracted(role), dirname))
    train = train[:ctx.limit]
    _check_unique(p.stem for p in train)
    ctx.run((partial(make_pair, p, ctx.out, "train", p.stem, s) for p in train), len(train), "div2k train")
    role, dirname = ctx.options["test_source"]
    hr_dir = _find_dir(ctx.extracted(role), dirname)
    lr_files = {p.stem: p for p in ctx.extracted("valid_lr").rglob(f"*x{s}.png")}
    test = list_images(hr_dir)[:ctx.limit]
    missing = [p.name for p in test if f"{p.stem}x{s}" not in lr_files]
    if missing:
        raise PrepareError(f"no official X{s} LR image for {missing[:3]} in {ctx.inputs['valid_lr'].name}")
    ctx.run((partial(make_pair, p, ctx.out, "test", p.stem, s, lr_file=lr_files[f"{p.stem}x{s}"]) for p in test),
            len(test), "div2k test")
    ctx.notes["lr_kernel"] = ("train: MATLAB-bicubic imresize (ecdp.imresize, a=-0.5, antialiased) of the 8-bit HR; "
                              f"test: official DIV2K X{s} bicubic LR")


def build_benchmark(ctx: BuildContext) -> None:
    """Set5 / Set14 / B100 / Urban100 from EDSR's benchmark.tar (official LR)."""
    s, subset = ctx.spec.scale, ctx.options["subset"]
    base = _find_dir(ctx.extracted("benchmark"), subset)
    hr = list_images(base / "HR")[:ctx.limit]
    lr_dir = base / "LR_bicubic" / f"X{s}"
    jobs = []
    for p in hr:
        lr = lr_dir / f"{p.stem}x{s}{p.suffix}"
        if not lr.exists():
            raise PrepareError(f"{subset}: no LR image {lr.name} in {lr_dir}")
        jobs.append(partial(make_pair, p, ctx.out, "test", p.stem, s, lr_file=lr))
    ctx.run(jobs, len(jobs), f"{ctx.spec.name} test")
    ctx.notes["lr_kernel"] = f"official MATLAB-bicubic LR_bicubic/X{s} of EDSR's benchmark.tar"


def read_celeba_partition(path: Path) -> list[tuple[str, int]]:
    out = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            out.append((parts[0], int(parts[1])))
    return out


def build_celeba(ctx: BuildContext) -> None:
    """CelebA 20 -> 160 (see the registry docstring)."""
    o, s = ctx.options, ctx.spec.scale
    part = read_celeba_partition(ctx.inputs["partition"])
    img_dir = _find_dir(ctx.extracted("images"), "img_align_celeba")
    train = [n for n, p in part if p in set(o["train_partitions"])][:ctx.limit]
    test = [n for n, p in part if p == 2][:o["test_count"]][:ctx.limit]
    for split, names in (("train", train), ("test", test)):
        jobs = (partial(make_pair, img_dir / n, ctx.out, split, Path(n).stem, s, box=tuple(o["box"]),
                        resize=o["hr_size"]) for n in names)
        ctx.run(jobs, len(names), f"celeba {split}")
    ctx.notes["lr_kernel"] = "MATLAB-bicubic imresize (ecdp.imresize) of the 8-bit 160x160 HR"


_VAL_RE = re.compile(r"ILSVRC2012_val_(\d+)\.JPEG$", re.I)


def _imagenet_val(path: Path, test_limit: int | None, limit: int | None) -> Iterator[tuple[str, bytes]]:
    """(stem, JPEG bytes) of val images with number <= test_limit, streamed from the tar."""
    n = 0
    with tarfile.open(path, "r|*") as tf:
        for m in tf:
            match = _VAL_RE.search(m.name)
            if not (m.isfile() and match):
                continue
            if test_limit is not None and int(match.group(1)) > test_limit:
                continue
            yield Path(m.name).stem, tf.extractfile(m).read()
            n += 1
            if limit is not None and n >= limit:
                return


def _imagenet_train(path: Path, per_class: int | None, limit: int | None) -> Iterator[tuple[str, bytes]]:
    """(stem, JPEG bytes) streamed from the train tar of per-class tars."""
    n = 0
    with tarfile.open(path, "r|*") as outer:
        for cls in outer:
            if not (cls.isfile() and cls.name.endswith(".tar")):
                continue
            with tarfile.open(fileobj=outer.extractfile(cls), mode="r|*") as inner:
                k = 0
                for m in inner:
                    if not (m.isfile() and m.name.upper().endswith(".JPEG")):
                        continue
                    yield Path(m.name).stem, inner.extractfile(m).read()
                    n, k = n + 1, k + 1
                    if limit is not None and n >= limit:
                        return
                    if per_class is not None and k >= per_class:
                        break


def build_imagenet(ctx: BuildContext) -> None:
    """ImageNet 64 -> 256 (see the registry docstring); decoded from the tarballs."""
    o, s = ctx.options, ctx.spec.scale
    size = o["hr_size"]
    test_total = min(x for x in (o.get("test_limit"), ctx.limit, 50000) if x is not None)
    streams = (("test", _imagenet_val(ctx.inputs["val"], o.get("test_limit"), ctx.limit), test_total),
               ("train", _imagenet_train(ctx.inputs["train"], o.get("train_per_class"), ctx.limit), ctx.limit))
    for split, stream, total in streams:
        jobs = (partial(make_pair, data, ctx.out, split, stem, s, square=True, resize=size) for stem, data in stream)
        ctx.run(jobs, total, f"imagenet {split}")
    ctx.notes["lr_kernel"] = f"MATLAB-bicubic imresize (ecdp.imresize) of the 8-bit {size}x{size} HR"


def build_embedded(ctx: BuildContext) -> None:
    """The offline sets made of pip-wheel photos (see :mod:`ecdp.data.embedded`)."""
    o, s = ctx.options, ctx.spec.scale
    by_split = {"train": [], "test": []}
    for src in embedded.SOURCES:
        by_split["test" if src.name in embedded.TEST_NAMES else "train"].append(src)
    for split in SPLITS:
        chosen = by_split[split][:ctx.limit]
        jobs = []
        for src in chosen:
            data = embedded.read_verified(src)           # sha256 checked before use
            if o["variant"] == "div2k":
                kw = {"max_size": o["test_max"] if split == "test" else o["train_max"]}
            else:
                kw = {"square": True, "resize": o["hr_size"]}
            jobs.append(partial(make_pair, data, ctx.out, split, src.name, s, **kw))
            ctx.sources.append({"name": src.name, "file": src.file, "sha256": src.sha256, "license": src.license,
                                "package_version": embedded.package_version(src.package), "split": split})
        ctx.run(jobs, len(jobs), f"{ctx.spec.name} {split}")
    ctx.notes["lr_kernel"] = "MATLAB-bicubic imresize (ecdp.imresize, a=-0.5, antialiased) of the 8-bit HR"


BUILDERS: dict[str, Callable[[BuildContext], None]] = {
    "div2k": build_div2k, "benchmark": build_benchmark, "celeba": build_celeba,
    "imagenet": build_imagenet, "embedded": build_embedded,
}


def _check_unique(stems: Iterable[str]) -> None:
    seen = set()
    for st in stems:
        if st in seen:
            raise PrepareError(f"two source images share the name {st!r}")
        seen.add(st)


# ================================================================ inputs
def _fetch_inputs(spec: DatasetSpec, downloads: Path, source_dir: Path | None, progress: bool) -> dict[str, Path]:
    inputs: dict[str, Path] = {}
    for role, f in spec.files.items():
        inputs[role] = download(f.source_url, downloads / f.filename, sha256=f.sha256, md5=f.md5, size=f.size,
                                progress=progress)
    for role, f in spec.user_files.items():
        if source_dir is None:
            raise PrepareError(f"{spec.name}: needs {', '.join(u.filename for u in spec.user_files.values())}; "
                               "pass the folder holding them with --source-dir")
        path = Path(source_dir) / f.filename
        if not path.is_file():
            raise PrepareError(f"{spec.name}: {path} not found ({f.hint})")
        try:
            verify_file(path, md5=f.md5, size=f.size)
        except ChecksumError as e:
            raise PrepareError(f"{spec.name}: {e}; is {path} the official file?") from None
        inputs[role] = path
    return inputs


def _source_records(spec: DatasetSpec, inputs: dict[str, Path]) -> list[dict]:
    out = []
    for role, f in spec.files.items():
        out.append({"role": role, "file": f.filename, "url": f.source_url, "size": f.size,
                    "sha256": f.sha256, "md5": f.md5})
    for role, f in spec.user_files.items():
        out.append({"role": role, "file": f.filename, "md5": f.md5, "supplied_by_user": True})
    return out


# ================================================================ entry points
def plan(dataset: str | DatasetSpec, root: str | os.PathLike, source_dir: str | os.PathLike | None = None,
         download_dir: str | os.PathLike | None = None) -> list[str]:
    """What :func:`prepare` would fetch and write (the ``--dry-run`` text); touches nothing."""
    spec = get_spec(dataset) if isinstance(dataset, str) else dataset
    root = Path(root)
    downloads = Path(download_dir) if download_dir else root / DOWNLOADS
    lines = [f"{spec.name}: x{spec.scale}, {spec.summary}"]
    if is_prepared(root, spec.name):
        lines.append(f"  already prepared: {root / spec.name} (nothing to do)")
        return lines
    for role, f in spec.files.items():
        size = f"{f.size} bytes ({f.size / 2**30:.2f} GiB)" if f.size else "size not published"
        lines += [f"  fetch {f.source_url}",
                  f"    -> {downloads / f.filename}", f"    {size}",
                  f"    sha256 {f.sha256 or '-'}", f"    md5    {f.md5 or '-'}"]
    for role, f in spec.user_files.items():
        where = Path(source_dir) / f.filename if source_dir else f"<--source-dir>/{f.filename}"
        lines += [f"  user file {where} ({f.hint})", f"    md5    {f.md5 or '-'}"]
    if spec.kind == "embedded":
        for src in embedded.SOURCES:
            lines.append(f"  embedded {src.file}  sha256 {src.sha256}")
    splits = spec.splits[0] if len(spec.splits) == 1 else "{" + ",".join(spec.splits) + "}"
    lines.append(f"  write {root / spec.name}/{splits}/{{HR,LR}}/*.png, meta.json, {COMPLETE}")
    return lines


def _build(spec: DatasetSpec, tmp: Path, downloads: Path, inputs: dict[str, Path], limit: int | None,
           workers: int, progress: bool) -> None:
    """Images, sigma^2, meta.json and (last) the .complete marker, all inside ``tmp``."""
    ctx = BuildContext(spec, tmp, downloads, inputs, dict(spec.options), limit, workers, progress,
                       sources=_source_records(spec, inputs))
    BUILDERS[spec.kind](ctx)
    counts = {split: len(pair_paths(tmp, split)) for split in SPLITS}
    if sum(counts.values()) == 0:
        raise PrepareError(f"{spec.name}: no images were written")
    sig = estimate_sigma2_all(tmp, ("matlab", "torch"), scale=spec.scale, progress=progress)
    meta = {
        "name": spec.name, "scale": spec.scale, "summary": spec.summary, "protocol": spec.protocol,
        "sources": ctx.sources, "license": spec.license, "counts": counts,
        "lr_kernel": ctx.notes.get("lr_kernel", ""),
        "sigma2": sig["matlab"], "sigma2_by_kernel": sig,
        "sigma2_definition": ("empirical variance of x - mu(y) pooled over all pixels and channels of the "
                              "training pairs, [0,1] units; mu = ecdp.imresize.bicubic_upsample(lr, scale, kernel); "
                              "null for test-only sets"),
        "options": spec.options, "limit": limit,
    }
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    write_manifest(tmp)   # files.json: size + sha256 of every image, checked on every use
    (tmp / COMPLETE).write_text("")


def prepare(dataset: str | DatasetSpec, root: str | os.PathLike, *, source_dir: str | os.PathLike | None = None,
            download_dir: str | os.PathLike | None = None, limit: int | None = None,
            options: dict[str, Any] | None = None, workers: int = 1, progress: bool = True,
            force: bool = False) -> Path:
    """Prepare one dataset under ``root`` (see the module docstring); returns ``root/NAME``.

    ``dataset``: a registry name or a :class:`DatasetSpec` (tests point one at a local
    server).  ``limit``: at most that many images per split (smoke runs; recorded in
    meta.json).  ``options``: overrides of ``spec.options`` (e.g. ``test_limit``).
    A prepared folder is checked (:func:`ecdp.data.paired.check_files`) and returned;
    a damaged one raises :class:`ecdp.data.paired.DatasetDamaged` unless ``force``, which
    rebuilds it."""
    spec = get_spec(dataset) if isinstance(dataset, str) else dataset
    if options:
        check_options(spec, options)
        spec = dataclasses.replace(spec, options={**spec.options, **options})
    root = Path(root)
    for parent in [root, *root.parents]:
        if parent.exists() and not parent.is_dir():
            raise PrepareError(f"--root {root}: {'is' if parent == root else f'is under {parent}, which is'} "
                               "a file, not a folder")
    final = root / spec.name
    if (final / COMPLETE).exists() and not force:
        check_files(final)
        return final
    root.mkdir(parents=True, exist_ok=True)
    downloads = Path(download_dir) if download_dir else root / DOWNLOADS
    with file_lock(downloads / f".{spec.name}.lock"), single_threaded_torch():   # not in the data root
        if (final / COMPLETE).exists() and not force:
            check_files(final)
            return final
        inputs = _fetch_inputs(spec, downloads, Path(source_dir) if source_dir else None, progress)
        tmp = root / f"{spec.name}.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        for split in SPLITS:
            for kind in ("HR", "LR"):
                (tmp / split / kind).mkdir(parents=True, exist_ok=True)
        try:
            _build(spec, tmp, downloads, inputs, limit, workers, progress)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)     # a later run starts clean; nothing under NAME
            raise
        if final.exists():                 # a folder without .complete: stale, replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
    return final
