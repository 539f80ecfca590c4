"""Prepared paired datasets: the on-disk layout every dataset step writes and every
consumer (training, evaluation, sigma^2 estimation) reads.

Layout of a prepared dataset folder::

    ROOT/NAME/
        meta.json          name, scale, protocol text, sources, counts, sigma2, ...
        train/HR/*.png     train/LR/*.png   (same file stems; LR = HR / scale)
        test/HR/*.png      test/LR/*.png
        .complete          written last: a folder without it is not prepared

Training draws aligned random patches with flips / rot90.  Which image, where and
how is decided by :class:`PatchSampler` from ``(seed, step)`` alone, so a resumed
run sees exactly the batches an uninterrupted run would, and workers can load in
parallel.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from torch.utils.data import Dataset, Sampler

from ..imageio import list_images, load_image


MANIFEST = "files.json"   # relative path -> [bytes, sha256] of every prepared image (written by prepare)


class DatasetDamaged(ValueError):
    """A prepared dataset whose files no longer match what ``prepare`` wrote."""


def image_files(root: Path) -> dict[str, Path]:
    """Every image of the layout (``{train,test}/{HR,LR}/*``) by its relative path."""
    out = {}
    for split in ("train", "test"):
        for kind in ("HR", "LR"):
            for p in list_images(root / split / kind):
                out[f"{split}/{kind}/{p.name}"] = p
    return out


def write_manifest(root: str | Path) -> dict:
    """``files.json``: size and sha256 of every image (called by ``prepare`` before ``.complete``)."""
    from ..checkpoint import sha256_file

    root = Path(root)
    files = {rel: [p.stat().st_size, sha256_file(p)] for rel, p in sorted(image_files(root).items())}
    (root / MANIFEST).write_text(json.dumps(files, indent=0) + "\n")
    return files


def _damage(files: dict[str, Path], manifest: dict, full: bool) -> list[str]:
    from ..checkpoint import sha256_file

    problems = [f"{rel} missing" for rel in manifest if rel not in files]
    problems += [f"{rel} not prepared here" for rel in files if rel not in manifest]
    for rel, (size, digest) in manifest.items():
        p = files.get(rel)
        if p is None:
            continue
        if p.stat().st_size != size:
            problems.append(f"{rel} changed ({p.stat().st_size} bytes, prepared {size})")
        elif full and sha256_file(p) != digest:
            problems.append(f"{rel} changed (sha256)")
    return problems


def check_files(root: str | Path, meta: dict | None = None, full: bool = False) -> int:
    """Raise :class:`DatasetDamaged` (one line, the first problems named) unless the
    prepared images are those ``prepare`` wrote: names and byte sizes against
    ``files.json`` (cheap: one ``stat`` per file, on every use), and with ``full`` their
    sha256 (``ecdp data verify``).  A dataset prepared before ``files.json`` existed is
    checked by its image counts against ``meta.json``.  Returns the number of files."""
    root = Path(root)
    files = image_files(root)
    man_path = root / MANIFEST
    if man_path.exists():
        problems = _damage(files, json.loads(man_path.read_text()), full)
    else:
        meta = meta if meta is not None else json.loads((root / "meta.json").read_text())
        problems = []
        for split, n in (meta.get("counts") or {}).items():
            have = sum(1 for rel in files if rel.startswith(f"{split}/HR/"))
            if have != n:
                problems.append(f"{split}/HR has {have} images, meta.json says {n}")
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise DatasetDamaged(f"{root} is damaged: {'; '.join(problems[:3])}{more}; rebuild it with "
                             f"`ecdp data prepare {root.name} --root {root.parent} --force`")
    return len(files)


def read_meta(root: str | Path, verify: bool = True) -> dict:
    """``meta.json`` of a prepared dataset; with ``verify`` (default) its files are
    checked cheaply first (:func:`check_files`)."""
    root = Path(root)
    if not (root / ".complete").exists():
        raise FileNotFoundError(f"{root} is not a prepared dataset (no .complete marker); run `ecdp data prepare`")
    meta = json.loads((root / "meta.json").read_text())
    if verify:
        check_files(root, meta)
    return meta


def pair_paths(root: str | Path, split: str) -> list[tuple[Path, Path]]:
    """(HR, LR) paths of a split, matched by file stem."""
    root = Path(root)
    hr = list_images(root / split / "HR")
    lr = {p.stem: p for p in list_images(root / split / "LR")}
    missing = [p.name for p in hr if p.stem not in lr]
    if missing:
        raise FileNotFoundError(f"{root / split}: no LR image for {missing[:3]}")
    return [(p, lr[p.stem]) for p in hr]


class PairedImages(Dataset):
    """Whole (HR, LR) image pairs of a split, [0, 1] float tensors; item = (hr, lr, name)."""

    def __init__(self, root: str | Path, split: str = "test", limit: int | None = None):
        self.root = Path(root)
        self.meta = read_meta(self.root)
        self.scale = int(self.meta["scale"])
        self.pairs = pair_paths(self.root, split)[:limit]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int):
        hr, lr = self.pairs[i]
        return load_image(hr), load_image(lr), hr.stem


@dataclass(frozen=True)
class PatchSpec:
    index: int
    top: float   # relative position in [0, 1)
    left: float
    flip: bool
    rot: int     # number of 90-degree rotations


class PatchSampler(Sampler):
    """Yields, for steps ``start_step, start_step + 1, ...``, a batch of :class:`PatchSpec`
    drawn from a generator seeded by ``(seed, step)`` only."""

    def __init__(self, n_images: int, batch_size: int, seed: int, start_step: int = 0,
                 num_steps: int | None = None, augment: bool = True):
        self.n, self.batch, self.seed = n_images, batch_size, seed
        self.start, self.num_steps, self.augment = start_step, num_steps, augment

    def batch_for_step(self, step: int) -> list[PatchSpec]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        idx = torch.randint(self.n, (self.batch,), generator=g)
        pos = torch.rand(self.batch, 2, generator=g)
        flip = torch.randint(2, (self.batch,), generator=g)
        rot = torch.randint(4, (self.batch,), generator=g)
        return [PatchSpec(int(idx[b]), float(pos[b, 0]), float(pos[b, 1]),
                          bool(flip[b]) and self.augment, int(rot[b]) if self.augment else 0)
                for b in range(self.batch)]

    def __iter__(self):
        step = self.start
        while self.num_steps is None or step < self.start + self.num_steps:
            yield self.batch_for_step(step)
            step += 1

    def __len__(self):
        return self.num_steps if self.num_steps is not None else 2**31


class TrainPatches(Dataset):
    """Aligned HR/LR patches (HR side ``patch``) addressed by :class:`PatchSpec`."""

    def __init__(self, root: str | Path, patch: int, split: str = "train", cache: bool = True):
        self.root = Path(root)
        self.meta = read_meta(self.root)
        self.scale = int(self.meta["scale"])
        if patch % self.scale:
            raise ValueError(f"patch {patch} is not a multiple of the scale {self.scale}")
        self.patch = patch
        self.pairs = pair_paths(self.root, split)
        if not self.pairs:
            raise FileNotFoundError(f"{self.root / split} has no images")
        self._load = lru_cache(maxsize=None if cache else 0)(self._load_pair)

    def _load_pair(self, i: int):
        hr, lr = self.pairs[i]
        return load_image(hr), load_image(lr)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, spec: PatchSpec):
        hr, lr = self._load(spec.index)
        p, s = self.patch // self.scale, self.scale
        h, w = lr.shape[-2:]
        if h < p or w < p:
            raise ValueError(f"{self.pairs[spec.index][1]} ({w}x{h}) is smaller than the LR patch {p}")
        top, left = int(spec.top * (h - p + 1)), int(spec.left * (w - p + 1))
        lr = lr[:, top:top + p, left:left + p]
        hr = hr[:, top * s:(top + p) * s, left * s:(left + p) * s]
        if spec.flip:
            hr, lr = hr.flip(-1), lr.flip(-1)
        if spec.rot:
            hr, lr = hr.rot90(spec.rot, (-2, -1)), lr.rot90(spec.rot, (-2, -1))
        return hr.contiguous(), lr.contiguous()
