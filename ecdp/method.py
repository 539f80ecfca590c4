"""The method contract: what every method of the benchmark is, ECDP and the baselines
included, and what a researcher's own method implements (docs/ARCHITECTURE.md,
"The method contract").

A method is an ``nn.Module`` subclass of :class:`Method`:

* **built** as ``Class(cfg, meta)``: ``cfg`` is the resolved run config (the generic
  keys of :data:`ecdp.config.BASE` plus the method's own), ``meta`` the prepared
  dataset's ``meta.json`` (``scale``, ``sigma2``, ...);
* **configured** by its own defaults and presets: :attr:`Method.DEFAULTS` (merged over
  the generic ``seed`` / ``data`` / ``train`` defaults) and :meth:`Method.presets`
  (``protocol`` presets and architecture presets, merged before the user's file);
  nothing of another method's defaults reaches it;
* **trained** in stages (``train.stages``, each with a ``kind`` from
  :attr:`Method.STAGE_KINDS`) by the method-agnostic loop of :mod:`ecdp.training`,
  which calls :meth:`set_stage`, :meth:`param_groups`, :meth:`stage_plan` (EMA and
  initialisation rules of the stage) and :meth:`training_losses` (a dict of scalar
  losses, summed by the loop); :attr:`Method.STAGE_SECTIONS` says which config sections
  only a stage kind reads, so that runs sharing their first stages train them once;
* **used** through :meth:`super_resolve` ``(lr, generator, **sampler) -> (sr, stats)``
  with ``sr`` in [0, 1] at ``scale`` times the LR size and ``stats["nfe"]`` the number
  of network evaluations; ``stats`` may carry anything else the tables should show.

Registration (:func:`ecdp.registry.method_class`): a built-in name (``ecdp``, ``sr3``,
``srdiff``), ``"package.module:Class"`` in a config's ``method``, or an entry point of
the group ``ecdp_bench.methods`` of an installed package (``examples/l1net``).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class StagePlan:
    """What the training loop does at the start of a stage and while it runs.

    ``ema``: ``carry`` continues the previous stage's EMA, ``restart`` starts a new one
    from the stage's starting weights.  ``ema_decay``: the stage's decay (``None``: the
    run's ``train.ema_decay``; 0: no EMA, the final weights are the live ones).
    ``init_from_ema``: load the previous stage's EMA weights into the live model first
    (the released ECDP fine-tune).  ``validate``: run ``train.validate`` in this stage.
    """

    ema: str = "restart"
    ema_decay: float | None = None
    init_from_ema: bool = False
    validate: bool = True

    def __post_init__(self):
        if self.ema not in ("carry", "restart"):
            raise ValueError(f"stage ema must be 'carry' or 'restart', got {self.ema!r}")


class Method(nn.Module):
    """Base class of every method (module docstring).  Subclasses set the class
    attributes and implement :meth:`training_losses` and :meth:`super_resolve`."""

    #: The method's own config defaults, merged over :data:`ecdp.config.BASE`.
    DEFAULTS: ClassVar[dict] = {}
    #: ``protocol`` name -> settings merged over the defaults (before the user's file).
    PROTOCOLS: ClassVar[dict] = {"paper": {}}
    #: The stage kinds :meth:`set_stage` accepts.
    STAGE_KINDS: ClassVar[tuple[str, ...]] = ("score",)
    #: stage kind -> top-level config sections that only stages of that kind read (ECDP
    #: and the baselines: ``{"quality": ("quality",)}``).  Two runs that differ only in
    #: those sections and in later stages train their first stages identically, so the
    #: workflow trains that prefix once (:func:`ecdp.training.shared_stages`).  A section
    #: named here that is otherwise not a training key (ECDP's ``distill: ("distill",
    #: "sampler")``: a distilled student is trained for its sampler) counts as one in a
    #: run with a stage of that kind (:func:`ecdp.training.training_part`).
    STAGE_SECTIONS: ClassVar[dict[str, tuple[str, ...]]] = {}

    #: Named sampler settings a user can give instead of options (``ecdp sr --sampler
    #: fast``): name -> the options of :meth:`super_resolve`; each says in a comment the
    #: measurement it was chosen by.  Expanded by :func:`expand_sampler_preset`.
    SAMPLER_PRESETS: ClassVar[dict[str, dict]] = {}

    def __init__(self, cfg: dict, meta: dict):
        super().__init__()
        self.cfg, self.meta = cfg, meta
        self.scale = int(meta["scale"])
        first = self.STAGE_KINDS[0] if self.STAGE_KINDS else "none"   # "none": nothing to train (the bicubic floor)
        self.stage, self.stage_cfg = first, {"kind": first}

    # --- configuration ------------------------------------------------------------
    @classmethod
    def presets(cls, user: dict) -> dict:
        """Settings between the defaults and the user's config: the ``protocol`` preset."""
        protocol = user.get("protocol", "paper")
        if protocol not in cls.PROTOCOLS:
            raise ValueError(f"protocol must be one of {sorted(cls.PROTOCOLS)} for method "
                             f"{user.get('method')!r}, got {protocol!r}")
        return copy.deepcopy(cls.PROTOCOLS[protocol])

    @classmethod
    def check_config(cls, cfg: dict) -> None:
        """Raise ``ValueError`` (naming the key) for a resolved config this method cannot run."""

    @classmethod
    def check_sampler(cls, cfg: dict, options: dict) -> None:
        """Raise ``ValueError`` (naming the option) for sampler options of the user's
        (``--sampler``) that :meth:`super_resolve` would ignore or reject; called before
        the model is built.  Default: the method takes none."""
        if options:
            raise ValueError(f"{cls.__name__} has no sampler options, got {sorted(options)}")

    # --- training -------------------------------------------------------------------
    def set_stage(self, stage: dict) -> None:
        kind = stage.get("kind")
        if kind not in self.STAGE_KINDS:
            raise ValueError(f"{type(self).__name__} has no stage kind {kind!r} ({', '.join(self.STAGE_KINDS)})")
        self.stage, self.stage_cfg = kind, stage

    def param_groups(self, stage: dict) -> list[dict]:
        """Optimiser parameter groups of a stage (default: every parameter at ``stage.lr``)."""
        return [{"params": list(self.parameters()), "lr": float(stage["lr"])}]

    def stage_plan(self, stage: dict) -> StagePlan:
        """EMA and initialisation rules of a stage (default: from the stage's own keys)."""
        return StagePlan(ema=stage.get("ema", "restart"), ema_decay=stage.get("ema_decay"),
                         init_from_ema=bool(stage.get("init_from_ema", False)))

    def training_losses(self, hr: Tensor, lr: Tensor) -> dict[str, Tensor]:
        raise NotImplementedError

    def run_info(self) -> dict:
        """Facts of the current stage to record in the run's log and provenance (e.g. the
        feature network of a perceptual loss); ``{}`` if none."""
        return {}

    # --- inference ------------------------------------------------------------------
    @torch.no_grad()
    def super_resolve(self, lr: Tensor, generator: torch.Generator | None = None, **sampler) -> tuple[Tensor, dict]:
        raise NotImplementedError

    def parameter_count(self) -> int:
        """Parameters the tables report (default: all)."""
        return sum(p.numel() for p in self.parameters())


def expand_sampler_preset(cls, options: dict) -> dict:
    """``{"preset": NAME, **more}`` -> the class's ``SAMPLER_PRESETS[NAME]`` updated with
    ``more``; options without a preset are returned as they are.  ``ValueError`` (one
    line, the known names) for an unknown name."""
    if "preset" not in options:
        return dict(options)
    rest = {k: v for k, v in options.items() if k != "preset"}
    presets = getattr(cls, "SAMPLER_PRESETS", {}) or {}
    name = options["preset"]
    if name not in presets:
        known = ", ".join(sorted(presets)) or "none"
        raise ValueError(f"--sampler {name}: not a sampler preset of {cls.__name__} (presets: {known}); "
                         "or give options as JSON, e.g. '{\"name\": \"dpmpp_2m\", \"steps\": 10}'")
    return {**presets[name], **rest}
