"""A tiny prepared dataset built from a real photo, and tiny run configs, for the tests
and benchmarks (``from helpers import tiny_config``; docs/ARCHITECTURE.md, "Test-only
helpers")."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ecdp import config as config_mod
from ecdp.imageio import save_image
from ecdp.imresize import bicubic_upsample, imresize

ROOT = Path(__file__).resolve().parents[2]  # the repository (configs live in config/)


def make_tiny_dataset(root: Path, name: str = "tiny4x", scale: int = 4, n_train: int = 3, n_test: int = 2,
                      size: int = 64) -> Path:
    """A prepared dataset (ecdp.data.paired layout) of crops of skimage's astronaut."""
    from skimage import data as skdata

    img = torch.from_numpy(np.asarray(skdata.astronaut(), dtype=np.float32) / 255.0).permute(2, 0, 1)
    folder = root / name
    residuals = []
    for split, n, off in (("train", n_train, 0), ("test", n_test, 300)):
        for i in range(n):
            hr = img[:, off + 40 * i: off + 40 * i + size, 100 + 30 * i: 100 + 30 * i + size]
            hr = torch.round(hr * 255) / 255
            lr = torch.round(imresize(hr, scale=1 / scale).clamp(0, 1) * 255) / 255
            save_image(hr, folder / split / "HR" / f"{i:04d}.png")
            save_image(lr, folder / split / "LR" / f"{i:04d}.png")
            if split == "train":
                residuals.append((hr - bicubic_upsample(lr[None], scale)[0]).flatten())
    r = torch.cat(residuals)
    meta = {"name": name, "scale": scale, "sigma2": float(r.var(unbiased=False)), "protocol": "test fixture"}
    (folder / "meta.json").write_text(json.dumps(meta))
    (folder / ".complete").write_text("")
    return folder


def tiny_config(data_root: Path, **overrides) -> dict:
    user = config_mod.load(ROOT / "config" / "tiny.yaml")
    user = config_mod.deep_merge(user, {"data": {"root": str(data_root), "dataset": "tiny4x"},
                                        "quality": {"feature_net": "tiny-random"}})
    return config_mod.resolve(config_mod.deep_merge(user, overrides))
