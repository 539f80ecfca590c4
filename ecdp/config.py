"""Run configuration: defaults, the ``protocol: paper | official`` presets, and loading.

A run config is one YAML mapping.  Values are resolved in this order (later wins):

1. :data:`DEFAULTS` (paper-scale DIV2K ECDP),
2. the architecture preset named by ``model.arch`` (Table 6),
3. the protocol preset named by ``protocol`` (:data:`PROTOCOLS`), which sets every
   choice where the paper and the released code differ
   (``shared/reference/official_code_notes.md``),
4. what the user's file says.

So ``protocol: official`` plus ``sampler: {atol: 1e-4}`` is "the released code, except
the paper's tolerance": how each discrepancy is toggled alone.  The resolved config
is written next to every run's outputs.
"""
from __future__ import annotations

import copy
from pathlib import Path

import yaml

ARCHS = {
    # Table 6 (paper_architectures.csv); rrdb_taps as in the released code
    "div2k": {"channels": [64, 128, 256, 256], "blocks": [2, 2, 2, 2], "rrdb_blocks": 23, "rrdb_taps": [1, 8, 15, 22]},
    "imagenet": {"channels": [64, 128, 256, 256], "blocks": [2, 2, 2, 2], "rrdb_blocks": 16, "rrdb_taps": [1, 5, 10, 15]},
    "celeba": {"channels": [64, 128, 256, 256], "blocks": [3, 3, 3, 3], "rrdb_blocks": 8, "rrdb_taps": [1, 3, 5, 7]},
}
PAPER_PARAMS_M = {"div2k": 42.6, "imagenet": 37.6, "celeba": 40.0}

DEFAULTS: dict = {
    "method": "ecdp",
    "protocol": "paper",
    "seed": 0,
    "data": {"dataset": "div2k", "root": "data", "patch": 160, "workers": 2},
    # rrdb_head: the RRDB pretraining network, `released` (head on the last block) or `esrgan`
    "model": {"arch": "div2k", "nf": 64, "gc": 32, "rrdb_head": "released"},
    "sde": {"beta_min": 0.1, "beta_max": 20.0, "t_eps": 1.0 / 3000.0},
    "parametrization": {"kind": "hybrid", "c": 1.0, "heads": "both"},
    # state: what dopri5 integrates (atol / rtol are relative to it): the normalised image
    # z = (x - mu) / sigma as the released code (z = 5 (x - bicubic)), or `pixel`
    "sampler": {"name": "ode", "method": "dopri5", "state": "normalized"},
    # eq. 16 as a squared norm: summed over C, H, W per sample, batch mean (released);
    # `mean` per element is the alternative (see README, "Loss reduction")
    "loss": {"reduction": "sum"},
    "quality": {"weight": 0.5, "feature_net": "auto"},
    # Stages run in order; lengths/lrs/batches: the released DF2K recipe
    # (official_code_notes.md "Training recipe"); the paper gives none of them.
    "train": {
        "ema_decay": 0.999,
        "clip": {"kind": "value", "max": 10.0},   # released code: value clipping at 10
        "warmup": 500,                            # linear warm-up steps (released code)
        "checkpoint_every": 1000,
        "log_every": 50,
        "validate": {"every": 0, "patches": 8},
        "stages": [
            {"name": "pretrain", "kind": "pretrain", "steps": 53750, "batch": 32, "lr": 2e-4,
             "milestones": [32250, 43000, 48375]},
            {"name": "score", "kind": "score", "steps": 107500, "batch": 16, "lr": 1e-4, "encoder_lr": 1e-5,
             "milestones": [64500, 86000]},
            # released fine-tune: lr_warmup_steps 1 (no warm-up)
            {"name": "quality", "kind": "quality", "steps": 1000, "batch": 12, "lr": 1e-5, "encoder_lr": 1e-5,
             "warmup": 1},
        ],
    },
}

# Where the paper and the released code differ (official_code_notes.md); each key is
# also an ordinary config option, so a discrepancy can be toggled alone.
PROTOCOLS: dict = {
    "paper": {
        "sampler": {"atol": 1e-4, "rtol": 1e-4},          # "absolute and relative error tolerance of 1e-4"
        "sde": {"sigma": "empirical", "mu_kernel": "matlab"},  # empirical Var[x - mu(y)]; "bicubic interpolation"
        "quality": {"mode": "add", "init_from_ema": False,     # "then add our image quality loss"
                    "sampler": {"name": "ode", "method": "dopri5", "atol": 1e-4, "rtol": 1e-4, "adjoint": True,
                                "state": "normalized"}},
        "celeba_blocks": [3, 3, 3, 3],                       # Table 6
    },
    "official": {
        "sampler": {"atol": 1e-3, "rtol": 1e-3},
        "sde": {"sigma": 0.2, "mu_kernel": "torch"},
        "quality": {"mode": "only", "init_from_ema": True, "ema_decay": 0.9,
                    "sampler": {"name": "ode", "method": "dopri5", "atol": 1e-3, "rtol": 1e-3, "adjoint": True,
                                "state": "normalized"}},
        "celeba_blocks": [2, 2, 2, 2],                       # hard-coded in the released U-Net
    },
}
DISCREPANCIES = {
    # name -> (config path, paper value, official value): the rows of the protocol table
    "ode_tolerance": ("sampler.atol,sampler.rtol", 1e-4, 1e-3),
    "sigma": ("sde.sigma", "empirical", 0.2),
    "mu_kernel": ("sde.mu_kernel", "matlab", "torch"),
    # the released quality stage is one choice of three settings: a separate fine-tune
    # (score loss dropped) that starts from the EMA weights and keeps an EMA of decay 0.9
    "quality_stage": ("quality", {"mode": "add", "init_from_ema": False},
                      {"mode": "only", "init_from_ema": True, "ema_decay": 0.9}),
    "celeba_blocks": ("model.blocks", [3, 3, 3, 3], [2, 2, 2, 2]),
}


def method_train_defaults(name: str) -> dict:
    """A baseline's own ``train`` defaults (its class's ``TRAIN_DEFAULTS``: EMA, clipping,
    warm-up of its reference trainer), which replace ECDP's; ``{}`` for ECDP."""
    if name == "ecdp":
        return {}
    from .registry import method_class  # late: registry imports this module
    return copy.deepcopy(getattr(method_class(name), "TRAIN_DEFAULTS", {}))


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def resolve(user: dict) -> dict:
    """Defaults <- architecture <- protocol <- user (see module docstring)."""
    protocol = user.get("protocol", DEFAULTS["protocol"])
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {sorted(PROTOCOLS)}, got {protocol!r}")
    arch = (user.get("model") or {}).get("arch", DEFAULTS["model"]["arch"])
    preset = copy.deepcopy(PROTOCOLS[protocol])
    celeba_blocks = preset.pop("celeba_blocks")
    cfg = deep_merge(DEFAULTS, {"protocol": protocol})
    if user.get("method", "ecdp") != "ecdp":
        pass  # baselines carry their own architecture presets (baselines/)
    elif arch in ARCHS:
        cfg["model"] = deep_merge(cfg["model"], ARCHS[arch])
        if arch == "celeba":
            cfg["model"]["blocks"] = celeba_blocks
    elif arch != "custom":
        raise ValueError(f"model.arch must be one of {sorted(ARCHS) + ['custom']}, got {arch!r}")
    cfg = deep_merge(cfg, preset)
    if user.get("method", "ecdp") != "ecdp":
        cfg = deep_merge(cfg, {"train": method_train_defaults(user.get("method", "ecdp"))})
    cfg = deep_merge(cfg, user)
    if cfg["method"] == "ecdp" and cfg["parametrization"]["kind"] not in ("eps", "x0", "hybrid"):
        raise ValueError(f"parametrization.kind must be eps, x0 or hybrid, got {cfg['parametrization']['kind']!r}")
    return cfg


def load(path: str | Path, overrides: dict | None = None) -> dict:
    """Read a YAML run config, apply ``overrides``, resolve presets."""
    path = Path(path)
    try:
        user = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise FileNotFoundError(f"config file {path} not found") from None
    if not isinstance(user, dict):
        raise ValueError(f"{path}: a run config must be a YAML mapping")
    return resolve(deep_merge(user, overrides or {}))


def parse_overrides(items: list[str]) -> dict:
    """``a.b=value`` strings (value parsed as YAML) -> nested dict."""
    out: dict = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} is not of the form key.path=value")
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = yaml.safe_load(value)
    return out
