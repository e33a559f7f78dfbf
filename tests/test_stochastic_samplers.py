"""DPM-Solver++(2M) SDE, EDM (Heun with churn) and Restart: their marginal on Gaussian data, their cost in model
evaluations, and diffusers where it has the same sampler."""

from __future__ import annotations

import math

import pytest
import torch
from test_sampling import MU, SIGMA, exact_ode_map, oracle_eps

from ddpmkit.device import randn
from ddpmkit.diffusion import Diffusion
from ddpmkit.errors import DdpmkitError
from ddpmkit.sampling import SAMPLER_REGISTRY, DDPMStep, sample, sample_loop, timestep_spacing
from ddpmkit.schedule import NoiseSchedule
from ddpmkit.stochastic_samplers import EDMStep, heun_corrections, restart_budget

NEW = ("dpm++2m-sde", "heun", "edm", "restart")
NFES = (6, 8, 10, 15, 20, 50)


def counting(model):
    calls = []

    def fn(x, t):
        calls.append(int(t[0]))
        return model(x, t)

    return fn, calls


@pytest.mark.parametrize("sampler", NEW)
def test_steps_count_model_evaluations(sampler):
    """``steps`` is the number of model evaluations for every sampler, whatever the rule does with them."""
    d = Diffusion(NoiseSchedule.cosine(1000))
    for nfe in NFES:
        model, calls = counting(oracle_eps(d))
        sample(model, d, (4, 1), sampler, steps=nfe, generator=torch.Generator().manual_seed(0))
        assert len(calls) == nfe, (sampler, nfe)


def test_budgets_split_as_documented():
    assert [heun_corrections(n) for n in (1, 2, 3, 5, 10)] == [(1, 0), (2, 0), (3, 0), (4, 1), (6, 4)]
    for n in range(6, 60):
        points, corrections, steps, restarts = restart_budget(n)
        assert points >= 2 and 0 <= corrections <= points - 2 and points + corrections + 2 + 2 * steps == n
    with pytest.raises(DdpmkitError, match="restart needs at least 6 model evaluations"):
        sample(oracle_eps(Diffusion(NoiseSchedule.cosine(100))), Diffusion(NoiseSchedule.cosine(100)), (2, 1),
               "restart", steps=5)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
@pytest.mark.parametrize("sampler", NEW)
def test_marginal_matches_the_data_distribution(sampler, kind, device):
    """Data x_0 ~ N(μ, σ²) and the exact ε-predictor: with enough evaluations every sampler's samples have the data's
    mean and spread (4 standard errors, plus the discretisation bias measured at 200 evaluations: at most 0.004)."""
    d = Diffusion(NoiseSchedule.from_name(kind, 1000))
    n = 20_000
    g = torch.Generator().manual_seed(1)
    x_T = torch.randn(n, 1, generator=g, dtype=torch.float64).to(device)
    out = sample(oracle_eps(d), d, x_T.shape, sampler, steps=200, x_T=x_T, generator=g, clip_denoised=False)
    assert out.device == x_T.device
    se_mean, se_std = SIGMA / math.sqrt(n), SIGMA / math.sqrt(2 * n)
    assert abs(out.mean().item() - MU) < 4 * se_mean + 0.002
    assert abs(out.std().item() - SIGMA) < 4 * se_std + 0.004


@pytest.mark.parametrize("sampler", ["dpm++2m-sde", "edm", "restart"])
def test_stochastic_samplers_leave_the_ode_path_but_not_the_distribution(sampler):
    """Fresh noise: two seeds give different samples from one x_T, and neither follows the ODE's map of x_T."""
    d = Diffusion(NoiseSchedule.cosine(1000))
    x_T = torch.randn(4000, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    runs = [sample(oracle_eps(d), d, x_T.shape, sampler, steps=20, x_T=x_T,
                   generator=torch.Generator().manual_seed(seed), clip_denoised=False) for seed in (1, 2)]
    assert (runs[0] - runs[1]).abs().mean() > 0.05
    assert (runs[0] - exact_ode_map(d, x_T)).abs().mean() > 0.05


def test_heun_follows_the_exact_ode_at_second_order():
    """Deterministic Heun: the error against the exact probability-flow map falls about 4x when the budget doubles
    (measured on the cosine oracle: 0.199 at 10 evaluations, 0.064 at 20, 0.014 at 50)."""
    d = Diffusion(NoiseSchedule.cosine(1000))
    x_T = torch.randn(2000, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = exact_ode_map(d, x_T)
    errors = {n: (sample(oracle_eps(d), d, x_T.shape, "heun", steps=n, x_T=x_T, clip_denoised=False) - exact)
              .abs().max().item() for n in (20, 40, 80)}
    assert errors[80] < 0.02
    assert errors[20] / errors[40] > 2.5 and errors[40] / errors[80] > 2.5, errors


def test_first_order_sde_dpm_solver_is_the_ddpm_step():
    """With no history, SDE-DPM-Solver++ is DDPM's ancestral step with β̃ (the same noise gives the same x)."""
    d = Diffusion(NoiseSchedule.linear(1000))
    x_T = torch.randn(100, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ts = torch.tensor([700, 300])
    after_first = {}
    for name, rule in [("sde", SAMPLER_REGISTRY["dpm++2m-sde"].make_step(None)), ("ddpm", DDPMStep())]:
        seen: list = []
        sample_loop(oracle_eps(d), d, x_T.clone(), ts, rule, generator=torch.Generator().manual_seed(5),
                    callback=seen.append, clip_denoised=False)
        after_first[name] = seen[0].x
    assert torch.allclose(after_first["sde"], after_first["ddpm"], atol=1e-12)


def test_dpmpp_2m_sde_matches_diffusers():
    """diffusers' DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++", order 2, midpoint, trailing, σ = 0
    at the end), given the same noise as ``variance_noise``: the same samples up to its float32 schedule."""
    diffusers = pytest.importorskip("diffusers", reason="diffusers (the bench extra) is the reference")
    d = Diffusion(NoiseSchedule.linear(1000))
    x_T = torch.randn(200, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for steps in (5, 12, 25):
        scheduler = diffusers.DPMSolverMultistepScheduler(
            num_train_timesteps=1000, beta_schedule="linear", algorithm_type="sde-dpmsolver++", solver_order=2,
            solver_type="midpoint", timestep_spacing="trailing", final_sigmas_type="zero", lower_order_final=True)
        scheduler.set_timesteps(steps)
        g = torch.Generator().manual_seed(3)
        noises = [randn(x_T.shape, g, "cpu", torch.float64) for _ in range(steps - 1)] + [torch.zeros_like(x_T)]
        theirs = x_T.clone()
        for t, z in zip(scheduler.timesteps, noises):
            eps = oracle_eps(d)(theirs, torch.full((len(theirs),), int(t)))
            theirs = scheduler.step(eps, t, theirs, variance_noise=z).prev_sample
        ts = timestep_spacing(1000, steps, "trailing")
        assert ts.tolist() == scheduler.timesteps.tolist()
        ours = sample_loop(oracle_eps(d), d, x_T.clone(), ts, SAMPLER_REGISTRY["dpm++2m-sde"].make_step(None),
                           generator=torch.Generator().manual_seed(3), clip_denoised=False)
        assert (ours - theirs).abs().max() < 1e-5, steps


def test_heun_matches_diffusers():
    """diffusers' HeunDiscreteScheduler (trailing, Heun on every step but the last) against our EDM rule with the
    same corrections and no churn: the same samples up to its float32 sigmas."""
    diffusers = pytest.importorskip("diffusers", reason="diffusers (the bench extra) is the reference")
    d = Diffusion(NoiseSchedule.linear(1000))
    x_T = torch.randn(200, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for steps in (4, 10):
        scheduler = diffusers.HeunDiscreteScheduler(num_train_timesteps=1000, beta_schedule="linear",
                                                    beta_start=1e-4, beta_end=0.02, timestep_spacing="trailing")
        scheduler.set_timesteps(steps)
        model, calls = counting(oracle_eps(d))
        theirs = x_T.clone() * math.sqrt(float(scheduler.sigmas[0]) ** 2 + 1)  # x̄_T = x_T/√ᾱ_T; init_noise_sigma is σ
        for t in scheduler.timesteps:
            x = scheduler.scale_model_input(theirs, t)
            theirs = scheduler.step(model(x, torch.full((len(x),), int(round(float(t))))), t, theirs).prev_sample
        their_calls = len(calls)
        ts = timestep_spacing(1000, steps, "trailing")
        ours_model, our_calls = counting(oracle_eps(d))
        ours = sample_loop(ours_model, d, x_T.clone(), ts, EDMStep(corrections=steps - 1, steps=steps),
                           clip_denoised=False)
        assert len(our_calls) == their_calls == 2 * steps - 1
        assert (ours - theirs).abs().max() < 1e-4, steps


@pytest.mark.parametrize("sampler", NEW)
def test_zero_terminal_snr_start_and_the_sample_entry_point(sampler, device):
    """From ᾱ_T = 0 (x̄ = ∞ in EDM's coordinates) each rule takes DDIM's first step and stays finite; v-prediction."""
    d = Diffusion(NoiseSchedule.cosine(1000).rescale_zero_terminal_snr(), prediction="v")
    ac = d.schedule.alphas_cumprod

    def oracle_v(x, t):
        a = ac.to(x.device)[t].to(x.dtype).reshape(-1, 1)
        eps = (1 - a).sqrt() * (x - a.sqrt() * MU) / (a * SIGMA**2 + 1 - a)
        x0 = MU + a.sqrt() * SIGMA**2 * (x - a.sqrt() * MU) / (a * SIGMA**2 + 1 - a)
        return a.sqrt() * eps - (1 - a).sqrt() * x0

    x_T = torch.randn(4000, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(device)
    out = sample(oracle_v, d, x_T.shape, sampler, steps=50, x_T=x_T, generator=torch.Generator().manual_seed(1),
                 clip_denoised=False)
    assert torch.isfinite(out).all()
    assert abs(out.mean().item() - MU) < 0.05 and abs(out.std().item() - SIGMA) < 0.05
