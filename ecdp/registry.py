"""Build any method from a resolved config: ECDP, SR3, SRDiff and their variants.

Every method is an ``nn.Module`` constructed as ``Class(cfg, meta)`` where ``meta`` is
the prepared dataset's ``meta.json`` (scale, sigma2, ...); training, evaluation and
timing never branch on the method.  ``ecdp params`` lives here too.
"""
from __future__ import annotations

import importlib

from torch import nn

from . import config as config_mod

METHODS = {
    "ecdp": "ecdp.model:ECDP",
    "sr3": "baselines.sr3:SR3",
    "srdiff": "baselines.srdiff:SRDiff",
}


def resolve_sigma2(cfg: dict, meta: dict) -> float:
    """sigma^2(y): the dataset's empirical Var[x - mu(y)] (paper) or a fixed sigma^2."""
    sigma = cfg["sde"].get("sigma", "empirical")
    if sigma == "empirical":
        by_kernel = meta.get("sigma2_by_kernel") or {}
        value = by_kernel.get(cfg["sde"].get("mu_kernel", "matlab"), meta.get("sigma2"))
        if value is None:
            raise ValueError("sde.sigma is 'empirical' but the dataset meta has no sigma2; re-run `ecdp data prepare`")
        return float(value)
    return float(sigma) ** 2


def method_class(name: str):
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose from {sorted(METHODS)}")
    module, _, cls = METHODS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def build_method(cfg: dict, meta: dict) -> nn.Module:
    name = cfg["method"]
    klass = method_class(name)
    if name == "ecdp":
        return klass(cfg, resolve_sigma2(cfg, meta), int(meta["scale"]))
    return klass(cfg, meta)


def count_params(method: nn.Module) -> int:
    counter = getattr(method, "parameter_count", None)
    return counter() if counter else sum(p.numel() for p in method.parameters())


def param_rows(protocol: str = "paper") -> list[dict]:
    """Our parameter counts of the paper's architectures beside the paper's numbers."""
    rows = []
    scales = {"div2k": 4, "imagenet": 4, "celeba": 8}
    for arch, paper_m in config_mod.PAPER_PARAMS_M.items():
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
    p.add_argument("--protocol", default="paper", choices=sorted(config_mod.PROTOCOLS),
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
