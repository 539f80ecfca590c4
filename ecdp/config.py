"""Run configuration: the generic defaults, method presets, and loading.

A run config is one YAML mapping.  Values are resolved in this order (later wins):

1. :data:`BASE`: the generic keys every method shares (``method``, ``protocol``,
   ``seed``, ``data``, ``train``);
2. the method's own defaults (``DEFAULTS`` of its class, :mod:`ecdp.method`; ECDP's are
   the paper-scale DIV2K recipe of :mod:`ecdp.model`);
3. the method's presets (:meth:`ecdp.method.Method.presets`: the ``protocol`` preset,
   for ECDP also the Table 6 architecture named by ``model.arch``);
4. what the user's file says.

So ``protocol: official`` plus ``sampler: {atol: 1e-4}`` is "the released code, except
the paper's tolerance": how each discrepancy is toggled alone.  The resolved config
is written next to every run's outputs.
"""
from __future__ import annotations

import copy
from pathlib import Path

import yaml

#: The keys every method shares.  ``train`` holds the loop's settings (:mod:`ecdp.training`);
#: a method's DEFAULTS give its stages and its EMA / clipping / warm-up.
BASE: dict = {
    "method": "ecdp",
    "protocol": "paper",
    "seed": 0,
    "data": {"dataset": "div2k", "root": "data", "patch": 160, "workers": 2},
    "train": {
        "ema_decay": 0.0,          # no EMA unless the method's defaults or the config say so
        "clip": None,
        "warmup": 0,
        "checkpoint_every": 1000,
        "log_every": 50,
        "validate": {"every": 0, "patches": 8},
        "stages": [],
    },
}


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def resolve(user: dict) -> dict:
    """BASE <- the method's DEFAULTS <- its presets <- user (see module docstring)."""
    from .registry import method_class  # late: registry imports this module

    name = user.get("method", BASE["method"])
    cls = method_class(name)
    cfg = deep_merge(BASE, getattr(cls, "DEFAULTS", {}))
    presets = getattr(cls, "presets", None)
    cfg = deep_merge(cfg, presets(user) if presets else {})
    cfg = deep_merge(cfg, user)
    cfg["method"] = name
    check = getattr(cls, "check_config", None)
    if check:
        check(cfg)
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
