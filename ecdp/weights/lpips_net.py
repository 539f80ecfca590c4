"""LPIPS v0.1 assembled from the weights folder, with no download: the ``lpips``
package's model and its own v0.1 linear layers, the AlexNet / VGG16 trunk from
``{alexnet,vgg16}_features.pth`` (:mod:`ecdp.weights.store`).
"""
from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import torch
from torch import nn

from .store import WeightsError, load_backbone

#: LPIPS trunk name (``lpips.LPIPS(net=...)``) -> backbone file.
LPIPS_BACKBONE = {"alex": "alexnet", "vgg": "vgg16"}


def lpips_package_lin(net: str) -> Path:
    """The ``lpips`` package's own v0.1 linear-layer file for ``alex`` / ``vgg``."""
    import lpips

    return Path(lpips.__file__).resolve().parent / "weights" / "v0.1" / f"{net}.pth"


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
