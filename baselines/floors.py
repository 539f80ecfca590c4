"""The floors every quality table is read against (docs/ARCHITECTURE.md, "Floors"):
methods of the benchmark like any other, through the same contract
(:class:`ecdp.method.Method`), training loop, evaluation and tables.

* :class:`Bicubic`: ``mu(y)``, the bicubic upsampling of the LR image (ECDP eq. 5), the
  prior mean of ECDP and the base image SRDiff's residual is added to: what every
  diffusion method here has to beat.  Nothing to train (``train.stages: []``); one
  "network evaluation" is reported as 0 NFE.  ``model.kernel``: ``matlab`` (default,
  ECDP's ``sde.mu_kernel`` default) or ``torch``.
* :class:`Regression`: ECDP's own L1 pretraining model (ECDP section 4.1 / the released
  ``RRDBNet`` with its upsampling head; :data:`ecdp.nets.RRDB_HEADS`), trained alone with
  the L1 loss of ECDP's ``pretrain`` stage at the budget the config gives it: the
  "RRDB" row of the paper's Table 1 (a regression network trained with a pixel loss),
  and the model a diffusion method must beat in perception while it loses in PSNR.
  Sizes: ``model.rrdb_blocks`` / ``nf`` / ``gc`` / ``rrdb_head`` as ECDP's; the loss
  reduction ``loss.reduction`` as ECDP's (paper protocol: ``sum``).
"""
from __future__ import annotations

import torch
from torch import Tensor

from ecdp.imresize import bicubic_upsample
from ecdp.method import Method
from ecdp.nets import RRDB_HEADS
from ecdp.parametrization import reduce_loss


class Bicubic(Method):
    """``mu(y)``: bicubic upsampling (module docstring).  No parameters, no stages."""

    DEFAULTS = {"model": {"kernel": "matlab"}, "train": {"stages": []}}
    STAGE_KINDS: tuple[str, ...] = ()

    @classmethod
    def check_config(cls, cfg: dict) -> None:
        if cfg["model"].get("kernel") not in ("matlab", "torch"):
            raise ValueError(f"model.kernel must be 'matlab' or 'torch', got {cfg['model'].get('kernel')!r}")

    def __init__(self, cfg: dict, meta: dict):
        super().__init__(cfg, meta)
        self.kernel = cfg["model"]["kernel"]

    def training_losses(self, hr: Tensor, lr: Tensor) -> dict[str, Tensor]:
        raise ValueError("bicubic has nothing to train (train.stages: [])")

    @torch.no_grad()
    def super_resolve(self, lr: Tensor, generator: torch.Generator | None = None, **sampler):
        if sampler:
            raise ValueError(f"bicubic has no sampler options, got {sorted(sampler)}")
        return bicubic_upsample(lr, self.scale, self.kernel).clamp(0, 1), {"nfe": 0}


class Regression(Method):
    """ECDP's RRDB pretraining network trained alone with L1 (module docstring)."""

    DEFAULTS = {
        "model": {"rrdb_blocks": 23, "nf": 64, "gc": 32, "rrdb_head": "released", "rrdb_taps": None},
        "loss": {"reduction": "sum"},
        "train": {"stages": [{"name": "pretrain", "kind": "pretrain", "steps": 53750, "batch": 32, "lr": 2e-4,
                              "milestones": [25000, 37500, 45000, 50000]}]},
    }
    STAGE_KINDS = ("pretrain",)

    @classmethod
    def check_config(cls, cfg: dict) -> None:
        head = cfg["model"].get("rrdb_head")
        if head not in RRDB_HEADS:
            raise ValueError(f"model.rrdb_head must be one of {sorted(RRDB_HEADS)}, got {head!r}")
        if cfg["loss"].get("reduction") not in ("sum", "mean"):
            raise ValueError(f"loss.reduction must be 'sum' or 'mean', got {cfg['loss'].get('reduction')!r}")

    def __init__(self, cfg: dict, meta: dict):
        super().__init__(cfg, meta)
        m = cfg["model"]
        kw = {} if m["rrdb_head"] == "released" else {"init": "released"}
        self.rrdb = RRDB_HEADS[m["rrdb_head"]](self.scale, m["rrdb_blocks"], m["nf"], m["gc"], m.get("rrdb_taps"), **kw)
        self.reduction = cfg["loss"]["reduction"]

    def training_losses(self, hr: Tensor, lr: Tensor) -> dict[str, Tensor]:
        return {"l1": reduce_loss((self.rrdb(lr) - hr).abs(), self.reduction)}

    @torch.no_grad()
    def super_resolve(self, lr: Tensor, generator: torch.Generator | None = None, **sampler):
        if sampler:
            raise ValueError(f"regression has no sampler options, got {sorted(sampler)}")
        return self.rrdb(lr).clamp(0, 1), {"nfe": 1}
