"""State-dict keys of the authors' released code (github Yuan-Yutao/ECDP @1696fa1) -> ours.

The networks of :mod:`ecdp.nets` compute what the released ones compute (same layers in
the same order, same initialisation, same time embedding), under other module names.
:func:`from_released` renames a released state dict so that ``ECDP.load_state_dict``
takes it:

* an ECDP checkpoint: ``[model.]diffusion.network.*`` (the U-Net) -> ``unet.*``,
  ``[model.]lr_feats.*`` (the RRDB encoder) -> ``rrdb.encoder.*``; the released
  diffusion buffers (``diffusion.betas`` / ``alphas`` / ``alpha_bars``) are dropped
  (eq. 11 computes them);
* an RRDBNet pretraining checkpoint: ``[model.]rrdb.*`` -> ``rrdb.encoder.*`` and
  ``[model.]final.*`` -> ``rrdb.head.*`` (:class:`ecdp.nets.ReleasedRRDBNet`).

Inside the U-Net: ``time_in.{0,2}`` -> ``temb.{0,2}``, ``in_conv.network`` ->
``conv_in``, ``downs.i.downconv.network`` -> ``down.i``, ``ups.i.upconv.1.network``
-> ``up.i.1``, ``out_conv.0`` / ``out_conv.2.network`` -> ``norm_out`` / ``conv_out``,
and in every residual block ``time_in`` -> ``temb``, ``extra_in.network`` -> ``cond``,
``convK.network`` -> ``convK``, ``skip.network`` -> ``skip``.  Inside the encoder:
``blocks.i.blockJ.convK`` -> ``blocks.i.rdbs.(J-1).convs.(K-1)``.

A released model was trained with sigma = 0.2 and torch's bicubic mu(y): use it with
``protocol: official`` (and the released U-Net, hard-coded to blocks [2, 2, 2, 2]).
"""
from __future__ import annotations

import re

_UNET = [
    (r"^time_in\.(\d)\.", r"temb.\1."),
    (r"^in_conv\.network\.", "conv_in."),
    (r"^downs\.(\d+)\.downconv\.network\.", r"down.\1."),
    (r"^ups\.(\d+)\.upconv\.1\.network\.", r"up.\1.1."),
    (r"^out_conv\.0\.", "norm_out."),
    (r"^out_conv\.2\.network\.", "conv_out."),
    (r"^(downs|mid|ups)\.(\d+)\.time_in\.", r"\1.\2.temb."),
    (r"^(downs|mid|ups)\.(\d+)\.extra_in\.network\.", r"\1.\2.cond."),
    (r"^(downs|mid|ups)\.(\d+)\.(conv1|conv2|skip)\.network\.", r"\1.\2.\3."),
    (r"^downs\.", "down."),
    (r"^ups\.", "up."),
]
_DROPPED = re.compile(r"^diffusion\.(betas|alphas|alpha_bars)$")


def _rrdb_key(k: str) -> str:
    m = re.match(r"^blocks\.(\d+)\.block(\d)\.conv(\d)\.(.*)$", k)
    if m:
        i, j, c, rest = m.groups()
        return f"blocks.{i}.rdbs.{int(j) - 1}.convs.{int(c) - 1}.{rest}"
    return k


def _unet_key(k: str) -> str:
    for pat, rep in _UNET:
        k = re.sub(pat, rep, k)
    return k


def from_released(state: dict) -> dict:
    """A released ECDP or RRDBNet state dict with our key names (module docstring).
    Unknown keys raise ``KeyError`` naming them: nothing is silently dropped but the
    diffusion buffers."""
    out, unknown = {}, []
    for key, value in state.items():
        k = key[len("model."):] if key.startswith("model.") else key
        if _DROPPED.match(k):
            continue
        if k.startswith("diffusion.network."):
            out["unet." + _unet_key(k[len("diffusion.network."):])] = value
        elif k.startswith("lr_feats."):
            out["rrdb.encoder." + _rrdb_key(k[len("lr_feats."):])] = value
        elif k.startswith("rrdb."):
            out["rrdb.encoder." + _rrdb_key(k[len("rrdb."):])] = value
        elif k.startswith("final."):
            out["rrdb.head." + k[len("final."):]] = value
        else:
            unknown.append(key)
    if unknown:
        raise KeyError(f"not keys of the released ECDP / RRDBNet: {unknown[:5]}{' ...' if len(unknown) > 5 else ''}")
    return out


def load_released(model, state: dict) -> None:
    """Load a released ECDP state dict into an :class:`ecdp.model.ECDP` built with the same
    sizes.  Every released tensor must find its place; the keys the released checkpoint
    cannot have (the pretraining head ``rrdb.head.*``, the ``sigma2`` buffer) are kept."""
    missing, unexpected = model.load_state_dict(from_released(state), strict=False)
    missing = [k for k in missing if not (k.startswith("rrdb.head.") or k == "sigma2")]
    if missing or unexpected:
        raise KeyError(f"released state dict does not match this model: missing {missing[:5]}, "
                       f"unexpected {unexpected[:5]}")
