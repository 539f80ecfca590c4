"""Training objectives shared by every method.

* :func:`ecdp.parametrization.score_matching_loss` is eq. 16 (it lives beside the
  parametrizations it trains);
* :class:`QualityLoss` is the image quality loss of eq. 19: a feature-space L1
  distance between a generated SR image and the ground truth.  The released code
  uses torchvision VGG19 ``features[:35]`` (conv5_4 before ReLU) on
  ImageNet-normalised inputs, mean absolute difference, weight 0.5 (DF2K, ImageNet)
  or 1.0 (CelebA).  The feature network is an option because only some pretrained
  VGGs can be had offline (:func:`ecdp.weights.feature_network`).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


class QualityLoss(nn.Module):
    """weight * mean |F(sr) - F(hr)| (eq. 19).  ``features`` maps [0, 1] RGB images to
    feature maps and is frozen; gradients flow to ``sr`` only."""

    def __init__(self, features: nn.Module, weight: float = 0.5, info: dict | None = None):
        super().__init__()
        self.features = features.eval().requires_grad_(False)
        self.weight = weight
        self.info = dict(info or {})

    def train(self, mode: bool = True):  # the feature network stays in eval mode
        super().train(mode)
        self.features.eval()
        return self

    def forward(self, sr: Tensor, hr: Tensor) -> Tensor:
        with torch.no_grad():
            target = self.features(hr)
        return self.weight * (self.features(sr) - target).abs().mean()


def build_quality_loss(cfg: dict) -> QualityLoss:
    """From the ``quality`` config section: ``feature_net`` ("auto", "vgg19", "vgg16",
    or "tiny-random", the weight-free stand-in of the test grid:
    :mod:`ecdp.weights.feature_net`), ``weight``, ``weights_dir``."""
    from .weights import feature_network

    net, info = feature_network(cfg.get("feature_net", "auto"), cfg.get("weights_dir"))
    return QualityLoss(net, cfg.get("weight", 0.5), info)


def quality_run_info(losses: list, stage: dict) -> dict:
    """``Method.run_info`` of a method with a quality stage: which feature network its
    loss (the first of ``losses``, built lazily) uses, for the run's log and provenance."""
    if not losses:
        return {}
    info = losses[0].info
    return {"quality_loss": {"stage": stage.get("name"), "feature_net": info.get("feature_net", info.get("name")), **info}}
