"""The weights folder and its manifest: where the files are, their names, their sha256.

The folder (``--dir``, else ``$ECDP_WEIGHTS_DIR``, else ``~/.cache/ecdp-bench/weights``)
holds plain torch state dicts plus ``manifest.json`` (sha256 and origin of each file).
Every file is written atomically (:func:`ecdp.checkpoint.atomic_open`), verified against
the manifest before use and loaded with ``torch.load(..., weights_only=True)``; nothing
here downloads (:mod:`ecdp.weights.fetch` fills the folder).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import torch

from ..checkpoint import atomic_open, sha256_file

DEFAULT_DIR = Path("~/.cache/ecdp-bench/weights")
ENV_DIR = "ECDP_WEIGHTS_DIR"
MANIFEST = "manifest.json"
FETCH_HINT = "run `ecdp weights fetch` (optionally with --dir DIR, or set $ECDP_WEIGHTS_DIR)"


class WeightsError(RuntimeError):
    """Weights missing, corrupt or not obtainable; the message says what to do."""


def resolve_dir(path: str | os.PathLike | None = None) -> Path:
    """The weights folder: ``path`` if given, else ``$ECDP_WEIGHTS_DIR``, else the default."""
    if path is None:
        path = os.environ.get(ENV_DIR) or DEFAULT_DIR
    return Path(path).expanduser()


def read_manifest(folder: str | os.PathLike | None = None) -> dict:
    """The folder's manifest (``{"files": {...}}``), empty if there is none."""
    p = resolve_dir(folder) / MANIFEST
    if not p.exists():
        return {"format": 1, "files": {}}
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise WeightsError(f"{p}: corrupt manifest ({e}); delete it and {FETCH_HINT}") from None


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_open(path, "wb") as f:   # the suite's one atomic writer (mode from the umask)
        f.write(data)


def write_manifest(folder: Path, manifest: dict) -> None:
    _atomic_write_bytes(folder / MANIFEST, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())


def save_state_dict(state: dict, path: Path) -> str:
    """``torch.save`` atomically; returns the file's sha256."""
    buf = io.BytesIO()
    torch.save(state, buf)
    _atomic_write_bytes(path, buf.getvalue())
    return hashlib.sha256(buf.getvalue()).hexdigest()


def backbone_file(name: str) -> str:
    """File name of a converted backbone (``alexnet``, ``vgg16``, ``vgg19``)."""
    return f"{name}_features.pth"


def lin_file(net: str) -> str:
    """File name of the LPIPS v0.1 linear layers for trunk ``alex`` / ``vgg``."""
    return f"lpips_v0.1_{net}_lin.pth"


def verified_path(name: str, folder: str | os.PathLike | None = None) -> Path | None:
    """Path of ``name`` in the folder if present and matching the manifest sha256, else None.

    Raises :class:`WeightsError` if the file exists but its hash differs (corrupt or edited).
    """
    folder = resolve_dir(folder)
    entry = read_manifest(folder).get("files", {}).get(name)
    p = folder / name
    if entry is None or not p.exists():
        return None
    got = sha256_file(p)
    if got != entry["sha256"]:
        raise WeightsError(f"{p}: sha256 {got[:12]}... differs from the manifest's "
                           f"{entry['sha256'][:12]}...; delete it and {FETCH_HINT}")
    return p


def load_backbone(name: str, folder: str | os.PathLike | None = None) -> dict[str, torch.Tensor]:
    """The ``features.*`` state dict of ``alexnet`` / ``vgg16`` / ``vgg19`` (sha256-verified)."""
    p = verified_path(backbone_file(name), folder)
    if p is None:
        raise WeightsError(f"no {name} weights in {resolve_dir(folder)}; {FETCH_HINT}")
    return torch.load(p, map_location="cpu", weights_only=True)
