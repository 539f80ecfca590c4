"""Shared set-up of the speed / memory benchmarks (``pytest tests/benchmarks --benchmark-only``).

These tests are skipped unless ``--benchmark-only`` is given, so a plain ``pytest``
stays fast.  Scale: 2 CPU cores, so the images are 16x16 LR -> 64x64 HR (4x) instead
of Table 3's 64 -> 256 (16x fewer pixels; on CPU cost is close to linear in pixels).

Same-size networks, so that a comparison isolates the sampler:

* ECDP: U-Net channels [32, 64, 64, 64], one block per stage, RRDB encoder of 2
  blocks (nf 16, gc 8): 2.22M counted parameters;
* SR3: inner 32, multipliers [1, 2, 2, 2], 2 res blocks, attention in the last
  stage: 2.11M;
* SRDiff: U-Net dim 40, multipliers [1, 2, 2, 2] with the same 2-block RRDB: 2.22M.

The ECDP model is trained for a short smoke-scale recipe in a session fixture
(adaptive dopri5's NFE depends on the learned field, so an untrained network would
give a meaningless NFE); the trained checkpoint is cached in pytest's cache folder
keyed by the config and the source of the modules that define it, so only the first
run pays for the training (~1-2 min on 2 free cores).  ``ECDP_BENCH_UNTRAINED=1``
skips training (NFE then labelled as untrained).  SR3 and SRDiff run with random
initial weights: their samplers have a fixed number of steps, so their NFE and
seconds do not depend on the weights (recorded in ``extra_info["weights"]``).
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
LR_SIZE, SCALE = 16, 4
HR_SIZE = LR_SIZE * SCALE

ECDP_MODEL = {"arch": "custom", "channels": [32, 64, 64, 64], "blocks": [1, 1, 1, 1], "rrdb_blocks": 2,
              "nf": 16, "gc": 8}
SR3_MODEL = {"arch": "custom", "inner_channels": 32, "channel_mults": [1, 2, 2, 2], "res_blocks": 2,
             "attn_stages": [3], "dropout": 0.0, "norm_groups": 8, "resample": "conv"}
SRDIFF_MODEL = {"arch": "custom", "unet_dim": 40, "dim_mults": [1, 2, 2, 2], "rrdb_blocks": 2, "rrdb_nf": 16,
                "rrdb_gc": 8}
# smoke-scale training recipe of the benchmark ECDP (config/tiny.yaml's, shorter; EMA decay 0.95
# as there, so the EMA weights are not mostly the random init after 180 steps)
ECDP_STAGES = [
    {"name": "pretrain", "kind": "pretrain", "steps": 30, "batch": 8, "lr": 1.0e-3},
    {"name": "score", "kind": "score", "steps": 150, "batch": 8, "lr": 5.0e-4, "encoder_lr": 1.0e-4,
     "milestones": [110]},
]
SOURCES = ["ecdp/model.py", "ecdp/nets/unet.py", "ecdp/nets/rrdb.py", "ecdp/training.py", "ecdp/parametrization.py",
           "ecdp/sde.py", "ecdp/config.py", "ecdp/method.py", "ecdp/imresize.py", "ecdp/data/paired.py", "tests/conftest.py"]


def pytest_configure(config):
    """``ECDP_BENCH_THREADS=N`` pins torch's intra-op threads (default: torch's choice, the
    machine's cores).  On a machine shared with other jobs use 1: OpenMP threads that
    spin at barriers while descheduled can make a 2-thread run 20x slower than 1 thread."""
    n = os.environ.get("ECDP_BENCH_THREADS")
    if n and config.getoption("benchmark_only", default=False):
        torch.set_num_threads(int(n))


def pytest_collection_modifyitems(config, items):
    if config.getoption("benchmark_only", default=False):
        return
    skip = pytest.mark.skip(reason="benchmark: run with `pytest tests/benchmarks --benchmark-only`")
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(skip)


def _tests_helpers():
    """tests/conftest.py loaded under its own name (its ``make_tiny_dataset``)."""
    spec = importlib.util.spec_from_file_location("ecdp_tests_helpers", ROOT / "tests" / "conftest.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _cache_dir(request, tmp_path_factory, name: str) -> Path:
    """A folder in pytest's cache (kept between runs), or a temporary one without the cache plugin."""
    cache = getattr(request.config, "cache", None)
    return Path(cache.mkdir(name)) if cache is not None else tmp_path_factory.mktemp(name)


@pytest.fixture(scope="session")
def bench_data(request, tmp_path_factory) -> Path:
    """A prepared 4x dataset of 64x64 crops of a real photo (6 train, 2 test pairs).

    Kept at a fixed place in pytest's cache so the cached ECDP run's config (which
    names its data folder) stays the same from one session to the next."""
    root = _cache_dir(request, tmp_path_factory, "ecdp-bench-data")
    if not (root / "bench4x" / ".complete").exists():
        shutil.rmtree(root / "bench4x", ignore_errors=True)
        _tests_helpers().make_tiny_dataset(root, name="bench4x", n_train=6, n_test=2, size=HR_SIZE)
    return root / "bench4x"


@pytest.fixture(scope="session")
def bench_lr(bench_data) -> torch.Tensor:
    """The LR input of every sampling benchmark: (1, 3, 16, 16), a real photo crop."""
    from ecdp.data import PairedImages

    hr, lr, _ = PairedImages(bench_data, "test")[0]
    return lr[None]


def _config(method: str, model: dict, data_root: Path, extra: dict | None = None) -> dict:
    from ecdp import config as config_mod

    user = {"method": method, "protocol": "paper", "seed": 0, "model": model,
            "data": {"root": str(data_root.parent), "dataset": data_root.name, "patch": 32, "workers": 0},
            "quality": {"feature_net": "auto", "weight": 0.5}}
    return config_mod.resolve(config_mod.deep_merge(user, extra or {}))


def ecdp_config(data_root: Path) -> dict:
    return _config("ecdp", ECDP_MODEL, data_root, {
        "sampler": {"name": "ode", "method": "dopri5", "atol": 1e-4, "rtol": 1e-4},
        "train": {"ema_decay": 0.95, "warmup": 10, "checkpoint_every": 50, "log_every": 10, "validate": {"every": 0},
                  "stages": ECDP_STAGES}})


def _cache_key(cfg: dict) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({k: v for k, v in cfg.items() if k != "data"}, sort_keys=True, default=str).encode())
    h.update(torch.__version__.encode())
    for rel in SOURCES:
        p = ROOT / rel
        h.update(p.read_bytes() if p.exists() else rel.encode())
    return h.hexdigest()[:16]


@pytest.fixture(scope="session")
def ecdp_model(request, tmp_path_factory, bench_data):
    """(ECDP model in eval mode, info dict).  Trained (cached) unless ECDP_BENCH_UNTRAINED=1."""
    from ecdp.checkpoint import load_method
    from ecdp.registry import build_method, count_params
    from ecdp.training import train

    cfg = ecdp_config(bench_data)
    steps = sum(s["steps"] for s in cfg["train"]["stages"])
    if os.environ.get("ECDP_BENCH_UNTRAINED"):
        torch.manual_seed(0)
        model = build_method(cfg, {"scale": SCALE, "sigma2": json.loads((bench_data / "meta.json").read_text())["sigma2"]})
        return model.eval(), {"weights": "untrained random init (ECDP_BENCH_UNTRAINED): dopri5 NFE is not meaningful",
                              "params": count_params(model)}
    folder = _cache_dir(request, tmp_path_factory, "ecdp-bench-model") / _cache_key(cfg)
    final = folder / "final.pt"
    if not final.exists():
        run = folder / "run"
        done = train(cfg, run, resume=(run / "checkpoint.pt").exists())
        shutil.copy2(done, final)
        shutil.rmtree(run, ignore_errors=True)
    model, _ = load_method(final)
    return model, {"weights": f"trained {steps} steps (smoke-scale recipe, EMA), cached at {final}",
                   "params": count_params(model)}


def _baseline(name: str, model: dict, data_root: Path, extra: dict):
    try:
        from ecdp.registry import build_method, count_params

        module = {"sr3": "baselines.sr3", "srdiff": "baselines.srdiff"}[name]
        if importlib.util.find_spec(module) is None:
            raise ImportError(module)
        cfg = _config(name, model, data_root, extra)
        torch.manual_seed(0)
        meta = json.loads((data_root / "meta.json").read_text())
        method = build_method(cfg, meta).eval()
    except ImportError as e:
        pytest.skip(f"{name} baseline not available yet ({e})")
    return method, {"weights": "untrained random init (fixed-step sampler: NFE and time do not depend on weights)",
                    "params": count_params(method)}


@pytest.fixture(scope="session")
def sr3_model(bench_data):
    return _baseline("sr3", SR3_MODEL, bench_data, {
        "diffusion": {"schedule": "linear", "T": 2000, "beta_start": 1e-6, "beta_end": 1e-2},
        "sampler": {"name": "ancestral", "steps": None}})


@pytest.fixture(scope="session")
def srdiff_model(bench_data):
    return _baseline("srdiff", SRDIFF_MODEL, bench_data, {"sampler": {"name": "ancestral", "steps": None}})


def flops_per_nfe(method, lr: torch.Tensor, one: dict, two: dict) -> float:
    """FLOPs of one network evaluation: FLOPs(sampler with 2 NFE) - FLOPs(with 1 NFE)."""
    from torch.utils.flop_counter import FlopCounterMode

    def count(opts):
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            method.super_resolve(lr, generator=torch.Generator().manual_seed(0), **opts)
        return fc.get_total_flops()

    return float(count(two) - count(one))


def machine_extra() -> dict:
    from ecdp.provenance import device_name

    return {"torch_threads": torch.get_num_threads(), "device": device_name("cpu"),
            "lr_size": f"{LR_SIZE}x{LR_SIZE}", "hr_size": f"{HR_SIZE}x{HR_SIZE}", "images": 1}


@pytest.fixture(scope="session")
def bench():
    """Helpers and constants for the benchmark modules (conftest modules are not importable by name)."""
    from types import SimpleNamespace

    return SimpleNamespace(LR_SIZE=LR_SIZE, HR_SIZE=HR_SIZE, SCALE=SCALE, flops_per_nfe=flops_per_nfe,
                           machine_extra=machine_extra, ecdp_config=ecdp_config)
