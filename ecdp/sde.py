"""The conditional VP-SDE of ECDP (paper eqs. 5-13): one place for the process.

Forward SDE (eq. 5), with ``mu = mu(y)`` and ``sigma2 = sigma^2(y)``::

    dx = -1/2 beta(t) (x - mu) dt + sqrt(beta(t) sigma2) dw

``beta(t)`` is linear from ``beta_min`` = 0.1 to ``beta_max`` = 20 on t in [0, 1]
(the VP-SDE setting the paper adopts), so that

    alpha(t) = exp(-int_0^t beta(s) ds) = exp(-(beta_min t + (beta_max - beta_min) t^2 / 2))   (eq. 11)

which is the ``alpha_bar`` of the released code.  The transition kernel is Gaussian
with mean ``mu_hat`` (eq. 9) and variance ``sigma_hat^2`` (eq. 10); the prior is
N(mu, sigma2 I) (eq. 12).  Every function here is pure and works on tensors of any
shape; ``sigma2`` may be a float or a tensor broadcastable to ``x``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .distributed import batch_randn


@dataclass(frozen=True)
class ConditionalVPSDE:
    """Process parameters: ``beta(t) = beta_min + t (beta_max - beta_min)`` on [0, T=1].

    ``t_eps`` is where sampling stops (the released code integrates to 1/3000 and
    makes no final denoising jump).
    """

    beta_min: float = 0.1
    beta_max: float = 20.0
    T: float = 1.0
    t_eps: float = 1.0 / 3000.0

    def beta(self, t: Tensor) -> Tensor:
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def log_alpha(self, t: Tensor) -> Tensor:
        """log alpha(t) = -int_0^t beta(s) ds (eq. 11)."""
        return -(self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t * t)

    def alpha(self, t: Tensor) -> Tensor:
        """alpha(t) of eq. 11 (the released code's alpha_bar)."""
        return torch.exp(self.log_alpha(t))

    def t_from_log_alpha(self, log_alpha: Tensor) -> Tensor:
        """Inverse of :meth:`log_alpha` (solves the quadratic; used for log-SNR grids)."""
        a = 0.5 * (self.beta_max - self.beta_min)
        b = self.beta_min
        return (-b + torch.sqrt(b * b - 4 * a * log_alpha)) / (2 * a)

    # --- transition kernel ------------------------------------------------------
    def mean(self, x0: Tensor, mu: Tensor, t: Tensor) -> Tensor:
        """mu_hat(x, y, t) = sqrt(alpha) (x - mu) + mu (eq. 9)."""
        return _bc(self.alpha(t).sqrt(), x0) * (x0 - mu) + mu

    def var(self, sigma2, t: Tensor, like: Tensor | None = None) -> Tensor:
        """sigma_hat^2(y, t) = (1 - alpha(t)) sigma^2(y) (eq. 10)."""
        return _bc(-torch.expm1(self.log_alpha(t)) * sigma2, like)

    def perturb(self, x0: Tensor, mu: Tensor, sigma2, t: Tensor, eps: Tensor) -> Tensor:
        """x_t = mu_hat + sqrt(sigma_hat^2) eps (eq. 17)."""
        return self.mean(x0, mu, t) + self.var(sigma2, t, like=x0).sqrt() * eps

    def prior_sample(self, mu: Tensor, sigma2, generator: torch.Generator | None = None) -> Tensor:
        """x(T) ~ N(mu(y), sigma^2(y) I) (eq. 12)."""
        noise = batch_randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return mu + _bc(torch.as_tensor(sigma2, dtype=mu.dtype, device=mu.device), mu).sqrt() * noise

    # --- forward / reverse dynamics --------------------------------------------
    def drift(self, x: Tensor, mu: Tensor, t: Tensor) -> Tensor:
        """Forward drift f(x, t) = -1/2 beta(t) (x - mu) of eq. 5."""
        return -0.5 * _bc(self.beta(t), x) * (x - mu)

    def diffusion(self, sigma2, t: Tensor) -> Tensor:
        """Forward diffusion g(t) = sqrt(beta(t) sigma^2(y)) of eq. 5."""
        return (self.beta(t) * sigma2) ** 0.5

    def ode_drift(self, x: Tensor, mu: Tensor, sigma2, t: Tensor, score: Tensor) -> Tensor:
        """Probability-flow drift (eq. 13): -1/2 beta (x - mu) - 1/2 beta sigma2 s."""
        return -0.5 * _bc(self.beta(t), x) * ((x - mu) + _bc(sigma2, x) * score)

    def reverse_drift(self, x: Tensor, mu: Tensor, sigma2, t: Tensor, score: Tensor) -> Tensor:
        """Reverse-SDE drift (eq. 2 with eq. 5's f and g): f - g^2 s."""
        return self.drift(x, mu, t) - _bc(self.beta(t), x) * _bc(sigma2, x) * score


def _bc(v, like: Tensor | None):
    """Broadcast a per-sample (B,) or scalar tensor against an image batch (B, C, H, W)."""
    if not torch.is_tensor(v) or like is None:
        return v
    if v.dim() == 0 or v.dim() == like.dim():
        return v
    return v.reshape(v.shape + (1,) * (like.dim() - v.dim()))
