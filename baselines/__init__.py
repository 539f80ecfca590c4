"""Discrete-time diffusion baselines: SR3, SRDiff and their "++" variants (ECDP
appendix C.2, Table 7), with the suite's method interface (``ecdp.registry``:
``method: sr3 | srdiff``; "++" = a ``quality`` stage in ``train.stages``).

* :mod:`baselines.ddpm`: schedules, forward process, posterior, ancestral and DDIM
  steps, the sampling chain with gradient checkpointing / truncation, and the
  scaffolding both methods share;
* :mod:`baselines.sr3`, :mod:`baselines.srdiff`: the methods and their size presets;
* :mod:`baselines.nets`: their U-Nets (SRDiff reuses ``ecdp.nets.RRDBNet``).

:func:`param_rows` feeds ``ecdp params``.
"""
from __future__ import annotations


def param_rows() -> list[dict]:
    """Our parameter counts of the baselines' paper-size presets beside ECDP's Tables 1, 2, 4.

    Built on the ``meta`` device: no memory, no initialisation time (SR3-ImageNet has
    634M parameters).  SR3 counts its U-Net (its only network); SRDiff counts its
    U-Net plus the RRDB encoder layers that produce the condition (see
    :meth:`baselines.srdiff.SRDiff.parameter_count`).
    """
    import torch

    from . import sr3, srdiff

    rows = []
    with torch.device("meta"):
        for arch, paper in sr3.PAPER_PARAMS_M.items():
            m = sr3.SR3({"model": {"arch": arch}}, {"scale": 8 if arch.endswith("celeba") else 4})
            rows.append({"method": "SR3", "arch": arch, "ours_m": m.parameter_count() / 1e6, "paper_m": paper,
                         "counted": "U-Net"})
        for arch, paper in srdiff.PAPER_PARAMS_M.items():
            m = srdiff.SRDiff({"model": {"arch": arch}}, {"scale": srdiff.ARCH_SCALES[arch]})
            rows.append({"method": "SRDiff", "arch": arch, "ours_m": m.parameter_count() / 1e6, "paper_m": paper,
                         "counted": "U-Net + RRDB encoder"})
    return rows


__all__ = ["param_rows"]
