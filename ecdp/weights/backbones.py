"""The torchvision backbones the weights fill: AlexNet, VGG16 and VGG19 ``features``
stacks, the indices of their convolutions, and the ``features.`` key prefix of their
state dicts.  Conversion, download and the feature network all check a state dict by
loading it into :func:`features_module` (strict).
"""
from __future__ import annotations

import torch
from torch import nn

#: torchvision ``features`` indices of the convolutions, in order (flax ``Conv_i`` -> index).
CONV_INDICES = {
    "alexnet": (0, 3, 6, 8, 10),
    "vgg16": (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28),
    "vgg19": (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34),
}


def strip_features(state: dict) -> dict:
    """``features.{i}.p`` -> ``{i}.p`` (the keys of the ``features`` module itself)."""
    return {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}


def features_module(name: str) -> nn.Sequential:
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
