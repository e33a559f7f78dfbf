"""The variational bound: Gaussian KL, the discretized decoder, a learned variance and the hybrid loss, checked
against torch.distributions, numerical integration and closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from ddpmkit.diffusion import Diffusion
from ddpmkit.errors import DdpmkitError
from ddpmkit.likelihood import discretized_gaussian_log_likelihood, log_normal_interval, normal_kl
from ddpmkit.sampling import sample
from ddpmkit.schedule import NoiseSchedule

LEVELS = torch.arange(256, dtype=torch.float64) / 127.5 - 1  # the 8-bit grid in [-1, 1]


def test_normal_kl_equals_torch_distributions():
    g = torch.Generator().manual_seed(0)
    m1, m2, lv1, lv2 = (torch.randn(1000, generator=g, dtype=torch.float64) for _ in range(4))
    expected = torch.distributions.kl_divergence(torch.distributions.Normal(m1, (0.5 * lv1).exp()),
                                                 torch.distributions.Normal(m2, (0.5 * lv2).exp()))
    torch.testing.assert_close(normal_kl(m1, lv1, m2, lv2), expected)
    assert normal_kl(m1, lv1, m1, lv1).abs().max() < 1e-12


@pytest.mark.parametrize(("a", "b"), [(-0.3, 0.2), (1.0, 1.01), (-3.0, -2.99), (8.0, 8.01), (-12.0, -11.99),
                                      (25.0, 25.5)])
def test_log_normal_interval_against_integration_even_far_in_the_tails(a, b):
    # the normal density integrated over [a, b] with an absolute tolerance far below the answer
    mass, _ = integrate.quad(stats.norm.pdf, a, b, epsabs=0, epsrel=1e-12)
    got = float(log_normal_interval(torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)))
    if mass > 0:
        assert got == pytest.approx(math.log(mass), rel=1e-9, abs=1e-9)
    else:  # below float64's smallest number (25σ): finite, and below the log of the tiniest positive double
        assert math.isfinite(got) and got < math.log(5e-324)


@pytest.mark.parametrize(("mean", "log_scale"), [(0.0, -1.0), (0.37, -4.0), (-0.99, -2.5), (1.3, 0.5)])
def test_discretized_decoder_is_a_distribution_over_the_256_levels(mean, log_scale):
    mean_t, ls = torch.tensor(mean, dtype=torch.float64), torch.tensor(log_scale, dtype=torch.float64)
    logp = discretized_gaussian_log_likelihood(LEVELS, mean_t, ls)
    assert torch.logsumexp(logp, 0).item() == pytest.approx(0.0, abs=1e-9)
    sigma = math.exp(log_scale)
    for k in (0, 1, 77, 128, 254, 255):  # each bin's mass by integrating the density
        lo = -np.inf if k == 0 else float(LEVELS[k]) - 1 / 255
        hi = np.inf if k == 255 else float(LEVELS[k]) + 1 / 255
        mass, _ = integrate.quad(stats.norm(mean, sigma).pdf, lo, hi, epsabs=0, epsrel=1e-10,
                                 points=None if np.isinf(lo) or np.isinf(hi) else [mean] if lo < mean < hi else None)
        if mass > 1e-300:
            assert logp[k].item() == pytest.approx(math.log(mass), rel=1e-6, abs=1e-8), k


def test_discretized_decoder_pinned():
    x = torch.tensor([-1.0, 100 / 127.5 - 1, 1.0], dtype=torch.float64)
    logp = discretized_gaussian_log_likelihood(x, torch.tensor([-0.9, -0.2, 0.95], dtype=torch.float64),
                                               torch.tensor([-2.0, -3.0, -1.5], dtype=torch.float64))
    # Φ((-1 + 1/255 + 0.9)/e^-2) ; bin of level 100 under N(-0.2, e^-6) ; 1 - Φ((1 - 1/255 - 0.95)/e^-1.5)
    expected = [stats.norm.logcdf((-1 + 1 / 255 + 0.9) / math.exp(-2)),
                math.log(stats.norm.cdf((100 / 127.5 - 1 + 1 / 255 + 0.2) / math.exp(-3))
                         - stats.norm.cdf((100 / 127.5 - 1 - 1 / 255 + 0.2) / math.exp(-3))),
                stats.norm.logsf((1 - 1 / 255 - 0.95) / math.exp(-1.5))]
    np.testing.assert_allclose(logp.numpy(), expected, rtol=1e-10)
    np.testing.assert_allclose(logp.numpy(), [-1.4318186, -2.8176196, -0.8718036], rtol=1e-7)  # pinned


# ----- a learned variance -----------------------------------------------------------------------------------


def _learned(kind="cosine", T=100, prediction="eps"):
    return Diffusion(NoiseSchedule.from_name(kind, T), prediction=prediction, variance="learned_range")


def _output(pred: torch.Tensor, v: float) -> torch.Tensor:
    return torch.cat([pred, torch.full_like(pred, v)], dim=1)


def test_learned_range_interpolates_log_beta_and_log_posterior_variance():
    d = _learned()
    x_t = torch.randn(4, 1, 3, 3, dtype=torch.float64)
    t = torch.tensor([0, 1, 50, 99])
    s = d.schedule
    for v, expected in ((1.0, torch.log(s.betas)), (-1.0, s.posterior_log_variance_clipped),
                        (0.0, 0.5 * torch.log(s.betas) + 0.5 * s.posterior_log_variance_clipped)):
        out = d.p_mean_variance(_output(torch.zeros_like(x_t), v), x_t, t)
        torch.testing.assert_close(out.log_variance[:, 0, 0, 0], expected[t])
        torch.testing.assert_close(out.variance, out.log_variance.exp())
    with pytest.raises(DdpmkitError, match="learned variance needs 2 output channels"):
        d.p_mean_variance(torch.zeros_like(x_t), x_t, t)


def test_respaced_learned_variance_uses_the_subsequences_betas():
    d = _learned(T=1000)
    kept = torch.arange(0, 1000, 100)
    r = d.respace(kept)
    ac = d.schedule.alphas_cumprod[kept]
    beta = 1 - ac / torch.cat([ac.new_ones(1), ac[:-1]])
    x_t = torch.randn(10, 1, 2, 2, dtype=torch.float64)
    i = torch.arange(10)
    top = r.p_mean_variance(_output(torch.zeros_like(x_t), 1.0), x_t, i)
    torch.testing.assert_close(top.log_variance[:, 0, 0, 0], torch.log(beta))


@pytest.mark.parametrize("v", [1.0, -1.0])
def test_ddpm_with_a_learned_variance_at_an_end_equals_the_fixed_variance_sampler(v):
    """v = +1 is β'_t (fixed_large), v = −1 is β̃'_t (fixed_small), respaced to 25 steps: the same samples."""
    schedule = NoiseSchedule.cosine(1000)
    fixed = Diffusion(schedule, variance="fixed_large" if v > 0 else "fixed_small")
    learned = Diffusion(schedule, variance="learned_range")
    eps_model = lambda x, t: 0.3 * x + 0.01 * t.reshape(-1, 1, 1, 1).to(x.dtype) / 1000
    x_T = torch.randn(6, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    a = sample(eps_model, fixed, x_T.shape, "ddpm", steps=25, x_T=x_T, generator=torch.Generator().manual_seed(1))
    b = sample(lambda x, t: _output(eps_model(x, t), v), learned, x_T.shape, "ddpm", steps=25, x_T=x_T,
               generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b)


# ----- the bound's terms --------------------------------------------------------------------------------------


def _grid_images(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 1, 4, 4), generator=g).double() / 127.5 - 1


def test_vlb_terms_are_the_kl_and_the_decoder_nll_in_bits_per_dim():
    d = _learned()
    x0 = _grid_images(3)
    t = torch.tensor([0, 7, 60])
    x_t = d.q_sample(x0, t, torch.randn_like(x0))
    output = torch.cat([torch.randn_like(x0) * 0.5, torch.rand_like(x0) * 2 - 1], dim=1)
    got = d.vlb_terms(output, x0, x_t, t)
    out = d.p_mean_variance(output, x_t, t, clip_denoised=False)
    true_mean, true_var, _ = d.q_posterior(x0, x_t, t)
    for k in (1, 2):  # KL of the true posterior from the model's step, per pixel, averaged, in bits
        kl = torch.distributions.kl_divergence(
            torch.distributions.Normal(true_mean[k], true_var[k].sqrt().expand_as(true_mean[k])),
            torch.distributions.Normal(out.mean[k], out.variance[k].sqrt()))
        assert got[k].item() == pytest.approx(kl.mean().item() / math.log(2), rel=1e-10)
    nll = -discretized_gaussian_log_likelihood(x0[0], out.mean[0], 0.5 * out.log_variance[0])
    assert got[0].item() == pytest.approx(nll.mean().item() / math.log(2), rel=1e-10)


def test_a_model_that_is_the_exact_posterior_has_zero_kl_terms():
    """x̂_0 = x_0 and σ² = β̃_t (v = −1): p(x_{t-1}|x_t) is q(x_{t-1}|x_t, x_0), so every L_t with t ≥ 1 is 0."""
    d = _learned(prediction="x0")
    x0 = _grid_images(99, seed=1)
    t = torch.arange(1, 100)
    x_t = d.q_sample(x0, t, torch.randn_like(x0))
    assert d.vlb_terms(_output(x0, -1.0), x0, x_t, t).abs().max() < 1e-10
    assert (d.vlb_terms(_output(x0, 1.0), x0, x_t, t) > 0).all()  # σ² = β_t > β̃_t costs bits


def test_prior_term_closed_form():
    d = _learned(kind="linear", T=1000)
    a = float(d.schedule.alphas_cumprod[-1])
    x0 = torch.zeros(2, 1, 2, 2, dtype=torch.float64)
    expected = 0.5 * (-1 - math.log(1 - a) + (1 - a)) / math.log(2)
    torch.testing.assert_close(d.prior_bpd(x0), torch.full((2,), expected, dtype=torch.float64))
    x0 = torch.ones(1, 1, 1, 1, dtype=torch.float64)  # + a (x_0 √ᾱ_T)² / 2 nats
    assert d.prior_bpd(x0).item() == pytest.approx(expected + 0.5 * a / math.log(2), rel=1e-12)


class _Free(torch.nn.Module):
    """An 'image model' whose output is two free tensors: the prediction and the variance channels."""

    def __init__(self, shape):
        super().__init__()
        g = torch.Generator().manual_seed(4)
        self.pred = torch.nn.Parameter(torch.randn(shape, generator=g, dtype=torch.float64))
        self.var = torch.nn.Parameter(torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1)

    def forward(self, x, t):
        return torch.cat([self.pred, self.var], dim=1)


def test_hybrid_loss_is_simple_plus_lambda_T_vlb_and_vlb_trains_only_the_variance():
    d = _learned()
    x0 = _grid_images(5, seed=2)
    t, noise = torch.tensor([0, 3, 30, 60, 99]), torch.randn_like(x0)
    model = _Free(x0.shape)
    terms = d.training_losses(model, x0, t=t, noise=noise)
    x_t = d.q_sample(x0, t, noise)
    mse = ((model.pred - noise) ** 2).flatten(1).mean(1)
    vlb = d.vlb_terms(model(x_t, t), x0, x_t, t)
    # (the prediction's error is taken in float32, as for any model; the bound keeps the output's float64)
    torch.testing.assert_close(terms.per_sample.double(), (mse + 0.001 * 100 * vlb).detach(), rtol=1e-6, atol=0)
    torch.testing.assert_close(terms.vlb, vlb.detach())
    terms.loss.backward()
    pred_grad, var_grad = model.pred.grad.clone(), model.var.grad.clone()
    model.zero_grad()
    mse.mean().backward()  # the prediction learns from L_simple alone: L_vlb sees it detached
    torch.testing.assert_close(pred_grad, model.pred.grad, rtol=1e-6, atol=1e-9)
    model.zero_grad()
    (0.001 * 100 * vlb).mean().backward()
    torch.testing.assert_close(var_grad, model.var.grad)
    weighted = d.training_losses(model, x0, t=t, noise=noise, t_weights=torch.full((5,), 2.0, dtype=torch.float64))
    torch.testing.assert_close(weighted.per_sample, 2 * terms.per_sample)


def test_vlb_weight_round_trips_and_is_checked():
    d = Diffusion(NoiseSchedule.cosine(50), variance="learned_range", vlb_weight=0.01)
    assert Diffusion.from_dict(d.to_dict()).vlb_weight == 0.01
    assert "vlb_weight" not in Diffusion(NoiseSchedule.cosine(50)).to_dict()  # fixed-variance configs unchanged
    assert d.respace([0, 10, 49]).vlb_weight == 0.01
    with pytest.raises(DdpmkitError, match="vlb_weight must be non-negative"):
        Diffusion(NoiseSchedule.cosine(50), vlb_weight=-1)


# ----- the whole bound --------------------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [None, 10])
def test_bound_of_the_exact_posterior_for_point_mass_data_is_prior_plus_decoder(steps):
    """Data: one 8-bit image c. The model x̂_0 = c with σ² = β̃ (v = −1) is the exact reverse process, so every
    KL term is 0 and the bound is the prior term plus the decoder's bin mass under N(c, β̃_1), in closed form."""
    T = 200
    d = _learned(kind="linear", T=T, prediction="x0")
    d = d if steps is None else d.respace(torch.linspace(0, T - 1, steps).round().long())
    c = _grid_images(1, seed=5)[0]
    c[0, 0, :2] = torch.tensor([-1.0, 1.0], dtype=torch.float64)  # the two end bins too
    x0 = c.expand(3, *c.shape).clone()
    seen = []

    def model(x, t):
        seen.append(int(t[0]))
        return _output(x0, -1.0)

    total, terms, prior = d.bits_per_dim(model, x0, torch.Generator().manual_seed(0))
    assert sorted(set(seen)) == d.timesteps.tolist()  # the model sees training timesteps, one call per term
    assert terms[:, 1:].abs().max() < 1e-9
    s = d.schedule
    sigma = math.sqrt(float(s.posterior_variance[1]))
    h = 1 / 255
    flat = c.flatten().numpy()
    decoder = [-(stats.norm.logcdf(h / sigma) if v == -1 else stats.norm.logsf(-h / sigma) if v == 1
                 else math.log(stats.norm.cdf(h / sigma) - stats.norm.cdf(-h / sigma))) for v in flat]
    a = float(s.alphas_cumprod[-1])
    prior_nats = [0.5 * (-1 - math.log(1 - a) + (1 - a) + a * v * v) for v in flat]
    expected_decoder, expected_prior = np.mean(decoder) / math.log(2), np.mean(prior_nats) / math.log(2)
    torch.testing.assert_close(terms[:, 0], torch.full((3,), expected_decoder, dtype=torch.float64))
    torch.testing.assert_close(prior, torch.full((3,), expected_prior, dtype=torch.float64))
    torch.testing.assert_close(total, torch.full((3,), expected_decoder + expected_prior, dtype=torch.float64))


def test_a_wrong_model_has_a_larger_bound():
    d = _learned(kind="linear", T=50, prediction="x0")
    x0 = _grid_images(4, seed=6)
    exact, _, _ = d.bits_per_dim(lambda x, t: _output(x0, -1.0), x0, torch.Generator().manual_seed(0))
    blurred, _, _ = d.bits_per_dim(lambda x, t: _output(0.9 * x0, -1.0), x0, torch.Generator().manual_seed(0))
    assert (blurred > exact + 0.01).all()
