"""Noise schedules against closed-form values."""

import math

import pytest
import torch

from ddpmkit.errors import DdpmkitError
from ddpmkit.schedule import NoiseSchedule


def test_linear_terminal_alpha_bar_matches_ddpm():
    s = NoiseSchedule.linear(1000)
    betas = [1e-4 + (0.02 - 1e-4) * i / 999 for i in range(1000)]
    expected = math.prod(1 - b for b in betas)
    assert s.alphas_cumprod[-1].item() == pytest.approx(expected, rel=1e-9)
    assert s.alphas_cumprod[-1].item() == pytest.approx(4.036e-5, rel=1e-3)
    assert s.betas[0].item() == pytest.approx(1e-4) and s.betas[-1].item() == pytest.approx(0.02)
    assert s.betas.dtype == torch.float64


@pytest.mark.parametrize("t", [0, 1, 250, 500, 999])
def test_cosine_alpha_bar_closed_form(t):
    T, s_ = 1000, 0.008
    s = NoiseSchedule.cosine(T)
    f = lambda u: math.cos((u / T + s_) / (1 + s_) * math.pi / 2) ** 2
    expected = f(t + 1) / f(0)
    if t < 990:  # away from the β clip at 0.999 the product telescopes to f(t+1)/f(0)
        assert s.alphas_cumprod[t].item() == pytest.approx(expected, rel=1e-9)
    assert s.betas.max().item() <= 0.999


def test_cosine_beta_clipped_at_0999():
    s = NoiseSchedule.cosine(1000)
    assert s.betas[-1].item() == pytest.approx(0.999)


def test_sigmoid_range_and_shape():
    s = NoiseSchedule.sigmoid(500, beta_start=1e-4, beta_end=0.02)
    assert s.betas[0].item() == pytest.approx(1e-4) and s.betas[-1].item() == pytest.approx(0.02)
    mid = torch.sigmoid(torch.tensor(0.0, dtype=torch.float64))
    lo = torch.sigmoid(torch.tensor(-6.0, dtype=torch.float64))
    hi = torch.sigmoid(torch.tensor(6.0, dtype=torch.float64))
    # the midpoint of an even-length linspace(-6, 6) sits between two points; check monotone and symmetric
    assert bool((s.betas[1:] > s.betas[:-1]).all())
    rescaled_mid = (mid - lo) / (hi - lo) * (0.02 - 1e-4) + 1e-4
    assert ((s.betas[249] + s.betas[250]) / 2).item() == pytest.approx(rescaled_mid.item(), rel=1e-3)


@pytest.mark.parametrize("kind", ["linear", "cosine", "sigmoid"])
def test_posterior_quantities(kind):
    s = NoiseSchedule.from_name(kind, 200)
    ac, ac_prev, b = s.alphas_cumprod, s.alphas_cumprod_prev, s.betas
    for t in [1, 7, 100, 199]:
        var = b[t] * (1 - ac[t - 1]) / (1 - ac[t])
        assert s.posterior_variance[t].item() == pytest.approx(var.item(), rel=1e-12)
        assert s.posterior_log_variance_clipped[t].item() == pytest.approx(math.log(var.item()), rel=1e-12)
        assert s.posterior_mean_coef1[t].item() == pytest.approx((b[t] * ac[t - 1].sqrt() / (1 - ac[t])).item())
        c2 = (1 - ac[t - 1]) * (1 - b[t]).sqrt() / (1 - ac[t])
        assert s.posterior_mean_coef2[t].item() == pytest.approx(c2.item())
    assert s.posterior_variance[0].item() == 0.0
    assert s.posterior_log_variance_clipped[0] == s.posterior_log_variance_clipped[1]
    assert ac_prev[0].item() == 1.0 and torch.equal(ac_prev[1:], ac[:-1])
    assert torch.allclose(s.snr, ac / (1 - ac))


def test_posterior_variance_between_beta_tilde_and_beta():
    s = NoiseSchedule.linear(1000)
    assert bool((s.posterior_variance[1:] <= s.betas[1:]).all())


def test_zero_terminal_snr_rescale():
    s = NoiseSchedule.linear(1000)
    z = s.rescale_zero_terminal_snr()
    assert z.alphas_cumprod[-1].item() == 0.0 and z.snr[-1].item() == 0.0
    assert z.sqrt_alphas_cumprod[0].item() == pytest.approx(s.sqrt_alphas_cumprod[0].item(), rel=1e-12)
    # √ᾱ is an affine function of the original √ᾱ (Lin et al., algorithm 1)
    a, b = s.sqrt_alphas_cumprod, z.sqrt_alphas_cumprod
    slope = (b[0] - b[-1]) / (a[0] - a[-1])
    assert torch.allclose(b, (a - a[-1]) * slope, atol=1e-12)
    assert z.zero_terminal_snr and not s.zero_terminal_snr
    assert torch.allclose(torch.cumprod(1 - z.betas, 0), z.alphas_cumprod, atol=1e-12)


def test_round_trip_dict():
    s = NoiseSchedule.from_name("cosine", 100, zero_terminal_snr=True)
    again = NoiseSchedule.from_dict(s.to_dict())
    assert torch.equal(s.betas, again.betas)


def test_bad_inputs():
    with pytest.raises(DdpmkitError, match="unknown noise schedule"):
        NoiseSchedule.from_name("quadratic", 10)
    with pytest.raises(DdpmkitError, match="positive integer"):
        NoiseSchedule.linear(0)
    with pytest.raises(DdpmkitError, match="beta"):
        NoiseSchedule.linear(10, beta_start=0.0)
