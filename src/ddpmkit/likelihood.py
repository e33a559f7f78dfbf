"""The pieces of the variational bound: the Gaussian KL and the discretized Gaussian decoder for 8-bit images.

    KL(N(μ₁, σ₁²) ‖ N(μ₂, σ₂²)) = ½ (log σ₂² − log σ₁² + σ₁²/σ₂² + (μ₁ − μ₂)²/σ₂² − 1)

    p(x₀ | x₁) = ∏_pixels ∫_{δ₋(x)}^{δ₊(x)} N(y; μ, σ²) dy,   δ± = x ± 1/255, with δ₋(−1) = −∞ and δ₊(1) = +∞

(Ho et al. 2020, eq. 13: the data are 8-bit levels scaled to [−1, 1], so the bins are 2/255 wide and the two end
bins take the tails.) Everything is in nats per pixel; divide by log 2 for bits. The bins' probabilities use the
exact normal CDF in log space (``torch.special.log_ndtr``) rather than improved-diffusion's tanh approximation
of the CDF, so a bin far in a tail has a finite log-probability instead of the 1e-12 floor.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

BIN_HALF_WIDTH = 1.0 / 255.0  # 8-bit levels scaled to [-1, 1] are 2/255 apart


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """KL(N(mean1, exp(logvar1)) ‖ N(mean2, exp(logvar2))) elementwise, in nats (arguments broadcast)."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def log_normal_interval(a: Tensor, b: Tensor) -> Tensor:
    """log(Φ(b) − Φ(a)) for a < b, stable in both tails (Φ the standard normal CDF).

    For a ≥ 0 the interval is mirrored, log(Φ(−a) − Φ(−b)), so the subtraction is always of two small numbers'
    logs: log Φ(b) + log(1 − exp(log Φ(a) − log Φ(b))).
    """
    flip = a > 0
    lo, hi = torch.where(flip, -b, a), torch.where(flip, -a, b)
    log_hi, log_lo = torch.special.log_ndtr(hi), torch.special.log_ndtr(lo)
    return log_hi + torch.log(-torch.expm1(log_lo - log_hi))


def discretized_gaussian_log_likelihood(x: Tensor, mean: Tensor, log_scale: Tensor) -> Tensor:
    """log p(x) per pixel for x on the 8-bit grid in [−1, 1] under N(mean, exp(log_scale)²) binned (nats).

    The bin of x is [x − 1/255, x + 1/255]; the bin of −1 extends to −∞ and that of 1 to +∞, so the 256
    probabilities sum to one.
    """
    inv_scale = torch.exp(-log_scale)
    lower = (x - mean - BIN_HALF_WIDTH) * inv_scale
    upper = (x - mean + BIN_HALF_WIDTH) * inv_scale
    middle = log_normal_interval(lower, upper)
    bottom = torch.special.log_ndtr(upper)       # x = −1: Φ(upper)
    top = torch.special.log_ndtr(-lower)          # x = +1: 1 − Φ(lower)
    eps = 0.5 * BIN_HALF_WIDTH
    return torch.where(x < -1 + eps, bottom, torch.where(x > 1 - eps, top, middle))


def nats_to_bits_per_dim(nats: Tensor) -> Tensor:
    """Nats per pixel → bits per pixel (per dimension)."""
    return nats / math.log(2.0)
