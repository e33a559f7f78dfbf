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
