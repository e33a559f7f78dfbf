"""Importance-sampled timesteps: unbiased, lower variance than uniform on a loss with known per-t values, uniform
until warmed up, and a state that survives a checkpoint (JSON) exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ddpmkit.errors import DdpmkitError
from ddpmkit.timestep_sampler import LossSecondMomentSampler, UniformSampler, make_timestep_sampler

T = 50
# a toy L_t shaped like the bound's terms: the first steps dominate by orders of magnitude
L = torch.tensor([5.0 * np.exp(-t / 3.0) + 0.01 for t in range(T)], dtype=torch.float64)


def _warm(sampler: LossSecondMomentSampler) -> None:
    for _ in range(sampler.history):
        sampler.update(torch.arange(T), L)


def test_uniform_until_every_history_is_full_then_proportional_to_the_rms_loss():
    s = LossSecondMomentSampler(T)
    for _ in range(s.history - 1):
        s.update(torch.arange(T), L)
    s.update(torch.arange(T - 1), L[:-1])  # one t still one value short
    assert not s.warmed_up and np.allclose(s.probabilities(), 1 / T)
    s.update(torch.tensor([T - 1]), L[-1:])
    assert s.warmed_up
    expected = L.numpy() / L.sum().item() * (1 - s.uniform_prob) + s.uniform_prob / T
    np.testing.assert_allclose(s.probabilities(), expected, rtol=1e-12)
    # the history is the last 10 values: ten new ones replace the old entirely
    for _ in range(s.history):
        s.update(torch.arange(T), 2 * L)
    np.testing.assert_allclose(s.probabilities(), expected, rtol=1e-12)  # scale-free
    s.update(torch.tensor([0]), torch.tensor([0.0]))
    assert s.probabilities()[0] < expected[0]


def test_importance_sampling_is_unbiased_with_lower_variance_than_uniform():
    s = LossSecondMomentSampler(T)
    _warm(s)
    generator = torch.Generator().manual_seed(0)
    true_mean = L.mean().item()
    estimates = {}
    for name, sampler in (("uniform", UniformSampler(T)), ("importance", s)):
        t, w = sampler.sample(200_000, generator=generator)
        values = L[t] * w.double()
        estimates[name] = (values.mean().item(), values.var().item(), values.std().item() / len(values) ** 0.5)
    for mean, _, standard_error in estimates.values():
        assert abs(mean - true_mean) < 4 * standard_error  # unbiased
    # closed form: Var_uniform = mean(L²) − mean(L)², Var_p = Σ L_t²/(T² p_t) − mean(L)²
    p = torch.from_numpy(s.probabilities())
    var_uniform = (L**2).mean() - L.mean() ** 2
    var_importance = (L**2 / (T**2 * p)).sum() - L.mean() ** 2
    assert estimates["uniform"][1] == pytest.approx(var_uniform.item(), rel=0.05)
    assert estimates["importance"][1] == pytest.approx(var_importance.item(), rel=0.05, abs=1e-6)
    assert var_importance < 0.01 * var_uniform  # p_t ∝ L_t makes L_t/(T p_t) almost constant


def test_uniform_weights_are_one():
    t, w = UniformSampler(T).sample(64, generator=torch.Generator().manual_seed(1))
    assert t.min() >= 0 and t.max() < T and torch.equal(w, torch.ones(64))


def test_state_survives_a_json_checkpoint_and_resumes_the_same_draws():
    s = LossSecondMomentSampler(T)
    _warm(s)
    s.update(torch.tensor([3, 3, 7]), torch.tensor([0.5, 0.25, 9.0]))
    restored = LossSecondMomentSampler(T)
    restored.load_state_dict(json.loads(json.dumps(s.state_dict())))
    np.testing.assert_array_equal(restored.probabilities(), s.probabilities())
    a = s.sample(32, generator=torch.Generator().manual_seed(5))
    b = restored.sample(32, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    with pytest.raises(DdpmkitError, match="is not this run's"):
        LossSecondMomentSampler(T + 1).load_state_dict(s.state_dict())
    with pytest.raises(DdpmkitError, match="is not this run's"):
        UniformSampler(T).load_state_dict(s.state_dict())


def test_factory_and_bad_settings():
    assert isinstance(make_timestep_sampler("loss-second-moment", 10), LossSecondMomentSampler)
    assert type(make_timestep_sampler("uniform", 10)) is UniformSampler
    with pytest.raises(DdpmkitError, match="unknown timestep sampler 'lognormal'"):
        make_timestep_sampler("lognormal", 10)
    with pytest.raises(DdpmkitError, match="history must be"):
        LossSecondMomentSampler(10, history=0)


# ----- log-normal noise levels (EDM) -------------------------------------------------------------------------

def _cosine_snr(num_steps: int = 1000) -> np.ndarray:
    from ddpmkit.schedule import NoiseSchedule
    return NoiseSchedule.from_name("cosine", num_steps).snr.double().numpy()


def test_log_normal_matches_nearest_t_of_continuous_draws():
    """p_t is the mass of ln σ ~ N(μ, s²) that rounds to t (nearest ln σ_t): check against 400k direct draws."""
    snr = _cosine_snr()
    sampler = make_timestep_sampler("log-normal", 1000, snr, -1.2, 1.2)
    p = sampler.probabilities()
    assert p.min() >= 0 and p.sum() == pytest.approx(1.0, abs=1e-12)
    rng = np.random.default_rng(0)
    log_sigma = -0.5 * np.log(snr)
    draws = rng.normal(-1.2, 1.2, 400_000)
    nearest = np.abs(draws[:, None] - log_sigma[None, ::10]).argmin(1)  # nearest of every 10th t, then refine
    coarse = np.clip(nearest * 10, 0, 999)
    window = np.clip(coarse[:, None] + np.arange(-10, 11)[None, :], 0, 999)
    t = window[np.arange(len(draws)), np.abs(draws[:, None] - log_sigma[window]).argmin(1)]
    empirical_cdf = np.cumsum(np.bincount(t, minlength=1000)) / len(t)
    assert np.abs(empirical_cdf - np.cumsum(p)).max() < 0.004  # Kolmogorov distance; 3.4/sqrt(n) ≈ 0.005
    # pinned: cosine schedule, T = 1000, EDM's (-1.2, 1.2): the median training step and the quartiles
    cdf = np.cumsum(p)
    assert [int(np.searchsorted(cdf, q)) for q in (0.25, 0.5, 0.75)] == [77, 179, 373]


def test_log_normal_weights_are_one_and_state_round_trips():
    snr = _cosine_snr(100)
    sampler = make_timestep_sampler("log-normal", 100, snr, -0.5, 1.0)
    t, w = sampler.sample(4096, generator=torch.Generator().manual_seed(0))
    assert torch.equal(w, torch.ones(4096))  # a change of emphasis, not an unbiased importance sampler
    counts = np.bincount(t.numpy(), minlength=100) / 4096
    assert np.abs(np.cumsum(counts) - np.cumsum(sampler.probabilities())).max() < 0.03
    state = json.loads(json.dumps(sampler.state_dict()))
    make_timestep_sampler("log-normal", 100, snr, -0.5, 1.0).load_state_dict(state)
    with pytest.raises(DdpmkitError, match="another log_sigma_mean/std"):
        make_timestep_sampler("log-normal", 100, snr, -1.2, 1.0).load_state_dict(state)
    with pytest.raises(DdpmkitError, match="log_sigma_std > 0"):
        make_timestep_sampler("log-normal", 100, snr, -1.2, 0.0)
    with pytest.raises(DdpmkitError, match="needs the schedule's SNR"):
        make_timestep_sampler("log-normal", 100)


def test_log_normal_handles_zero_terminal_snr():
    from ddpmkit.schedule import NoiseSchedule
    snr = NoiseSchedule.from_name("linear", 100, zero_terminal_snr=True).snr.double().numpy()
    assert snr[-1] == 0
    p = make_timestep_sampler("log-normal", 100, snr).probabilities()
    assert np.isfinite(p).all() and p.sum() == pytest.approx(1.0)
