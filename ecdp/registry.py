"""The open registry of methods, and ``ecdp params``.

A config's ``method`` names its class (:func:`method_class`):

* a built-in name (:data:`BUILTIN`: ``ecdp``, ``sr3``, ``srdiff``, and the floors
  ``bicubic`` and ``regression`` of :mod:`baselines.floors`);
* ``"package.module:Class"``, importable from the running Python;
* the name of an entry point in the group :data:`ENTRY_POINT_GROUP` of an installed
  package (``[project.entry-points."ecdp_bench.methods"] mymethod = "pkg.mod:Class"``).

Every method is built as ``Class(cfg, meta)`` (the contract of :mod:`ecdp.method`);
training, evaluation, timing and the tables never branch on the method.
"""
from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from torch import nn

BUILTIN = {
    "ecdp": "ecdp.model:ECDP",
    "sr3": "baselines.sr3:SR3",
    "srdiff": "baselines.srdiff:SRDiff",
    "bicubic": "baselines.floors:Bicubic",        # the floors of every quality table
    "regression": "baselines.floors:Regression",
}
ENTRY_POINT_GROUP = "ecdp_bench.methods"


def _import(target: str, name: str):
    module, _, attr = target.partition(":")
    try:
        obj = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"method {name!r}: cannot import {target!r} ({e})") from None
    return obj


def installed_methods() -> dict[str, str]:
    """Entry points of :data:`ENTRY_POINT_GROUP`: name -> ``module:Class``."""
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def method_class(name: str):
    """The class a config's ``method`` names (module docstring)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"method must be a name or 'package.module:Class', got {name!r}")
    if ":" in name:
        return _import(name, name)
    if name in BUILTIN:
        return _import(BUILTIN[name], name)
    installed = installed_methods()
    if name in installed:
        return _import(installed[name], name)
    raise ValueError(f"unknown method {name!r}; choose from {sorted(BUILTIN) + sorted(installed)}, "
                     "or give 'package.module:Class'")


def build_method(cfg: dict, meta: dict) -> nn.Module:
    return method_class(cfg["method"])(cfg, meta)


def count_params(method: nn.Module) -> int:
    counter = getattr(method, "parameter_count", None)
    return counter() if counter else sum(p.numel() for p in method.parameters())


def param_rows(protocol: str = "paper") -> list[dict]:
    """Our parameter counts of the paper's architectures beside the paper's numbers."""
    from . import config as config_mod
    from .model import PAPER_PARAMS_M

    rows = []
    scales = {"div2k": 4, "imagenet": 4, "celeba": 8}
    for arch, paper_m in PAPER_PARAMS_M.items():
        cfg = config_mod.resolve({"protocol": protocol, "model": {"arch": arch}})
        n = count_params(build_method(cfg, {"scale": scales[arch], "sigma2": 0.01}))
        rows.append({"method": "ECDP", "arch": arch, "ours_m": n / 1e6, "paper_m": paper_m})
    try:
        baselines = importlib.import_module("baselines")
        rows += baselines.param_rows()
    except (ImportError, AttributeError):
        pass
    for r in rows:
        r["rel_diff"] = (r["ours_m"] - r["paper_m"]) / r["paper_m"] if r.get("paper_m") else None
    return rows


def add_cli(p):
    from .model import PROTOCOLS

    p.add_argument("--protocol", default="paper", choices=sorted(PROTOCOLS),
                   help="architecture preset (official: CelebA U-Net with [2,2,2,2] blocks)")
    p.add_argument("--tolerance", type=float, default=0.02, help="allowed relative difference (default 2%%)")


def run_cli(args) -> int:
    rows = param_rows(args.protocol)
    print(f"{'method':<10} {'architecture':<14} {'ours (M)':>10} {'paper (M)':>10} {'diff':>8}  within {args.tolerance:.0%}")
    bad = 0
    for r in rows:
        ok = r["rel_diff"] is not None and abs(r["rel_diff"]) <= args.tolerance
        bad += (not ok) and r["method"] == "ECDP"
        diff = f"{r['rel_diff']:+.2%}" if r["rel_diff"] is not None else "n/a"
        print(f"{r['method']:<10} {r['arch']:<14} {r['ours_m']:>10.3f} {r['paper_m'] or float('nan'):>10.1f} {diff:>8}  {'yes' if ok else 'NO'}")
    return 1 if bad else 0
