"""Run configuration: the generic defaults, method presets, and loading.

A run config is one YAML mapping.  Values are resolved in this order (later wins):

1. :data:`BASE`: the generic keys every method shares (``method``, ``protocol``,
   ``seed``, ``data``, ``train``);
2. the method's own defaults (``DEFAULTS`` of its class, :mod:`ecdp.method`; ECDP's are
   the paper-scale DIV2K recipe of :mod:`ecdp.model`);
3. the method's presets (:meth:`ecdp.method.Method.presets`: the ``protocol`` preset,
   for ECDP also the Table 6 architecture named by ``model.arch``);
4. what the user's file says (a ``sampler`` that names another sampler than the
   defaults' replaces that section instead of merging into it).

So ``protocol: official`` plus ``sampler: {atol: 1e-4}`` is "the released code, except
the paper's tolerance": how each discrepancy is toggled alone.  The resolved config
is written next to every run's outputs.
"""
from __future__ import annotations

import copy
import re
from pathlib import Path

import yaml

#: The keys every method shares.  ``train`` holds the loop's settings (:mod:`ecdp.training`);
#: a method's DEFAULTS give its stages and its EMA / clipping / warm-up.
BASE: dict = {
    "method": "ecdp",
    "protocol": "paper",
    "seed": 0,
    "data": {"dataset": "div2k", "root": "data", "patch": 160, "workers": 2,
             "pin_memory": False, "persistent_workers": False},     # loader settings (GPU training)
    "train": {
        "precision": "fp32",       # fp32 | bf16 | fp16 (autocast; fp16 with a GradScaler, CUDA only)
        "channels_last": False,    # NHWC memory format for the networks and batches
        "compile": False,          # torch.compile the training step's losses
        "ema_decay": 0.0,          # no EMA unless the method's defaults or the config say so
        "clip": None,
        "warmup": 0,
        "checkpoint_every": 1000,
        "log_every": 50,
        "validate": {"every": 0, "patches": 8, "patch": 64},
        "stages": [],
    },
}


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def merge_settings(base: dict, over: dict) -> dict:
    """:func:`deep_merge` of two layers of a run config, except that a ``sampler`` in
    ``over`` naming another sampler than ``base``'s replaces that section: one sampler's
    options are not another's (ECDP's dopri5 tolerances do not reach a distilled
    student's dpmpp_1).  Used by :func:`resolve` and by the workflow grid's layers."""
    out = deep_merge(base, over)
    own, before = (over or {}).get("sampler"), base.get("sampler")
    if isinstance(own, dict) and isinstance(before, dict) and own.get("name") not in (None, before.get("name")):
        out["sampler"] = copy.deepcopy(own)
    return out


def resolve(user: dict) -> dict:
    """BASE <- the method's DEFAULTS <- its presets <- user (see module docstring); the
    user's keys are checked first (:func:`check_user_config`), what a run trains by
    :func:`check_stages` (the training loop and the workflow's grid call it)."""
    from .registry import method_class  # late: registry imports this module

    name = user.get("method", BASE["method"])
    cls = method_class(name)
    check_user_config(user, reference_config(cls))
    cfg = deep_merge(BASE, getattr(cls, "DEFAULTS", {}))
    presets = getattr(cls, "presets", None)
    cfg = deep_merge(cfg, presets(user) if presets else {})
    cfg = merge_settings(cfg, user)
    cfg["method"] = name
    check = getattr(cls, "check_config", None)
    if check:
        check(cfg)
    return cfg


# --------------------------------------------------------------------------- validation
#: Keys of a training stage the loop reads; a method adds its own (``STAGE_KEYS``).
STAGE_KEYS = {"name", "kind", "steps", "batch", "lr", "milestones", "warmup", "patch", "ema", "ema_decay"}
#: Subtrees whose keys a method checks itself (sampler options: ``check_sampler``).
OPEN = {("sampler",), ("quality", "sampler")}


def reference_config(cls) -> dict:
    """Every key a run config of ``cls`` may hold, with a value of the allowed type:
    BASE, the method's DEFAULTS, its ``CONFIG_KEYS`` (keys without a default)."""
    return deep_merge(deep_merge(BASE, getattr(cls, "DEFAULTS", {})), getattr(cls, "CONFIG_KEYS", {}))


def _kind(v) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return "number"
    return {str: "string", list: "list", dict: "mapping"}.get(type(v), "")


def check_user_config(user: dict, reference: dict, path: tuple = ()) -> None:
    """Unknown keys (typos: ``chekpoint_every``, a top-level ``smapler``) and values of
    the wrong kind (``steps: "ten"``, ``lr: fast``) are errors naming the key's path."""
    for key, value in user.items():
        here = path + (key,)
        where = ".".join(map(str, here))
        if key not in reference:
            known = ", ".join(sorted(map(str, reference)))
            raise ValueError(f"unknown config key {where!r} (known here: {known})")
        ref = reference[key]
        if here in OPEN or ref is None or value is None:
            continue
        if isinstance(ref, dict):
            if not isinstance(value, dict):
                raise ValueError(f"{where}: expected a mapping, got {value!r}")
            check_user_config(value, ref, here)
        elif _kind(ref) == "number" and _kind(value) != "number":
            raise ValueError(f"{where}: expected a number, got {value!r}")
        elif _kind(ref) in ("list", "bool") and _kind(value) != _kind(ref):
            raise ValueError(f"{where}: expected a {_kind(ref)}, got {value!r}")


def _positive_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def check_stages(cfg: dict) -> None:
    """``train.stages`` of a resolved config: a non-empty list of stages (empty for a
    method without stage kinds, e.g. the bicubic floor), each with a
    ``kind`` of the method, ``steps`` and ``batch`` positive integers, ``lr`` a positive
    number, no unknown keys; the loop's cadences positive; ``seed`` an integer."""
    from .registry import method_class

    kinds = getattr(method_class(cfg["method"]), "STAGE_KINDS", None)
    stages = cfg["train"].get("stages")
    if kinds == () and stages == []:   # a method with nothing to train (baselines.floors.Bicubic)
        pass
    elif kinds == ():
        raise ValueError(f"train.stages: {cfg['method']} has nothing to train; give train.stages: []")
    elif not isinstance(stages, list) or not stages:
        raise ValueError("train.stages: a run needs at least one training stage")
    extra = set(getattr(method_class(cfg["method"]), "STAGE_KEYS", ()))
    for i, st in enumerate(stages):
        where = f"train.stages[{i}]"
        if not isinstance(st, dict):
            raise ValueError(f"{where}: a stage is a mapping, got {st!r}")
        unknown = set(st) - STAGE_KEYS - extra
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {sorted(unknown)} (known: {sorted(STAGE_KEYS | extra)})")
        for key in ("kind", "steps", "batch", "lr"):
            if key not in st:
                raise ValueError(f"{where}: missing {key!r}")
        if kinds and st["kind"] not in kinds:
            raise ValueError(f"{where}.kind: {st['kind']!r} is not a stage of {cfg['method']} ({', '.join(kinds)})")
        for key in ("steps", "batch"):
            if not _positive_int(st[key]):
                raise ValueError(f"{where}.{key}: must be a positive integer, got {st[key]!r}")
        if _kind(st["lr"]) != "number" or not st["lr"] > 0:
            raise ValueError(f"{where}.lr: must be a positive number, got {st['lr']!r}")
    for key in ("checkpoint_every", "log_every"):
        if not _positive_int(cfg["train"].get(key)):
            raise ValueError(f"train.{key}: must be a positive integer, got {cfg['train'].get(key)!r}")
    decay = cfg["train"].get("ema_decay")
    if decay is not None and (_kind(decay) != "number" or not 0 <= decay <= 1):
        raise ValueError(f"train.ema_decay: must be a number in [0, 1], got {decay!r}")
    if not isinstance(cfg.get("seed"), int) or isinstance(cfg.get("seed"), bool):
        raise ValueError(f"seed: must be an integer, got {cfg.get('seed')!r}")


def load(path: str | Path, overrides: dict | None = None) -> dict:
    """Read a YAML run config, apply ``overrides``, resolve presets."""
    path = Path(path)
    try:
        user = yaml_load(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"config file {path} not found") from None
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not user:
        raise ValueError(f"{path} is empty: a run config names at least its method and data")
    if not isinstance(user, dict):
        raise ValueError(f"{path}: a run config must be a YAML mapping")
    return resolve(apply_overrides(user, overrides))


class _Loader(yaml.SafeLoader):
    """YAML's safe loader that also reads ``1e-3`` as a number (YAML 1.1 wants ``1.0e-3``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:\d[\d_]*)\.[\d_]*(?:[eE][-+]?\d+)?|[-+]?\d[\d_]*[eE][-+]?\d+|\.[\d_]+(?:[eE][-+]?\d+)?"
               r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."))


def yaml_load(text: str):
    """Parse a run config or an override value (safe: no tags, no objects)."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader


def parse_overrides(items: list[str]) -> list[tuple[list[str], object]]:
    """``a.b=value`` strings -> (path, value) pairs (value parsed as YAML); a numeric part
    indexes a list (``train.stages.0.steps=1``)."""
    out = []
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key or any(not p for p in key.split(".")):
            raise ValueError(f"override {item!r} is not of the form key.path=value")
        try:
            parsed = yaml_load(value)
        except yaml.YAMLError as e:
            raise ValueError(f"override {item!r}: the value is not valid YAML ({str(e).splitlines()[0]})") from None
        out.append((key.split("."), parsed))
    return out


def apply_overrides(user: dict, overrides) -> dict:
    """``user`` with each (path, value) of :func:`parse_overrides` set (a copy); a list
    entry is addressed by its index, and a list that the file does not give is taken from
    the method's defaults (so ``train.stages.1.steps=10`` edits the default stages)."""
    if isinstance(overrides, dict):   # a nested mapping: merged as is
        return deep_merge(user, overrides)
    out = copy.deepcopy(user)
    for parts, value in overrides or []:
        node = out
        for i, part in enumerate(parts[:-1]):
            nxt = parts[i + 1]
            if isinstance(node, list):
                node = _index(node, part, parts)
                continue
            if part not in node:
                if nxt.isdigit():   # a list the user's file does not give: start from the resolved defaults
                    ref = resolve(out)
                    for p in parts[:i + 1]:
                        ref = ref[int(p)] if isinstance(ref, list) else ref[p]
                    node[part] = copy.deepcopy(ref)
                else:
                    node[part] = {}
            node = node[part]
        last = parts[-1]
        if isinstance(node, list):
            node[_position(node, last, parts)] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise ValueError(f"override {'.'.join(parts)}: {'.'.join(parts[:-1])} is not a mapping or a list")
    return out


def _position(node: list, part: str, parts) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ValueError(f"override {'.'.join(parts)}: {part!r} is not an index of a list of {len(node)}")
    return int(part)


def _index(node: list, part: str, parts):
    return node[_position(node, part, parts)]
