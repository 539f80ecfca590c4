"""The feature networks of the image-quality loss (eq. 19, :class:`ecdp.losses.QualityLoss`).

* ``vgg19``: torchvision VGG19 ``features[:35]`` (conv5_4 before ReLU), as in the
  released ECDP code; online weights only;
* ``vgg16``: VGG16 ``features[:29]`` (conv5_3 before ReLU), the deepest comparable layer
  of the weights that exist offline;
* ``auto``: ``vgg19`` when its weights are in the folder, else ``vgg16``;
* ``tiny-random``: a fixed random two-layer conv net, no weights.  It ships (rather than
  living with the tests) because the shipped test grid, ``config/test.yaml`` (the
  2-minute pipeline check ``snakemake --configfile config/test.yaml`` and
  ``tests/test_workflow.py``), trains ECDP's quality stage with it: the stage's
  plumbing (adjoint backpropagation through the sampler) is exercised at a fraction
  of a VGG's cost.  Its numbers mean nothing; the run records ``pretrained: False``.
"""
from __future__ import annotations

import os

import torch
from torch import nn

from .backbones import features_module, strip_features
from .store import backbone_file, load_backbone, read_manifest, resolve_dir, verified_path

#: quality-loss networks: name -> (backbone file, number of ``features`` modules, layer described)
FEATURE_NETWORKS = {
    "vgg19": ("vgg19", 35, "features[:35] = conv5_4 before ReLU (released ECDP code)"),
    "vgg16": ("vgg16", 29, "features[:29] = conv5_3 before ReLU (offline fallback)"),
}
#: the weight-free stand-in of the test grid (see the module docstring)
TINY_RANDOM = "tiny-random"


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


def tiny_random_network() -> nn.Module:
    """The ``tiny-random`` feature net: two 3x3 convs (3 -> 8 -> 8 channels), weights
    drawn once from a generator seeded 0 (the same net in every run)."""
    g = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return net


def feature_network(name: str = "auto", weights_dir: str | os.PathLike | None = None) -> tuple[nn.Module, dict]:
    """The image-quality-loss feature network and a description of it.

    ``name="auto"`` picks torchvision VGG19 ``features[:35]`` (conv5_4 before ReLU, as in
    the released code) when ``vgg19_features.pth`` is in the weights folder, else VGG16
    ``features[:29]`` (conv5_3 before ReLU, the deepest comparable layer of the weights
    that exist offline); ``tiny-random`` needs no weights (module docstring).  Input:
    [0, 1] RGB; frozen; eval.  ``info`` names the network, layer, weights file, its
    sha256 and origin, for the run record.
    """
    if name == TINY_RANDOM:
        return tiny_random_network(), {"feature_net": TINY_RANDOM, "pretrained": False}
    folder = resolve_dir(weights_dir)
    if name == "auto":
        name = "vgg19" if verified_path(backbone_file("vgg19"), folder) is not None else "vgg16"
    if name not in FEATURE_NETWORKS:
        raise ValueError(f"feature network must be 'auto', {TINY_RANDOM!r} or one of {sorted(FEATURE_NETWORKS)}, "
                         f"got {name!r}")
    backbone, n_modules, layer = FEATURE_NETWORKS[name]
    state = load_backbone(backbone, folder)
    features = features_module(backbone)[:n_modules]
    features.load_state_dict({k: v for k, v in strip_features(state).items()
                              if int(k.split(".")[0]) < n_modules}, strict=True)
    entry = read_manifest(folder)["files"][backbone_file(backbone)]
    info = {"name": name, "layer": layer, "weights": str(folder / backbone_file(backbone)),
            "sha256": entry["sha256"], "source": entry.get("source", "unknown")}
    return ImageNetFeatures(features), info
