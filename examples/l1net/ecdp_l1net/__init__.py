"""An example method package for ecdp-bench: a plain L1 regression network.

It is what a researcher writes to put their own model into the benchmark: one class
that follows the method contract (``ecdp.method.Method``), registered through the
``ecdp_bench.methods`` entry point in ``pyproject.toml``, and nothing edited in
``ecdp/``.  After ``pip install -e examples/l1net`` a run config says ``method: l1net``
(or, without installing, ``method: "ecdp_l1net:L1Net"`` with the folder on the path).

The network: mu(y) = the MATLAB-bicubic upsampled LR image plus a residual predicted
at LR resolution by ``blocks`` 3x3 conv + ReLU layers of ``channels`` features and
sub-pixel (pixel shuffle) upsampling.  One stage kind, ``regress``, trained with the
L1 loss; one network evaluation per image (``stats["nfe"] = 1``).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ecdp.imresize import bicubic_upsample
from ecdp.method import Method


class L1Net(Method):
    DEFAULTS = {
        "model": {"channels": 32, "blocks": 4},
        "train": {"ema_decay": 0.999, "stages": [
            {"name": "regress", "kind": "regress", "steps": 10000, "batch": 16, "lr": 2e-4}]},
    }
    STAGE_KINDS = ("regress",)

    @classmethod
    def check_config(cls, cfg: dict) -> None:
        m = cfg["model"]
        for key in ("channels", "blocks"):
            if not isinstance(m.get(key), int) or m[key] < 1:
                raise ValueError(f"model.{key} must be a positive integer, got {m.get(key)!r}")

    def __init__(self, cfg: dict, meta: dict):
        super().__init__(cfg, meta)
        c, n, s = int(cfg["model"]["channels"]), int(cfg["model"]["blocks"]), self.scale
        layers: list[nn.Module] = [nn.Conv2d(3, c, 3, padding=1), nn.ReLU()]
        for _ in range(n - 1):
            layers += [nn.Conv2d(c, c, 3, padding=1), nn.ReLU()]
        layers += [nn.Conv2d(c, 3 * s * s, 3, padding=1), nn.PixelShuffle(s)]
        self.body = nn.Sequential(*layers)

    def forward(self, lr: Tensor) -> Tensor:
        return bicubic_upsample(lr, self.scale, "matlab") + self.body(lr)

    def training_losses(self, hr: Tensor, lr: Tensor) -> dict[str, Tensor]:
        return {"l1": (self(lr) - hr).abs().mean()}

    @torch.no_grad()
    def super_resolve(self, lr: Tensor, generator: torch.Generator | None = None, **sampler) -> tuple[Tensor, dict]:
        if sampler:
            raise ValueError(f"L1Net has no sampler options, got {sorted(sampler)}")
        return self(lr).clamp(0, 1), {"nfe": 1, "sampler": "regression"}
