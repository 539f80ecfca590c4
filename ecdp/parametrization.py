"""Score parametrizations of ECDP (eqs. 14, 15, 18) and the hybrid weight lambda(t).

The network has two heads (paper, "Model architecture"): ``eps_hat`` predicts the
normalised noise and ``x0_hat`` the clean image.  Each head defines a score:

* eq. 14, eps-parametrization:  s_eps = -eps_hat / sqrt(sigma_hat^2(y, t))
* eq. 15, x0-parametrization:   s_x0  = -(x - mu_hat(x0_hat, y, t)) / sigma_hat^2(y, t)
  (the paper prints ``sigma_hat^2(y)``; it means the time-dependent eq. 10 variance,
  which is what eq. 8 requires and what the released code uses)
* eq. 18, hybrid:  s = lambda(t) s_eps + (1 - lambda(t)) s_x0,  lambda(t) = alpha(t)^c

``kind="eps"`` is lambda = 1, ``kind="x0"`` is lambda = 0.  Because every score is
linear in the heads, the same blend can be written on noise or on data predictions;
:func:`denoised` gives the data prediction consistent with the blended score (used by
the exponential-integrator samplers and for visualisation).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .sde import ConditionalVPSDE, _bc

KINDS = ("eps", "x0", "hybrid")


@dataclass(frozen=True)
class Parametrization:
    kind: str = "hybrid"
    c: float = 1.0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"parametrization must be one of {KINDS}, got {self.kind!r}")

    def weight(self, alpha: Tensor) -> Tensor:
        """lambda(t) of eq. 18 as a function of alpha(t)."""
        if self.kind == "eps":
            return torch.ones_like(alpha)
        if self.kind == "x0":
            return torch.zeros_like(alpha)
        return alpha ** self.c

    def score(self, sde: ConditionalVPSDE, x: Tensor, mu: Tensor, sigma2, t: Tensor,
              eps_hat: Tensor, x0_hat: Tensor) -> Tensor:
        """The blended score s_theta(x, y, t) of eq. 18."""
        lam = _bc(self.weight(sde.alpha(t)), x)
        var = sde.var(sigma2, t, like=x)
        s_eps = -eps_hat / var.sqrt()                       # eq. 14
        s_x0 = -(x - sde.mean(x0_hat, mu, t)) / var         # eq. 15
        return lam * s_eps + (1 - lam) * s_x0               # eq. 18

    def denoised(self, sde: ConditionalVPSDE, x: Tensor, mu: Tensor, sigma2, t: Tensor,
                 eps_hat: Tensor, x0_hat: Tensor) -> Tensor:
        """Data prediction implied by the blended score (Tweedie):
        x0 = mu + (x - mu + sigma_hat^2 s) / sqrt(alpha)."""
        s = self.score(sde, x, mu, sigma2, t, eps_hat, x0_hat)
        return score_to_x0(sde, x, mu, sigma2, t, s)


def score_to_x0(sde: ConditionalVPSDE, x: Tensor, mu: Tensor, sigma2, t: Tensor, score: Tensor) -> Tensor:
    """Invert eq. 15 for the clean image: x0 = mu + (x - mu + sigma_hat^2 s) / sqrt(alpha)."""
    var = sde.var(sigma2, t, like=x)
    return mu + (x - mu + var * score) / _bc(sde.alpha(t).sqrt(), x)


#: Loss reductions: ``sum`` over C, H, W per sample then the batch mean (eq. 16's squared
#: norm, the released code), or ``mean`` over every element (1/(C H W) of it).
REDUCTIONS = ("sum", "mean")


def reduce_loss(err: Tensor, reduction: str = "sum") -> Tensor:
    """Per-element errors (B, ...) -> a scalar: ``sum`` over all but the batch dimension,
    then the batch mean (released code), or the ``mean`` over every element."""
    if reduction == "sum":
        return err.flatten(1).sum(1).mean()
    if reduction == "mean":
        return err.mean()
    raise ValueError(f"loss reduction must be one of {REDUCTIONS}, got {reduction!r}")


def score_matching_loss(eps_hat: Tensor, x0_hat: Tensor, eps: Tensor, x0: Tensor,
                        heads: str = "both", kind: str = "hybrid", reduction: str = "sum") -> Tensor:
    """Eq. 16: ||eps_hat - eps||^2 + ||x0_hat - x||^2, the two heads summed 1:1.

    Eq. 16 is the expectation of a squared norm: by default (``reduction="sum"``, the
    released code) each head's squared error is summed over C, H, W per sample and
    averaged over the batch; ``reduction="mean"`` divides both by C*H*W (then the loss
    does not depend on the crop size, but gradient value clipping, Adam's eps and the
    weight of an added quality loss all see a C*H*W times smaller gradient).

    Both heads are trained for every parametrization by default (eq. 16 and the released
    code); ``heads="used"`` trains only the head(s) the parametrization samples with
    (eps-only or x0-only ablation variants).  Tensors are in the network's normalised
    space (see :class:`ecdp.model.ECDP`).
    """
    l_eps = reduce_loss((eps_hat - eps).pow(2), reduction)
    l_x0 = reduce_loss((x0_hat - x0).pow(2), reduction)
    if heads == "used" and kind == "eps":
        return l_eps
    if heads == "used" and kind == "x0":
        return l_x0
    return l_eps + l_x0
